"""Fixtures for ``syncctl guest test``: every guest request answered from a file, nothing sent anywhere.

A fixtures file is JSON: ``{"responses": [{"method": "GET", "url": "...", "status": 200, "headers":
{...}, "body": "text"}]}`` (``body_base64`` for binary bodies; ``when`` maps request headers that must be
present with these values, so one URL can answer 200 first and 304 to a conditional request). The first
entry whose method, URL and ``when`` match answers; a request nothing matches gets -5 (``no_fixture``).
The allow-list, the methods and the request budget still apply (refused as in production), so a guest that
passes here fails for no policy reason later. Requests are recorded for the report.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync_format.errors import SyncError
from sync_format.hosts import url_allowed
from workers.egress import (
    ALL_METHODS,
    DEFAULT_MAX_REQUESTS,
    STATUS_DENIED,
    STATUS_FAILED,
    HttpResult,
)


class FixturesError(SyncError):
    """The fixtures file cannot be used; the message says where."""

    code = "fixtures_error"


@dataclass(frozen=True)
class Fixture:
    """One canned response."""

    method: str
    url: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    when: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RecordedRequest:
    """A request the guest made, and what it got."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int
    error_code: str | None
    secret_headers: frozenset[str] = frozenset()


def load_fixtures(path: Path) -> list[Fixture]:
    """Read a fixtures file.

    Args:
        path: The JSON file.

    Returns:
        The fixtures in file order.

    Raises:
        FixturesError: Not valid JSON or an entry lacks a field.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["responses"] if isinstance(doc, dict) else doc
        return [_fixture(entry) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise FixturesError(f"{path}: not a fixtures file ({str(exc)[:200]!r})") from exc


def _fixture(entry: dict[str, Any]) -> Fixture:
    if "body_base64" in entry:
        body = base64.b64decode(entry["body_base64"])
    else:
        body = str(entry.get("body", "")).encode("utf-8")
    status = entry.get("status", 200)
    # What a real response can have (``http.client`` reads three digits): anything else would reach the
    # guest as an i32 it can never get in production, or as a negative ABI code no server can cause.
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise ValueError(f"status {str(status)[:20]} is not an HTTP status (100-999)")
    return Fixture(
        method=str(entry.get("method", "GET")).upper(),
        url=str(entry["url"]),
        status=status,
        headers=tuple((str(k), str(v)) for k, v in dict(entry.get("headers", {})).items()),
        body=body,
        when=tuple((str(k).lower(), str(v)) for k, v in dict(entry.get("when", {})).items()),
    )


@dataclass
class FixtureRequester:
    """A ``Requester`` (``workers.supervisor``) that answers from fixtures and records every request.

    Attributes:
        fixtures: The canned responses.
        allow_hosts: The manifest's allow-list, or None to allow every host named in the fixtures.
        requests: What the guest asked for, in order.
        failures: Refused or failed requests for the status record: none, fixtures answer everything.
    """

    fixtures: list[Fixture]
    allow_hosts: tuple[str, ...] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    failures: list[dict[str, object]] = field(default_factory=list)
    max_requests: int = DEFAULT_MAX_REQUESTS

    def request(
        self,
        url: str,
        method: str,
        *,
        deadline: float,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        secret_headers: frozenset[str] = frozenset(),
        secret_hosts: tuple[tuple[str, ...], ...] = (),
    ) -> HttpResult:
        """Answer one request from the fixtures (``deadline`` does not apply; secret headers are noted; their
        bindings were checked against this URL by ``workers.guest_http`` and no redirect is followed).

        Returns:
            The canned response, -2 for a host the allow-list refuses, or -5 ``no_fixture``.
        """
        del deadline, secret_hosts
        verb = method.strip().upper() or "GET"
        result = self._answer(url, verb, headers)
        record = RecordedRequest(verb, url, headers, body, result.status, result.error_code, secret_headers)
        self.requests.append(record)
        return result

    def _answer(self, url: str, verb: str, headers: tuple[tuple[str, str], ...]) -> HttpResult:
        # The same refusals, in the same order, as ``Egress`` (this call is not in ``requests`` yet).
        if len(self.requests) >= self.max_requests:
            return HttpResult(STATUS_FAILED, error_code="too_many_requests", final_url=url)
        if verb not in ALL_METHODS:
            return HttpResult(STATUS_FAILED, error_code="method_not_allowed", final_url=url)
        if self.allow_hosts is not None and not url_allowed(url, self.allow_hosts):
            return HttpResult(STATUS_DENIED, error_code="host_not_allowed", final_url=url)
        sent = {name.lower(): value for name, value in headers}
        for fixture in self.fixtures:
            if fixture.method != verb or fixture.url != url:
                continue
            if all(sent.get(name) == value for name, value in fixture.when):
                body = b"" if verb == "HEAD" else fixture.body
                lowered = tuple((name.lower(), value) for name, value in fixture.headers)
                return HttpResult(fixture.status, body, final_url=url, headers=lowered)
        return HttpResult(STATUS_FAILED, error_code="no_fixture", final_url=url, reason="no fixture matches")

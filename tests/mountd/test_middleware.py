"""The WSGI middleware's rules, called directly: allowed Host names, refused paths, the request scope."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from mountd.http.middleware import RequestGuard, RequestScope, host_names, on_request_end, path_problem


def ok_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A WSGI app that answers 200 ``ok``."""
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def status_of(app: Any, environ: dict[str, Any]) -> str:
    """Call a WSGI app and return its status line."""
    seen: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: seen.append(status))
    list(body)
    return seen[0]


@pytest.mark.parametrize(
    ("bound", "host", "port", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1:4918", "4918", True),
        ("127.0.0.1", "localhost:4918", "4918", True),
        ("127.0.0.1", "[::1]:4918", "4918", True),
        ("127.0.0.1", "127.0.0.1:4919", "4918", False),
        ("127.0.0.1", "127.0.0.1", "4918", False),
        ("127.0.0.1", "localhost", "80", True),
        ("127.0.0.1", "evil.example:4918", "4918", False),
        ("127.0.0.1", "localhost:4918:1", "4918", False),
        ("127.0.0.1", "[::1]x:4918", "4918", False),
        ("127.0.0.1", "[::1:4918", "4918", False),
        ("::1", "[::1]:4918", "4918", True),
        ("fe80::2", "[FE80::2]:4918", "4918", True),
        ("10.0.0.5", "10.0.0.5:4918", "4918", True),
        ("10.0.0.5", "files.example:4918", "4918", False),
    ],
)
def test_host_rule(bound: str, host: str, port: str, allowed: bool) -> None:
    """The bound host, localhost, 127.0.0.1 and [::1] with the server's port pass; anything else is 421."""
    guard = RequestGuard(ok_app, host_names(bound))
    status = status_of(guard, {"HTTP_HOST": host, "SERVER_PORT": port, "PATH_INFO": "/"})
    assert status == ("200 OK" if allowed else "421 Misdirected Request")


def test_operator_named_hosts_are_allowed() -> None:
    """Names the operator adds (e.g. the machine's DNS name) pass with the port."""
    guard = RequestGuard(ok_app, host_names("10.0.0.5", ["files.example"]))
    assert (
        status_of(guard, {"HTTP_HOST": "files.example:80", "SERVER_PORT": "80", "PATH_INFO": "/"}) == "200 OK"
    )


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/report.csv", None),
        ("/sub/dir/", None),
        ("/caf\u00c3\u00a9.csv", None),  # "café" as PEP 3333 latin-1 code points of its UTF-8
        ("/..", "path has a dot segment"),
        ("/a/./b", "path has a dot segment"),
        ("/a\x00b", "path has a control character"),
        ("/\xff", "path is not valid UTF-8"),
    ],
)
def test_path_problems(path: str, problem: str | None) -> None:
    """Dot segments, control characters and invalid UTF-8 are refused; ordinary names pass."""
    assert path_problem(path) == problem


def test_request_scope_runs_cleanups_when_the_response_closes() -> None:
    """Cleanups registered during a request run once the server closes the response, not before."""
    done: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        assert on_request_end(environ, lambda: done.append("closed"))
        start_response("200 OK", [])
        return [b"x"]

    response = RequestScope(app)({}, lambda *a: None)
    assert list(response) == [b"x"]
    assert done == []
    response.close()  # type: ignore[attr-defined]
    assert done == ["closed"]
    assert not on_request_end({}, lambda: None)

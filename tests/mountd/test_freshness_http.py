"""HTTP freshness (``mountd.http.freshness_headers``): every GET and HEAD of an archive says how fresh it is
(Age,
Cache-Control, Expires, Sync-Stale) on both GET paths; a reader asking for fresh data (no-cache, max-age=0,
min-fresh) of an expired or nearly expired archive waits, bounded, for the refresh and gets the new
generation, or past the bound the old one marked stale; max-stale accepts stale data without waiting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from dav_client import Response, request
from recording_hook import RecordingHook

from broker import Settings
from mountd import ArchiveFacts, ServerHandle, serve_background
from mountd.http.freshness_headers import (
    MAX_WAITING_READS,
    CacheDirectives,
    SwapWaiters,
    freshness_headers,
    needs_fresh,
    parse_directives,
)
from sync_format import EMPTY_WASM, commit_payload, open_archive
from sync_format.freshness import format_timestamp, now_ns
from sync_format.testing import make_archive, make_manifest

NS = 1_000_000_000
#: A valid module that is not the empty one: the archive has update logic.
LOGIC_WASM = EMPTY_WASM + b"\x00\x05\x04sync"
#: The two GET paths: plain (the fast path) and with a query string (wsgidav's own).
PATHS = ("/a.txt", "/a.txt?slow")


def build(store: Path, *, ttl: int, age: int, name: str = "a.txt.sync", logic: bool = True) -> Path:
    """An archive whose payload was made ``age`` seconds ago, with a TTL."""
    path = store / name
    manifest = make_manifest(ttl=ttl, created_at=format_timestamp(now_ns() - age * NS))
    make_archive(path, b"old", manifest=manifest, wasm=LOGIC_WASM if logic else EMPTY_WASM)
    return path


def facts_of(path: Path) -> ArchiveFacts:
    """The archive's facts as mountd computes them."""
    with open_archive(path) as snapshot:
        return ArchiveFacts.from_snapshot(snapshot)


def test_request_directives_parse_leniently() -> None:
    """Known directives with their values; unknown, malformed and quoted ones as RFC 9111 says."""
    assert parse_directives("no-cache") == CacheDirectives(no_cache=True)
    assert parse_directives(' Max-Age="0", min-fresh=5, foo, max-stale') == CacheDirectives(
        max_age=0, min_fresh=5, max_stale=-1
    )
    assert parse_directives("max-age=abc, max-stale=30") == CacheDirectives(max_stale=30)
    assert not parse_directives("private").any


def test_which_requests_wait(tmp_path: Path) -> None:
    """Fresh-demanding directives wait only on an expired or nearly expired archive with update logic;
    max-stale covering the staleness never waits; min-fresh waits when fewer seconds are left."""
    now = now_ns()
    expired = facts_of(build(tmp_path, ttl=60, age=70, name="e.txt.sync"))
    near = facts_of(build(tmp_path, ttl=60, age=55, name="n.txt.sync"))  # 5 s left, lead 6 s
    fresh = facts_of(build(tmp_path, ttl=60, age=10, name="f.txt.sync"))
    static = facts_of(build(tmp_path, ttl=60, age=70, name="s.txt.sync", logic=False))
    no_cache = CacheDirectives(no_cache=True)
    assert [needs_fresh(no_cache, f, now) for f in (expired, near, fresh, static)] == [
        True,
        True,
        False,
        False,
    ]
    assert needs_fresh(CacheDirectives(max_age=0), near, now)
    assert not needs_fresh(CacheDirectives(max_age=120), near, now)  # 55 s old: young enough
    assert needs_fresh(CacheDirectives(min_fresh=30), fresh, now) is False  # 50 s left
    assert needs_fresh(CacheDirectives(min_fresh=55), fresh, now)
    assert not needs_fresh(CacheDirectives(no_cache=True, max_stale=-1), expired, now)
    assert not needs_fresh(CacheDirectives(no_cache=True, max_stale=60), expired, now)
    assert needs_fresh(CacheDirectives(no_cache=True, max_stale=5), expired, now)


def test_response_headers_count_from_the_commit(tmp_path: Path) -> None:
    """Fresh: Age since the base, max-age - Age = the seconds left, Expires the expiry; expired: max-age=0,
    must-revalidate and Sync-Stale; never expiring: Age alone."""
    now = now_ns()
    fresh = dict(freshness_headers(facts_of(build(tmp_path, ttl=60, age=10, name="f.txt.sync")), now))
    assert int(fresh["Age"]) in (10, 11)
    assert int(fresh["Cache-Control"].removeprefix("max-age=")) - int(fresh["Age"]) in (48, 49, 50)
    assert "Sync-Stale" not in fresh
    expired_facts = facts_of(build(tmp_path, ttl=60, age=70, name="e.txt.sync"))
    expired = dict(freshness_headers(expired_facts, now))
    assert expired["Cache-Control"] == "max-age=0, must-revalidate"
    assert expired["Sync-Stale"] == "true"
    assert expired_facts.expiry.at_ns is not None
    assert parsedate_to_datetime(expired["Expires"]).timestamp() == expired_facts.expiry.at_ns // NS
    never = freshness_headers(facts_of(build(tmp_path, ttl=2**62, age=0, name="n.txt.sync")), now)
    assert [name for name, _ in never] == ["Age"]
    missed = dict(freshness_headers(facts_of(tmp_path / "f.txt.sync"), now, missed_wait=True))
    assert missed["Sync-Stale"] == "true"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", PATHS)
def test_both_paths_send_the_freshness_headers(
    store: Path, server: ServerHandle, method: str, path: str
) -> None:
    """The fast path and wsgidav's path, GET and HEAD, send the same freshness headers; an expired archive
    is marked stale."""
    build(store, ttl=3600, age=5)
    build(store, ttl=60, age=120, name="old.txt.sync")
    fresh = request(server.mount_url, method, path)
    assert fresh.status == 200
    assert fresh.header("cache-control") is not None
    assert fresh.header("cache-control").startswith("max-age=")  # type: ignore[union-attr]
    assert int(fresh.header("cache-control").removeprefix("max-age=")) > 3500  # type: ignore[union-attr]
    assert fresh.header("expires") is not None
    assert fresh.header("age") is not None
    assert fresh.header("sync-stale") is None
    stale = request(server.mount_url, method, path.replace("a.txt", "old.txt"))
    assert (stale.header("cache-control"), stale.header("sync-stale")) == (
        "max-age=0, must-revalidate",
        "true",
    )


def test_a_not_modified_answer_carries_the_freshness_headers(store: Path, server: ServerHandle) -> None:
    """A 304 (If-None-Match) tells the cache how long its copy stays fresh (RFC 9111 §4.3.4)."""
    build(store, ttl=3600, age=5)
    etag = request(server.mount_url, "GET", "/a.txt").header("etag")
    assert etag is not None
    revalidated = request(server.mount_url, "GET", "/a.txt", headers={"If-None-Match": etag})
    assert revalidated.status == 304
    assert (revalidated.header("cache-control") or "").startswith("max-age=")


class CommittingHook(RecordingHook):
    """Plays a worker: ``delay`` seconds after each request, commits a new payload of the archive."""

    def __init__(self, store: Path, delay: float) -> None:
        super().__init__()
        self.store = store
        self.delay = delay
        self.threads: list[threading.Thread] = []

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Record and commit later (at most once per generation, as the claim keeps it)."""
        first = (archive, generation) not in [(a, g) for a, g, _ in self.calls]
        super().on_stale(archive, generation, timeout)
        if first:
            thread = threading.Timer(self.delay, commit_payload, (self.store / archive, generation, b"new"))
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        """Wait for the commits."""
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def committing(store: Path) -> Iterator[tuple[ServerHandle, CommittingHook]]:
    """mountd with a hook that commits 0.3 s after being asked, and a fresh wait of 5 s."""
    hook = CommittingHook(store, 0.3)
    with serve_background(Settings(host="127.0.0.1", port=0, fresh_wait=5.0), store, hook) as handle:
        yield handle, hook
    hook.join()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("directive", ["no-cache", "max-age=0", "min-fresh=100"])
def test_a_reader_asking_for_fresh_data_gets_the_new_generation(
    store: Path, committing: tuple[ServerHandle, CommittingHook], path: str, directive: str
) -> None:
    """On an expired archive, each fresh-demanding directive waits for the refresh it asked for and serves
    the new generation, fresh, on either path."""
    server, hook = committing
    build(store, ttl=60, age=120)
    resp = request(server.mount_url, "GET", path, headers={"Cache-Control": directive})
    assert (resp.status, resp.body) == (200, b"new")
    assert resp.header("sync-stale") is None
    # Age counts whole seconds from a commit time stored to the second: a fresh answer may cross one boundary.
    assert resp.header("age") in {"0", "1"}
    assert hook.calls[0][:2] == ("a.txt.sync", 0)


def test_a_nearly_expired_archive_is_refreshed_for_a_no_cache_reader(
    store: Path, committing: tuple[ServerHandle, CommittingHook]
) -> None:
    """Within the lead of its expiry (6 s of a 60 s TTL), a no-cache read asks and waits; a plain read of
    the same archive would have been served at once."""
    server, hook = committing
    build(store, ttl=60, age=57)
    resp = request(server.mount_url, "GET", "/a.txt", headers={"Cache-Control": "no-cache"})
    assert resp.body == b"new"
    assert len(hook.calls) == 1


def test_max_stale_accepts_stale_data_without_waiting(
    store: Path, committing: tuple[ServerHandle, CommittingHook]
) -> None:
    """``no-cache, max-stale`` on an expired archive: the old generation at once (a refresh is asked for, as
    for any stale read), marked stale."""
    server, hook = committing
    build(store, ttl=60, age=120)
    resp = request(server.mount_url, "GET", "/a.txt", headers={"Cache-Control": "max-stale, no-cache"})
    assert (resp.body, resp.header("sync-stale")) == (b"old", "true")
    assert len(hook.calls) == 1


@pytest.mark.parametrize("path", PATHS)
def test_past_the_bound_the_old_generation_is_served_marked_stale(
    store: Path, hook: RecordingHook, path: str
) -> None:
    """Nobody refreshes: after the bound (0.3 s here) the reader gets the old generation with
    ``Sync-Stale: true`` instead of an error."""
    build(store, ttl=60, age=120)
    with serve_background(Settings(host="127.0.0.1", port=0, fresh_wait=0.3), store, hook) as server:
        resp: Response = request(server.mount_url, "GET", path, headers={"Cache-Control": "no-cache"})
    assert (resp.status, resp.body, resp.header("sync-stale")) == (200, b"old", "true")
    assert hook.calls
    assert hook.calls[0][:2] == ("a.txt.sync", 0)


def test_readers_asking_for_fresh_data_cannot_hold_every_thread(store: Path, hook: RecordingHook) -> None:
    """Nobody refreshes and the bound is long: once ``MAX_WAITING_READS`` readers wait, the next
    ``no-cache`` reader is answered at once with the old data marked stale, while the others still wait
    (each waiting read holds one of the server's threads)."""
    from redis_server import wait_for

    for n in range(MAX_WAITING_READS + 1):
        build(store, ttl=60, age=120, name=f"a{n}.txt.sync")
    swaps = SwapWaiters()
    settings = Settings(host="127.0.0.1", port=0, fresh_wait=60)
    with serve_background(settings, store, hook, swaps=swaps) as server:
        answers: list[Response] = []

        def read(n: int) -> None:
            answers.append(
                request(server.mount_url, "GET", f"/a{n}.txt", headers={"Cache-Control": "no-cache"})
            )

        waiting = [threading.Thread(target=read, args=(n,)) for n in range(MAX_WAITING_READS)]
        for thread in waiting:
            thread.start()
        wait_for(lambda: swaps.waiting == MAX_WAITING_READS, 10, what="every slot taken")
        last = request(
            server.mount_url, "GET", f"/a{MAX_WAITING_READS}.txt", headers={"Cache-Control": "no-cache"}
        )
        assert (last.status, last.body, last.header("sync-stale")) == (200, b"old", "true")
        assert swaps.waiting == MAX_WAITING_READS  # the others were still waiting when it was answered
        for n in range(MAX_WAITING_READS):  # a commit wakes them
            commit_payload(store / f"a{n}.txt.sync", expected_generation=0, staged=b"new")
        for thread in waiting:
            thread.join(timeout=30)
    assert sorted(a.body for a in answers) == [b"new"] * MAX_WAITING_READS

"""Guest HTTP end to end: a confined guest's ``http_request`` reaches exactly the hosts its manifest allows.

Three servers run in network namespaces of their own (``alpha``, ``beta``, ``gamma``), each a different
machine from the guest's point of view, each answering with a body of its own. Guests are built per test with
the URL and method baked into a data segment (the ABI gives a guest no other input), and write the status, the
body size, the bytes copied and the body into their new payload, which the test reads back from the archive.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import guests
import pytest
from guests import NameTable, call, result, results
from netns_hosts import Route, ServedHost, netns_hosts

from broker.settings import Settings
from sync_format.reader import open_archive
from sync_format.testing import make_archive, make_manifest
from workers.refresh import COMMITTED, run_refresh
from workers.runtime import GuestRuntime

LABELS = ("alpha", "beta", "gamma")
#: Each host's body: binary, not UTF-8, with NULs, and different per host.
BODIES = {
    label: f"{label}:".encode() + bytes(range(256)) + b"\xff\xfe\xc3\x28" + label.encode() * 3
    for label in LABELS
}


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, ServedHost]]:
    """The three namespace hosts for the whole module."""
    with netns_hosts(LABELS) as served:
        yield served


@pytest.fixture(scope="module")
def names(hosts: dict[str, ServedHost]) -> NameTable:
    """``<label>.test`` resolves to that host's namespace address."""
    return NameTable({f"{label}.test": [host.address] for label, host in hosts.items()})


@pytest.fixture(scope="module")
def runtime(
    tmp_path_factory: pytest.TempPathFactory, names: NameTable, make_runtime: Callable[..., GuestRuntime]
) -> GuestRuntime:
    """A strict-mode runtime shared by the module."""
    # The namespace hosts are private addresses: the operator's setting opens their block, as it must.
    return make_runtime(
        tmp_path_factory.mktemp("egress-cache"), names, egress_allow_private="10.231.0.0/16:*"
    )


@pytest.fixture(autouse=True)
def serving(hosts: dict[str, ServedHost], names: NameTable) -> None:
    """Every host serves its own body at ``/data`` (as text/plain UTF-8, which must not matter) and its logs
    start empty."""
    for label, host in hosts.items():
        host.reset()
        host.serve(
            {"/data": Route.fixed(BODIES[label], headers={"Content-Type": "text/plain; charset=utf-8"})}
        )
    names.calls.clear()


def run_guest(runtime: GuestRuntime, tmp_path: Path, wasm: bytes, *allow_hosts: str) -> bytes:
    """Refresh an archive holding this guest and return the payload it committed."""
    path = tmp_path / "egress.txt.sync"
    make_archive(path, b"hello", manifest=make_manifest(allow_hosts=allow_hosts), wasm=wasm)
    outcome = run_refresh(path, runtime)
    assert (outcome.status, outcome.error_code) == (COMMITTED, None), outcome.error
    with open_archive(path) as snap:
        return snap.read_payload()


@pytest.mark.parametrize("label", LABELS)
def test_allowed_host_body_arrives_byte_exact(
    runtime: GuestRuntime, hosts: dict[str, ServedHost], tmp_path: Path, label: str
) -> None:
    """A guest fetching an allowed host gets status 200 and that host's exact body bytes, and only that host
    sees the request (with its name in Host)."""
    payload = run_guest(runtime, tmp_path, guests.fetch(f"http://{label}.test/data"), f"{label}.test")
    values, body = results(payload, 3)
    assert values == [200, len(BODIES[label]), len(BODIES[label])]
    assert body == BODIES[label]
    for other, host in hosts.items():
        seen = host.requests()
        if other == label:
            assert [(r["method"], r["path"], r["host"]) for r in seen] == [("GET", "/data", f"{label}.test")]
        else:
            assert host.events() == []


def test_refused_and_allowed_hosts_in_one_run(
    runtime: GuestRuntime, hosts: dict[str, ServedHost], names: NameTable, tmp_path: Path
) -> None:
    """In one run a refused host gives -2 and is never looked up nor contacted, while the allowed host next to
    it answers with its own body."""
    refused, refused_data = guests.http_request("http://beta.test/data", at=guests.STRINGS)
    allowed, allowed_data = guests.http_request("http://alpha.test/data", at=guests.STRINGS + 0x100)
    capacity = guests.FETCH_PAGES * guests.PAGE - guests.BODY
    wasm = guests.record(
        refused,
        call("last_response_size"),
        allowed,
        call("last_response_size"),
        call("last_response_read", guests.BODY, capacity),
        regions=[(guests.BODY, result(4))],
        data={**refused_data, **allowed_data},
        pages=guests.FETCH_PAGES,
    )
    payload = run_guest(runtime, tmp_path, wasm, "alpha.test", "gamma.test")
    values, body = results(payload, 5)
    assert values == [-2, 0, 200, len(BODIES["alpha"]), len(BODIES["alpha"])]
    assert body == BODIES["alpha"]
    assert names.calls == ["alpha.test"]
    assert hosts["beta"].events() == []
    assert len(hosts["alpha"].requests()) == 1


@pytest.mark.parametrize(
    ("method", "sent"),
    [("POST", "POST"), ("DELETE", "DELETE"), ("put", "PUT"), ("", "GET")],
    ids=["POST", "DELETE", "lower-case", "empty-means-GET"],
)
def test_method_is_honoured(
    runtime: GuestRuntime, hosts: dict[str, ServedHost], tmp_path: Path, method: str, sent: str
) -> None:
    """The method the guest passes is the one the server sees (no request body); an empty one is GET."""
    payload = run_guest(runtime, tmp_path, guests.fetch("http://gamma.test/data", method), "gamma.test")
    values, body = results(payload, 3)
    assert (values[0], body) == (200, BODIES["gamma"])
    assert [(r["method"], r["body"]) for r in hosts["gamma"].requests()] == [(sent, "")]


def test_redirect_between_allowed_hosts_is_followed(
    runtime: GuestRuntime, hosts: dict[str, ServedHost], tmp_path: Path
) -> None:
    """A redirect from one allowed host to another is followed, and the guest gets the second host's body."""
    hosts["alpha"].serve({"/moved": Route.redirect("http://gamma.test/data")})
    payload = run_guest(
        runtime, tmp_path, guests.fetch("http://alpha.test/moved"), "alpha.test", "gamma.test"
    )
    values, body = results(payload, 3)
    assert (values[0], body) == (200, BODIES["gamma"])
    assert [r["path"] for r in hosts["alpha"].requests()] == ["/moved"]
    assert [r["path"] for r in hosts["gamma"].requests()] == ["/data"]
    assert hosts["beta"].events() == []


def test_error_status_and_its_body_reach_the_guest(
    runtime: GuestRuntime, hosts: dict[str, ServedHost], tmp_path: Path
) -> None:
    """A non-2xx answer is a completed response: the guest gets its status and its body."""
    hosts["beta"].serve({"/teapot": Route.fixed(b"short and stout \xff", status=418)})
    payload = run_guest(runtime, tmp_path, guests.fetch("http://beta.test/teapot"), "beta.test")
    assert results(payload, 3) == ([418, 17, 17], b"short and stout \xff")


def test_guest_needs_the_operator_for_a_private_address(
    tmp_path: Path, hosts: dict[str, ServedHost], names: NameTable
) -> None:
    """Real wasmtime and a real child: a guest whose manifest lists a namespace host exactly, by name and by
    address, gets -2 while the operator's setting is empty and the host sees nothing; the same archive with
    the setting opening that address fetches the body (issue 11 finding 2)."""
    host = hosts["alpha"]
    closed = GuestRuntime(
        Settings.from_env({"cache_dir": tmp_path / "closed", "sandbox": "strict"}, env={}), resolver=names
    )
    refused, refused_data = guests.http_request("http://alpha.test/data", at=guests.STRINGS)
    literal, literal_data = guests.http_request(f"http://{host.address}/data", at=guests.STRINGS + 0x100)
    metadata, metadata_data = guests.http_request(
        "http://[::ffff:169.254.169.254]/latest/", at=guests.STRINGS + 0x200
    )
    wasm = guests.record(refused, literal, metadata, data={**refused_data, **literal_data, **metadata_data})
    allow = ("alpha.test", host.address, "[::ffff:169.254.169.254]")
    values, _ = results(run_guest(closed, tmp_path, wasm, *allow), 3)
    assert values == [-2, -2, -2]
    assert host.events() == []
    opened = GuestRuntime(
        Settings.from_env(
            {"cache_dir": tmp_path / "open", "sandbox": "strict"},
            env={"SYNC_EGRESS_ALLOW_PRIVATE": f"{host.address}:80,0.0.0.0/0:*,[::/0]:*"},
        ),
        resolver=names,
    )
    values, _ = results(run_guest(opened, tmp_path, wasm, *allow), 3)
    assert values == [200, 200, -2]
    assert len(host.requests()) == 2


def test_syncctl_run_reads_the_operator_setting(tmp_path: Path, hosts: dict[str, ServedHost]) -> None:
    """``syncctl run`` (a worker of its own) refuses a private source without ``SYNC_EGRESS_ALLOW_PRIVATE``,
    prints the refused request, and fetches it with the setting."""
    host = hosts["gamma"]
    path = tmp_path / "run.txt.sync"
    make_archive(
        path,
        b"hello",
        manifest=make_manifest(allow_hosts=(host.address,)),
        wasm=guests.fetch(host.url("/data")),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env["SYNC_CACHE_DIR"] = str(tmp_path / "cache")
    command = [sys.executable, "-m", "syncctl", "run", str(path)]
    closed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert f"egress:     private_address (-2) host {host.address}" in closed.stdout, closed.stdout
    assert host.events() == []
    env["SYNC_EGRESS_ALLOW_PRIVATE"] = f"{host.address}:*"
    opened = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert opened.returncode == 0, opened.stderr
    assert "status:     committed" in opened.stdout
    with open_archive(path) as snap:
        values, body = results(snap.read_payload(), 3)
    assert (values[0], body) == (200, BODIES["gamma"])

"""Guest SDKs end to end: every template and example built from source with the real toolchains, checked
against the ABI, tried with ``syncctl guest test`` against its fixtures, and refreshed for real by
``syncctl run`` in the strict sandbox against HTTP servers in network namespaces (no fixtures there).

Toolchains are required, never skipped (``make test`` installs them: ziglang from PyPI, assemblyscript from
npm, Debian's rustc with the wasm32 standard library). Each source is compiled once per session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from support import Route, ServedHost, netns_hosts

from sync_format.reader import open_archive
from syncctl.guest_build import SDK_DIR, GuestBuildFailed, build, check_abi

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = SDK_DIR / "examples"
TEMPLATES = SDK_DIR / "templates"
#: The source ``guest build`` takes, per template language and per example.
TEMPLATE_SOURCES = {"c": "guest.c", "zig": "guest.zig", "rust": ".", "assemblyscript": "guest.ts"}
EXAMPLE_SOURCES = {
    "conditional": "guest.c",
    "merge": "guest.c",
    "logger": "guest.zig",
    "json-to-csv": ".",
    "feed-to-json": "guest.ts",
}
#: What guests fetch from the namespace hosts: private addresses, unlocked for the egress of issue 11.
ALLOW_PRIVATE = "10.231.0.0/16:*"


def syncctl(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One module cache for every run of the session."""
    return tmp_path_factory.mktemp("sdk-cache")


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every template written by ``syncctl guest new`` and built by ``syncctl guest build``, once."""
    root = tmp_path_factory.mktemp("templates")
    built = {}
    for lang, source in TEMPLATE_SOURCES.items():
        directory = root / lang
        done = syncctl("guest", "new", str(directory), "--lang", lang)
        assert done.returncode == 0, done.stderr
        out = directory / "guest.wasm"
        done = syncctl("guest", "build", str(directory / source), "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert "ABI checked" in done.stdout
        built[lang] = out
    return built


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Every example built once from its shipped source."""
    cache = tmp_path_factory.mktemp("toolchain-cache")
    return {name: build(EXAMPLES / name / source, cache).wasm for name, source in EXAMPLE_SOURCES.items()}


def test_every_built_guest_passes_the_abi_check(
    templates: dict[str, Path], examples: dict[str, bytes]
) -> None:
    """Templates and examples import only ``host`` functions with the right signatures and export memory and
    run (checked again here on the bytes, independently of the build)."""
    for wasm in [p.read_bytes() for p in templates.values()] + list(examples.values()):
        assert check_abi(wasm) == []
        module = wasmtime.Module(wasmtime.Engine(), wasm)
        assert {imp.module for imp in module.imports} == {"host"}


@pytest.mark.parametrize("lang", list(TEMPLATE_SOURCES))
def test_builds_are_reproducible_from_any_directory(
    templates: dict[str, Path], tmp_path: Path, lang: str
) -> None:
    """The same source gives the same bytes, also built from a copy in another directory."""
    copy = tmp_path / "elsewhere" / lang
    shutil.copytree(templates[lang].parent, copy)
    (copy / "guest.wasm").unlink()
    again = build(copy / TEMPLATE_SOURCES[lang], tmp_path / "cache")
    assert again.wasm == templates[lang].read_bytes()


PLAIN_C = """
__attribute__((import_module("host"), import_name("payload_write")))
int payload_write(int offset, int len, const void *data);
__attribute__((import_module("host"), import_name("time_unix")))
long long time_unix(void);

void run(void) {
    static const char hello[] = "built without the SDK";
    payload_write(0, sizeof hello - 1, hello);
    (void)time_unix;
}
"""
PLAIN_C_LIBC = """
#include <string.h>
__attribute__((import_module("host"), import_name("payload_write")))
int payload_write(int, int, const void *);
static char buf[64];
void run(void) {
    const char *s = "built without the SDK";
    size_t n = strlen(s);
    memset(buf, 0, sizeof buf);
    memcpy(buf, s, n);
    if (memcmp(buf, "built", 5) == 0 && strstr(buf, "SDK")) payload_write(0, (int)n, buf);
}
"""
PLAIN_AS = """
@external("host", "payload_write")
declare function payload_write(offset: i32, len: i32, data: usize): i32;

export function run(): void {
  const text = String.UTF8.encode("built without the SDK");
  payload_write(0, text.byteLength, changetype<usize>(text));
}
"""


@pytest.mark.parametrize(
    ("name", "source"), [("plain.c", PLAIN_C), ("libc.c", PLAIN_C_LIBC), ("plain.ts", PLAIN_AS)]
)
def test_plain_sources_without_the_sdk_build_and_run(
    tmp_path: Path, cache_dir: Path, name: str, source: str
) -> None:
    """C (also using string.h) and AssemblyScript that import the ABI directly (no SDK) build, and run in
    the sandbox."""
    (tmp_path / name).write_text(source)
    done = syncctl("guest", "build", str(tmp_path / name), "-o", str(tmp_path / "plain.wasm"))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out.bin"
    done = syncctl(
        "guest", "test", str(tmp_path / "plain.wasm"), "-o", str(out), env={"SYNC_CACHE_DIR": str(cache_dir)}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.read_bytes() == b"built without the SDK"
    # OUT as a symlink someone planted (to a file of the person running the test): replaced, not followed.
    victim = tmp_path / "victim.rc"
    victim.write_bytes(b"the victim's own file\n")
    planted = tmp_path / "planted.bin"
    planted.symlink_to(victim)
    done = syncctl(
        "guest",
        "test",
        str(tmp_path / "plain.wasm"),
        "-o",
        str(planted),
        env={"SYNC_CACHE_DIR": str(cache_dir)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert victim.read_bytes() == b"the victim's own file\n"
    assert not planted.is_symlink()
    assert planted.read_bytes() == b"built without the SDK"


BAD_ABI = [
    (
        "foreign-import",
        '__attribute__((import_module("env"), import_name("getenv"))) int getenv(void);\n'
        "void run(void) { getenv(); }",
        "env::getenv",
    ),
    (
        "unknown-host-function",
        '__attribute__((import_module("host"), import_name("exec"))) int x(void);\nvoid run(void) { x(); }',
        "host::exec",
    ),
    (
        "wrong-signature",
        '__attribute__((import_module("host"), import_name("payload_size"))) long long f(int);\n'
        "void run(void) { f(1); }",
        "host::payload_size has signature",
    ),
    ("run-with-a-result", "int run(void) { return 1; }", "run: () -> ()"),
]


@pytest.mark.parametrize(("source", "problem"), [pytest.param(s, p, id=i) for i, s, p in BAD_ABI])
def test_modules_that_break_the_abi_are_not_written(tmp_path: Path, source: str, problem: str) -> None:
    """A module with a foreign import, an unknown host function, a wrong signature or a bad ``run`` is
    refused with one error line naming the problem, and no output file appears."""
    (tmp_path / "bad.c").write_text(source)
    done = syncctl("guest", "build", str(tmp_path / "bad.c"), "-o", str(tmp_path / "bad.wasm"))
    assert done.returncode == 1
    assert problem in done.stderr
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "bad.wasm").exists()


def test_the_demo_guest_shipped_in_the_wheel_is_its_source_rebuilt(tmp_path: Path) -> None:
    """``demo_guests/fetch_source.wasm`` (shipped so the demo needs no toolchain) is exactly what
    ``syncctl guest build`` makes of ``fetch_source.c``."""
    demo = ROOT / "syncctl" / "demo_guests"
    assert build(demo / "fetch_source.c", tmp_path).wasm == (demo / "fetch_source.wasm").read_bytes()


def test_check_abi_names_a_missing_memory_and_run() -> None:
    """A module without ``memory`` and ``run`` exports is no guest."""
    wasm = wasmtime.wat2wasm('(module (memory 1) (func (export "_start")))')
    assert check_abi(bytes(wasm)) == [
        "no exported memory named 'memory'",
        "no exported function run: () -> ()",
    ]


def test_a_missing_toolchain_is_one_line_naming_the_package(tmp_path: Path) -> None:
    """Without node on PATH an AssemblyScript build says which packages to install, on one line."""
    (tmp_path / "guest.ts").write_text(PLAIN_AS)
    done = syncctl("guest", "build", str(tmp_path / "guest.ts"), env={"PATH": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "assemblyscript" in done.stderr
    assert "npm install" in done.stderr


def test_asc_build_runs_no_code_from_the_source_directory(tmp_path: Path) -> None:
    """An ``asconfig.json`` next to the source whose ``transform`` names a script is ignored: asc would
    import and run that script while building (code from an untrusted source directory)."""
    (tmp_path / "guest.ts").write_text(PLAIN_AS)
    marker = tmp_path / "transform-ran"
    (tmp_path / "asconfig.json").write_text(json.dumps({"options": {"transform": ["./evil.mjs"]}}))
    (tmp_path / "evil.mjs").write_text(
        f'import fs from "fs";\nfs.writeFileSync({json.dumps(str(marker))}, "ran");\n'
        "export default class Evil {}\n"
    )
    done = syncctl("guest", "build", "guest.ts", "-o", str(tmp_path / "guest.wasm"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()


def test_rust_build_ignores_a_rust_toolchain_file_of_the_crate(tmp_path: Path) -> None:
    """A crate's ``rust-toolchain.toml`` naming its own "toolchain" is not obeyed: the build calls the
    sysroot's ``rustc``, never the rustup proxy (which runs whatever the file names) in the crate."""
    rustup = shutil.which("rustup")
    if rustup is None:
        pytest.skip("needs the rustup proxy this test attacks")
    from syncctl.guest_build import find_rustc

    sysroot = Path(find_rustc()).parent.parent
    # A private rustup home whose default toolchain is the wasm-capable sysroot, so the proxy is chosen.
    home = tmp_path / "rustup"
    (home / "toolchains").mkdir(parents=True)
    (home / "toolchains" / "sys").symlink_to(sysroot)
    (home / "settings.toml").write_text('version = "12"\ndefault_toolchain = "sys"\n')
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "rustc").symlink_to(rustup)
    crate = tmp_path / "crate"
    shutil.copytree(TEMPLATES / "rust", crate)
    marker = tmp_path / "toolchain-ran"
    evil = crate / "evil"
    (evil / "bin").mkdir(parents=True)
    (evil / "lib").mkdir()
    (evil / "bin" / "rustc").write_text(f'#!/bin/sh\necho ran > {marker}\nexec {sysroot}/bin/rustc "$@"\n')
    (evil / "bin" / "rustc").chmod(0o755)
    (crate / "rust-toolchain.toml").write_text(f'[toolchain]\npath = "{evil}"\n')
    env = {"RUSTUP_HOME": str(home), "PATH": f"{bindir}:{os.environ['PATH']}"}
    done = syncctl("guest", "build", ".", "-o", str(tmp_path / "guest.wasm"), env=env, cwd=crate)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()


def test_guest_test_escapes_what_the_guest_chose(tmp_path: Path, cache_dir: Path) -> None:
    """A guest's URL and header values reach the author's terminal escaped: no ESC, BEL or C1 control of
    the guest's gets to clear the screen or retitle the window."""
    import guests
    from guests import call, record

    target = b"http://a.test/\x1b[2J\x1b]0;pwned\x07\xc2\x9b1m"
    headers = b"X-Note: a\xc2\x9b31mb\n"
    calls = call("http_send", 0x100, len(target), 0x300, 3, 0x400, len(headers), 0x600, 0)
    wasm = record(calls, data={0x100: target, 0x300: b"GET", 0x400: headers}, imports=guests.V2_IMPORTS)
    (tmp_path / "esc.wasm").write_bytes(wasm)
    done = syncctl("guest", "test", str(tmp_path / "esc.wasm"), env={"SYNC_CACHE_DIR": str(cache_dir)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not any(c in done.stdout for c in "\x1b\x07\x9b")
    assert "http://a.test/\\x1b[2J\\x1b]0;pwned\\x07\\x9b1m -> -5 (no_fixture)" in done.stdout
    assert "X-Note: a\\x9b31mb" in done.stdout


@pytest.mark.parametrize(
    "text",
    [
        '{"responses": [{"url": "http://a.test/", "status": 1e400}]}',
        '{"responses": [{"url": "http://a.test/", "status": 4294967496}]}',
        '{"responses": [{"url": "http://a.test/", "status": -2}]}',
        '{"responses": [{"url": "http://a.test/", "status": "200"}]}',
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["infinite-status", "status-beyond-i32", "negative-status", "string-status", "deep-nesting"],
)
def test_hostile_fixtures_are_one_error_line(tmp_path: Path, text: str) -> None:
    """A fixtures file with a status no server can send, or nested past the parser's depth, is a
    ``fixtures_error`` on one line, not a traceback and not a status the guest could never see."""
    (tmp_path / "fixtures.json").write_text(text)
    wasm = tmp_path / "guest.wasm"
    wasm.write_bytes(bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "run")))')))
    done = syncctl("guest", "test", str(wasm), "--fixtures", str(tmp_path / "fixtures.json"))
    assert done.returncode == 1
    assert done.stderr.startswith("error:")
    assert "not a fixtures file" in done.stderr
    assert done.stderr.count("\n") == 1


def test_a_source_named_like_an_option_is_refused(tmp_path: Path) -> None:
    """Compilers get the source's bare name: ``-MF.c`` would be read as an option (``-MF .c``), so such a
    name is refused before any compiler runs."""
    (tmp_path / "-MF.c").write_text("void run(void) {}")
    with pytest.raises(GuestBuildFailed, match="must not start with '-'"):
        build(tmp_path / "-MF.c", tmp_path)


def test_build_failure_is_reported(tmp_path: Path) -> None:
    """A compile error is a ``guest_build_failed`` with the compiler's message."""
    (tmp_path / "broken.c").write_text("void run(void) { this is not C }")
    with pytest.raises(GuestBuildFailed, match="compiler failed"):
        build(tmp_path / "broken.c", tmp_path)


# `syncctl guest test` with each example's fixtures (no network)

EXPECTED_FROM_FIXTURES = {
    "conditional": b'# etag: "v7"\nstation,lat,lon\nblindern,59.94,10.72\n',
    "merge": b"station,temperature\ntromso,-3\nkristiansand,6\n",
    "json-to-csv": b'city,country,temperature\nOslo,NO,4.5\n"Lima, centro",PE,19\n',
    "feed-to-json": (
        b'[\n  {"title": "Rain & wind on the coast", "link": "https://news.example.org/1", '
        b'"date": "Tue, 01 Dec 2026 08:00:00 GMT"},\n  {"title": "Snow \\"soon\\" in the north", '
        b'"link": "https://news.example.org/2", "date": "Mon, 30 Nov 2026 18:30:00 GMT"}\n]\n'
    ),
}


@pytest.mark.parametrize("name", list(EXAMPLE_SOURCES))
def test_examples_against_their_fixtures(
    examples: dict[str, bytes], tmp_path: Path, cache_dir: Path, name: str
) -> None:
    """Each example, run by ``syncctl guest test`` in the strict sandbox with its fixtures, prints the
    requests it made and produces the expected payload."""
    wasm = tmp_path / "guest.wasm"
    wasm.write_bytes(examples[name])
    out = tmp_path / "payload"
    folder = EXAMPLES / name
    args = ["guest", "test", str(wasm), "--context", str(folder / "context.json")]
    args += ["--fixtures", str(folder / "fixtures.json"), "-o", str(out), "--allow-env", "API_TOKEN"]
    done = syncctl(*args, env={"SYNC_CACHE_DIR": str(cache_dir)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-> 200" in done.stdout
    if name == "logger":
        header, row = out.read_bytes().decode().splitlines()
        assert header == "time,temperature"
        assert row.endswith(",21.5")
    else:
        assert out.read_bytes() == EXPECTED_FROM_FIXTURES[name]
    if name == "json-to-csv":
        assert "Authorization: (from an operator secret)" in done.stdout
    if name == "conditional":
        again = syncctl(*args[:-4], "--payload", str(out), env={"SYNC_CACHE_DIR": str(cache_dir)})
        assert again.returncode == 0, again.stderr
        assert "-> 304" in again.stdout
        assert "unchanged (the guest said so)" in again.stdout


def test_guest_test_keeps_the_operator_binding_of_a_real_secret(
    examples: dict[str, bytes], tmp_path: Path, cache_dir: Path
) -> None:
    """``guest test --allow-env`` binds a placeholder to the fixtures' hosts, but a real secret from the
    environment keeps the operator's binding, as in production: unbound, the request is refused."""
    wasm = tmp_path / "guest.wasm"
    wasm.write_bytes(examples["json-to-csv"])
    folder = EXAMPLES / "json-to-csv"
    args = ["guest", "test", str(wasm), "--context", str(folder / "context.json")]
    args += ["--fixtures", str(folder / "fixtures.json"), "--allow-env", "API_TOKEN"]
    env = {"SYNC_CACHE_DIR": str(cache_dir), "SYNC_GUEST_SECRET_API_TOKEN": "real-t0k"}
    refused = syncctl(*args, env=env)
    assert refused.returncode == 1
    assert "error=secret_not_bound" in refused.stderr
    assert "requests: 0" in refused.stdout
    bound = syncctl(*args, env={**env, "SYNC_GUEST_SECRET_API_TOKEN_HOSTS": "api.example.org:443"})
    assert bound.returncode == 0, bound.stdout + bound.stderr
    assert "Authorization: (from an operator secret)" in bound.stdout
    assert "real-t0k" not in bound.stdout + bound.stderr


# Real refreshes with `syncctl run` against servers in network namespaces

FEED_ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Lab</title>
<entry><title>Sensor &lt;3&gt; calibrated</title><link href="http://lab.test/3"/><updated>2026-12-01T10:00:00Z</updated></entry>
</feed>
"""


@pytest.fixture(scope="module")
def source() -> Iterator[ServedHost]:
    """One namespace host serving every document the guests fetch."""
    with netns_hosts(["source"]) as hosts:
        host = hosts["source"]
        host.serve(
            {
                "/data.csv": Route.fixed(b"city,temperature\nOslo,4\n"),
                "/stations.csv": Route.fixed(b"station\nblindern\n", headers={"ETag": '"s1"'}),
                "/north.csv": Route.fixed(b"station,t\ntromso,-3\n"),
                "/south.csv": Route.fixed(b"station,t\nkristiansand,6\n"),
                "/sensor.json": Route.fixed(b'{"temperature": 21.5}'),
                "/cities": Route.fixed(b'[{"city": "Oslo", "t": 4}, {"city": "Bergen", "t": 7}]'),
                "/feed.xml": Route.fixed(FEED_ATOM),
            }
        )
        yield host


def refresh(
    tmp_path: Path,
    cache_dir: Path,
    wasm: bytes,
    context: dict[str, str],
    host: ServedHost,
    *extra: str,
    bind: str | None = None,
) -> tuple[dict[str, object], bytes, int]:
    """Pack an archive with this guest and context, refresh it once with ``syncctl run``; outcome, payload,
    generation. The operator supplies ``API_TOKEN`` (``t0k``) bound to ``bind`` (default: ``host``)."""
    (tmp_path / "guest.wasm").write_bytes(wasm)
    (tmp_path / "context.json").write_text(json.dumps(context))
    (tmp_path / "seed").write_bytes(b"")
    archive = tmp_path / "data.sync"
    if not archive.exists():
        packed = syncctl(
            "pack",
            str(tmp_path / "seed"),
            "-o",
            str(archive),
            "--wasm",
            str(tmp_path / "guest.wasm"),
            "--context",
            str(tmp_path / "context.json"),
            "--allow-host",
            host.address,
            *extra,
        )
        assert packed.returncode == 0, packed.stderr
    env = {"SYNC_CACHE_DIR": str(cache_dir), "SYNC_EGRESS_ALLOW_PRIVATE": ALLOW_PRIVATE}
    env |= {"SYNC_GUEST_SECRET_API_TOKEN": "t0k", "SYNC_GUEST_SECRET_API_TOKEN_HOSTS": bind or host.address}
    done = syncctl("run", str(archive), "--json", env=env)
    if bind is None:
        assert done.returncode == 0, done.stdout + done.stderr
    with open_archive(archive) as snap:
        return json.loads(done.stdout), snap.read_payload(), snap.generation


@pytest.mark.parametrize("lang", list(TEMPLATE_SOURCES))
def test_templates_refresh_for_real(
    templates: dict[str, Path], source: ServedHost, tmp_path: Path, cache_dir: Path, lang: str
) -> None:
    """Each template, packed with a context naming the source, commits the body the source serves."""
    context = {"url": source.url("/data.csv")}
    outcome, payload, generation = refresh(tmp_path, cache_dir, templates[lang].read_bytes(), context, source)
    assert (outcome["status"], generation, payload) == ("committed", 1, b"city,temperature\nOslo,4\n")


def test_conditional_example_keeps_the_payload_on_304(
    examples: dict[str, bytes], source: ServedHost, tmp_path: Path, cache_dir: Path
) -> None:
    """First refresh downloads and commits; the second sends If-None-Match, gets 304 and commits nothing."""
    source.log_path.write_text("")
    context = {"url": source.url("/stations.csv")}
    first, payload, generation = refresh(tmp_path, cache_dir, examples["conditional"], context, source)
    assert (first["status"], generation, payload) == ("committed", 1, b'# etag: "s1"\nstation\nblindern\n')
    second, payload, generation = refresh(tmp_path, cache_dir, examples["conditional"], context, source)
    assert (second["status"], generation) == ("unchanged", 1)
    assert second["guest_log"] == ["not modified: payload kept"]
    requests = [r for r in source.requests() if r["path"] == "/stations.csv"]
    assert "If-None-Match" not in requests[0]["headers"]
    assert requests[1]["headers"]["If-None-Match"] == '"s1"'


def test_logger_example_appends_a_row_per_refresh(
    examples: dict[str, bytes], source: ServedHost, tmp_path: Path, cache_dir: Path
) -> None:
    """Two refreshes: a header and two timestamped rows."""
    context = {"url": source.url("/sensor.json"), "field": "temperature"}
    refresh(tmp_path, cache_dir, examples["logger"], context, source)
    _, payload, generation = refresh(tmp_path, cache_dir, examples["logger"], context, source)
    lines = payload.decode().splitlines()
    assert generation == 2
    assert lines[0] == "time,temperature"
    assert [line.split(",")[1] for line in lines[1:]] == ["21.5", "21.5"]
    assert all(line.split(",")[0].isdigit() for line in lines[1:])


def test_merge_example_joins_two_sources(
    examples: dict[str, bytes], source: ServedHost, tmp_path: Path, cache_dir: Path
) -> None:
    """Both tables under one header."""
    context = {"url_a": source.url("/north.csv"), "url_b": source.url("/south.csv")}
    _, payload, _ = refresh(tmp_path, cache_dir, examples["merge"], context, source)
    assert payload == b"station,t\ntromso,-3\nkristiansand,6\n"


@pytest.mark.parametrize(
    ("where", "refusal"),
    [
        # Bound to the source, but the source is plain http: never sent in clear text (the token reaching
        # an https API is ``test_guest_abi_v2.py::test_granted_secret_is_sent_and_never_seen``).
        pytest.param("source", "secret_needs_https", id="plain-http"),
        # The archive lists its own host, but the operator bound the token to another one.
        pytest.param("api.example.com:443", "secret_not_bound", id="bound-elsewhere"),
    ],
)
def test_json_to_csv_example_never_sends_the_operator_secret_where_it_may_not_go(
    examples: dict[str, bytes], source: ServedHost, tmp_path: Path, cache_dir: Path, where: str, refusal: str
) -> None:
    """The request is refused in the parent with its reason, the source never sees it, and the refresh
    commits nothing."""
    context = {"url": source.url("/cities"), "columns": "city,t", "auth": "bearer"}
    before = len(source.requests())
    outcome, _, generation = refresh(
        tmp_path,
        cache_dir,
        examples["json-to-csv"],
        context,
        source,
        "--allow-env",
        "API_TOKEN",
        bind=source.address if where == "source" else where,
    )
    assert outcome["egress_errors"] == [refusal]
    assert generation == 0
    assert len(source.requests()) == before


def test_feed_example_reads_atom(
    examples: dict[str, bytes], source: ServedHost, tmp_path: Path, cache_dir: Path
) -> None:
    """An Atom feed becomes a JSON array with decoded titles."""
    context = {"url": source.url("/feed.xml")}
    _, payload, _ = refresh(tmp_path, cache_dir, examples["feed-to-json"], context, source)
    assert json.loads(payload) == [
        {"title": "Sensor <3> calibrated", "link": "http://lab.test/3", "date": "2026-12-01T10:00:00Z"}
    ]


def test_fixtures_refuse_what_egress_refuses() -> None:
    """``guest test`` answers as production would: a method egress does not allow and a request past the
    budget get -5, so a guest does not pass here and fail for a policy reason later."""
    from syncctl.guest_fixtures import Fixture, FixtureRequester
    from workers.egress import DEFAULT_MAX_REQUESTS

    fixture = Fixture("GET", "http://a.test/", 200, (), b"ok")
    trace = Fixture("TRACE", "http://a.test/", 200, (), b"ok")
    requester = FixtureRequester([fixture, trace])
    assert requester.request("http://a.test/", "TRACE", deadline=0).error_code == "method_not_allowed"
    statuses = [
        requester.request("http://a.test/", "GET", deadline=0).status for _ in range(DEFAULT_MAX_REQUESTS)
    ]
    assert statuses == [200] * (DEFAULT_MAX_REQUESTS - 1) + [-5]
    assert requester.requests[-1].error_code == "too_many_requests"

"""The archive half of ``syncctl`` (keygen, pack, inspect, verify, extract), run as a real subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import stat
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import blake3
import pytest

from sync_format import EMPTY_WASM, SyncBuilder, commit_payload, open_archive
from sync_format.manifest import SIGNATURE_KEYS
from sync_format.signing import SIDECAR_SUFFIX, SigningKey, read_key_file, sign_file
from sync_format.template import content_type_for, extension_of
from sync_format.testing import make_archive, make_manifest

ROOT = Path(__file__).resolve().parents[2]
#: A WebAssembly module that is not the empty one: the empty module plus a custom section named "test".
LOGIC_WASM = EMPTY_WASM + bytes([0, 5, 4]) + b"test"
MIB = 1024 * 1024


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m syncctl`` with the repository importable, capturing bytes."""
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *map(str, args)],
        capture_output=True,
        env=_env(),
        cwd=cwd,
        check=False,
        timeout=120,
    )


def run_json(*args: str | Path) -> dict[str, Any]:
    """Run a ``--json`` command that must succeed and decode its one document."""
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr.decode()
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def assert_one_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """Exit status 1 with exactly one ``error:`` line on stderr and no traceback; returns that line."""
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def file_blake3(path: Path) -> str:
    """BLAKE3 of a file, streamed."""
    hasher = blake3.blake3()
    with path.open("rb") as handle:
        while block := handle.read(MIB):
            hasher.update(block)
    return hasher.hexdigest()


@pytest.fixture
def key(tmp_path: Path) -> Path:
    """A key file written by ``syncctl keygen``."""
    path = tmp_path / "publisher.pem"
    assert run_cli("keygen", path).returncode == 0
    return path


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A small CSV payload file."""
    path = tmp_path / "report.csv"
    path.write_bytes(b"day,value\n2026-01-01,1\n")
    return path


@pytest.fixture
def sparse_payload(tmp_path: Path) -> Path:
    """A 64 MiB sparse file with marker bytes at both ends."""
    path = tmp_path / "big.bin"
    with path.open("wb") as handle:
        handle.write(b"start")
        handle.truncate(64 * MIB)
        handle.seek(64 * MIB - 3)
        handle.write(b"end")
    return path


def test_keygen_writes_private_pem_and_prints_did(tmp_path: Path) -> None:
    """keygen writes a mode-0600 PKCS#8 PEM key and prints the did:key that the key file holds."""
    path = tmp_path / "k.pem"
    result = run_cli("keygen", path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    did = result.stdout.decode().strip()
    assert did.startswith("did:key:z6Mk")
    assert did == read_key_file(path).did


def test_keygen_json_prints_did_and_path(tmp_path: Path) -> None:
    """keygen --json prints one document with the did and the key's absolute path."""
    path = tmp_path / "k.pem"
    doc = run_json("keygen", path)
    assert doc == {"did": read_key_file(path).did, "path": str(path.resolve())}


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    """keygen on an existing file fails with one error line and leaves the file untouched."""
    path = tmp_path / "k.pem"
    path.write_bytes(b"precious")
    line = assert_one_error(run_cli("keygen", path))
    assert "overwrite" in line
    assert path.read_bytes() == b"precious"


def test_pack_inspect_round_trip_with_all_flags(tmp_path: Path, payload: Path) -> None:
    """Every pack flag lands in the archive, and inspect --json reports it back."""
    wasm = tmp_path / "logic.wasm"
    wasm.write_bytes(LOGIC_WASM)
    context = tmp_path / "context.json"
    context.write_bytes(b'{"source": "https://api.example.com/x"}')
    out = tmp_path / "out" / "report.sync"
    result = run_cli(
        "pack",
        payload,
        "-o",
        out,
        "--wasm",
        wasm,
        "--ttl",
        "120",
        "--timeout",
        "7",
        "--allow-host",
        "api.example.com",
        "--allow-host",
        "*.example.org",
        "--allow-host",
        "*",
        "--content-type",
        "text/x-report",
        "--display-ext",
        "tsv",
        "--context",
        context,
        "--created-by",
        "publisher",
    )
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.decode().splitlines()
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: ")
    assert "'*'" in warnings[0]

    doc = run_json("inspect", out)
    manifest = doc["manifest"]
    assert manifest["sync"] == {
        "version": "1.2",
        "content_type": "text/x-report",
        "display_ext": "tsv",
        "variant": "plain",
    }
    assert manifest["meta"]["created_by"] == "publisher"
    assert manifest["meta"]["hash_algo"] == "blake3"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["meta"]["created_at"])
    assert manifest["policy"] == {"ttl": 120, "timeout": 7}
    assert manifest["permissions"]["allow_hosts"] == ["api.example.com", "*.example.org", "*"]
    assert doc["allow_hosts_never_matching"] == ["*"]
    assert [e["name"] for e in doc["entries"]] == [
        "manifest.toml",
        "payload",
        "sync.wasm",
        "context.json",
        "state.json",
    ]
    assert all(e["method"] == "stored" for e in doc["entries"])
    data = payload.read_bytes()
    assert doc["payload"]["size"] == len(data)
    assert doc["payload"]["blake3"] == blake3.blake3(data).hexdigest()
    assert doc["payload"]["blake3_status"] == "trusted"
    assert doc["update_logic"] is True
    assert doc["generation"] == 0
    assert doc["updated_at"] is None
    assert doc["expiry_base"] == manifest["meta"]["created_at"]
    assert doc["expires_at"] is not None
    assert doc["expiry_error"] is None
    assert doc["signature"] == {"present": False}
    with open_archive(out) as snapshot:
        assert snapshot.read_wasm() == LOGIC_WASM
        assert snapshot.read_context() == context.read_bytes()
        with snapshot.open_payload() as reader:
            assert reader.read() == data
        assert doc["payload"]["offset"] == snapshot.payload_offset


def test_pack_defaults_follow_the_store_template(payload: Path, tmp_path: Path) -> None:
    """Without flags pack writes the store template: sync-fs, 3600 s, 30 s, type from the extension."""
    out = tmp_path / "report.sync"
    result = run_cli("pack", payload, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    doc = run_json("inspect", out)
    manifest = doc["manifest"]
    assert manifest["sync"]["content_type"] == "text/csv"
    assert manifest["sync"]["display_ext"] == "csv"
    assert manifest["sync"]["version"] == "1.2"
    assert manifest["meta"]["created_by"] == "sync-fs"
    assert manifest["policy"] == {"ttl": 3600, "timeout": 30}
    assert manifest["permissions"]["allow_hosts"] == []
    assert doc["update_logic"] is False
    assert doc["expired"] is False
    with open_archive(out) as snapshot:
        assert snapshot.read_wasm() == EMPTY_WASM
        assert not snapshot.has_context


def test_pack_takes_inline_context_json(payload: Path, tmp_path: Path) -> None:
    """--context text starting with '{' is stored as context.json byte for byte."""
    out = tmp_path / "report.sync"
    text = '{"city": "Zürich", "n": 3}'
    assert run_cli("pack", payload, "-o", out, "--context", text).returncode == 0
    with open_archive(out) as snapshot:
        assert snapshot.read_context() == text.encode()


def test_pack_rejects_a_context_that_is_not_a_json_object(payload: Path, tmp_path: Path) -> None:
    """A --context that is not a JSON object fails with one error line and writes nothing."""
    out = tmp_path / "report.sync"
    assert_one_error(run_cli("pack", payload, "-o", out, "--context", "{not json"))
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "ext", "content_type"),
    [
        ("report.csv", "csv", "text/csv"),
        ("Photo.JPG", "JPG", "image/jpeg"),
        ("notes.md.sync", "md", "text/markdown"),
        ("archive.tar.gz", "gz", "application/octet-stream"),
        (".bashrc", "", "application/octet-stream"),
        ("README", "", "application/octet-stream"),
        ("x.sync", "", "application/octet-stream"),
        ("Dr. Who notes", "", "application/octet-stream"),
        ("prog.c++", "", "application/octet-stream"),
        ("x.\u00e4", "", "application/octet-stream"),
        ("photo.jpg copy", "", "application/octet-stream"),
        ("x." + "e" * 33, "", "application/octet-stream"),
        ("x." + "e" * 32, "e" * 32, "application/octet-stream"),
    ],
)
def test_template_extension_and_content_type(name: str, ext: str, content_type: str) -> None:
    """display_ext follows Rust's extension rule after stripping .sync, and is none where that text is no
    extension a manifest may carry; content_type the spec's table."""
    assert extension_of(name) == ext
    assert content_type_for(ext) == content_type


def test_inspect_reports_a_ttl_past_year_9999_as_never(tmp_path: Path, payload: Path) -> None:
    """A TTL that saturates past 9999-12-31 is reported as expiring never, and not expired."""
    out = tmp_path / "forever.sync"
    assert run_cli("pack", payload, "-o", out, "--ttl", str(2**63 - 1)).returncode == 0
    doc = run_json("inspect", out)
    assert doc["expires_at"] == "never"
    assert doc["expired"] is False


def test_inspect_reports_an_invalid_base_timestamp_as_expired(tmp_path: Path) -> None:
    """An unparsable created_at gives no expiry instant, the parse error, and expired (fail closed)."""
    path = tmp_path / "odd.sync"
    make_archive(path, manifest=make_manifest(created_at="not a date"))
    doc = run_json("inspect", path)
    assert doc["expires_at"] is None
    assert "not a date" in doc["expiry_error"]
    assert doc["expired"] is True


def test_inspect_marks_a_missing_state_hash_unknown(tmp_path: Path) -> None:
    """Without state.json inspect shows no payload hash and says it is unknown; verify still passes."""
    path = tmp_path / "plain.sync"
    make_archive(path, state=False)
    doc = run_json("inspect", path)
    assert doc["payload"]["blake3"] is None
    assert doc["payload"]["blake3_status"] == "unknown"
    assert run_cli("verify", path).returncode == 0


def test_signed_archive_verifies(tmp_path: Path, payload: Path, key: Path) -> None:
    """pack --sign writes a manifest signature that verify accepts, binding payload and sync.wasm."""
    out = tmp_path / "signed.sync"
    result = run_cli("pack", payload, "-o", out, "--sign", key)
    assert result.returncode == 0, result.stderr
    did = read_key_file(key).did
    doc = run_json("verify", out)
    assert doc["ok"] is True
    assert doc["signature"]["ok"] is True
    assert doc["signature"]["valid"] is True
    assert doc["signature"]["extension_valid"] is True
    assert doc["signature"]["covers_wasm"] is True
    assert doc["signature"]["signer"] == did
    assert doc["signature"]["payload_hash"] == "blake3:" + blake3.blake3(payload.read_bytes()).hexdigest()
    summary = run_json("inspect", out)["signature"]
    assert summary["present"] is True
    assert summary["signer"] == did
    assert summary["binds_payload"] is True
    assert summary["binds_wasm"] is True


def test_tampered_payload_of_signed_archive_fails_verify(tmp_path: Path, payload: Path, key: Path) -> None:
    """Flipping a payload byte in place of a signed archive without logic makes verify exit 1."""
    out = tmp_path / "signed.sync"
    assert run_cli("pack", payload, "-o", out, "--sign", key).returncode == 0
    with open_archive(out) as snapshot:
        offset = snapshot.payload_offset
    with out.open("r+b") as handle:
        handle.seek(offset)
        first = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([first[0] ^ 0xFF]))
    result = run_cli("verify", out, "--json")
    line = assert_one_error(result)
    assert "payload" in line
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    failed = {c["name"] for c in doc["checks"] if not c["ok"]}
    assert {"payload crc32", "signature"} <= failed


def test_refreshed_payload_of_signed_no_logic_archive_fails_verify(
    tmp_path: Path, payload: Path, key: Path
) -> None:
    """A swapped payload breaks a signature binding it; verify says it was refreshed at generation 1."""
    out = tmp_path / "signed.sync"
    assert run_cli("pack", payload, "-o", out, "--sign", key).returncode == 0
    commit_payload(out, 0, b"replaced,payload\n")
    result = run_cli("verify", out)
    line = assert_one_error(result)
    assert "refreshed at generation 1" in line
    assert "refreshed at generation 1" in result.stdout.decode()


def test_signed_self_updating_archive_verifies_after_refresh(
    tmp_path: Path, payload: Path, key: Path
) -> None:
    """With update logic the signature leaves the payload unbound, so a committed refresh still verifies."""
    wasm = tmp_path / "logic.wasm"
    wasm.write_bytes(LOGIC_WASM)
    out = tmp_path / "live.sync"
    assert run_cli("pack", payload, "-o", out, "--wasm", wasm, "--sign", key).returncode == 0
    assert run_json("inspect", out)["signature"]["binds_payload"] is False
    commit_payload(out, 0, b"fresh,data\n")
    result = run_cli("verify", out, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    assert doc["generation"] == 1
    assert doc["signature"]["payload_hash"] is None
    assert doc["signature"]["covers_wasm"] is True


def test_swapped_wasm_breaks_the_extension_signature(tmp_path: Path, payload: Path, key: Path) -> None:
    """Replacing sync.wasm of a signed archive keeps v1 valid but fails sync-ext/1, so verify exits 1."""
    wasm = tmp_path / "logic.wasm"
    wasm.write_bytes(LOGIC_WASM)
    signed = tmp_path / "live.sync"
    assert run_cli("pack", payload, "-o", signed, "--wasm", wasm, "--sign", key).returncode == 0
    with open_archive(signed) as snapshot:
        manifest_bytes = snapshot.manifest_bytes
    forged = tmp_path / "forged.sync"
    builder = SyncBuilder().with_manifest_bytes(manifest_bytes).with_payload_file(payload)
    builder.with_wasm_bytes(EMPTY_WASM + bytes([0, 5, 4]) + b"evil").write_to(forged)
    result = run_cli("verify", forged, "--json")
    assert_one_error(result)
    doc = json.loads(result.stdout)
    assert doc["signature"]["valid"] is True
    assert doc["signature"]["extension_valid"] is False


def test_require_signature_fails_when_the_extension_was_stripped_and_wasm_swapped(
    tmp_path: Path, payload: Path, key: Path
) -> None:
    """Deleting the sync-ext/1 keys leaves v1 valid, so a swapped sync.wasm passed as "signed" with a mere
    warning; asked to require a signature, verify now fails unless the update logic is signed too."""
    wasm = tmp_path / "logic.wasm"
    wasm.write_bytes(LOGIC_WASM)
    signed = tmp_path / "live.sync"
    assert run_cli("pack", payload, "-o", signed, "--wasm", wasm, "--sign", key).returncode == 0
    with open_archive(signed) as snapshot:
        text = snapshot.manifest_bytes.decode()
    extension_keys = SIGNATURE_KEYS[SIGNATURE_KEYS.index("extension") :]  # the keys v1 does not sign
    stripped = "".join(
        line for line in text.splitlines(keepends=True) if line.split(" = ")[0].strip() not in extension_keys
    )
    forged = tmp_path / "forged.sync"
    builder = SyncBuilder().with_manifest_bytes(stripped.encode()).with_payload_file(payload)
    builder.with_wasm_bytes(EMPTY_WASM + bytes([0, 5, 4]) + b"evil").write_to(forged)
    plain = run_cli("verify", forged)
    assert plain.returncode == 0  # v1 is valid: a warning only, as before
    assert b"does not cover sync.wasm" in plain.stderr
    required = run_cli("verify", forged, "--require-signature")
    assert required.returncode == 1
    errors = [line for line in required.stderr.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "the update logic is not signed" in errors[0]


def test_require_signature_fails_on_unsigned_archive(archive: Path) -> None:
    """verify passes an unsigned archive, but --require-signature makes the missing signature exit 1."""
    assert run_cli("verify", archive).returncode == 0
    line = assert_one_error(run_cli("verify", archive, "--require-signature"))
    assert "signature" in line


def test_detached_signature_is_verified(archive: Path) -> None:
    """A sidecar <archive>.sig.json is checked, satisfies --require-signature, and fails after a swap."""
    signer = SigningKey.generate()
    sidecar = archive.with_name(archive.name + SIDECAR_SUFFIX)
    sidecar.write_text(json.dumps(sign_file(archive, signer, 1_700_000_000)))
    result = run_cli("verify", archive, "--require-signature", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["detached_signature"]["valid"] is True
    assert doc["detached_signature"]["signer"] == signer.did
    commit_payload(archive, 0, b"changed")
    line = assert_one_error(run_cli("verify", archive))
    assert "detached signature" in line


def test_extract_to_file_and_stdout_is_byte_identical(tmp_path: Path) -> None:
    """extract -o FILE, -o - and the default all yield exactly the payload bytes, leaving no temp file."""
    data = os.urandom(3 * MIB + 17)
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    out = tmp_path / "blob.sync"
    assert run_cli("pack", source, "-o", out).returncode == 0
    target_dir = tmp_path / "x"
    target_dir.mkdir()
    target = target_dir / "blob.bin"
    target.write_bytes(b"old content is replaced")
    result = run_cli("extract", out, "-o", target)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == data
    assert sorted(p.name for p in target_dir.iterdir()) == ["blob.bin"]
    for args in (("extract", out), ("extract", out, "-o", "-")):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == data


def test_extract_into_a_closed_pipe_reports_one_error(tmp_path: Path) -> None:
    """When the reader of stdout goes away, extract exits 1 with one error line instead of a traceback."""
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(4 * MIB))
    out = tmp_path / "blob.sync"
    assert run_cli("pack", source, "-o", out).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncctl", "extract", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.read(10)
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert_one_error(subprocess.CompletedProcess(proc.args, proc.returncode, b"", stderr))


def _malformed(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.sync"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        make_archive(path, payload=os.urandom(2048))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path  # "missing": never created


@pytest.mark.parametrize("command", ["inspect", "verify", "extract"])
@pytest.mark.parametrize("kind", ["random", "missing", "truncated"])
def test_malformed_input_fails_with_one_error_line(tmp_path: Path, command: str, kind: str) -> None:
    """Random bytes, a missing file or a truncated archive exit 1 with one error line and no traceback."""
    path = _malformed(kind, tmp_path)
    line = assert_one_error(run_cli(command, path))
    assert path.name in line


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["pack", "file"],
        ["inspect"],
        ["pack", "file", "-o", "out.sync", "--ttl", "soon"],
        ["pack", "file", "-o", "out.sync", "--timeout", "-5"],
        ["pack", "file", "-o", "out.sync", "--sign", "k.pem", "--created-by", "me"],
        ["verify", "a.sync", "--no-such-flag"],
    ],
    ids=[
        "no-command",
        "unknown-command",
        "pack-no-output",
        "inspect-no-archive",
        "ttl-not-int",
        "negative-timeout",
        "sign-and-created-by",
        "unknown-flag",
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, argv: list[str]) -> None:
    """Usage errors exit with status 2 and a usage message, never a traceback."""
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert b"usage:" in result.stderr
    assert b"Traceback" not in result.stderr


def test_version_and_verbose_flags(archive: Path) -> None:
    """--version prints the program name and version; -v is accepted before and after the command."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode().startswith("syncctl ")
    assert run_cli("-v", "inspect", archive, "-v").returncode == 0


def test_large_sparse_payload_packs_and_extracts(tmp_path: Path, sparse_payload: Path) -> None:
    """A 64 MiB payload is streamed into an archive and back out unchanged, with no progress bar off a TTY."""
    out = tmp_path / "big.sync"
    result = run_cli("pack", sparse_payload, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    expected = file_blake3(sparse_payload)
    doc = run_json("inspect", out)
    assert doc["payload"]["size"] == 64 * MIB
    assert doc["payload"]["blake3"] == expected
    extracted = tmp_path / "big.out"
    result = run_cli("extract", out, "-o", extracted)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert extracted.stat().st_size == 64 * MIB
    assert file_blake3(extracted) == expected
    assert run_cli("verify", out).returncode == 0


def run_with_terminal_stderr(args: list[str | Path], stdout: int | IO[bytes]) -> tuple[int, bytes]:
    """Run the CLI with stderr on a pseudo-terminal; returns the exit status and what it drew there."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncctl", *map(str, args)],
            stdout=stdout,
            stderr=slave,
            env=_env(TERM="xterm-256color"),
        )
        os.close(slave)
        slave = -1
        drawn = bytearray()
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "the command stalled"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        return proc.wait(timeout=120), bytes(drawn)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_progress_bar_is_drawn_on_a_terminal(tmp_path: Path, sparse_payload: Path) -> None:
    """With stderr on a terminal and a payload over 8 MiB, pack and extract draw a bar; stdout stays exact."""
    out = tmp_path / "big.sync"
    status, drawn = run_with_terminal_stderr(["pack", sparse_payload, "-o", out], subprocess.DEVNULL)
    assert status == 0
    assert b"packing payload" in drawn
    extracted = tmp_path / "big.out"
    with extracted.open("wb") as sink:
        status, drawn = run_with_terminal_stderr(["extract", out], sink)
    assert status == 0
    assert b"extracting payload" in drawn
    assert file_blake3(extracted) == file_blake3(sparse_payload)


def test_run_commits_a_refresh_in_the_sandbox(tmp_path: Path) -> None:
    """``syncctl run`` runs the guest in the sandbox, commits its payload and reports every layer active."""
    import wasmtime

    from sync_format.testing import make_archive, make_manifest

    guest = """(module
      (import "host" "payload_write" (func $write (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1) (data (i32.const 0) "fresh")
      (func (export "run") (drop (call $write (i32.const 0) (i32.const 5) (i32.const 0)))))"""
    archive = tmp_path / "a.sync"
    make_archive(archive, b"stale", manifest=make_manifest(timeout=5), wasm=wasmtime.wat2wasm(guest))
    env = {**os.environ, "SYNC_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", "run", str(archive), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["status"], doc["generation"]) == ("committed", 1)
    assert all(layer["active"] for layer in doc["sandbox"]["layers"])
    extracted = subprocess.run(
        [sys.executable, "-m", "syncctl", "extract", str(archive)], capture_output=True, check=True, env=env
    )
    assert extracted.stdout == b"fresh"


def test_run_reports_a_failing_guest(tmp_path: Path) -> None:
    """A guest that loops forever makes ``syncctl run`` exit 1 with one ``error:`` line naming the code."""
    import wasmtime

    from sync_format.testing import make_archive, make_manifest

    archive = tmp_path / "a.sync"
    loop = '(module (func (export "run") (loop (br 0))))'
    make_archive(archive, b"stale", manifest=make_manifest(timeout=1), wasm=wasmtime.wat2wasm(loop))
    env = {**os.environ, "SYNC_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", "run", str(archive)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    # Fuel is sized to the 1 s budget, so which limit stops the loop first depends on how busy the machine is.
    assert re.match(r"error: guest_(out_of_fuel|timeout): ", errors[0]), errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--content-type", "text/html\r\nSet-Cookie: pwned=1"),
        ("--content-type", "text/plain\x1b[8m"),
        ("--display-ext", "/../../tmp/pwn"),
        ("--display-ext", "csv\u202e"),
    ],
    ids=["crlf-content-type", "esc-content-type", "path-display-ext", "bidi-display-ext"],
)
def test_pack_refuses_unservable_content_type_and_display_ext(
    payload: Path, tmp_path: Path, flag: str, value: str
) -> None:
    """``syncctl pack`` refuses what the strict reader would (issue 11 finding 4), with one error line that
    shows the value escaped, and writes nothing."""
    out = tmp_path / "report.sync"
    line = assert_one_error(run_cli("pack", payload, "-o", out, flag, value))
    assert flag.removeprefix("--").replace("-", "_") in line
    assert not set(line) & {"\x1b", "\u202e", "\r"}
    assert not out.exists()


def test_verify_escapes_what_the_archive_author_wrote(tmp_path: Path) -> None:
    """``syncctl verify`` prints the signer and the extension's name escaped: a ``created_by`` holding a
    newline and terminal sequences used to print a line of its own (a forged "ok" above a hidden
    "NOT intact")."""
    from sync_format import Manifest
    from sync_format.testing import REFERENCE_MANIFEST_TOML, make_archive

    forged = "did:key:z6Mk\x1b[8m\n  ok    signature: signer did:key:z6Mk-trusted, v1 valid\nintact\u202e"
    text = REFERENCE_MANIFEST_TOML.replace('created_by = "builder"', "created_by = " + json.dumps(forged))
    text += (
        '\n[signature]\nalgo = "Ed25519"\nmanifest_hash = "blake3:00"\ntimestamp = "2020-01-01T00:00:00Z"\n'
        'value = "AA=="\nextension = "x\\u001b[8m"\n'
    )
    path = tmp_path / "forged.sync"
    make_archive(path, b"x", manifest=Manifest.from_toml(text))
    result = run_cli("verify", path)
    shown = result.stdout.decode()
    assert result.returncode == 1
    assert not set(shown) & {"\x1b", "\u202e", "\r"}
    assert [line for line in shown.splitlines() if line.strip().startswith("ok    signature")] == []
    assert shown.splitlines()[-1] == "NOT intact"
    assert "intact" not in shown.splitlines()[:-1]


def test_inspect_escapes_what_the_archive_author_wrote(tmp_path: Path) -> None:
    """``syncctl inspect`` shows control and bidi characters of manifest strings as escapes, in text and in
    JSON: ``\\x1b[8m`` used to hide an allow-list entry from the person reviewing it (finding 5)."""
    from sync_format.testing import make_archive, make_manifest

    path = tmp_path / "sneaky.sync"
    manifest = make_manifest(
        created_by="me\x1b[2J\u202eevil",
        allow_hosts=("ok.example", "\x1b[8mevil.example\x1b[0m", "x\nallow_hosts:  (none)"),
    )
    make_archive(path, b"x", manifest=manifest)
    text = run_cli("inspect", path)
    assert text.returncode == 0, text.stderr
    shown = text.stdout.decode()
    assert not set(shown) & {"\x1b", "\u202e", "\r"}
    assert "\\x1b[8mevil.example\\x1b[0m" in shown
    assert "me\\x1b[2J\\u202eevil" in shown
    assert [line for line in shown.splitlines() if line.startswith("allow_hosts:")] == [
        "allow_hosts:  ok.example, \\x1b[8mevil.example\\x1b[0m, x\\x0aallow_hosts:  (none)"
    ]
    as_json = run_cli("inspect", path, "--json")
    assert "\u202e" not in as_json.stdout.decode()
    doc = json.loads(as_json.stdout)
    assert doc["manifest"]["meta"]["created_by"] == "me\x1b[2J\u202eevil"

"""``state.json`` decoding: the one-match path for what writers write agrees with the JSON path everywhere.

``ArchiveState.from_json`` reads the exact bytes ``to_json`` writes with one regular expression and leaves
everything else to the general JSON path; these properties hold the two to the same answer (the same state,
or both a ``MalformedArchive``) for written states at and past every range limit, for other JSON spellings
of them, and for byte-level damage of written states.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sync_format.errors import MalformedArchive
from sync_format.state import _WRITTEN, ArchiveState

PROPERTY = settings(max_examples=400, deadline=None, derandomize=True, database=None)

_INTS = st.one_of(
    st.sampled_from([0, 1, 9, 10, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 10**19 - 1, 10**19, -1]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
_TEXT = st.one_of(
    st.none(),
    st.sampled_from(["", "2026-01-01T00:00:00Z", 'a"b', "a\\b", "caf\u00e9", "\x1f", "\x7f"]),
    st.text(max_size=30),
)
_HEX = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=63, max_size=65),
)


def _decided(decode: object, data: bytes) -> tuple[str, object]:
    try:
        return "state", decode(data)  # type: ignore[operator]
    except MalformedArchive:
        return "refused", None


def _both_agree(data: bytes) -> None:
    assert _decided(ArchiveState.from_json, data) == _decided(ArchiveState._from_document, data), data


@PROPERTY
@given(generation=_INTS, size=_INTS, crc=_INTS, updated_at=_TEXT, digest=_HEX)
def test_written_states_decode_the_same_on_both_paths(
    generation: int, size: int, crc: int, updated_at: str | None, digest: str
) -> None:
    doc = {
        "generation": generation,
        "payload_blake3": digest,
        "payload_crc32": crc,
        "payload_size": size,
        "updated_at": updated_at,
    }
    _both_agree(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())  # as to_json writes
    _both_agree(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    _both_agree(json.dumps(doc, sort_keys=True).encode())  # other spacing: the JSON path alone
    _both_agree(json.dumps(doc, separators=(",", ":")).encode()[::-1])  # garbage


@PROPERTY
@given(st.data())
def test_damaged_written_states_decode_the_same_on_both_paths(data: st.DataObject) -> None:
    written = ArchiveState(
        data.draw(st.integers(0, 2**63 - 1)),
        data.draw(st.one_of(st.none(), st.just("2026-02-03T04:05:06Z"))),
        data.draw(st.integers(0, 2**63 - 1)),
        data.draw(st.integers(0, 2**32 - 1)),
        "0123456789abcdef" * 4,
    ).to_json()
    at = data.draw(st.integers(0, len(written)))
    byte = bytes([data.draw(st.integers(0, 255))])
    _both_agree(written[:at] + byte + written[at + 1 :])  # one byte replaced (or appended at the end)
    _both_agree(written[:at] + byte + written[at:])  # one byte inserted
    _both_agree(written[:at] + written[at + 1 :])  # one byte removed


def test_what_writers_write_takes_the_one_match_path() -> None:
    """The fast path is the one taken for written states (else the properties above would prove nothing)."""
    for state in (
        ArchiveState(),
        ArchiveState(0, None, 0, 0, "f" * 64),
        ArchiveState(2**63 - 1, "2026-01-01T00:00:00Z", 2**63 - 1, 2**32 - 1, "0" * 64),
    ):
        if state.payload_blake3 is None:
            continue
        assert _WRITTEN.fullmatch(state.to_json()) is not None
        assert ArchiveState.from_json(state.to_json()) == state

"""Request conditions: the ``If`` header parsed strictly (``mountd.http.if_header``); ``If-Match`` and ``If``
of a write to a name with no resource, and the lock a LOCK of a new name asks for
(``mountd.writable.conditions``), on a real writable mountd on 127.0.0.1.

Before: a malformed ``If`` was taken for "no condition"; a tagged list naming a resource by its absolute URL
was skipped; a PUT or MKCOL of a new name went ahead whatever ``If-Match`` or ``If`` said; and a LOCK of a new
name under a folder someone else had locked left an empty archive behind its 423.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dav_client import lock_body, request
from hypothesis import given, settings
from hypothesis import strategies as st
from recording_hook import RecordingHook
from store_manifests import csv_manifest

from broker import Settings
from mountd import serve_background
from mountd.http.if_header import (
    Condition,
    IfList,
    MalformedIf,
    holds_where_nothing_is,
    parse_if,
    wsgidav_form,
)
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult, OwnershipSection

AddArchive = Callable[..., BuildResult]
TOKEN = "opaquelocktoken:0x" + "ab" * 32
ETAG = "5c1a84522d9475a0f30b77b54f9c2b9599565b23bc761b6f5a9389810e200717"


# --- the parser -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"(<{TOKEN}>)", (IfList(None, (Condition(False, "locktoken", TOKEN),)),)),
        ("(Not <DAV:no-lock>)", (IfList(None, (Condition(True, "locktoken", "DAV:no-lock"),)),)),
        ("(not<DAV:no-lock>)", (IfList(None, (Condition(True, "locktoken", "DAV:no-lock"),)),)),
        (f'(["{ETAG}"])', (IfList(None, (Condition(False, "entity", ETAG),)),)),
        ('([W/"weak"])', (IfList(None, (Condition(False, "entity", "W/weak"),)),)),
        ("([bare-tag])", (IfList(None, (Condition(False, "entity", "bare-tag"),)),)),
        (
            f'  (<{TOKEN}> ["{ETAG}"])\t(Not <DAV:no-lock> ["x"])  ',
            (
                IfList(None, (Condition(False, "locktoken", TOKEN), Condition(False, "entity", ETAG))),
                IfList(None, (Condition(True, "locktoken", "DAV:no-lock"), Condition(False, "entity", "x"))),
            ),
        ),
        (
            f"<http://127.0.0.1:8080/a%20b.csv> (<{TOKEN}>) </d/> (Not <DAV:no-lock>)",
            (
                IfList("/a b.csv", (Condition(False, "locktoken", TOKEN),)),
                IfList("/d/", (Condition(True, "locktoken", "DAV:no-lock"),)),
            ),
        ),
        # litmus's complex_cond_put, cut off by its 200-byte buffer: the lists it finished
        (
            f'(<{TOKEN}> ["{ETAG}"]) (Not <DAV:no-lock> ["{ETAG[:20]}',
            (IfList(None, (Condition(False, "locktoken", TOKEN), Condition(False, "entity", ETAG))),),
        ),
    ],
    ids=[
        "token",
        "not",
        "not-lowercase-no-space",
        "etag",
        "weak-etag",
        "bare-etag",
        "two-lists",
        "tagged",
        "last-list-cut-off",
    ],
)
def test_well_formed_if_headers_parse(text: str, expected: tuple[IfList, ...]) -> None:
    """RFC 4918 §10.4.2's forms parse to their lists (tags to their decoded paths)."""
    assert parse_if(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage((",
        "()",
        "(Not)",
        "(<a b>)",
        "(<>)",
        "(<urn:x>",
        "(<urn:x>) garbage",
        "(<urn:x>) <http://h/a> (<urn:y>)",
        "<http://h/a> (<urn:x>) (<urn:y>) <http://h/b>",
        "<http://h/a>",
        "<relative/path> (<urn:x>)",
        "<http://[::1/a> (<urn:x>)",
        '(["x"y])',
        "([])",
        "([a b])",
        "(urn:x)",
        '(["cut',
        "<http://h/a> (<urn:x",
        # a tag whose only list is cut off: dropping it would drop every condition on its resource
        '</other> (<DAV:no-lock>) </a.txt> (["bogus"',
        "(" * 10 + "x",
    ],
)
def test_malformed_if_headers_are_refused(text: str) -> None:
    """Anything else is malformed, a header cut off before any complete list too."""
    with pytest.raises(MalformedIf):
        parse_if(text)


def test_a_cut_off_list_is_left_out_only_where_that_is_stricter() -> None:
    """Untagged, or after a complete list of the same tag: the finished lists are kept."""
    assert parse_if("(<urn:a>) (<urn:b") == (IfList(None, (Condition(False, "locktoken", "urn:a"),)),)
    tagged = parse_if("</a> (<urn:a>) (<urn:b")
    assert tagged == (IfList("/a", (Condition(False, "locktoken", "urn:a"),)),)


def test_raw_utf8_in_the_header_is_read_as_utf8() -> None:
    """cheroot hands header bytes over as Latin-1; a tag naming ``/ä.csv`` unencoded names that resource, as
    its percent-encoded form does."""
    raw = '</d/ä.csv> (["x"])'.encode().decode("latin-1")
    assert parse_if(raw)[0].resource == "/d/ä.csv"
    assert parse_if('</d/%C3%A4.csv> (["x"])')[0].resource == "/d/ä.csv"


def test_the_parse_is_handed_to_wsgidav_keyed_as_its_resources_name_themselves() -> None:
    """Untagged lists under ``*``; tagged ones under the quoted path, with and without a trailing slash
    (wsgidav's ``get_ref_url`` of a folder ends with one); every state token, negated ones too."""
    by_resource, tokens = wsgidav_form(parse_if(f"(<{TOKEN}>) (Not <DAV:no-lock>)"))
    assert by_resource == {"*": [[(True, "locktoken", TOKEN)], [(False, "locktoken", "DAV:no-lock")]]}
    assert tokens == [TOKEN, "DAV:no-lock"]
    by_resource, tokens = wsgidav_form(parse_if(f'<http://h:1/a%20b/> (<{TOKEN}>) </> (Not <urn:y> ["e"])'))
    assert by_resource == {
        "/a%20b": [[(True, "locktoken", TOKEN)]],
        "/a%20b/": [[(True, "locktoken", TOKEN)]],
        "/": [[(False, "locktoken", "urn:y"), (True, "entity", "e")]],
    }
    assert tokens == [TOKEN, "urn:y"]


@pytest.mark.parametrize(
    ("text", "tokens", "holds"),
    [
        (f"(<{TOKEN}>)", frozenset(), False),
        (f"(<{TOKEN}>)", frozenset({TOKEN}), True),
        (f"(Not <{TOKEN}>)", frozenset(), True),
        ('(["x"])', frozenset(), False),
        ('(Not ["x"])', frozenset(), True),
        ('(["x"]) (Not <DAV:no-lock>)', frozenset(), True),
        ("</other> (<urn:x>)", frozenset(), True),
        ("<http://h/d/new.csv> (<urn:x>)", frozenset(), False),
        ("</d/new.csv/> (<urn:x>)", frozenset({"urn:x"}), True),
    ],
)
def test_conditions_where_nothing_is(text: str, tokens: frozenset[str], holds: bool) -> None:
    """No entity tag is current where nothing is; a state token is when a lock covering the name has it;
    lists about other resources do not apply."""
    assert holds_where_nothing_is(parse_if(text), "/d/new.csv", tokens) is holds


# --- on a writable mountd --------------------------------------------------------------------------------


@pytest.fixture
def wurl(store: Path, hook: RecordingHook, add_archive: AddArchive) -> Iterator[str]:
    """A writable mountd over a store with ``a.csv`` and the folder ``d/``."""
    editable = dataclasses.replace(csv_manifest(), ownership=OwnershipSection(write_allowed=True))
    add_archive("a.csv.sync", b"a,b\n1,2\n", manifest=editable)
    (store / "d").mkdir()
    policy = WritePolicy(store, max_upload=1 << 20)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, writable=policy) as handle:
        yield handle.mount_url


def _lock(url: str, path: str, scope: str = "exclusive", **headers: str) -> tuple[int, str]:
    answer = request(
        url,
        "LOCK",
        path,
        headers={"Depth": "infinity", "Content-Type": "application/xml", **headers},
        body=lock_body(scope),
    )
    return answer.status, (answer.header("Lock-Token") or "").strip("<>")


def test_a_malformed_if_header_is_answered_400_and_changes_nothing(wurl: str, store: Path) -> None:
    """Read or write, a malformed ``If`` gets 400 with the reason; nothing is created or replaced."""
    before = (store / "a.csv.sync").read_bytes()
    for method, path, body in [
        ("GET", "/a.csv", None),
        ("PUT", "/a.csv", b"x\n"),
        ("PUT", "/new.csv", b"x\n"),
        ("MKCOL", "/e/", None),
        ("DELETE", "/a.csv", None),
    ]:
        answer = request(wurl, method, path, headers={"If": "garbage(("}, body=body)
        assert answer.status == 400, (method, path)
        assert b"malformed If header" in answer.body
    assert (store / "a.csv.sync").read_bytes() == before
    assert not (store / "new.csv.sync").exists()
    assert not (store / "e").exists()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-Match": '"abc"'}, 412),
        ({"If-Match": "*"}, 412),
        ({"If": "(<urn:uuid:nothing-locked>)"}, 412),
        ({"If": '(["abc"])'}, 412),
        ({"If": "<http://127.0.0.1{path}> (<urn:uuid:x>)"}, 412),
        ({"If-None-Match": "*"}, 201),
        ({"If": "(Not <urn:uuid:nothing-locked>)"}, 201),
        ({"If": "</other.csv> (<urn:uuid:x>)"}, 201),
        ({"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 201),
    ],
    ids=[
        "if-match-etag",
        "if-match-any",
        "if-token",
        "if-etag",
        "if-tagged-absolute",
        "if-none-match-any",
        "if-not-token",
        "if-about-another",
        "if-unmodified-since",
    ],
)
def test_put_and_mkcol_of_a_new_name_honour_their_conditions(
    wurl: str, store: Path, headers: dict[str, str], status: int
) -> None:
    """A condition false where nothing is (``If-Match``, an ``If`` list needing an entity or a lock) is
    answered 412 and creates nothing; one that holds there creates the file or folder."""
    for method, path, body in [("PUT", "/new.csv", b"x\n"), ("MKCOL", "/e/", None)]:
        about = {name: value.format(path=path) for name, value in headers.items()}
        assert request(wurl, method, path, headers=about, body=body).status == status, method
    assert (store / "new.csv.sync").exists() is (status == 201)
    assert (store / "e").is_dir() is (status == 201)


def test_a_tag_in_raw_utf8_names_its_resource(wurl: str, store: Path) -> None:
    """A tag naming the new name ``/ä.csv`` in raw UTF-8 bytes applies to it (412 with an entity tag), as
    the percent-encoded tag does; it was matched against nothing, and the PUT went ahead."""
    raw = {"If": '</ä.csv> (["abc"])'.encode().decode("latin-1")}
    assert request(wurl, "PUT", "/%C3%A4.csv", headers=raw, body=b"x\n").status == 412
    encoded = {"If": '</%C3%A4.csv> (["abc"])'}
    assert request(wurl, "PUT", "/%C3%A4.csv", headers=encoded, body=b"x\n").status == 412
    assert not (store / "ä.csv.sync").exists()


def test_a_tagged_list_naming_an_existing_archive_by_its_url_is_evaluated(wurl: str, store: Path) -> None:
    """``<http://host/a.csv> (["old etag"])`` on a PUT of ``/a.csv`` is 412 (wsgidav keyed the list by the
    URL's text and never found it: the PUT went ahead); with the current entity tag it replaces the file."""
    etag = request(wurl, "HEAD", "/a.csv").header("ETag") or ""
    stale = {"If": f'<{wurl}/a.csv> (["{"0" * 64}"])'}
    assert request(wurl, "PUT", "/a.csv", headers=stale, body=b"new\n").status == 412
    current = {"If": f"<{wurl}/a.csv> ([{etag}])"}
    assert request(wurl, "PUT", "/a.csv", headers=current, body=b"new\n").status == 204
    assert request(wurl, "GET", "/a.csv").body == b"new\n"


def test_the_holder_of_a_folders_lock_still_creates_in_it(wurl: str, store: Path) -> None:
    """The token of a Depth infinity lock on ``d/`` makes ``If: (<token>)`` hold for a new name in it
    (untagged, or tagged with the folder), for PUT and MKCOL; without it the lock refuses (423)."""
    status, token = _lock(wurl, "/d/")
    assert status == 200
    assert token
    assert request(wurl, "PUT", "/d/one.csv", headers={"If": f"(<{token}>)"}, body=b"1\n").status == 201
    tagged = {"If": f"<{wurl}/d/> (<{token}>)"}
    assert request(wurl, "PUT", "/d/two.csv", headers=tagged, body=b"2\n").status == 201
    assert request(wurl, "MKCOL", "/d/sub/", headers={"If": f"(<{token}>)"}).status == 201
    assert request(wurl, "PUT", "/d/three.csv", body=b"3\n").status == 423
    assert sorted(p.name for p in (store / "d").iterdir()) == ["one.csv.sync", "sub", "two.csv.sync"]


@pytest.mark.parametrize("scope", ["exclusive", "shared"])
def test_a_lock_of_a_new_name_in_a_locked_folder_creates_nothing_when_refused(
    wurl: str, store: Path, scope: str
) -> None:
    """A LOCK of a new name under a folder someone else locked (Depth infinity) is answered 423 and leaves no
    empty archive there (wsgidav made it, then refused the lock): without the folder's token whatever the
    scope; with it, still 423 under an exclusive lock (it conflicts even for its holder), granted (201, the
    empty archive made) under a shared one for a shared lock."""
    status, token = _lock(wurl, "/d/", scope)
    assert status == 200
    assert token
    assert _lock(wurl, "/d/new.csv", "exclusive")[0] == 423
    assert _lock(wurl, "/d/new.csv", "shared")[0] == 423
    assert _lock(wurl, "/d/new.csv", "exclusive", If=f"(<{token}>)")[0] == 423
    assert list((store / "d").iterdir()) == []
    granted = _lock(wurl, "/d/new.csv", "shared", If=f"(<{token}>)")[0]
    assert granted == (201 if scope == "shared" else 423)
    assert (store / "d" / "new.csv.sync").exists() is (scope == "shared")
    assert _lock(wurl, "/free.csv", "exclusive")[0] == 201  # where nothing is locked, as before
    assert (store / "free.csv.sync").exists()


def test_a_lock_of_a_new_name_in_a_folder_locked_depth_0_needs_the_folders_token(
    wurl: str, store: Path
) -> None:
    """A Depth 0 lock protects the folder's membership (RFC 4918 §7.5): a LOCK of a new name in it without
    the folder's token is 423 and makes nothing, as a PUT or MKCOL is (it made the member before); with
    the token it is granted (the folder's Depth 0 lock does not conflict with a lock on a member)."""
    answer = request(
        wurl, "LOCK", "/d/", headers={"Depth": "0", "Content-Type": "application/xml"}, body=lock_body()
    )
    token = (answer.header("Lock-Token") or "").strip("<>")
    assert answer.status == 200
    assert token
    assert request(wurl, "PUT", "/d/put.csv", body=b"x\n").status == 423
    assert _lock(wurl, "/d/sneaky.csv")[0] == 423
    assert list((store / "d").iterdir()) == []
    tagged = f"<{wurl}/d/> (<{token}>)"
    assert _lock(wurl, "/d/mine.csv", If=tagged)[0] == 201
    assert [p.name for p in (store / "d").iterdir()] == ["mine.csv.sync"]


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet='<>()[]" \tNotW/:[]x1%', max_size=60) | st.text(max_size=60))
def test_any_text_parses_or_is_malformed(text: str) -> None:
    """Whatever a client sends, the parser answers lists or ``MalformedIf`` (a 400), never another error;
    and what it answers can be handed to wsgidav and evaluated."""
    try:
        lists = parse_if(text)
    except MalformedIf:
        return
    wsgidav_form(lists)
    holds_where_nothing_is(lists, "/d/x", frozenset())

"""Segment id prefixes (issue 12): ``cluster show`` prints 8 characters, and every command that takes a
segment id accepts a unique prefix. The resolver on real SQLite and Postgres."""

import uuid

import pytest

from samsearch.db import Image, Segment, open_database
from samsearch.db.segment_ids import resolve_segment_id, resolve_segment_ids
from samsearch.errors import InputError, NotFoundError

IDS = [
    "abcd1234-0000-4000-8000-000000000001",
    "abcd1234-0000-4000-8000-000000000002",  # shares 32 characters with the first
    "abcd9999-0000-4000-8000-000000000003",
    "0123abcd-ffff-4000-8000-000000000004",
    "0123abce-ffff-4000-8000-000000000005",
]


@pytest.fixture
def db(database_url):
    db = open_database(database_url)
    with db.session() as s:
        img = Image(content_hash="a" * 64, path="/x.png", dataset="d")
        s.add(img)
        s.flush()
        for n, sid in enumerate(IDS):
            s.add(Segment(id=sid, image_id=img.id, settings_hash="h", segment_index=n, source="mask",
                          model_key="m", rle_counts="1", height=1, width=1, bbox_x=0, bbox_y=0, bbox_w=1,
                          bbox_h=1, area=1))
    yield db
    db.dispose()


def test_unique_prefixes_resolve_to_their_segment(db):
    with db.engine.connect() as conn:
        got = resolve_segment_ids(conn, ["abcd9999", "0123abcd", "ABCD9", "0123abce", "0123ABCD-FFFF-4", "abcd9"])
    assert got == [IDS[2], IDS[3], IDS[2], IDS[4], IDS[3], IDS[2]]
    # a Database works too, and a session
    assert resolve_segment_id(db, "abcd9") == IDS[2]
    with db.session() as s:
        assert resolve_segment_id(s, "0123abcd-f") == IDS[3]


def test_full_ids_come_back_canonical_without_a_lookup(db):
    unknown = str(uuid.uuid4())
    assert resolve_segment_ids(db, [IDS[0].upper(), IDS[1].replace("-", ""), unknown]) == [IDS[0], IDS[1], unknown]
    assert resolve_segment_ids(db, ["not-an-id", "x"]) == ["not-an-id", "x"]  # left to the caller's "no segment"


def test_ambiguous_unknown_and_short_prefixes_are_one_line_errors(db):
    with pytest.raises(InputError) as info:
        resolve_segment_id(db, "abcd", " in HOME")
    assert str(info.value) == (f"segment id prefix 'abcd' is ambiguous in HOME: 3 segments match ({IDS[0]}, "
                               f"{IDS[1]}, ...); give more characters")
    with pytest.raises(InputError, match=r"^segment id prefix 'abcd1234' is ambiguous: 2 segments match "
                                         rf"\({IDS[0]}, {IDS[1]}\); give more characters$"):
        resolve_segment_id(db, "abcd1234")
    with pytest.raises(NotFoundError) as info:
        resolve_segment_ids(db, ["abcd9999", "ffff0000"], " in HOME")
    assert str(info.value) == "no segment 'ffff0000' in HOME (no stored id starts with it)"
    with pytest.raises(InputError, match=r"^segment id prefix 'abc' is too short: give at least 4 hex digits$"):
        resolve_segment_id(db, "abc")


def test_many_prefixes_resolve_in_batches(db):
    with db.session() as s:
        img = s.query(Image).one()
        extra = [str(uuid.UUID(int=(0xE << 124) + (n << 96) + n)) for n in range(1, 251)]
        s.add_all(Segment(id=sid, image_id=img.id, settings_hash="h2", segment_index=n, source="mask",
                          model_key="m", rle_counts="1", height=1, width=1, bbox_x=0, bbox_y=0, bbox_w=1,
                          bbox_h=1, area=1) for n, sid in enumerate(extra))
    prefixes = [sid[:8] for sid in extra]
    assert len(set(prefixes)) == len(extra)
    assert resolve_segment_ids(db, prefixes + ["abcd9999"]) == extra + [IDS[2]]

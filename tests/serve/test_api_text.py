"""Text search over HTTP (``POST /api/search`` with ``text``) on a home holding the ``clip-tiny-random``
space, both backends: the same hits as the library call, filters, the space chosen or defaulted, read-only
servers answer it, and bad requests are one-line JSON errors. The page has the text box."""

from __future__ import annotations

import pytest

from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.search.query import SearchFilters, search_text
from samsearch.spaces.models import load_space

SPACE = "clip-tiny-random"


@pytest.fixture(scope="module")
def clip_model():
    return load_space(SPACE, device="cpu")


@pytest.fixture(scope="module", params=["sqlite+edge", "postgres+server"])
def home(request, tmp_path_factory, tiny_model, shapes, clip_model, backend_home):
    with backend_home(request.param, tmp_path_factory.mktemp("serve-text") / "home") as h:
        files = [im.path for im in shapes.images[:6]]
        opts = dict(prompts="masks", annotations=shapes.annotations_path)
        ingest(h, files[:4], tiny_model, IngestOptions(dataset="a", **opts), progress=False, spaces=[clip_model])
        ingest(h, files[4:], tiny_model, IngestOptions(dataset="b", **opts), progress=False, spaces=[clip_model])
        yield h


def _error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def test_text_search_over_http(home, serve, clip_model):
    api = serve(home).client
    r = api.post("/api/search", json={"text": "a red disc", "k": 5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["schema"] == "samsearch.search/v1" and out["query"]["kind"] == "text"
    assert out["query"]["text"] == "a red disc" and out["query"]["space"] == SPACE
    want = search_text(home, "a red disc", k=5, space_model=clip_model)
    assert [h["segment_id"] for h in out["hits"]] == [h.segment_id for h in want] and len(want) == 5
    assert [round(h["score"], 4) for h in out["hits"]] == [round(h.score, 4) for h in want]

    named = api.post("/api/search", json={"text": "a red disc", "k": 5, "space": SPACE}).json()
    assert [h["segment_id"] for h in named["hits"]] == [h.segment_id for h in want]
    only_b = api.post("/api/search", json={"text": "a shape", "k": 50, "filters": {"dataset": "b"}}).json()
    lib = search_text(home, "a shape", k=50, filters=SearchFilters(dataset="b"), space_model=clip_model)
    assert only_b["hits"] and {h["dataset"] for h in only_b["hits"]} == {"b"}
    assert [h["segment_id"] for h in only_b["hits"]] == [h.segment_id for h in lib]

    read_only = serve(home, read_only=True).client  # a search is a read, even by POST
    assert read_only.post("/api/search", json={"text": "a red disc", "k": 5}).json()["hits"] == out["hits"]


def test_text_search_bad_requests(home, serve):
    api = serve(home).client
    assert "no text tower" in _error(api.post("/api/search", json={"text": "a car", "space": "sam"}), 400)
    assert "empty" in _error(api.post("/api/search", json={"text": "   "}), 400)
    assert "at most 1000" in _error(api.post("/api/search", json={"text": "a" * 1001}), 400)
    _error(api.post("/api/search", json={"text": 5}), 400)
    _error(api.post("/api/search", json={"text": None}), 400)
    _error(api.post("/api/search", json={"text": "a car", "space": 3}), 400)
    assert "unknown field" in _error(api.post("/api/search", json={"text": "a car", "segment_id": "x"}), 400)
    _error(api.post("/api/search", json={"text": "a car", "k": 0}), 400)
    _error(api.post("/api/search", json={"text": "a car", "filters": {"exclude_same_image": True}}), 400)
    assert "clip-b32" in _error(api.post("/api/search", json={"text": "a car", "space": "clip-b32"}), 404)


def test_the_page_has_a_text_box(home, serve):
    page = serve(home).client.get("/").text
    assert 'id="text-query"' in page and 'id="text-search"' in page and "textSearch" in page


def test_segment_and_feedback_search_in_another_space(home, serve):
    """``space`` on a segment search and on relevance feedback compares in that space's collection: the
    library's hits for that space, which differ from the sam space's."""
    from samsearch.search.query import search_by_examples, search_by_segment

    api = serve(home).client
    ids = [h.segment_id for h in search_by_segment(home, _any_segment(home), k=6)]
    sid = ids[0]
    out = api.post("/api/search", json={"segment_id": sid, "k": 5, "space": SPACE}).json()
    assert out["query"]["kind"] == "segment"
    want = search_by_segment(home, sid, k=5, space=SPACE)
    assert [h["segment_id"] for h in out["hits"]] == [h.segment_id for h in want]
    assert [round(h["score"], 4) for h in out["hits"]] == [round(h.score, 4) for h in want]
    in_sam = [h.segment_id for h in search_by_segment(home, sid, k=5)]
    assert [h["score"] for h in out["hits"]] != [h.score for h in search_by_segment(home, sid, k=5)] or \
        [h["segment_id"] for h in out["hits"]] != in_sam

    fb = api.post("/api/search", json={"positive": ids[:2], "negative": ids[2:3], "k": 4, "space": SPACE}).json()
    lib = search_by_examples(home, ids[:2], ids[2:3], k=4, space=SPACE)
    assert [h["segment_id"] for h in fb["hits"]] == [h.segment_id for h in lib] and len(lib) == 4
    assert fb["query"]["space"] == SPACE
    assert "space" in _error(api.post("/api/search", json={"segment_id": sid, "space": "dinov2-b"}), 404)


def _any_segment(home) -> str:
    from sqlalchemy import select

    from samsearch.db import Segment

    with home.db.session() as s:
        return s.scalars(select(Segment.id).order_by(Segment.id).limit(1)).one()

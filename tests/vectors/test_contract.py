"""One contract, two backends: Qdrant Edge on disk, and qdrant-client's ":memory:" server API (also
over real HTTP through the REST stand-in in ``samsearch.testing.qdrant_standin``).

Expected results come from numpy brute force and from a plain-Python reading of our Filter.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samsearch.testing.qdrant_standin import QdrantStandin
from samsearch.vectors import (
    FLOAT_FIELDS,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    Filter,
    IsNull,
    Match,
    Range,
    VectorStore,
    VectorStoreError,
    open_vector_store,
)
from samsearch.vectors.edge import EdgeVectorStore
from samsearch.vectors.server import ServerVectorStore

DIM = 32
COLL = "segments"


@pytest.fixture(scope="module", params=["edge", "server", "server-http"])
def backend(request, tmp_path_factory):
    """One store per backend for the module: creating an Edge shard and its payload indexes costs
    a dozen fsyncs. fsync=False too (the WAL still makes writes crash-safe): per-write flushes only
    matter after a power cut, and they dominate this file's time on a busy disk. The reopen test
    below uses the default fsync=True. "server-http" runs the remote code path (HTTP, payload indexes,
    search params) against the REST stand-in, since no Qdrant server can run here."""
    standin = None
    s: VectorStore
    if request.param == "edge":
        s = EdgeVectorStore(tmp_path_factory.mktemp("edge") / "vectors", fsync=False)
    elif request.param == "server":
        s = ServerVectorStore(location=":memory:")
    else:
        standin = QdrantStandin().start()
        s = ServerVectorStore(standin.url, quantization=True)
    s.ensure_collection(COLL, DIM)
    yield s
    s.close()
    if standin is not None:
        standin.stop()


@pytest.fixture
def store(backend):
    """The module's store, with an empty COLL."""
    if isinstance(backend, ServerVectorStore):  # local mode keeps deleted points around and scans them
        backend.drop_collection(COLL)
        backend.ensure_collection(COLL, DIM)
    else:
        backend.delete(COLL, [r.id for batch in backend.scroll(COLL) for r in batch])
    assert backend.count(COLL) == 0
    return backend


# -- data ----------------------------------------------------------------------------------------------


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def new_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def payload_for(i: int, rng: np.random.Generator) -> dict[str, Any]:
    """Varied payloads: labels present, explicitly null, or missing; scores only on some."""
    p: dict[str, Any] = {
        "image_id": i % 30,
        "dataset": "a" if i % 3 else "b",
        "area": int(rng.integers(1, 1000)),
        "image_hash": f"h{i % 30}",
    }
    kind = i % 5
    if kind < 3:
        p["label"] = ("cat", "dog", "bird")[kind]
        p["label_score"] = float(rng.random())
    elif kind == 3:
        p["label"] = None
    return p  # kind 4: no label key at all


@pytest.fixture
def filled(store):
    """300 points with varied payloads."""
    rng = np.random.default_rng(1)
    ids, x = new_ids(300), unit(rng, 300)
    payloads = [payload_for(i, rng) for i in range(300)]
    store.upsert(COLL, ids, x, payloads)
    return store, ids, x, payloads


def same_payload(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Equal, floats to 1e-12: Edge re-serialises a merged payload and may move a float by one ulp."""
    return got.keys() == expected.keys() and all(
        got[k] == pytest.approx(v, rel=1e-12) if isinstance(v, float) else got[k] == v
        for k, v in expected.items()
    )


def holds(p: dict[str, Any], c: Match | Range | IsNull) -> bool:
    v = p.get(c.field)
    if isinstance(c, Match):
        return v is not None and (v in c.value if isinstance(c.value, (list, tuple)) else v == c.value)
    if isinstance(c, Range):
        return (
            isinstance(v, (int, float))
            and (c.gte is None or v >= c.gte)
            and (c.lte is None or v <= c.lte)
        )
    return v is None


def satisfies(p: dict[str, Any], flt: Filter) -> bool:
    return all(holds(p, c) for c in flt.must) and not any(holds(p, c) for c in flt.must_not)


FILTERS = {
    "match-keyword": Filter.of(Match("label", "cat")),
    "match-keyword-list": Filter.of(Match("label", ["cat", "dog"])),
    "match-int": Filter.of(Match("image_id", 7)),
    "match-int-list": Filter.of(Match("image_id", [1, 2, 3])),
    "range-int": Filter.of(Range("image_id", gte=5, lte=9)),
    "range-int-open": Filter.of(Range("area", gte=500)),
    "range-float": Filter.of(Range("label_score", gte=0.25, lte=0.75)),
    "range-float-upper": Filter.of(Range("label_score", lte=0.5)),
    "is-null": Filter.of(IsNull("label")),
    "not-null": Filter.of(must_not=[IsNull("label")]),
    "must-not-match": Filter.of(must_not=[Match("label", "cat")]),
    "combined": Filter.of(Match("dataset", "a"), Range("area", lte=700), must_not=[IsNull("label")]),
}


# -- collections ---------------------------------------------------------------------------------------


def test_is_a_vector_store(store):
    assert isinstance(store, VectorStore)


def test_ensure_collection_is_idempotent_and_checks_dimension(store):
    store.ensure_collection(COLL, DIM)
    assert store.has_collection(COLL)
    with pytest.raises(VectorStoreError) as err:
        store.ensure_collection(COLL, DIM + 1)
    assert "\n" not in str(err.value) and str(DIM) in str(err.value)
    assert not store.has_collection("other")
    store.ensure_collection("other", 8)
    assert store.has_collection("other")
    store.drop_collection("other")
    assert not store.has_collection("other")
    store.drop_collection("other")  # missing: no error


def test_missing_collection_is_a_clear_error(store):
    with pytest.raises(VectorStoreError, match="no collection 'nope'"):
        store.count("nope")


# -- writes --------------------------------------------------------------------------------------------


def test_upsert_retrieve_round_trip(store):
    rng = np.random.default_rng(0)
    ids = new_ids(50)
    raw = rng.standard_normal((50, DIM)).astype(np.float32) * 3  # stored normalised
    payloads = [{"image_id": np.int64(i), "label": "cat", "label_score": np.float32(0.5)} for i in range(50)]
    store.upsert(COLL, ids, raw, payloads)

    missing = str(uuid.uuid4())
    wanted = [ids[7], missing, ids[3], ids[42]]
    got = store.retrieve(COLL, wanted, with_vectors=True)
    assert [r.id for r in got] == [ids[7], ids[3], ids[42]]
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    for r, i in zip(got, (7, 3, 42), strict=True):
        assert r.payload == {"image_id": i, "label": "cat", "label_score": 0.5}
        assert r.vector is not None and r.vector.dtype == np.float32
        np.testing.assert_allclose(r.vector, expected[i], atol=1e-6)
    assert store.retrieve(COLL, [ids[0]])[0].vector is None
    assert store.retrieve(COLL, [missing]) == []
    assert store.count(COLL) == 50


def test_upsert_rejects_wrong_dimension_and_lengths(store):
    with pytest.raises(VectorStoreError):
        store.upsert(COLL, new_ids(2), np.ones((2, DIM + 1), np.float32), [{}, {}])
    with pytest.raises(VectorStoreError):
        store.upsert(COLL, new_ids(3), np.ones((2, DIM), np.float32), [{}, {}])


def test_upsert_replaces(store):
    rng = np.random.default_rng(0)
    ids, x = new_ids(10), unit(rng, 10)
    store.upsert(COLL, ids, x, [{"label": "old", "area": 1}] * 10)
    y = unit(rng, 1)
    store.upsert(COLL, ids[:1], y, [{"label": "new"}])
    assert store.count(COLL) == 10
    (r,) = store.retrieve(COLL, ids[:1], with_vectors=True)
    assert r.payload == {"label": "new"}  # upsert replaces the whole payload
    np.testing.assert_allclose(r.vector, y[0], atol=1e-6)


def test_delete_and_delete_by_filter(filled):
    store, ids, _, payloads = filled
    store.delete(COLL, ids[:10] + [str(uuid.uuid4())])
    assert store.count(COLL) == 290
    assert store.retrieve(COLL, ids[:10]) == []
    store.delete_by_filter(COLL, Filter.of(Match("image_id", 15)))
    expected = sum(1 for i, p in enumerate(payloads) if i >= 10 and p["image_id"] != 15)
    assert store.count(COLL) == expected
    assert store.count(COLL, Filter.of(Match("image_id", 15))) == 0


def test_set_payload_merges_on_many_ids(filled):
    store, ids, _, payloads = filled
    chosen = ids[:120]
    store.set_payload(COLL, chosen + [str(uuid.uuid4())], {"label": "zebra", "label_source": "bulk"})
    for r in store.retrieve(COLL, ids):
        i = ids.index(r.id)
        expected = {**payloads[i], "label": "zebra", "label_source": "bulk"} if i < 120 else payloads[i]
        assert same_payload(r.payload, expected)
    assert store.count(COLL, Filter.of(Match("label_source", "bulk"))) == 120


# -- search --------------------------------------------------------------------------------------------


def test_search_matches_brute_force(store):
    rng = np.random.default_rng(2)
    ids, x = new_ids(2000), unit(rng, 2000)
    store.upsert(COLL, ids, x, [{"image_id": i} for i in range(2000)])
    queries = unit(rng, 20)
    recalls = []
    for q in queries:
        sims = x @ q
        top = np.argsort(-sims)[:10]
        hits = store.search(COLL, q * 2.5, k=10)  # the query is normalised too
        assert len(hits) == 10
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for h in hits:
            assert h.score == pytest.approx(float(sims[h.payload["image_id"]]), abs=1e-4)
        recalls.append(len({h.id for h in hits} & {ids[i] for i in top}) / 10)
        assert hits[0].id == ids[top[0]]
        exact = store.search(COLL, q, k=10, exact=True)
        assert [h.id for h in exact] == [ids[i] for i in top]
    assert np.mean(recalls) >= 0.95


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_match_brute_force(filled, name):
    store, ids, x, payloads = filled
    flt = FILTERS[name]
    assert flt is not None
    ok = [i for i, p in enumerate(payloads) if satisfies(p, flt)]
    assert ok, "the data must exercise the filter"
    assert store.count(COLL, flt) == len(ok)

    q = unit(np.random.default_rng(3), 1)[0]
    hits = store.search(COLL, q, k=len(payloads), flt=flt)  # everything that passes
    assert sorted(h.id for h in hits) == sorted(ids[i] for i in ok)
    assert all(satisfies(h.payload, flt) for h in hits)

    top = sorted(ok, key=lambda i: -float(x[i] @ q))[:5]
    assert [h.id for h in store.search(COLL, q, k=5, flt=flt)] == [ids[i] for i in top]

    scrolled = [r.id for batch in store.scroll(COLL, flt=flt, batch_size=17) for r in batch]
    assert scrolled == sorted(ids[i] for i in ok)


def test_min_score(filled):
    store, ids, x, _ = filled
    q = x[0]
    threshold = float(np.sort(x @ q)[-25])  # 25 points reach it
    hits = store.search(COLL, q, k=100, min_score=threshold - 1e-5)
    assert len(hits) == 25
    assert all(h.score >= threshold - 1e-4 for h in hits)
    assert store.search(COLL, q, k=100, min_score=1.01) == []


def test_search_batch_equals_individual_searches(filled):
    store, _, _, _ = filled
    queries = unit(np.random.default_rng(4), 5)
    flt = Filter.of(Match("dataset", "a"))
    for f in (None, flt):
        batch = store.search_batch(COLL, queries, k=7, flt=f)
        assert len(batch) == 5
        for q, hits in zip(queries, batch, strict=True):
            single = store.search(COLL, q, k=7, flt=f)
            assert [h.id for h in hits] == [h.id for h in single]
            assert [h.score for h in hits] == pytest.approx([h.score for h in single], abs=1e-6)
            assert [h.payload for h in hits] == [h.payload for h in single]


def _recommend_brute(x: np.ndarray, pos: list[int], neg: list[int], strategy: str) -> np.ndarray:
    """Qdrant's recommend order, from numpy: best_score puts every point whose best positive similarity
    beats its best negative one above the rest (those by their best positive, the rest by minus their
    best negative); sum_scores is the sum over positives minus the sum over negatives."""
    sp, sn = x @ x[pos].T, (x @ x[neg].T if neg else np.zeros((len(x), 0), np.float32))
    if strategy == "sum_scores":
        return sp.sum(1) - sn.sum(1)
    bp = sp.max(1)
    bn = sn.max(1) if neg else np.full(len(x), -np.inf)
    return np.where(bp > bn, 2 + bp, -bn)  # 2 + ...: above every "negative wins" point


@pytest.mark.parametrize("strategy", ["best_score", "sum_scores"])
def test_recommend_matches_brute_force(filled, strategy):
    store, ids, x, payloads = filled
    pos, neg = [0, 7, 42], [3, 99]
    want = _recommend_brute(x, pos, neg, strategy)
    order = [i for i in np.argsort(-want, kind="stable") if i not in pos + neg]
    hits = store.recommend(COLL, [ids[i] for i in pos], [ids[i] for i in neg], k=10, strategy=strategy)
    assert [h.id for h in hits] == [ids[i] for i in order[:10]]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].payload == payloads[order[0]] or same_payload(hits[0].payload, payloads[order[0]])
    # a filter applies, and the examples never come back even when they pass it
    flt = Filter.of(Match("dataset", "a"))
    ok = [i for i in order if payloads[i]["dataset"] == "a"]
    got = store.recommend(COLL, [ids[i] for i in pos], [ids[i] for i in neg], k=5, flt=flt, strategy=strategy)
    assert [h.id for h in got] == [ids[i] for i in ok[:5]]
    everything = store.recommend(COLL, [ids[i] for i in pos], k=len(ids), strategy=strategy)
    assert len(everything) == len(ids) - len(pos) and not {ids[i] for i in pos} & {h.id for h in everything}


def test_recommend_refuses_bad_examples(filled):
    store, ids, _, _ = filled
    with pytest.raises(VectorStoreError, match="no point"):
        store.recommend(COLL, [ids[0], str(uuid.uuid4())])
    with pytest.raises(VectorStoreError, match="positive"):
        store.recommend(COLL, [], [ids[0]])
    with pytest.raises(VectorStoreError, match="both"):
        store.recommend(COLL, [ids[0]], [ids[0]])
    with pytest.raises(VectorStoreError, match="strategy"):
        store.recommend(COLL, [ids[0]], strategy="average")
    with pytest.raises(VectorStoreError, match="UUID"):
        store.recommend(COLL, ["../etc"])
    assert store.recommend(COLL, [ids[0]], k=0) == []


def test_scroll_returns_every_point_once_in_id_order(filled):
    store, ids, x, payloads = filled
    batches = list(store.scroll(COLL, batch_size=64, with_vectors=True))
    assert all(0 < len(b) <= 64 for b in batches)
    got = [r for b in batches for r in b]
    assert [r.id for r in got] == sorted(ids)
    by_id = {r.id: r for r in got}
    for i in (0, 150, 299):
        assert by_id[ids[i]].payload == payloads[i]
        np.testing.assert_allclose(by_id[ids[i]].vector, x[i], atol=1e-6)


def test_count_with_and_without_filter(filled):
    store, _, _, payloads = filled
    assert store.count(COLL) == 300
    assert store.count(COLL, None) == 300
    assert store.count(COLL, Filter.of(Match("dataset", "b"))) == sum(p["dataset"] == "b" for p in payloads)


def test_writer_thread_and_reader_thread(store):
    rng = np.random.default_rng(7)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(20):
                store.upsert(COLL, new_ids(50), unit(rng, 50), [{"image_id": 1}] * 50)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    q = unit(np.random.default_rng(8), 1)[0]
    while t.is_alive():
        store.search(COLL, q, k=5)
        store.count(COLL)
    t.join()
    assert not errors
    assert store.count(COLL) == 1000


def test_empty_inputs_are_no_ops(store):
    store.upsert(COLL, [], np.zeros((0, DIM), np.float32), [])
    store.delete(COLL, [])
    store.set_payload(COLL, [], {"label": "x"})
    assert store.retrieve(COLL, []) == []
    assert list(store.scroll(COLL)) == []
    assert store.count(COLL) == 0


# -- backend specifics ---------------------------------------------------------------------------------


def test_open_vector_store_dispatch(tmp_path):
    edge = open_vector_store(tmp_path / "v")
    server = open_vector_store(tmp_path / "v", ":memory:")
    assert isinstance(edge, EdgeVectorStore) and isinstance(server, ServerVectorStore)
    edge.close()
    server.close()


def test_edge_survives_close_and_reopen(tmp_path):
    rng = np.random.default_rng(5)
    ids, x = new_ids(200), unit(rng, 200)
    s = EdgeVectorStore(tmp_path / "vectors")
    s.ensure_collection(COLL, DIM)
    s.upsert(COLL, ids, x, [{"image_id": i} for i in range(200)])
    s.set_payload(COLL, ids[:5], {"label": "cat"})
    s.delete(COLL, ids[-5:])
    s.close()

    s = EdgeVectorStore(tmp_path / "vectors")
    assert s.has_collection(COLL)
    assert s.count(COLL) == 195
    assert s.count(COLL, Filter.of(Match("label", "cat"))) == 5
    (r,) = s.retrieve(COLL, ids[3:4], with_vectors=True)
    assert r.payload == {"image_id": 3, "label": "cat"}
    np.testing.assert_allclose(r.vector, x[3], atol=1e-6)
    assert s.search(COLL, x[10], k=1)[0].id == ids[10]
    with pytest.raises(VectorStoreError):
        s.ensure_collection(COLL, DIM * 2)
    indexed = s._get(COLL).shard.info().payload_schema  # white box: indexes persisted
    assert set(KEYWORD_FIELDS + INTEGER_FIELDS + FLOAT_FIELDS) <= set(indexed)
    s.close()


def test_edge_wal_keeps_unflushed_writes_across_a_crash(tmp_path):
    """fsync=False: a write is in Edge's WAL when upsert returns; a killed process loses nothing."""
    code = f"""
import os, uuid, numpy as np
from samsearch.vectors.edge import EdgeVectorStore
s = EdgeVectorStore({str(tmp_path / "vectors")!r}, fsync=False)
s.ensure_collection({COLL!r}, {DIM})
ids = [str(uuid.UUID(int=i + 1)) for i in range(100)]
s.upsert({COLL!r}, ids, np.ones((100, {DIM}), np.float32), [{{"image_id": i}} for i in range(100)])
s.set_payload({COLL!r}, ids[:10], {{"label": "cat"}})
os._exit(3)  # no close(), no flush
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 3
    s = EdgeVectorStore(tmp_path / "vectors")
    assert s.count(COLL) == 100
    assert s.count(COLL, Filter.of(Match("label", "cat"))) == 10
    s.close()


@pytest.mark.parametrize("backend", ["edge"], indirect=True)
def test_edge_second_store_on_same_root_is_refused(store):
    other = EdgeVectorStore(store.root)
    with pytest.raises(VectorStoreError, match="in use") as err:
        other.count(COLL)
    assert "\n" not in str(err.value)
    other.close()


def test_edge_hnsw_index_keeps_results_right(tmp_path):
    """A small index_threshold makes upsert build HNSW; searches and filters stay correct."""
    rng = np.random.default_rng(6)
    s = EdgeVectorStore(tmp_path / "vectors", index_threshold=600, fsync=False)
    s.ensure_collection(COLL, DIM)
    ids, x = new_ids(1500), unit(rng, 1500)
    for start in range(0, 1500, 500):
        s.upsert(COLL, ids[start : start + 500], x[start : start + 500],
                 [{"image_id": i % 10} for i in range(start, start + 500)])
    assert s._get(COLL).shard.info().indexed_vectors_count > 0  # white box: HNSW was built
    for q in unit(rng, 5):
        top = np.argsort(-(x @ q))[:10]
        assert [h.id for h in s.search(COLL, q, k=10, exact=True)] == [ids[i] for i in top]
        assert s.search(COLL, q, k=1)[0].id == ids[top[0]]
        hits = s.search(COLL, q, k=10, flt=Filter.of(Match("image_id", 3)))
        assert len(hits) == 10 and all(h.payload["image_id"] == 3 for h in hits)
    assert s.count(COLL) == 1500
    s.close()


def test_server_unreachable_is_one_clear_line():
    with pytest.raises(VectorStoreError) as err:
        ServerVectorStore("http://127.0.0.1:1", timeout=2)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("cannot reach Qdrant at http://127.0.0.1:1")
    assert "SAMSEARCH_QDRANT_URL" in msg


def test_edge_rejects_bad_collection_names(tmp_path: Path):
    s = EdgeVectorStore(tmp_path / "vectors")
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(VectorStoreError):
            s.ensure_collection(bad, DIM)
    s.close()


def test_bulk_load_keeps_writes_visible_and_counts_right(store):
    """Inside bulk_load every write is searchable at once; after it, nothing is lost (both backends)."""
    rng = np.random.default_rng(8)
    ids, x = new_ids(300), unit(rng, 300)
    lines: list[str] = []
    with store.bulk_load(COLL, report=lines.append):
        with store.bulk_load(COLL):  # nested: only the outermost exit builds
            store.upsert(COLL, ids[:150], x[:150], [{"image_id": i} for i in range(150)])
        assert store.search(COLL, x[10], k=1)[0].id == ids[10]
        store.finish_index(COLL, report=lines.append)  # inside an open block too (a worker gone idle)
        store.upsert(COLL, ids[150:], x[150:], [{"image_id": i} for i in range(150, 300)])
    assert store.count(COLL) == 300
    assert store.search(COLL, x[200], k=1)[0].id == ids[200]
    points, indexed = store.index_status(COLL)
    assert points == 300 and 0 <= indexed <= points  # below the index threshold: not indexed, scanned
    assert lines == []  # nothing worth an index was built, so nothing was said


def _edge_info(s: EdgeVectorStore):
    return s._get(COLL).shard.info()  # white box: how many points HNSW covers


def test_edge_bulk_load_defers_the_index_to_one_build_at_the_end(tmp_path):
    """With a threshold upsert would pass 4 times, bulk_load builds nothing until it ends, then indexes
    everything once and says so; results stay exact."""
    rng = np.random.default_rng(9)
    s = EdgeVectorStore(tmp_path / "vectors", index_threshold=500, fsync=False)
    s.ensure_collection(COLL, DIM)
    ids, x = new_ids(2500), unit(rng, 2500)
    lines: list[str] = []
    with s.bulk_load(COLL, report=lines.append):
        for start in range(0, 2500, 250):
            s.upsert(COLL, ids[start : start + 250], x[start : start + 250],
                     [{"image_id": i % 10, "dataset": "d"} for i in range(start, start + 250)])
            assert _edge_info(s).indexed_vectors_count == 0
        assert lines == []
    info = _edge_info(s)
    assert info.points_count == 2500 and info.indexed_vectors_count == 2500
    assert len(lines) == 2 and lines[0].startswith("building the vector index") and "built" in lines[1]
    for q in unit(rng, 3):
        top = np.argsort(-(x @ q))[:10]
        assert [h.id for h in s.search(COLL, q, k=10, exact=True)] == [ids[i] for i in top]
        assert s.search(COLL, q, k=1)[0].id == ids[top[0]]
    # A block that fails builds nothing (the next bulk_load or threshold does); a later clean one does.
    with pytest.raises(RuntimeError), s.bulk_load(COLL, report=lines.append):
        s.upsert(COLL, new_ids(600), unit(rng, 600), [{"image_id": 1}] * 600)
        raise RuntimeError("stop")
    assert len(lines) == 2 and _edge_info(s).indexed_vectors_count == 2500
    with s.bulk_load(COLL, report=lines.append):
        pass
    assert _edge_info(s).indexed_vectors_count == 3100 and len(lines) == 4
    s.close()


def test_edge_sigkill_during_the_final_build_leaves_a_store_the_next_run_finishes(tmp_path):
    """A process killed (SIGKILL) while bulk_load's closing index build runs (in its child process, which
    dies with it): the reopened store has every point, searches right, and the next bulk_load exit
    completes the index."""
    n = 60_000
    code = f"""
import sys, uuid, numpy as np
from samsearch.vectors.edge import EdgeVectorStore
s = EdgeVectorStore({str(tmp_path / "vectors")!r}, fsync=False, index_threshold=1000)
s.ensure_collection({COLL!r}, {DIM})
x = np.random.default_rng(1).standard_normal(({n}, {DIM})).astype(np.float32)
def say(line):
    print(line, flush=True)
with s.bulk_load({COLL!r}, report=say):
    for start in range(0, {n}, 10_000):
        ids = [str(uuid.UUID(int=i + 1)) for i in range(start, start + 10_000)]
        payloads = [{{"image_id": i % 7}} for i in range(start, start + 10_000)]
        s.upsert({COLL!r}, ids, x[start : start + 10_000], payloads)
print("never", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("building the vector index"), line
    time.sleep(0.5)  # well inside the build (it takes seconds for this many points)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()

    x = np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    s = EdgeVectorStore(tmp_path / "vectors", index_threshold=1000, fsync=False)
    assert s.count(COLL) == n
    assert s.count(COLL, Filter.of(Match("image_id", 3))) == len(range(3, n, 7))
    q = x[123]
    assert s.search(COLL, q, k=1)[0].id == ids[123]
    lines: list[str] = []
    with s.bulk_load(COLL, report=lines.append):  # the next run writes nothing new, yet finishes the index
        pass
    info = _edge_info(s)
    assert info.points_count == n and info.indexed_vectors_count == n
    lines = [line for line in lines if not line.startswith("  still building")]  # one per 30 s of build
    assert len(lines) == 2 and lines[0].endswith("in a child process)") and lines[1].endswith(
        f"({n:,} of {n:,} points indexed)")
    assert s.index_status(COLL) == (n, n)
    top = np.argsort(-(x @ q))[:10]
    assert [h.id for h in s.search(COLL, q, k=10)][:5] == [ids[i] for i in top[:5]]
    s.close()


def test_edge_bulk_load_into_an_empty_collection_defers_its_payload_indexes(tmp_path):
    """Filling an empty collection, bulk_load drops the payload indexes (keeping them current slows every
    write and the flush/close around the build); filters still answer right inside the block, and the
    closing build (child process) adds every index, with its links, back. A failed block adds them back
    in this process; a small collection (no HNSW build) gets them back too."""
    rng = np.random.default_rng(4)
    fields = set(KEYWORD_FIELDS + INTEGER_FIELDS + FLOAT_FIELDS)
    s = EdgeVectorStore(tmp_path / "vectors", index_threshold=500, fsync=False)
    s.ensure_collection(COLL, DIM)
    assert fields <= set(_edge_info(s).payload_schema)
    ids, x = new_ids(1200), unit(rng, 1200)
    with s.bulk_load(COLL):
        assert not fields & set(_edge_info(s).payload_schema)
        s.upsert(COLL, ids, x, [{"image_id": i % 10, "dataset": ["d", f"e{i % 3}"], "area": float(i)}
                                for i in range(1200)])
        assert s.count(COLL, Filter.of(Match("dataset", "e1"))) == 400
        hit = s.search(COLL, x[7], k=1, flt=Filter.of(Match("image_id", 7)))[0]
        assert hit.id == ids[7]
    info = _edge_info(s)
    assert fields <= set(info.payload_schema) and info.indexed_vectors_count == 1200
    assert s.count(COLL, Filter.of(Match("dataset", "e1"))) == 400
    assert [h.id for h in s.search(COLL, x[9], k=3, flt=Filter.of(Match("image_id", 9)))][0] == ids[9]
    s.close()
    reopened = EdgeVectorStore(tmp_path / "vectors", index_threshold=500, fsync=False)
    assert reopened._get(COLL).linked  # the per-value links were built with the HNSW
    reopened.close()

    # a block that fails, and a small collection that never reaches a build: indexes back either way
    for name, fail in (("failed", True), ("small", False)):
        s = EdgeVectorStore(tmp_path / name, index_threshold=500, fsync=False)
        s.ensure_collection(COLL, DIM)
        with contextlib.suppress(RuntimeError), s.bulk_load(COLL):
            s.upsert(COLL, new_ids(50), unit(rng, 50), [{"image_id": 1}] * 50)
            if fail:
                raise RuntimeError("stop")
        assert fields <= set(_edge_info(s).payload_schema), name
        assert s.count(COLL, Filter.of(Match("image_id", 1))) == 50
        s.close()

    # a collection that already holds points keeps its indexes through a bulk load
    s = EdgeVectorStore(tmp_path / "vectors", index_threshold=500, fsync=False)
    with s.bulk_load(COLL):
        assert fields <= set(_edge_info(s).payload_schema)
    s.close()

"""Qdrant Edge filtered search: which filters get ACORN, and which fields carry per-value HNSW links."""

import json

import numpy as np
import pytest
import qdrant_edge as qe

from samsearch.vectors import Filter, IsNull, Match, Range
from samsearch.vectors.edge import DISTANCE, META_FILE, EdgeVectorStore, _index_schemas, _needs_acorn

LINKED = frozenset({"dataset"})


@pytest.mark.parametrize(
    "flt, acorn",
    [
        (Filter((Match("dataset", "a"),)), False),
        (Filter((Match("dataset", ["a", "b"]),)), False),
        (Filter((Match("dataset", "a"),), (Match("image_hash", "h"),)), False),  # "not this image": few points
        (Filter((), (Match("image_hash", "h"),)), False),
        (Filter((Match("label", "car"),)), True),  # written after indexing: links may be missing
        (Filter((Match("dataset", "a"), Range("area", 10, None))), True),
        (Filter((Match("image_id", 3),)), True),
        (Filter((IsNull("label"),)), True),
    ],
)
def test_acorn_only_where_no_links_cover_the_filter(flt, acorn):
    assert _needs_acorn(flt, LINKED) is acorn


def test_new_shards_link_dataset_label_cluster(tmp_path):
    schemas = _index_schemas()
    assert {f for f, s in schemas.items() if getattr(s, "enable_hnsw", False)} == {"dataset", "label", "cluster"}
    store = EdgeVectorStore(tmp_path / "v")
    store.ensure_collection("c", 4)
    assert store._get("c").linked == LINKED
    store.upsert("c", ["00000000-0000-0000-0000-000000000001"], np.ones((1, 4)), [{"dataset": "a"}])
    hits = store.search("c", np.ones(4), k=3, flt=Filter((Match("dataset", "a"),)))
    assert [h.payload["dataset"] for h in hits] == ["a"]
    store.close()


def test_shards_indexed_without_links_keep_acorn(tmp_path):
    """A shard made before links existed (dataset index without them) is searched with ACORN as before."""
    path = tmp_path / "v" / "c"
    path.mkdir(parents=True)
    (path / META_FILE).write_text(json.dumps({"dim": 4, "distance": DISTANCE}))
    shard = qe.EdgeShard.create(str(path), EdgeVectorStore(tmp_path / "v")._config(4))
    shard.update(qe.UpdateOperation.create_field_index("dataset", qe.KeywordIndexParams(enable_hnsw=False)))
    shard.close()
    store = EdgeVectorStore(tmp_path / "v")
    assert store._get("c").linked == frozenset()
    store.close()


def _ids(n):
    return [f"00000000-0000-0000-0000-{i + 1:012d}" for i in range(n)]


@pytest.mark.parametrize(
    "flt, exact_filter_max, exact, acorn",
    [
        (None, 10, False, False),
        (Filter((Match("dataset", "a"),)), 10, False, False),  # links: walk the graph
        (Filter((Match("label", "rare"),)), 10, True, False),  # 5 matches ≤ 10: exactly over them
        (Filter((Match("label", "common"),)), 10, False, True),  # 45 matches > 10: ACORN
        (Filter((Match("label", "rare"),)), 0, False, True),
        (Filter((Range("area", 0, 4),)), 10, True, False),
    ],
)
def test_unlinked_filters_are_routed_by_their_number_of_matches(tmp_path, flt, exact_filter_max, exact, acorn):
    store = EdgeVectorStore(tmp_path / "v", exact_filter_max=exact_filter_max)
    store.ensure_collection("c", 4)
    ids = _ids(50)
    store.upsert("c", ids, np.random.default_rng(0).standard_normal((50, 4)),
                 [{"dataset": "a", "area": i} for i in range(50)])
    store.set_payload("c", ids[:5], {"label": "rare"})
    store.set_payload("c", ids[5:], {"label": "common"})
    coll = store._get("c")
    from samsearch.vectors.edge import to_edge_filter

    assert store._route(coll, flt, to_edge_filter(flt), False) == (exact, acorn)
    assert store._route(coll, flt, to_edge_filter(flt), True)[0] is True  # an exact query stays exact
    store.close()


def test_label_written_after_indexing_is_found_exactly(tmp_path):
    """The case the exact route is for: HNSW built before the label existed (no label links), then a
    filtered search on that label returns exactly the brute-force top k among its members."""
    rng = np.random.default_rng(1)
    n, dim = 3000, 8
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = _ids(n)
    store = EdgeVectorStore(tmp_path / "v", index_threshold=0, exact_filter_max=1000)
    store.ensure_collection("c", dim)
    store.upsert("c", ids, x, [{"dataset": "a"}] * n)
    store.optimize("c")
    members = rng.choice(n, 300, replace=False)
    store.set_payload("c", [ids[i] for i in members], {"label": "car"})
    for q in rng.standard_normal((5, dim)).astype(np.float32):
        q /= np.linalg.norm(q)
        want = members[np.argsort(-(x[members] @ q))[:10]]
        got = store.search("c", q, k=10, flt=Filter((Match("label", "car"),)))
        assert [h.id for h in got] == [ids[i] for i in want]
    store.close()

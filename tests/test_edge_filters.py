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

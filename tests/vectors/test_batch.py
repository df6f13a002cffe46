"""The batch-job store methods, on both backends: ``scroll_vectors`` (one matrix per batch, chosen payload
fields, filters in the store) and ``set_payloads`` (many groups, one durable write)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from samsearch.vectors import Filter, IsNull, Match, VectorBatch
from samsearch.vectors.edge import EdgeVectorStore
from samsearch.vectors.server import ServerVectorStore

DIM = 16
COLL = "segments"


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = EdgeVectorStore(tmp_path / "vectors") if request.param == "edge" else ServerVectorStore(location=":memory:")
    s.ensure_collection(COLL, DIM)
    yield s
    s.close()


def _fill(store, n=300):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    payloads = [{"dataset": "a" if i % 3 else "b", "area": i, **({"cluster": i % 4} if i % 5 else {})}
                for i in range(n)]
    store.upsert(COLL, ids, x, payloads)
    return ids, x, payloads


@pytest.mark.parametrize("flt, fields", [
    (None, ()),
    (None, ("cluster",)),
    (Filter.of(Match("dataset", "b")), ("cluster", "area")),
    (Filter.of(IsNull("cluster")), ("dataset",)),
])
def test_scroll_vectors_matches_scroll(store, flt, fields):
    ids, x, payloads = _fill(store)
    batches = list(store.scroll_vectors(COLL, flt, batch_size=64, payload_fields=fields))
    assert all(isinstance(b, VectorBatch) and b.vectors.dtype == np.float32 for b in batches)
    assert all(len(b.ids) == len(b.vectors) == len(b.payloads) <= 64 for b in batches)
    got_ids = [i for b in batches for i in b.ids]
    expected = [r.id for b in store.scroll(COLL, flt, batch_size=64) for r in b]
    assert got_ids == expected and len(expected) > 0
    index = {i: k for k, i in enumerate(ids)}
    got = np.concatenate([b.vectors for b in batches])
    np.testing.assert_allclose(got, x[[index[i] for i in got_ids]], atol=1e-6)
    got_payloads = [p for b in batches for p in b.payloads]
    assert got_payloads == [{f: payloads[index[i]][f] for f in fields if f in payloads[index[i]]} for i in got_ids]


def test_set_payloads_groups(store):
    ids, _, _ = _fill(store)
    groups = [(ids[:100], {"cluster": 7}), (ids[100:150], {"cluster": None, "label": "x"}), ([], {"cluster": 1}),
              (ids[150:151] + ["00000000-0000-0000-0000-00000000ffff"], {"cluster": 9})]  # unknown ids are skipped
    store.set_payloads(COLL, iter(groups))
    assert store.count(COLL, Filter.of(Match("cluster", 7))) == 100
    assert store.count(COLL, Filter.of(Match("label", "x"), IsNull("cluster"))) == 50
    assert store.count(COLL, Filter.of(Match("cluster", 9))) == 1
    assert store.retrieve(COLL, [ids[0]])[0].payload["area"] == 0  # merged, not replaced

"""A home's embedding spaces on both backends (SQLite + Qdrant Edge, Postgres + qdrant-client): the
``sam`` space stays the ``segments`` collection, extra spaces get ``segments.<space>``, identities are
recorded and checked, and label/cluster payload writes reach every space's collection."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from samsearch.errors import EmbeddingSpaceMismatch, NotFoundError
from samsearch.home import SEGMENTS, space_collection
from samsearch.identity import EmbeddingSpace
from samsearch.vectors import Filter, IsNull, Match

SAM = EmbeddingSpace("tiny-random", "seed0000000000000000", "maskpool-v1", 8)
DINO = EmbeddingSpace("dinov2-tiny-random", "seed0000000000000000", "maskpool-v1@224", 4)


def _ids(n):
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def test_spaces_are_recorded_checked_and_share_payload_writes(home):
    with pytest.raises(NotFoundError, match="no vectors in space 'dinov2-tiny-random'"):
        home.space("dinov2-tiny-random")
    home.claim_embedding_space(SAM)
    home.claim_space("dinov2-tiny-random", DINO)
    home.claim_space("dinov2-tiny-random", DINO)  # idempotent
    assert home.spaces() == {"sam": SAM, "dinov2-tiny-random": DINO}
    assert home.segment_collections() == [SEGMENTS, "segments.dinov2-tiny-random"]
    with pytest.raises(EmbeddingSpaceMismatch, match="cannot be mixed"):
        home.claim_space("dinov2-tiny-random", EmbeddingSpace("dinov2-tiny-random", "other", "maskpool-v1@224", 4))

    ids, rng = _ids(6), np.random.default_rng(0)
    payloads = [{"dataset": "d", "image_id": i} for i in range(6)]
    home.vectors.upsert(SEGMENTS, ids, rng.normal(size=(6, 8)), payloads)
    extra = space_collection("dinov2-tiny-random")
    home.vectors.upsert(extra, ids[:4], rng.normal(size=(4, 4)), payloads[:4])  # a space may lack segments

    home.set_segment_payload(ids[:5], {"label": "car", "label_source": "bank"}, last="dinov2-tiny-random")
    home.set_segment_payloads([(ids[:2], {"cluster": 1}), (ids[2:], {"cluster": 2})])
    for coll, n in ((SEGMENTS, 6), (extra, 4)):
        assert home.vectors.count(coll) == n  # payload writes never create points
        assert home.vectors.count(coll, Filter.of(Match("label", "car"))) == min(n, 5)
        assert home.vectors.count(coll, Filter.of(IsNull("label"))) == n - min(n, 5)
        got = {r.id: r.payload["cluster"] for b in home.vectors.scroll(coll) for r in b}
        assert got == {i: (1 if k < 2 else 2) for k, i in enumerate(ids[:n])}

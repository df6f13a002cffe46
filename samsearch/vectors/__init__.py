"""Vector stores: Qdrant Edge in-process (default) or a Qdrant server; both behind :class:`VectorStore`,
with one contract suite (tests/vectors/test_contract.py). May import ``samsearch.errors`` only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from samsearch.vectors.base import (
    FLOAT_FIELDS,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    Filter,
    Hit,
    IsNull,
    Match,
    Range,
    Record,
    VectorBatch,
    VectorStore,
    VectorStoreBusy,
    VectorStoreError,
)

__all__ = [
    "FLOAT_FIELDS",
    "INTEGER_FIELDS",
    "KEYWORD_FIELDS",
    "Filter",
    "Hit",
    "IsNull",
    "Match",
    "Range",
    "Record",
    "VectorBatch",
    "VectorStore",
    "VectorStoreBusy",
    "VectorStoreError",
    "open_vector_store",
]


def open_vector_store(
    root: Path, url: str | None = None, api_key: str | None = None, settings: Any = None
) -> VectorStore:
    """``url`` None: Qdrant Edge shards under ``root``; ``":memory:"``: qdrant-client's local mode
    (tests); anything else: the Qdrant server at ``url``, with ``settings`` (a
    :class:`~samsearch.vectors.server.QdrantSettings`; default: from the ``SAMSEARCH_QDRANT_*``
    environment). Backends are imported on demand."""
    if url is None:
        from samsearch.vectors.embedded import EmbeddedVectorStore

        # One process holds the shards; others read through it (samsearch.vectors.embedded).
        return EmbeddedVectorStore(Path(root), index_threshold=_index_threshold_from_env())
    from samsearch.vectors.server import QdrantSettings, ServerVectorStore

    if url == ":memory:":
        return ServerVectorStore(location=":memory:")
    return ServerVectorStore(url, settings=settings or QdrantSettings.from_env(api_key=api_key))


def _index_threshold_from_env() -> int:
    """``SAMSEARCH_INDEX_THRESHOLD``: points from which the embedded store builds an HNSW index (default
    20000; smaller collections are searched by a scan, which is fast at that size; 0 = never)."""
    raw = os.environ.get("SAMSEARCH_INDEX_THRESHOLD", "").strip()
    if not raw:
        return 20_000
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise VectorStoreError(f"SAMSEARCH_INDEX_THRESHOLD={raw!r}: expected a whole number of points >= 0")
    return value

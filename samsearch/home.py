"""A samsearch home: one folder holding the metadata database and the vector store.

Defaults are embedded: ``<home>/samsearch.db`` (SQLite) and ``<home>/vectors/`` (Qdrant Edge).
``SAMSEARCH_DATABASE_URL`` points the metadata at Postgres; ``SAMSEARCH_QDRANT_URL`` (and
``SAMSEARCH_QDRANT_API_KEY``) point the vectors at a Qdrant server, whose collection settings come from
the other ``SAMSEARCH_QDRANT_*`` variables (:class:`samsearch.vectors.server.QdrantSettings`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from samsearch.db import Database, Meta, default_sqlite_url, open_database
from samsearch.errors import EmbeddingSpaceMismatch
from samsearch.identity import EmbeddingSpace
from samsearch.vectors import VectorStore, open_vector_store

SEGMENTS = "segments"  # the vector collection holding one vector per stored segment


def default_home() -> Path:
    return Path(os.environ.get("SAMSEARCH_HOME") or Path.home() / ".samsearch").expanduser()


class Home:
    def __init__(
        self,
        root: Path | str | None = None,
        database_url: str | None = None,
        qdrant_url: str | None = None,
        qdrant_api_key: str | None = None,
        qdrant_settings: Any = None,
    ):
        self.root = Path(root).expanduser() if root is not None else default_home()
        self.root.mkdir(parents=True, exist_ok=True)
        url = database_url or os.environ.get("SAMSEARCH_DATABASE_URL") or default_sqlite_url(self.root)
        self.db: Database = open_database(url)
        self.qdrant_url = qdrant_url or os.environ.get("SAMSEARCH_QDRANT_URL") or None
        api_key = qdrant_api_key or os.environ.get("SAMSEARCH_QDRANT_API_KEY") or None
        try:
            # qdrant_settings: a QdrantSettings; default: SAMSEARCH_QDRANT_* (shards, replication, on-disk, ...)
            self.vectors: VectorStore = open_vector_store(self.root / "vectors", self.qdrant_url, api_key,
                                                          qdrant_settings)
        except BaseException:
            self.db.dispose()
            raise

    # -- embedding space -------------------------------------------------------------------------
    def embedding_space(self) -> EmbeddingSpace | None:
        with self.db.session() as s:
            row = s.get(Meta, "embedding_space")
            return EmbeddingSpace.from_dict(row.value) if row else None

    def claim_embedding_space(self, space: EmbeddingSpace) -> None:
        """Record ``space`` for an empty home, or check it matches what the home already holds."""
        with self.db.session() as s:
            row = s.execute(select(Meta).where(Meta.key == "embedding_space").with_for_update()).scalar()
            if row is None:
                s.add(Meta(key="embedding_space", value=space.as_dict()))
            elif EmbeddingSpace.from_dict(row.value) != space:
                held = EmbeddingSpace.from_dict(row.value)
                raise EmbeddingSpaceMismatch(
                    f"{self.root}: this home holds vectors from {held.describe()}; this run uses "
                    f"{space.describe()}; vectors from different models cannot be mixed "
                    "(use the same --model/--checkpoint, or another --home)"
                )
        self.vectors.ensure_collection(SEGMENTS, space.dim)

    def meta(self, key: str) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.get(Meta, key)
            return dict(row.value) if row else None

    def close(self) -> None:
        self.vectors.close()
        self.db.dispose()

    def __enter__(self) -> Home:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_home(root: Path | str | None = None, **kwargs: Any) -> Home:
    return Home(root, **kwargs)

"""A samsearch home: one folder holding the metadata database and the vector store.

Defaults are embedded: ``<home>/samsearch.db`` (SQLite) and ``<home>/vectors/`` (Qdrant Edge).
``SAMSEARCH_DATABASE_URL`` points the metadata at Postgres; ``SAMSEARCH_QDRANT_URL`` (and
``SAMSEARCH_QDRANT_API_KEY``) point the vectors at a Qdrant server, whose collection settings come from
the other ``SAMSEARCH_QDRANT_*`` variables (:class:`samsearch.vectors.server.QdrantSettings`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from samsearch.db import Database, Meta, default_sqlite_url, open_database
from samsearch.db.engine import DatabaseError, sqlite_file
from samsearch.errors import EmbeddingSpaceMismatch, NotFoundError
from samsearch.identity import EmbeddingSpace
from samsearch.vectors import VectorStore, open_vector_store

SEGMENTS = "segments"  # the vector collection holding one vector per stored segment (the ``sam`` space)
SAM_SPACE = "sam"  # the space ingest writes: SAM's encoder features pooled in each mask
SPACES_KEY = "spaces"  # meta row: {space name: EmbeddingSpace dict} of the extra spaces a home holds


def space_collection(space: str) -> str:
    """The collection of the vectors of ``space``: ``segments`` for ``sam`` (so homes made before spaces
    existed are unchanged), ``segments.<space>`` for every other one, with the same point ids and the same
    payload keys, so every filter reads the same in every space."""
    return SEGMENTS if space == SAM_SPACE else f"{SEGMENTS}.{space}"


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
        self.qdrant_url = qdrant_url or os.environ.get("SAMSEARCH_QDRANT_URL") or None
        api_key = qdrant_api_key or os.environ.get("SAMSEARCH_QDRANT_API_KEY") or None
        emptied = _zero_length_sqlite(url)
        if emptied is None:
            self.db: Database = open_database(url)
        try:
            # qdrant_settings: a QdrantSettings; default: SAMSEARCH_QDRANT_* (shards, replication, on-disk, ...)
            self.vectors: VectorStore = open_vector_store(self.root / "vectors", self.qdrant_url, api_key,
                                                          qdrant_settings)
        except BaseException:
            if emptied is None:
                self.db.dispose()
            raise
        if emptied is not None:
            try:
                _refuse_beside_vectors(emptied, self.vectors)
                self.db = open_database(url)
            except BaseException:
                self.vectors.close()
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
            else:
                self._check_space(EmbeddingSpace.from_dict(row.value), space)
        self.vectors.ensure_collection(SEGMENTS, space.dim)

    def check_embedding_space(self, space: EmbeddingSpace) -> None:
        """Raise :class:`EmbeddingSpaceMismatch` (one line) now if the home holds vectors from another
        space than ``space``; records nothing (a run checks before it loads or downloads any weights)."""
        held = self.embedding_space()
        if held is not None:
            self._check_space(held, space)

    def _check_space(self, held: EmbeddingSpace, space: EmbeddingSpace) -> None:
        if held != space:
            raise EmbeddingSpaceMismatch(
                f"{self.root}: this home holds vectors from {held.describe()}; this run uses "
                f"{space.describe()}; vectors from different models cannot be mixed "
                "(use the same --model/--checkpoint, or another --home)"
            )

    # -- embedding spaces: ``sam`` (the embedding_space above) plus extra ones (samsearch embed) --------
    def spaces(self) -> dict[str, EmbeddingSpace]:
        """Every space this home holds vectors in, by name (``sam`` first when the home has vectors)."""
        out: dict[str, EmbeddingSpace] = {}
        sam = self.embedding_space()
        if sam is not None:
            out[SAM_SPACE] = sam
        out.update({k: EmbeddingSpace.from_dict(v) for k, v in sorted((self.meta(SPACES_KEY) or {}).items())})
        return out

    def space(self, name: str) -> EmbeddingSpace:
        """The identity of space ``name`` in this home; NotFoundError (one line) if the home has none."""
        held = self.spaces()
        if name not in held:
            hint = f"spaces here: {', '.join(held)}" if held else "this home holds no vectors yet"
            how = "ingest images first" if name == SAM_SPACE else f"add it with `samsearch embed --space {name}`"
            raise NotFoundError(f"this home has no vectors in space {name!r} ({hint}; {how})")
        return held[name]

    def claim_space(self, name: str, space: EmbeddingSpace) -> None:
        """Record extra space ``name`` (not ``sam``: that one is :meth:`claim_embedding_space`) with its
        identity, or check it matches the one recorded; creates its collection."""
        if name == SAM_SPACE:
            self.claim_embedding_space(space)
            return
        with self.db.session() as s:
            row = s.execute(select(Meta).where(Meta.key == SPACES_KEY).with_for_update()).scalar()
            held = dict(row.value) if row else {}
            if name in held and EmbeddingSpace.from_dict(held[name]) != space:
                raise EmbeddingSpaceMismatch(
                    f"{self.root}: space {name!r} here holds vectors from "
                    f"{EmbeddingSpace.from_dict(held[name]).describe()}; this run uses {space.describe()} "
                    "(vectors from different weights cannot be mixed: use the same --weights, or another --home)")
            if name not in held:
                held[name] = space.as_dict()
                if row is None:
                    s.add(Meta(key=SPACES_KEY, value=held))
                else:
                    row.value = held  # a new dict: JSON columns only see reassignment
        self.vectors.ensure_collection(space_collection(name), space.dim)

    def segment_collections(self) -> list[str]:
        """The collections holding segment vectors: ``segments`` and one per extra space."""
        return [SEGMENTS] + [space_collection(n) for n in sorted(self.meta(SPACES_KEY) or {})]

    def _payload_collections(self, last: str) -> list[str]:
        """``segments`` and every existing space collection, the one of space ``last`` at the end: a job
        selecting its work by that space's payloads finds it undone if it crashes before that write."""
        extra = [c for c in self.segment_collections()[1:] if self.vectors.has_collection(c)]
        colls = [SEGMENTS, *extra]
        end = space_collection(last)
        return [c for c in colls if c != end] + [end] if end in colls else colls

    def set_segment_payload(self, ids: Sequence[str], payload: dict[str, Any], last: str = SAM_SPACE) -> None:
        """``set_payload`` on segment points in every space's collection: the one path by which labels and
        clusters reach the payloads, so every space agrees with SQL (a point a space lacks is skipped)."""
        for coll in self._payload_collections(last):
            self.vectors.set_payload(coll, ids, payload)

    def set_segment_payloads(self, groups: Iterable[tuple[Sequence[str], dict[str, Any]]],
                             last: str = SAM_SPACE) -> None:
        """``set_payloads`` of (ids, payload) groups to every space's collection (see set_segment_payload)."""
        colls = self._payload_collections(last)
        if len(colls) == 1:  # one space: stream the groups
            self.vectors.set_payloads(SEGMENTS, groups)
            return
        groups = list(groups)  # every collection gets the same groups
        for coll in colls:
            self.vectors.set_payloads(coll, groups)

    def claim_writes(self) -> None:
        """Refuse a write job before it writes anything: VectorStoreBusy (one line, naming the process)
        when another process holds this home's embedded vector store (``ingest``, ``worker``, ``serve``);
        from then on this process holds it. A no-op on a Qdrant server."""
        self.vectors.claim_writes()

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


def _zero_length_sqlite(url: str) -> Path | None:
    """The SQLite file of ``url`` when it exists and is empty (zero bytes), else None."""
    path = sqlite_file(url)
    try:
        return path if path is not None and path.stat().st_size == 0 else None
    except OSError:
        return None  # no file yet: a new home (or an error the database open reports)


def _refuse_beside_vectors(path: Path, vectors: VectorStore) -> None:
    """A zero-length SQLite file would become a new empty database and every stored vector would look
    orphaned (``doctor --repair`` would delete them): refuse unless the vector store is empty too."""
    if vectors.has_collection(SEGMENTS) and (n := vectors.count(SEGMENTS)) > 0:
        raise DatabaseError(
            f"{path}: the SQLite database is an empty (zero-length) file, but the vector store holds {n} "
            "segment vectors; refusing to start an empty database beside them (restore the database from a "
            "backup, or delete the file and the vectors folder to start over)")


def open_home(root: Path | str | None = None, **kwargs: Any) -> Home:
    return Home(root, **kwargs)

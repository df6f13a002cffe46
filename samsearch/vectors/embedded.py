"""The embedded vector store as samsearch commands open it: Qdrant Edge shards that one process holds
(reads and writes) while every other process reads through the holder and is refused writes.

See :mod:`samsearch.vectors.sharing` for the lock and the read server. A process that finds the root's
lock free takes it on its first call (any call: Edge opens a shard one process at a time) and then
answers the others' reads until it closes the store; a process that finds it held sends its reads to the
holder (``stats``, ``search``, ``doctor`` and ``serve`` beside an ``ingest`` or a ``worker``), and its
writes fail with :class:`~samsearch.vectors.base.VectorStoreBusy` naming the holder, before anything is
written (write jobs ask :meth:`claim_writes` before their first SQL write). When the holder ends, the
next call of a reader takes the lock itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from samsearch.vectors.base import Filter, Hit, Record, VectorBatch, VectorStoreBusy
from samsearch.vectors.edge import DISTANCE, EdgeVectorStore
from samsearch.vectors.sharing import HolderGone, HomeLock, RemoteReader, busy_error, socket_address


class EmbeddedVectorStore(EdgeVectorStore):
    """:class:`EdgeVectorStore` whose reads go to the process holding the root when another one does."""

    reader_wait_s = 10.0  # how long a read waits for a holder that does not answer (starting, ending)

    def _holder(self) -> RemoteReader | None:
        """None when this process holds the root (taking it if free), else the holder's reads."""
        with self._lock:
            if not self.home_lock or self._home.held:
                return None
            try:
                self._claim_home()
                return None
            except VectorStoreBusy:
                pass
        return RemoteReader(socket_address(self.root))

    def _read(self, op: str, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.reader_wait_s
        while True:
            holder = self._holder()
            if holder is None:
                return getattr(EdgeVectorStore, op)(self, *args, **kwargs)
            try:
                return getattr(holder, op)(*args, **kwargs)
            except HolderGone:
                if time.monotonic() >= deadline:
                    raise busy_error(self.root, HomeLock.read_owner(self.root), "reads") from None
                time.sleep(0.05)

    # -- reads -------------------------------------------------------------------------------------
    def count(self, name: str, flt: Filter | None = None) -> int:
        return self._read("count", name, flt)

    def index_status(self, name: str) -> tuple[int, int]:
        return self._read("index_status", name)

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        if not len(ids):
            return []
        return self._read("retrieve", name, ids, with_vectors=with_vectors)

    def search(self, name: str, vector: np.ndarray, k: int = 10, flt: Filter | None = None,
               min_score: float | None = None, exact: bool = False) -> list[Hit]:
        return self._read("search", name, vector, k=k, flt=flt, min_score=min_score, exact=exact)

    def search_batch(self, name: str, vectors: np.ndarray, k: int = 10, flt: Filter | None = None) -> list[list[Hit]]:
        return self._read("search_batch", name, vectors, k=k, flt=flt)

    def recommend(self, name: str, positive: Sequence[str], negative: Sequence[str] = (), k: int = 10,
                  flt: Filter | None = None, strategy: str = "best_score") -> list[Hit]:
        return self._read("recommend", name, positive, negative, k=k, flt=flt, strategy=strategy)

    def scroll_page(self, name: str, flt: Filter | None, offset: str | None, limit: int, with_vectors: bool = False,
                    payload_fields: Sequence[str] | None = None) -> tuple[Any, str | None]:
        return self._read("scroll_page", name, flt, offset, limit, with_vectors=with_vectors,
                          payload_fields=payload_fields)

    def scroll(self, name: str, flt: Filter | None = None, batch_size: int = 1024,
               with_vectors: bool = False) -> Iterator[list[Record]]:
        if self._holder() is None:
            yield from super().scroll(name, flt, batch_size, with_vectors)
            return
        offset: str | None = None
        while True:  # page by page, each through whoever holds the root then
            records, offset = self.scroll_page(name, flt, offset, batch_size, with_vectors=with_vectors)
            if records:
                yield records
            if offset is None:
                return

    def scroll_vectors(self, name: str, flt: Filter | None = None, batch_size: int = 4096,
                       payload_fields: Sequence[str] = ()) -> Iterator[VectorBatch]:
        if self._holder() is None:
            yield from super().scroll_vectors(name, flt, batch_size, payload_fields)
            return
        offset: str | None = None
        while True:
            batch, offset = self.scroll_page(name, flt, offset, batch_size, payload_fields=list(payload_fields))
            if batch.ids:
                yield batch
            if offset is None:
                return

    # -- writes --------------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int) -> None:
        """As EdgeVectorStore's; beside a holder, a collection that exists with this dimension is fine
        (nothing to write), a missing one is VectorStoreBusy."""
        try:
            super().ensure_collection(name, dim)
        except VectorStoreBusy:
            meta = self._read_meta(name)
            if meta is None or meta.get("dim") != dim or meta.get("distance") != DISTANCE:
                raise

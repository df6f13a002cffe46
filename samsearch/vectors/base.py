"""The one interface every vector backend implements.

Two implementations live beside this module: ``edge.py`` (Qdrant Edge, in-process, on disk; the
embedded default) and ``server.py`` (a Qdrant server through ``qdrant-client``; its ``":memory:"``
mode stands in for a server in tests). ``tests/test_vectors_contract.py`` runs one suite against both.

Point ids are UUID strings. Vectors are float32, compared by cosine similarity (the stores keep them
L2-normalised, so cosine == dot product). Filters are our own small value objects, translated by each
backend into its native filter, so filtering always runs inside the store.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from samsearch.errors import SamsearchError

# Payload fields the stores index so that filtered queries never scan everything.
# keyword fields hold strings, integer fields ints, float fields floats.
KEYWORD_FIELDS = ("image_hash", "dataset", "label", "label_source", "bank", "settings_hash", "source")
INTEGER_FIELDS = ("image_id", "cluster", "area")
FLOAT_FIELDS = ("label_score",)


class VectorStoreError(SamsearchError, RuntimeError):
    """A vector backend failed or refused; the message is one line and says what to do (the CLI
    prints it as ``Error: ...``, exit code 1)."""


class VectorStoreBusy(VectorStoreError):
    """Another process holds the embedded vector store this one needs (to write, or to read when the holder
    does not answer reads); ``owner``: what is known of it (pid, command, started)."""

    def __init__(self, message: str, owner: dict[str, Any] | None = None):
        super().__init__(message)
        self.owner = dict(owner or {})


@dataclass(frozen=True)
class Match:
    """``field == value``, or ``field`` in ``values`` when a list/tuple is given."""

    field: str
    value: Any


@dataclass(frozen=True)
class Range:
    """``gte <= field <= lte`` (either bound may be None)."""

    field: str
    gte: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class IsNull:
    """The field is missing or null (e.g. unlabeled segments)."""

    field: str


@dataclass(frozen=True)
class Filter:
    """All of ``must`` hold and none of ``must_not`` hold."""

    must: tuple[Match | Range | IsNull, ...] = ()
    must_not: tuple[Match | Range | IsNull, ...] = ()

    @staticmethod
    def of(*must: Match | Range | IsNull, must_not: Sequence[Match | Range | IsNull] = ()) -> Filter | None:
        if not must and not must_not:
            return None
        return Filter(tuple(must), tuple(must_not))


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None


@dataclass
class VectorBatch:
    """One batch of :meth:`VectorStore.scroll_vectors`: ids, their vectors as one matrix, chosen payloads."""

    ids: list[str]
    vectors: np.ndarray  # (len(ids), dim) float32
    payloads: list[dict[str, Any]]  # only the requested fields (those a point has)


@runtime_checkable
class VectorStore(Protocol):
    """A set of named collections of fixed-dimension cosine vectors with JSON payloads."""

    def ensure_collection(self, name: str, dim: int) -> None:
        """Create the collection (with payload indexes) if missing; raise VectorStoreError if it
        exists with another dimension or distance."""

    def has_collection(self, name: str) -> bool: ...

    def drop_collection(self, name: str) -> None:
        """Delete the collection and everything in it; no error if missing."""

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        """Insert or replace points; durable when it returns (wait=True on the server)."""

    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    def delete_by_filter(self, name: str, flt: Filter) -> None: ...

    def set_payload(self, name: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Merge the same ``payload`` keys into every listed point (one call, not one per point)."""

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        """Existing points among ``ids`` (missing ids are simply absent), in the order given."""

    def search(
        self,
        name: str,
        vector: np.ndarray,
        k: int = 10,
        flt: Filter | None = None,
        min_score: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        """Top-``k`` by cosine similarity, best first."""

    def search_batch(
        self, name: str, vectors: np.ndarray, k: int = 10, flt: Filter | None = None
    ) -> list[list[Hit]]:
        """One top-``k`` list per query row."""

    def recommend(
        self,
        name: str,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        k: int = 10,
        flt: Filter | None = None,
        strategy: str = "best_score",
    ) -> list[Hit]:
        """Top-``k`` points like the stored ``positive`` points and unlike the ``negative`` ones (Qdrant's
        recommend query), best first; the examples themselves are never returned. ``strategy``:
        ``"best_score"`` ranks a point by its best similarity to a positive when that beats its best
        similarity to a negative, else below every such point by that negative similarity (scores are
        Qdrant's, not cosines); ``"sum_scores"`` by the sum of its similarities to the positives minus
        the sum to the negatives. An example id that is not stored is a VectorStoreError."""

    def scroll(
        self,
        name: str,
        flt: Filter | None = None,
        batch_size: int = 1024,
        with_vectors: bool = False,
    ) -> Iterator[list[Record]]:
        """Every matching point, in batches, ordered by id."""

    def scroll_vectors(
        self,
        name: str,
        flt: Filter | None = None,
        batch_size: int = 4096,
        payload_fields: Sequence[str] = (),
    ) -> Iterator[VectorBatch]:
        """Every matching point with its vector, ordered by id, a float32 matrix per batch and only
        ``payload_fields`` of the payloads: the read of batch jobs over millions of points (``scroll``
        builds a Record and an array per point)."""

    def set_payloads(self, name: str, groups: Iterable[tuple[Sequence[str], dict[str, Any]]]) -> None:
        """``set_payload`` for each (ids, payload) group, durable once at the end (one flush, not one per
        group): batch jobs writing many groups, e.g. one per cluster or label."""

    def deferred_flush(self) -> AbstractContextManager[None]:
        """Writes inside the block skip their per-write flush; one flush happens on exit. A process crash
        inside loses nothing already written (the WAL has it); a power cut may lose the block's writes."""

    def bulk_load(self, name: str, report: Callable[[str], None] | None = None) -> AbstractContextManager[None]:
        """Many writes to ``name`` follow (ingest, ``worker --drain``): build no vector index while inside;
        when the outermost block ends normally, the index covers everything written (``report`` gets a line
        at the start and end of a build that takes time). A no-op where the store indexes by itself."""

    def finish_index(self, name: str, report: Callable[[str], None] | None = None) -> None:
        """Index everything written to ``name`` so far, as the end of ``bulk_load`` does, even inside an
        open block (a worker whose queue ran dry). A no-op where the store indexes by itself."""

    def index_status(self, name: str) -> tuple[int, int]:
        """(points, points in the vector index) of ``name``: points outside it are scanned by search."""

    def count(self, name: str, flt: Filter | None = None) -> int: ...

    def claim_writes(self) -> None:
        """Make sure this process may write: VectorStoreBusy (one line, naming the other process) when
        another one holds an embedded store. Write jobs call it before their first SQL write, so that a
        refused job changes nothing. A no-op on a Qdrant server (any number of writers)."""

    def close(self) -> None: ...


# -- helpers shared by the backends ------------------------------------------------------------------

RECOMMEND_STRATEGIES = ("best_score", "sum_scores")


def check_examples(positive: Sequence[str], negative: Sequence[str], strategy: str) -> tuple[list[str], list[str]]:
    """The example ids as canonical UUID strings (each once; one given as both is an error)."""
    if strategy not in RECOMMEND_STRATEGIES:
        raise VectorStoreError(f"recommend strategy must be one of {', '.join(RECOMMEND_STRATEGIES)}, "
                               f"not {strategy!r}")
    pos, neg = (list(dict.fromkeys(_canonical(i) for i in ids)) for ids in (positive, negative))
    if not pos:
        raise VectorStoreError("recommend needs at least one positive example")
    both = set(pos) & set(neg)
    if both:
        raise VectorStoreError(f"point {sorted(both)[0]} is both a positive and a negative example")
    return pos, neg


def _canonical(i: str) -> str:
    try:
        return str(uuid.UUID(str(i)))
    except ValueError:
        raise VectorStoreError(f"example {str(i)[:80]!r} is not a point id (a UUID)") from None



def unit_rows(vectors: np.ndarray | Sequence[float], dim: int) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``(n, dim)`` matrix with L2-normalised rows (a 1-D vector
    becomes one row; all-zero rows stay zero); VectorStoreError on a wrong dimension or NaN/inf."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise VectorStoreError(f"expected vectors of dimension {dim}, got an array of shape {x.shape}")
    if not np.isfinite(x).all():
        raise VectorStoreError("vectors contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1), dtype=np.float32)


def plain_value(value: Any) -> Any:
    """numpy scalars become Python scalars (neither backend serialises numpy types)."""
    return value.item() if isinstance(value, np.generic) else value


def plain_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: plain_value(v) for k, v in payload.items()}


def in_order(ids: Sequence[str], found: dict[str, Record]) -> list[Record]:
    """The records of ``found`` (keyed by canonical lowercase UUID, as both backends return ids) in
    the order of ``ids``, each once; ids without a record are skipped."""
    out: list[Record] = []
    seen: set[str] = set()
    for i in ids:
        try:
            key = str(uuid.UUID(str(i)))
        except ValueError:
            key = str(i)
        if key in found and key not in seen:
            seen.add(key)
            out.append(found[key])
    return out

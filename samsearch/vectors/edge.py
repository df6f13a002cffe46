"""Qdrant Edge backend: every collection is an in-process Edge shard in ``<root>/<name>/``.

Durability: ``EdgeShard.update`` appends to the shard's write-ahead log (memory-mapped) before it
returns, so a write survives a crash of this process (kill -9) without a flush; ``flush()`` msyncs the
WAL and segments, which is what survives a power cut or kernel crash. With ``fsync=True`` (default)
every write method flushes before it returns.

Indexing: Edge runs no background optimizer, so a shard stays one brute-force segment until ``optimize``
builds HNSW. This store runs it inside ``upsert`` once ``index_threshold`` points (or 10% of the
collection, whichever is more) were written since the last run, and on demand through
:meth:`EdgeVectorStore.optimize`; inside :meth:`EdgeVectorStore.bulk_load` (ingest, ``worker --drain``)
no build runs until the block ends, then one build covers the whole run. qdrant-edge 0.9.0 holds the GIL
during upsert, scroll, flush and optimize, so an optimize blocks every Python thread of the process
(seconds per 20k new 256-d points on 2 cores): that closing build (and :meth:`EdgeVectorStore.finish_index`)
runs in a child process that opens the closed shard, optimizes and exits; the shard is reopened (and
warmed) by its next use, or at once by :meth:`EdgeVectorStore.finish_index` (a worker whose queue ran dry
reopens while idle rather than in its next write). Flush and close before the build, and the reopen,
hold the GIL (at 300k points on a quiet 2-core machine: close 0.7 s, reopen 1.3 s). Periodic flushes
(every 20k points) were tried and dropped: each held the GIL up to 2.75 s while writing.
Payload updates release the GIL but take it back often: next
to a Python thread that never waits, a 60k-point ``set_payload`` took 19 s instead of under one, so bulk
jobs keep other threads in C code (SQL statements) while payloads are written.

Filtering: the payload fields of ``base`` get keyword/integer/float indexes; ``dataset``, ``label`` and
``cluster`` also get per-value HNSW links (see ``LINKED_FIELDS``). A filter covered by links walks the
graph; any other filter (a field without links, or ``label``/``cluster`` written after the segment was
indexed, so without their links) is routed by its estimated number of matches (from the payload index):
up to ``exact_filter_max`` it is answered exactly over just those matches (the payload index lists
them, only they are scored), above it by HNSW with ACORN, which finds enough matching neighbours when
matches are common. At 1M points a label of 20 written after indexing (50k matches) had recall@10 0.72
with ACORN and 1.0 exactly, at 7 ms.

Threads: one re-entrant lock serialises every call into Edge (most calls hold the GIL anyway, so
little is lost); building the points of a batch happens outside it. Only one process (and one
store) may open a shard directory at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

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
    VectorStoreBusy,
    VectorStoreError,
    check_examples,
    in_order,
    plain_payload,
    plain_value,
    unit_rows,
)
from samsearch.vectors.sharing import HomeLock, ReadServer, busy_error, socket_address, wait_for

META_FILE = "samsearch.json"  # {"dim": ..., "distance": "cosine"}, written before the shard
DISTANCE = "cosine"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class _Collection:
    shard: qe.EdgeShard
    dim: int
    since_optimize: int  # points written since the last optimize (upper bound of unindexed ones)
    size_at_optimize: int  # points in the shard after the last optimize
    linked: frozenset[str] = frozenset()  # LINKED_AT_INGEST fields whose index has per-value links here
    indexes_deferred: bool = False  # payload indexes dropped while a bulk_load fills it from empty

    def wants_optimize(self, threshold: int) -> bool:
        # Each optimize may rebuild the HNSW of everything (Qdrant merges the new segment into the
        # indexed one), so past 10x the threshold wait for 10% new points: total build work stays
        # ~linear in the collection size, and at most ~10% of it is searched brute force.
        return threshold > 0 and self.since_optimize >= max(threshold, self.size_at_optimize // 10)


# Fields whose index also builds per-value HNSW links (Qdrant's payload-aware HNSW), so a filter on one
# value keeps a connected graph: without them, filtering on 1 dataset of 10 at 1M points found 4 % of
# the true top 10 (42 % with ACORN, 98 % only with ACORN at ef=1024, ~65 ms). ``dataset`` is written at
# ingest, so every indexed segment has its links; ``label`` and ``cluster`` are written later (labeling,
# clustering), so only segments indexed (or merged) after that carry theirs.
LINKED_FIELDS = ("dataset", "label", "cluster")
LINKED_AT_INGEST = ("dataset",)  # filters on these alone need no ACORN (it costs ~5-10x latency)


def _index_schemas() -> dict[str, Any]:
    # enable_hnsw=False elsewhere: per-value links on every field made optimize ~8x slower on 100k points
    # (195 s vs 23 s); on the three fields above, ~2.3x on 200k points with dataset and label both set.
    # Other filtered searches use the payload index (selective filters) or ACORN.
    schemas: dict[str, Any] = {f: qe.KeywordIndexParams(enable_hnsw=f in LINKED_FIELDS) for f in KEYWORD_FIELDS}
    schemas.update({f: qe.IntegerIndexParams(lookup=True, range=True, enable_hnsw=f in LINKED_FIELDS)
                    for f in INTEGER_FIELDS})
    schemas.update({f: qe.FloatIndexParams(enable_hnsw=False) for f in FLOAT_FIELDS})
    return schemas


def _needs_acorn(flt: Filter, linked: frozenset[str]) -> bool:
    """ACORN unless every required condition matches values of a field with per-value links (``must_not``
    alone, e.g. "not this image", removes few points and needs none)."""
    return not all(isinstance(c, Match) and c.field in linked for c in flt.must)


def _condition(c: Match | Range | IsNull) -> Any:
    if isinstance(c, Match):
        value = c.value
        if isinstance(value, (list, tuple, set, frozenset)):
            values = [plain_value(v) for v in value]
            if any(isinstance(v, float) for v in values):
                raise VectorStoreError(f"Match on {c.field!r}: a list of floats cannot be matched; use Range")
            return qe.FieldCondition(c.field, match=qe.MatchAny(values))
        value = plain_value(value)
        if isinstance(value, float):  # exact float equality has no keyword/integer match in Qdrant
            return qe.FieldCondition(c.field, range=qe.RangeFloat(gte=value, lte=value))
        return qe.FieldCondition(c.field, match=qe.MatchValue(value))
    if isinstance(c, Range):
        gte = None if c.gte is None else float(c.gte)
        lte = None if c.lte is None else float(c.lte)
        return qe.FieldCondition(c.field, range=qe.RangeFloat(gte=gte, lte=lte))
    if isinstance(c, IsNull):
        # Qdrant's is_null needs an explicit null; is_empty also matches a missing key.
        return qe.IsEmptyCondition(c.field)
    raise VectorStoreError(f"unsupported filter condition {c!r}")


def to_edge_filter(flt: Filter | None) -> qe.Filter | None:
    if flt is None or (not flt.must and not flt.must_not):
        return None
    try:
        return qe.Filter(
            must=[_condition(c) for c in flt.must] or None,
            must_not=[_condition(c) for c in flt.must_not] or None,
        )
    except (TypeError, ValueError) as exc:  # e.g. a list mixing strings and integers
        raise VectorStoreError(f"cannot express {flt} as a Qdrant filter: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class EdgeVectorStore:
    """Collections as Qdrant Edge shards under ``root`` (see the module docstring for semantics).

    ``fsync``: flush to disk at the end of every write (survives power loss); False leaves durability
    to the WAL (survives a process crash) until ``flush()``/``close()``. ``index_threshold``: build
    HNSW, inside ``upsert``, every this many written points or 10% of the collection if more (0
    disables; then call ``optimize``). ``hnsw_ef``: search-time beam width (None = Qdrant's default).
    ``exact_filter_max``: a filter without per-value links matching at most this many points is searched
    exactly over its matches (see the module docstring). ``build_in_child``: the closing build of
    :meth:`bulk_load` (and :meth:`finish_index`) runs in a child process when it will index something,
    so this process's threads keep running (see :meth:`_build_in_child`).
    """

    def __init__(
        self, root: Path, *, fsync: bool = True, index_threshold: int = 20_000, hnsw_ef: int | None = None,
        exact_filter_max: int = 60_000, build_in_child: bool = True, home_lock: bool = True,
    ) -> None:
        self.root = Path(root)
        self.build_in_child = build_in_child
        self.exact_filter_max = exact_filter_max
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.index_threshold = index_threshold
        self.hnsw_ef = hnsw_ef
        self._lock = threading.RLock()
        self._open: dict[str, _Collection] = {}
        self._bulk: dict[str, int] = {}  # collection -> open bulk_load blocks (no index builds while > 0)
        self._warm_on_open: set[str] = set()  # rebuilt by a child: warm the shard when it is next opened
        self.last_child_build: dict[str, float] = {}  # seconds of the last child build's steps
        # The root's advisory lock (samsearch.vectors.sharing), taken before any shard or meta is touched
        # and held until close(); home_lock=False only where the holder vouches (its index-build child).
        self.home_lock = home_lock
        self._home = HomeLock(self.root)
        self._reads: ReadServer | None = None  # answers other processes' reads while the lock is held

    # -- the home lock -----------------------------------------------------------------------------
    def _claim_home(self) -> None:
        """Hold the root's lock before opening, creating or dropping a shard or writing a meta file: a
        second process's ``EdgeShard.load`` damages the holder's open shard before qdrant-edge's own lock
        refuses it. VectorStoreBusy, with nothing touched, when another process or store holds it."""
        with self._lock:
            if not self.home_lock or self._home.held:
                return
            if not self._home.try_acquire():
                raise busy_error(self.root, HomeLock.read_owner(self.root))
            self._reads = ReadServer.start(self, socket_address(self.root), self._lock)

    def claim_writes(self, wait_s: float = 15.0) -> None:
        """Hold the root's lock for writing (see VectorStore.claim_writes). A holder that only reads (a
        ``stats`` or ``search`` that opened the store first) is waited for up to ``wait_s`` seconds."""
        if not self.home_lock:
            return
        refusal: list[VectorStoreBusy] = []

        def took() -> bool:
            try:
                self._claim_home()
                return True
            except VectorStoreBusy as exc:
                if exc.owner.get("mode") == "write":
                    raise busy_error(self.root, exc.owner) from None
                refusal[:] = [exc]
                return False

        if not wait_for(took, wait_s):
            raise busy_error(self.root, refusal[0].owner if refusal else {})
        self._home.set_mode("write")

    def _release_home(self) -> None:
        with self._lock:
            reads, self._reads = self._reads, None
            if reads is not None:
                reads.close()
            self._home.release()

    # -- collections -----------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise VectorStoreError(f"invalid collection name {name!r} (letters, digits, '_', '-', '.')")
        return self.root / name

    def _read_meta(self, name: str) -> dict[str, Any] | None:
        path = self._dir(name) / META_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise VectorStoreError(f"cannot read {path}: {_one_line(exc)}") from exc

    def _config(self, dim: int) -> qe.EdgeConfig:
        threshold_kb = max(1, self.index_threshold * dim * 3 // 1024) if self.index_threshold else None
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, memory=qe.Memory.Cached),
            hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000),
            # Qdrant's indexing threshold is in KB of vectors: make it match ours (with slack), so that
            # an optimize we trigger indexes what was written.
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=threshold_kb),
        )

    @contextmanager
    def _errors(self, what: str, name: str) -> Iterator[None]:
        try:
            yield
        except VectorStoreError:
            raise
        except Exception as exc:  # the bindings raise bare Exception
            msg = _one_line(exc)
            if "WouldBlock" in msg:
                raise VectorStoreError(
                    f"{self._dir(name)} is in use by another process or store (an embedded vector store "
                    "has one user at a time; stop it, or use a Qdrant server via SAMSEARCH_QDRANT_URL)"
                ) from exc
            raise VectorStoreError(f"qdrant-edge {what} on collection {name!r} failed: {msg}") from exc

    def ensure_collection(self, name: str, dim: int) -> None:
        with self._lock:
            self._claim_home()
            path = self._dir(name)
            meta = self._read_meta(name)
            if meta is None:
                path.mkdir(parents=True, exist_ok=True)
                tmp = path / (META_FILE + ".tmp")
                tmp.write_text(json.dumps({"dim": int(dim), "distance": DISTANCE}))
                os.replace(tmp, path / META_FILE)  # atomic: a half-written meta never exists
            elif meta.get("dim") != dim or meta.get("distance") != DISTANCE:
                raise VectorStoreError(
                    f"collection {name!r} in {path} holds {meta.get('dim')}-d {meta.get('distance')} "
                    f"vectors, not {dim}-d {DISTANCE} (use another home, or drop the collection)"
                )
            self._get(name)

    def has_collection(self, name: str) -> bool:
        return name in self._open or (self._dir(name) / META_FILE).exists()

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._claim_home()
            coll = self._open.pop(name, None)
            if coll is not None:
                with self._errors("close", name):
                    coll.shard.close()
            shutil.rmtree(self._dir(name), ignore_errors=True)

    def _get(self, name: str) -> _Collection:
        """The open collection, loading (or creating, right after ``ensure_collection`` wrote its meta)
        its shard on first use; payload indexes are added if any is missing."""
        with self._lock:
            coll = self._open.get(name)
            if coll is not None:
                return coll
            self._claim_home()
            meta = self._read_meta(name)
            if meta is None:
                raise VectorStoreError(
                    f"no collection {name!r} in {self.root} (ensure_collection creates it)"
                )
            path, dim = self._dir(name), int(meta["dim"])
            with self._errors("open", name):
                if (path / "edge_config.json").exists():
                    shard = qe.EdgeShard.load(str(path), self._config(dim))
                else:
                    shard = qe.EdgeShard.create(str(path), self._config(dim))
                try:
                    info = _add_missing_indexes(shard)
                except Exception:
                    shard.close()  # release the directory lock, or a retry would find it taken
                    raise
            unindexed = max(0, info.points_count - info.indexed_vectors_count)
            coll = _Collection(shard, dim, unindexed, info.points_count - unindexed, _linked_fields(info))
            self._open[name] = coll
            if name in self._warm_on_open:
                self._warm_on_open.discard(name)
                self._warm_up(coll)
            return coll

    # -- writes ------------------------------------------------------------------------------------
    def _write(self, name: str, coll: _Collection, op: Any, what: str) -> None:
        with self._errors(what, name):
            coll.shard.update(op)
            if self.fsync:
                coll.shard.flush()

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        if len(ids) != len(payloads) or len(ids) != len(vectors):
            raise VectorStoreError(
                f"upsert: {len(ids)} ids, {len(vectors)} vectors and {len(payloads)} payloads differ"
            )
        if not len(ids):
            return
        coll = self._get(name)
        x = unit_rows(vectors, coll.dim)
        # Converting payload dicts is most of an upsert's cost: do it before taking the lock.
        points = [
            qe.Point(str(i), row.tolist(), plain_payload(p))
            for i, row, p in zip(ids, x, payloads, strict=True)
        ]
        with self._lock:
            coll = self._get(name)
            self._write(name, coll, qe.UpdateOperation.upsert_points(points), "upsert")
            coll.since_optimize += len(points)
            if name not in self._bulk and coll.wants_optimize(self.index_threshold):
                self._optimize(name, coll)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if not len(ids):
            return
        with self._lock:
            op = qe.UpdateOperation.delete_points([str(i) for i in ids])
            self._write(name, self._get(name), op, "delete")

    def delete_by_filter(self, name: str, flt: Filter) -> None:
        edge_flt = to_edge_filter(flt)
        if edge_flt is None:
            raise VectorStoreError("delete_by_filter needs a non-empty filter (drop_collection deletes all)")
        with self._lock:
            self._write(name, self._get(name), qe.UpdateOperation.delete_points_by_filter(edge_flt), "delete")

    def set_payload(self, name: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if not len(ids) or not payload:
            return
        # By id filter: one operation, and ids that do not exist are skipped rather than failing it.
        flt = qe.Filter(must=[qe.HasIdCondition({str(i) for i in ids})])
        op = qe.UpdateOperation.set_payload_by_filter(flt, plain_payload(payload))
        with self._lock:
            self._write(name, self._get(name), op, "set_payload")

    @contextmanager
    def deferred_flush(self) -> Iterator[None]:
        """Writes inside skip the per-write flush (each is still in the WAL, so a process crash loses
        nothing); one flush on exit. Bulk jobs (labeling) use it: a flush per small write costs more than
        the write. Nested blocks flush once, at the outermost exit."""
        with self._lock:
            saved, self.fsync = self.fsync, False
        try:
            yield
        finally:
            with self._lock:
                self.fsync = saved
            if saved:
                self.flush()

    @contextmanager
    def bulk_load(self, name: str, report: Callable[[str], None] | None = None) -> Iterator[None]:
        """Writes to ``name`` inside build no index (each incremental build holds the GIL and stalls the
        whole process, and the builds together cost more than one at the end); on a normal exit of the
        outermost block, one build covers everything not yet indexed, so search is at indexed speed when
        the block returns. ``report`` gets a line when the build starts and when it ends. A crash before or
        during the build loses nothing (the WAL has every write): the next ``bulk_load`` exit, or the next
        ``upsert`` past the threshold, or ``optimize``, builds what is still unindexed."""
        with self._lock:
            self._bulk[name] = self._bulk.get(name, 0) + 1
            if self._bulk[name] == 1:
                self._defer_indexes(name)
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._lock:
                self._bulk[name] -= 1
                outermost = self._bulk[name] == 0
                if outermost:
                    del self._bulk[name]
                if outermost and ok and self.has_collection(name):
                    self._build_after_bulk(name, report)
                elif outermost and (coll := self._open.get(name)) is not None and coll.indexes_deferred:
                    self._restore_indexes(name, coll)  # a failed block: filters keep their indexes

    def _defer_indexes(self, name: str) -> None:
        """A bulk load into an empty collection drops its payload indexes; the closing build (in its child
        process) adds them back before it builds HNSW. Keeping them up to date while writing made every
        upsert 1.75x slower and the flush, close and reopen around the build 3-6x longer (GIL held): at
        100k points flush 1.04 s -> 0.26 s, close 0.31 -> 0.05 s. Filters inside the block still answer
        right (by a scan of the unindexed points, which they are anyway)."""
        if not (self.build_in_child and self.index_threshold > 0 and self.has_collection(name)):
            return
        coll = self._get(name)
        with self._errors("info", name):
            info = coll.shard.info()
            if info.points_count:
                return
            for field_name in _index_schemas():
                if field_name in info.payload_schema:
                    coll.shard.update(qe.UpdateOperation.delete_field_index(field_name))
        coll.indexes_deferred, coll.linked = True, frozenset()

    def _restore_indexes(self, name: str, coll: _Collection) -> None:
        """Add the payload indexes :meth:`_defer_indexes` dropped (in this process; the child build adds
        them itself) and the links they carry."""
        with self._errors("create_field_index", name):
            coll.linked = _linked_fields(_add_missing_indexes(coll.shard))
        coll.indexes_deferred = False

    def _build_after_bulk(self, name: str, report: Callable[[str], None] | None) -> None:
        coll = self._get(name)
        total = coll.size_at_optimize + coll.since_optimize
        # Qdrant indexes a segment from ~0.75x index_threshold points (see _config): below that an
        # optimize only merges segments, which is quick, so it runs here without a word.
        indexes = self.index_threshold > 0 and total >= self.index_threshold * 3 // 4
        child = self.build_in_child
        if coll.indexes_deferred and not (indexes and child and coll.since_optimize > 0):
            self._restore_indexes(name, coll)  # no child build to add them: here (a small collection)
        if coll.since_optimize <= 0:
            return
        if not indexes:
            self._optimize(name, coll)
            return
        if report is not None:
            report(f"building the vector index of {name!r} ({coll.since_optimize:,} new of ~{total:,} points"
                   + ("; in a child process)" if child else "; the process is busy until it ends)"))
        t0 = time.perf_counter()
        if child:
            self._build_in_child(name, report)
        else:
            self._optimize(name, coll)
            if self.fsync:
                with self._errors("flush", name):
                    coll.shard.flush()
        if report is not None:
            if child and "points" in self.last_child_build:  # the child's counts: reopening costs seconds
                points, indexed = self.last_child_build["points"], self.last_child_build["indexed"]
            else:
                points, indexed = self.index_status(name)
            report(f"built the vector index of {name!r} in {time.perf_counter() - t0:.1f} s "
                   f"({indexed:,} of {points:,} points indexed)")

    def _build_in_child(self, name: str, report: Callable[[str], None] | None, every: float = 30.0) -> None:
        """Close the shard, let a child process open it and optimize, reopen it: qdrant-edge holds the GIL
        for the whole build, so in this process it would stop every thread (loaders, heartbeats, a server)
        for minutes; waiting on a child releases it. Called with ``self._lock`` held, so other threads'
        calls into this store wait for the build instead of finding the shard closed. The child dies with
        this process (PDEATHSIG on Linux), and a killed build leaves a store the next build finishes."""
        t0 = time.perf_counter()
        coll = self._open.pop(name)
        with self._errors("close", name):
            coll.shard.flush()
            coll.shard.close()  # releases the directory lock for the child
        t_closed = time.perf_counter()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very code
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-c", "from samsearch.vectors.edge import _child_optimize; _child_optimize()",
               str(self.root), name, str(self.index_threshold)]
        # stdout: one JSON line with the built shard's counts; stderr: why it failed
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            while True:
                try:
                    proc.wait(timeout=every)  # sleeps without the GIL
                    break
                except subprocess.TimeoutExpired:
                    if report is not None:
                        report(f"  still building the vector index of {name!r}: {time.perf_counter() - t0:.0f} s")
            out = proc.stdout.read() if proc.stdout is not None else ""
            err = proc.stderr.read() if proc.stderr is not None else ""
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C, an exception): stop the build, it resumes later
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        if proc.returncode != 0:
            tail = " ".join(err.split())[-300:]
            raise VectorStoreError(f"the index build of {name!r} in a child process failed "
                                   f"(exit {proc.returncode}): {tail or 'no message'}")
        t_built = time.perf_counter()
        # The shard is reopened (and warmed) by its next use, not here: loading a 300k-point shard holds
        # the GIL for ~1.5 s, which a run that has finished writing (ingest's last step) never needs to pay.
        self._warm_on_open.add(name)
        self.last_child_build = {"close_s": round(t_closed - t0, 2), "child_s": round(t_built - t_closed, 2)}
        with contextlib.suppress(ValueError, IndexError, AttributeError):  # the child's counts, if it said them
            self.last_child_build.update({k: int(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()})

    @staticmethod
    def _warm_up(coll: _Collection, queries: int = 1000, seconds: float = 2.0) -> None:
        """A freshly opened shard answers its first searches several times slower (at 300k points after a
        child build: p50 5.8 ms over the first 200, 1.5 ms later; 200 warm-up searches were not enough):
        search with stored vectors now, up to ``queries`` of them or ``seconds``, so that the first user
        searches after a build are at indexed speed. One query at a time: each holds the GIL ~1 ms."""
        records, _ = coll.shard.scroll(qe.ScrollRequest(limit=queries, with_payload=False, with_vector=True))
        deadline = time.perf_counter() + seconds
        for r in records:
            coll.shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(list(r.vector)), with_payload=True))
            if time.perf_counter() > deadline:
                break

    def finish_index(self, name: str, report: Callable[[str], None] | None = None) -> None:
        """Build the index over everything written but not yet indexed, as the end of :meth:`bulk_load`
        does, even inside an open block: a worker calls it when its queue runs dry."""
        with self._lock:
            if self.has_collection(name):
                self._build_after_bulk(name, report)
                self._get(name)  # reopen now, while idle, not in the next write

    def index_status(self, name: str) -> tuple[int, int]:
        """(points, points whose vector is in an HNSW index) of ``name``; unindexed points are scanned."""
        with self._lock, self._errors("info", name):
            info = self._get(name).shard.info()
        return int(info.points_count), int(info.indexed_vectors_count)

    # -- index maintenance ---------------------------------------------------------------------------
    def _optimize(self, name: str, coll: _Collection) -> None:
        with self._errors("optimize", name):
            coll.shard.optimize()
            coll.size_at_optimize = coll.shard.info().points_count
        coll.since_optimize = 0

    def optimize(self, name: str) -> None:
        """Build HNSW for everything written so far (blocking; holds the GIL in qdrant-edge 0.9.0).
        Segments below Qdrant's indexing threshold stay brute-force, which is fast at that size."""
        with self._lock:
            self._optimize(name, self._get(name))

    def flush(self) -> None:
        with self._lock:
            for name, coll in self._open.items():
                with self._errors("flush", name):
                    coll.shard.flush()

    # -- reads ---------------------------------------------------------------------------------------
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        if not len(ids):
            return []
        with self._lock, self._errors("retrieve", name):
            found = self._get(name).shard.retrieve(
                [str(i) for i in ids], with_payload=True, with_vector=with_vectors
            )
        return in_order(ids, {str(r.id): _record(r, with_vectors) for r in found})

    def _route(self, coll: _Collection, flt: Filter | None, edge_flt: Any, exact: bool) -> tuple[bool, bool]:
        """(exact, acorn) for a query with this filter: see "Filtering" in the module docstring."""
        if edge_flt is None or exact or not _needs_acorn(flt, coll.linked):
            return exact, False
        # The payload index's cardinality estimate: ~0.3 ms at 1M points, against an exact count's ~7 ms.
        matches = coll.shard.count(qe.CountRequest(exact=False, filter=edge_flt))
        return (True, False) if matches <= self.exact_filter_max else (False, True)

    def _request(
        self, vector: np.ndarray, k: int, edge_flt: Any, min_score: float | None, exact: bool, acorn: bool,
    ) -> qe.QueryRequest:
        params = qe.SearchParams(
            hnsw_ef=self.hnsw_ef,
            exact=exact,
            # Where no per-value HNSW links cover a broad filter, ACORN keeps the walk from missing matches.
            acorn=qe.AcornSearchParams(enable=True) if acorn else None,
        )
        return qe.QueryRequest(
            limit=int(k), query=qe.Query.Nearest(vector.tolist()), filter=edge_flt,
            score_threshold=min_score, with_payload=True, params=params,
        )

    def search(
        self,
        name: str,
        vector: np.ndarray,
        k: int = 10,
        flt: Filter | None = None,
        min_score: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        if k <= 0:
            return []
        with self._lock, self._errors("search", name):
            coll = self._get(name)
            edge_flt = to_edge_filter(flt)
            route = self._route(coll, flt, edge_flt, exact)
            points = coll.shard.query(self._request(unit_rows(vector, coll.dim)[0], k, edge_flt, min_score, *route))
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def search_batch(
        self, name: str, vectors: np.ndarray, k: int = 10, flt: Filter | None = None
    ) -> list[list[Hit]]:
        if k <= 0:
            return [[] for _ in range(len(np.atleast_2d(vectors)))]
        with self._lock, self._errors("search", name):
            coll = self._get(name)
            x = unit_rows(vectors, coll.dim)
            if not len(x):
                return []
            edge_flt = to_edge_filter(flt)
            route = self._route(coll, flt, edge_flt, False)
            batch = qe.QueryBatchRequest([self._request(row, k, edge_flt, None, *route) for row in x])
            results = coll.shard.query_batch(batch)
        return [[Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in res] for res in results]

    def recommend(
        self,
        name: str,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        k: int = 10,
        flt: Filter | None = None,
        strategy: str = "best_score",
    ) -> list[Hit]:
        pos, neg = check_examples(positive, negative, strategy)
        if k <= 0:
            return []
        with self._lock, self._errors("recommend", name):
            coll = self._get(name)
            # Edge takes example vectors, not ids: read them, and keep the examples out of the answer.
            found = {str(r.id): r.vector for r in coll.shard.retrieve(pos + neg, with_payload=False, with_vector=True)}
            missing = [i for i in pos + neg if i not in found]
            if missing:
                raise VectorStoreError(f"recommend on collection {name!r}: no point {missing[0]}")
            edge_flt = to_edge_filter(flt)
            exact, acorn = self._route(coll, flt, edge_flt, False)
            not_examples = qe.HasIdCondition(set(pos + neg))
            if edge_flt is None:
                edge_flt = qe.Filter(must_not=[not_examples])
            else:
                edge_flt = qe.Filter(must=[edge_flt], must_not=[not_examples])
            rq = qe.RecommendQuery([list(found[i]) for i in pos], [list(found[i]) for i in neg])
            query = qe.Query.RecommendBestScore(rq) if strategy == "best_score" else qe.Query.RecommendSumScores(rq)
            params = qe.SearchParams(hnsw_ef=self.hnsw_ef, exact=exact,
                                     acorn=qe.AcornSearchParams(enable=True) if acorn else None)
            points = coll.shard.query(qe.QueryRequest(limit=int(k), query=query, filter=edge_flt,
                                                      with_payload=True, params=params))
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def scroll(
        self,
        name: str,
        flt: Filter | None = None,
        batch_size: int = 1024,
        with_vectors: bool = False,
    ) -> Iterator[list[Record]]:
        edge_flt = to_edge_filter(flt)
        offset: Any = None
        while True:
            # The lock is held per batch only, so a slow consumer never blocks writers.
            with self._lock, self._errors("scroll", name):
                req = qe.ScrollRequest(
                    offset=offset, limit=batch_size, filter=edge_flt, with_payload=True,
                    with_vector=with_vectors,
                )
                records, offset = self._get(name).shard.scroll(req)
            if records:
                yield [_record(r, with_vectors) for r in records]
            if offset is None:
                return

    def scroll_vectors(
        self,
        name: str,
        flt: Filter | None = None,
        batch_size: int = 4096,
        payload_fields: Sequence[str] = (),
    ) -> Iterator[VectorBatch]:
        edge_flt = to_edge_filter(flt)
        # Only the asked-for payload keys cross into Python; vectors go straight into one matrix.
        with_payload: Any = qe.PayloadSelector.Include(list(payload_fields)) if payload_fields else False
        offset: Any = None
        while True:
            with self._lock, self._errors("scroll", name):
                coll = self._get(name)
                req = qe.ScrollRequest(offset=offset, limit=batch_size, filter=edge_flt, with_payload=with_payload,
                                       with_vector=True)
                records, offset = coll.shard.scroll(req)
            if records:
                # Each vector arrives as a Python list: chaining them into one fromiter is the cheapest
                # way into a matrix (no per-row arrays).
                flat = itertools.chain.from_iterable(r.vector for r in records)
                x = np.fromiter(flat, dtype=np.float32, count=len(records) * coll.dim).reshape(len(records), coll.dim)
                payloads = [dict(r.payload or {}) for r in records] if payload_fields else [{} for _ in records]
                yield VectorBatch([str(r.id) for r in records], x, payloads)
            if offset is None:
                return

    def set_payloads(self, name: str, groups: Iterable[tuple[Sequence[str], dict[str, Any]]]) -> None:
        wrote = False
        for ids, payload in groups:
            if not len(ids) or not payload:
                continue
            flt = qe.Filter(must=[qe.HasIdCondition({str(i) for i in ids})])
            op = qe.UpdateOperation.set_payload_by_filter(flt, plain_payload(payload))
            with self._lock, self._errors("set_payload", name):
                self._get(name).shard.update(op)  # WAL-durable; the flush below makes it power-loss durable
            wrote = True
        if wrote and self.fsync:
            with self._lock, self._errors("flush", name):
                self._get(name).shard.flush()

    def count(self, name: str, flt: Filter | None = None) -> int:
        with self._lock, self._errors("count", name):
            return int(self._get(name).shard.count(qe.CountRequest(exact=True, filter=to_edge_filter(flt))))

    def close(self) -> None:
        """Flush and close every open shard and release the root's lock; a later call reopens lazily."""
        with self._lock:
            if self._reads is not None:
                self._reads.stop_answering()  # a reader's next request finds the lock free
            try:
                while self._open:
                    name, coll = self._open.popitem()
                    with self._errors("close", name):
                        coll.shard.flush()
                        coll.shard.close()
            finally:
                self._release_home()

    def scroll_page(
        self, name: str, flt: Filter | None, offset: str | None, limit: int, with_vectors: bool = False,
        payload_fields: Sequence[str] | None = None,
    ) -> tuple[Any, str | None]:
        """One batch of :meth:`scroll` (``payload_fields`` None: a list of Records) or of :meth:`scroll_vectors`
        (a VectorBatch with those payload fields) from point id ``offset`` (None: the first), and the offset
        of the next batch (None: the end): what the holder of the store serves to other processes."""
        edge_flt = to_edge_filter(flt)
        if payload_fields is None:
            with_payload: Any = True
        else:
            with_payload = qe.PayloadSelector.Include(list(payload_fields)) if payload_fields else False
        with self._lock, self._errors("scroll", name):
            coll = self._get(name)
            req = qe.ScrollRequest(offset=offset, limit=int(limit), filter=edge_flt, with_payload=with_payload,
                                   with_vector=with_vectors or payload_fields is not None)
            records, nxt = coll.shard.scroll(req)
        nxt = None if nxt is None else str(nxt)
        if payload_fields is None:
            return [_record(r, with_vectors) for r in records], nxt
        flat = itertools.chain.from_iterable(r.vector for r in records)
        x = np.fromiter(flat, dtype=np.float32, count=len(records) * coll.dim).reshape(len(records), coll.dim)
        payloads = [dict(r.payload or {}) for r in records] if payload_fields else [{} for _ in records]
        return VectorBatch([str(r.id) for r in records], x, payloads), nxt


def _add_missing_indexes(shard: qe.EdgeShard) -> Any:
    """Create every payload index of ``_index_schemas`` the shard lacks (flushed); its info afterwards."""
    info = shard.info()
    missing = {f: s for f, s in _index_schemas().items() if f not in info.payload_schema}
    for field_name, schema in missing.items():
        shard.update(qe.UpdateOperation.create_field_index(field_name, schema))
    if not missing:
        return info
    shard.flush()
    return shard.info()


def _linked_fields(info: Any) -> frozenset[str]:
    """The LINKED_AT_INGEST fields whose index has per-value HNSW links. Shards created before links
    existed keep their indexes (and so their need for ACORN)."""
    return frozenset(f for f in LINKED_AT_INGEST if f in info.payload_schema
                     and getattr(info.payload_schema[f].params, "enable_hnsw", False))


def _child_optimize() -> None:
    """Entry of the child process of :meth:`EdgeVectorStore._build_in_child`: argv = root, name, threshold."""
    if sys.platform.startswith("linux"):  # die with the parent rather than hold the shard after it
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before that took effect
            return
    root, name, threshold = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # The parent holds the root's lock (and waits for this child), so this store must not take it.
    store = EdgeVectorStore(Path(root), fsync=False, index_threshold=threshold, home_lock=False)
    store.optimize(name)
    points, indexed = store.index_status(name)
    store.close()  # flushes
    print(json.dumps({"points": points, "indexed": indexed}), flush=True)


def _record(r: Any, with_vectors: bool) -> Record:
    vec = np.asarray(r.vector, dtype=np.float32) if with_vectors and r.vector is not None else None
    return Record(str(r.id), dict(r.payload or {}), vec)

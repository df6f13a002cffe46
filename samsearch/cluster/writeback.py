"""Writing a clustering run back: SQL rows set-based, payloads grouped, both at once on two cores.

* SQL (one transaction): the run's ``cluster_runs`` row; its ``segment_clusters`` rows, staged in a
  temporary table (``COPY``/``executemany``) and inserted by one ``INSERT ... SELECT`` joined with
  ``segments`` (vectors of an interrupted ingest have no segment row and are skipped); when the run is
  current, ``segments.cluster``/``cluster_run`` by one ``UPDATE ... FROM`` touching only rows that change.
* Payloads: the field ``cluster`` of exactly the vectors whose value changes, one ``set_payload`` per
  (new value, chunk of :data:`PAYLOAD_CHUNK` ids) and one flush at the end; never point by point.

Overlap: the SQL transaction runs in a worker thread. Once its rows are staged, the payloads are written
in the calling thread while the database executes the set-based statements (SQLite and psycopg release
the GIL while a statement runs, so Edge's payload writes, which keep taking it back, are not starved);
the transaction commits only after the payloads
are written. All or nothing, as far as it can be: if either half fails, the transaction is rolled back
and the payloads already written are put back. A killed process can leave payloads half-written; re-running the
same command (or ``samsearch cluster use`` the current run) repairs them, as payloads are always
compared with what the store holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from samsearch.db import ClusterName, ClusterRun, SegmentCluster
from samsearch.db.bulk import bulk_tuning, distinct_op, drop_temp_table, load_temp_table
from samsearch.db.schema import utcnow
from samsearch.home import SEGMENTS, Home
from samsearch.vectors import Filter, IsNull

PAYLOAD_CHUNK = 50_000  # ids per set_payload call
MISSING = np.iinfo(np.int64).min  # "no cluster in the payload"
_TMP = "tmp_segment_clusters"


class _Aborted(Exception):
    """The payload writes failed: roll the SQL transaction back."""


@dataclass
class SqlResult:
    run_id: int
    replaced: bool  # the named run existed and was recomputed
    names_dropped: int  # its cluster names, forgotten because the settings changed
    stored: int  # segment_clusters rows written


def make_current_sql(s: Session, run: ClusterRun) -> None:
    """Flag ``run`` as the current one and make ``segments.cluster``/``cluster_run`` mirror it (set-based,
    touching only rows that change)."""
    s.execute(text("UPDATE cluster_runs SET is_current = (id = :rid)"), {"rid": run.id})
    s.execute(text(
        "UPDATE segments SET cluster = NULL, cluster_run = NULL WHERE cluster_run IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM segment_clusters sc WHERE sc.run_id = :rid AND sc.segment_id = segments.id)"
    ), {"rid": run.id})
    op = distinct_op(s)
    s.execute(text(
        "UPDATE segments SET cluster = sc.cluster, cluster_run = :name FROM segment_clusters sc "
        "WHERE sc.run_id = :rid AND sc.segment_id = segments.id "
        f"AND (segments.cluster {op} sc.cluster OR segments.cluster_run {op} :name)"
    ), {"rid": run.id, "name": run.name})


def write_sql(
    home: Home, name: str, algorithm: str, settings: dict[str, Any], make_current: bool, ids: list[str],
    labels: np.ndarray, dist: np.ndarray, stats: dict[str, Any],
    staged: threading.Event | None = None, decided: threading.Event | None = None,
    abort: threading.Event | None = None, timings: dict[str, float] | None = None,
) -> SqlResult:
    """Create or replace the run's rows in one transaction. ``staged`` is set once the rows are in the
    temporary table; before committing, the transaction waits for ``decided`` and rolls back if ``abort``
    is set. ``timings["sql"]``: seconds of SQL work (not waiting, not the commit)."""
    import time

    t0 = time.perf_counter()
    with home.db.session() as s, bulk_tuning(s):
        run = s.execute(select(ClusterRun).where(ClusterRun.name == name).with_for_update()).scalar()
        replaced, names_dropped = run is not None, 0
        if run is None:
            run = ClusterRun(name=name, algorithm=algorithm, settings=settings, stats=stats)
            s.add(run)
            s.flush()
        else:
            if run.settings != settings:  # other clusters: the names given to the old ones no longer apply
                names_dropped = s.execute(delete(ClusterName).where(ClusterName.run_id == run.id)).rowcount
            s.execute(delete(SegmentCluster).where(SegmentCluster.run_id == run.id))
            run.algorithm, run.settings, run.created_at = algorithm, settings, utcnow()
        distances = [None if d != d else d for d in dist.tolist()]  # NaN (noise) -> NULL
        load_temp_table(s, _TMP, [("segment_id", "VARCHAR(36)"), ("cluster", "INTEGER"), ("distance", "FLOAT")],
                        zip(ids, labels.tolist(), distances, strict=True))
        if staged is not None:
            staged.set()
        stored = s.execute(text(
            "INSERT INTO segment_clusters (run_id, segment_id, cluster, distance) "
            f"SELECT :rid, t.segment_id, t.cluster, t.distance FROM {_TMP} t JOIN segments sg ON sg.id = t.segment_id"
        ), {"rid": run.id}).rowcount
        drop_temp_table(s, _TMP)
        run.stats = {**stats, "stored": stored}
        if make_current:
            make_current_sql(s, run)
        if timings is not None:
            timings["sql"] = time.perf_counter() - t0
        if decided is not None:
            decided.wait()
        if abort is not None and abort.is_set():
            raise _Aborted()
        return SqlResult(run.id, replaced, names_dropped, stored)


# -- payloads ------------------------------------------------------------------------------------------


@dataclass
class PayloadPlan:
    """The vectors whose payload ``cluster`` changes, with the value they get and the one they had."""

    ids: np.ndarray  # object array of ids
    new: np.ndarray  # int64, MISSING = null
    old: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def apply(self, home: Home, progress: bool = False) -> None:
        _set_clusters(home, self.ids, self.new, progress)

    def undo(self, home: Home) -> None:
        _set_clusters(home, self.ids, self.old, False)


def plan_payload(ids: list[str], labels: np.ndarray, old: np.ndarray, others: dict[str, int] | None) -> PayloadPlan:
    """What makes the payloads mirror a run: its members get their label where it differs from ``old``
    (their values now); ``others`` (id -> value of every vector holding one, when known) not among the
    members lose theirs."""
    changed = np.flatnonzero(labels != old)
    stale_ids: list[str] = []
    stale_old: list[int] = []
    if others:
        members = set(ids)
        for i, v in others.items():
            if i not in members:
                stale_ids.append(i)
                stale_old.append(v)
    id_arr = np.asarray(ids, dtype=object)
    return PayloadPlan(
        np.concatenate([id_arr[changed], np.asarray(stale_ids, dtype=object)]),
        np.concatenate([labels[changed], np.full(len(stale_ids), MISSING, np.int64)]).astype(np.int64),
        np.concatenate([old[changed], np.asarray(stale_old, dtype=np.int64)]).astype(np.int64),
    )


def _set_clusters(home: Home, ids: np.ndarray, values: np.ndarray, progress: bool) -> None:
    """Payload ``cluster`` of ``ids[i]`` := ``values[i]`` (MISSING: null): one call per value and chunk."""
    from tqdm import tqdm

    order = np.argsort(values, kind="stable")
    bounds = np.flatnonzero(np.diff(values[order])) + 1

    def groups() -> Iterator[tuple[list[str], dict[str, Any]]]:
        for group in np.split(order, bounds) if len(order) else []:
            value = int(values[group[0]])
            payload = {"cluster": None if value == MISSING else value}
            for start in range(0, len(group), PAYLOAD_CHUNK):
                chunk = ids[group[start:start + PAYLOAD_CHUNK]].tolist()
                yield chunk, payload
                bar.update(len(chunk))

    with tqdm(total=len(ids), desc="write payloads", unit="vec", disable=not progress) as bar:
        home.set_segment_payloads(groups())  # every space's collection mirrors ``cluster``


def clustered_payloads(home: Home) -> dict[str, int]:
    """id -> payload ``cluster`` of every vector that has one (a filtered, payload-only scroll)."""
    out: dict[str, int] = {}
    flt = Filter(must_not=(IsNull("cluster"),))
    for records in home.vectors.scroll(SEGMENTS, flt, batch_size=8192):
        for r in records:
            out[r.id] = int(r.payload["cluster"])
    return out


# -- both ------------------------------------------------------------------------------------------------


def write_back(
    home: Home, name: str, algorithm: str, settings: dict[str, Any], make_current: bool, ids: list[str],
    labels: np.ndarray, dist: np.ndarray, old: np.ndarray, complete: bool, stats: dict[str, Any],
    progress: bool = False, timings: dict[str, float] | None = None,
) -> tuple[SqlResult, int]:
    """SQL and (for a current run) payloads of a run, overlapped (see the module docstring). ``old``: the
    members' payload values read with their vectors; ``complete``: that read saw every vector (else the
    others holding a cluster are looked up, to clear them). Returns the SQL result and how many payloads
    changed."""
    import time

    timings = timings if timings is not None else {}
    staged, decided, abort, failed = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    started = time.perf_counter()

    def sql_job() -> SqlResult:
        try:
            return write_sql(home, name, algorithm, settings, make_current, ids, labels, dist, stats, staged,
                             decided, abort, timings)
        except BaseException:
            failed.set()
            raise
        finally:
            staged.set()  # never leave the caller waiting

    plan = PayloadPlan(np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-sql") as pool:
        future = pool.submit(sql_job)
        t0 = time.perf_counter()
        try:
            staged.wait()
            if failed.is_set():
                future.result()  # failed before any payload was touched: raise, nothing to undo
            t0 = time.perf_counter()
            if make_current:
                plan = plan_payload(ids, labels, old, None if complete else clustered_payloads(home))
                plan.apply(home, progress)
        except BaseException:  # also Ctrl-C: the transaction must not wait for `decided` forever
            abort.set()
            decided.set()
            try:
                future.result()
            except Exception:  # rolled back (or failed anyway): put the payloads back as they were
                plan.undo(home)
            raise
        finally:
            timings["payload"] = time.perf_counter() - t0
            decided.set()  # the transaction commits only now, after the payloads were written
        try:
            result = future.result()
        except BaseException:
            plan.undo(home)
            raise
    timings["write"] = time.perf_counter() - started
    return result, len(plan)

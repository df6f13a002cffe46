"""Bookkeeping of batch jobs in the ``runs`` table: a row opened when a job starts (kind and settings),
closed when it ends (status, counts, finish time). Ingest, bank builds, labeling and clustering share it."""

from __future__ import annotations

from typing import Any

from samsearch.db.engine import Database
from samsearch.db.schema import Run, utcnow

FAILURES_KEPT = 1000  # a run's counts keep at most this many failure records


def start_run(db: Database, kind: str, settings: dict[str, Any]) -> int:
    """Record the start of a ``kind`` job (status ``running``); returns the run's id."""
    with db.session() as s:
        run = Run(kind=kind, settings=settings)
        s.add(run)
        s.flush()
        return run.id


def finish_run(db: Database, run_id: int, status: str, counts: dict[str, Any]) -> None:
    """Record how the run ended; a ``failures`` list in ``counts`` is cut to its first FAILURES_KEPT."""
    if isinstance(counts.get("failures"), list):
        counts = {**counts, "failures": counts["failures"][:FAILURES_KEPT]}
    with db.session() as s:
        run = s.get(Run, run_id)
        run.status = status
        run.finished_at = utcnow()
        run.counts = counts

"""Bookkeeping of batch jobs in the ``runs`` table, through one path: :func:`recorded_run`.

A row is opened when a job starts (kind and settings) and closed when it ends (status, counts, finish
time). The status comes from how the job's block ended, the same for every job:

* ``done``: the block returned;
* ``failed``: it raised an exception (bad input, a store error, a bug);
* ``interrupted``: Ctrl-C, ``SystemExit`` or anything else that is not an ``Exception``.

A process killed outright leaves its run ``running``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from samsearch.db.engine import Database
from samsearch.db.schema import Run, utcnow

FAILURES_KEPT = 1000  # a run's counts keep at most this many failure records
DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"


@dataclass
class RunRecord:
    """The run being recorded: its id, and what gives its counts when it ends (set by the job)."""

    id: int
    counts: Callable[[], dict[str, Any]] = field(default=dict)


@contextmanager
def recorded_run(db: Database, kind: str, settings: dict[str, Any]) -> Iterator[RunRecord]:
    """Open a ``kind`` run for the block; close it with the status of how the block ended and the counts
    ``record.counts()`` returns then."""
    record = RunRecord(start_run(db, kind, settings))
    status = INTERRUPTED
    try:
        yield record
        status = DONE
    except Exception:
        status = FAILED
        raise
    finally:
        finish_run(db, record.id, status, record.counts())


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

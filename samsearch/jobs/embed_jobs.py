"""Queued ``samsearch embed`` jobs (``embed --space NAME --enqueue``), run by ``samsearch worker``.

A job is a :class:`~samsearch.db.Run` row of kind ``embed-job``: status ``queued`` until a worker has run it
to the end (``done``, its counts the embed summary), or ``failed`` when it cannot run at all (an unknown
space, weights that cannot be loaded or differ from the home's; the error says why). The work itself is
:func:`samsearch.ingest.embed.embed_space`, resumable and exactly-once per image, so a job whose worker dies
midway stays ``queued`` and the next worker finishes it without redoing the images already marked.

A worker takes a job only when no image is pending or leased (the images of an ``ingest --enqueue`` come
first, so a job queued with them covers them all). On Postgres the job's row stays locked (``FOR UPDATE
SKIP LOCKED``, in a session held open while the job runs): other workers skip it, and a worker that dies
releases it with its connection. SQLite and Qdrant Edge take one worker process at a time anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from samsearch.db import Run
from samsearch.db.schema import utcnow
from samsearch.errors import EmbeddingSpaceMismatch, InputError, SamsearchError, one_line
from samsearch.home import SAM_SPACE, Home
from samsearch.ingest.embed import EmbedOptions, EmbedSummary, embed_space

EMBED_JOB = "embed-job"
QUEUED, DONE, FAILED = "queued", "done", "failed"


def enqueue_embed(home: Home, space: str, dataset: str | None = None, weights: Path | None = None) -> dict[str, Any]:
    """Queue ``embed --space space [--dataset D] [--weights DIR]`` for the workers. An identical job already
    queued is not queued twice. Returns ``{"run_id", "space", "dataset", "already_queued"}``."""
    from samsearch.spaces.registry import get_space

    if space == SAM_SPACE:
        raise InputError("the sam space is written by `samsearch ingest`; embed adds another space "
                         "(e.g. --space dinov2-b)")
    spec = get_space(space)  # an unknown name fails now, not in a worker
    if weights is not None and spec.tiny_random:
        raise InputError(f"{space} takes no --weights (its weights are generated from a seed)")
    settings = {"space": space, "dataset": dataset,
                "weights": str(Path(weights).expanduser().resolve()) if weights is not None else None}
    with home.db.session() as s:
        for run_id, held in s.execute(select(Run.id, Run.settings).where(Run.kind == EMBED_JOB,
                                                                          Run.status == QUEUED)):
            if held == settings:
                return {"run_id": run_id, **settings, "already_queued": True}
        run = Run(kind=EMBED_JOB, status=QUEUED, settings=settings)
        s.add(run)
        s.flush()
        return {"run_id": run.id, **settings, "already_queued": False}


def embed_jobs_status(home: Home) -> dict[str, int]:
    """Embed jobs per status: queued (incl. one a worker runs now), done, failed."""
    with home.db.session() as s:
        counts = dict(s.execute(select(Run.status, func.count()).where(Run.kind == EMBED_JOB)
                                .group_by(Run.status)).all())
    return {st: int(counts.get(st, 0)) for st in (QUEUED, DONE, FAILED)}


def _options(settings: dict[str, Any], device: str | None) -> EmbedOptions:
    return EmbedOptions(space=settings["space"], dataset=settings.get("dataset"), device=device,
                        weights=Path(settings["weights"]) if settings.get("weights") else None)


def _finish(home: Home, run_id: int, status: str, counts: dict[str, Any], error: str | None,
            session: Any = None) -> None:
    def write(s: Any) -> None:
        run = s.get(Run, run_id)
        run.status, run.counts, run.error, run.finished_at = status, counts, error, utcnow()

    if session is not None:
        write(session)
        return
    with home.db.session() as s:
        write(s)


def run_next_embed_job(home: Home, device: str | None = None, models: dict[str, Any] | None = None,
                       progress: bool = False) -> tuple[int, EmbedSummary | None] | None:
    """Run the oldest queued embed job nobody else runs; ``None`` when there is none. Returns (its run id,
    the embed summary, or ``None`` when the job failed: bad space or weights, recorded on the job).
    ``models``: loaded spaces by name, reused across jobs (and filled here)."""
    models = {} if models is None else models
    pick = (select(Run.id, Run.settings).where(Run.kind == EMBED_JOB, Run.status == QUEUED).order_by(Run.id)
            .limit(1))
    if home.db.dialect == "postgresql":
        with home.db.session() as lock:  # held open: the row lock is this job's lease
            row = lock.execute(pick.with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            summary = _run(home, row[0], dict(row[1]), device, models, progress, lock)
        return row[0], summary
    with home.db.session() as s:
        row = s.execute(pick).first()
    if row is None:
        return None
    return row[0], _run(home, row[0], dict(row[1]), device, models, progress, None)


def _run(home: Home, run_id: int, settings: dict[str, Any], device: str | None, models: dict[str, Any],
         progress: bool, session: Any) -> EmbedSummary | None:
    from samsearch.spaces.models import load_space
    from samsearch.spaces.registry import SpaceError

    options = _options(settings, device)
    try:
        key = f"{options.space}|{options.weights}"
        if key not in models:
            models[key] = load_space(options.space, options.weights, device)
        summary = embed_space(home, options, progress=progress, space_model=models[key])
    except (SpaceError, InputError, EmbeddingSpaceMismatch) as exc:  # it would fail the same way every time
        _finish(home, run_id, FAILED, {}, one_line(exc), session)
        return None
    except SamsearchError:
        raise  # a store problem: the job stays queued
    counts = summary.as_dict()
    counts["failures"] = counts.get("failures", [])[:1000]
    _finish(home, run_id, DONE, counts, None, session)
    return summary

"""The ingest work queue, kept in the metadata database's ``images`` table.

An image row is the unit of work: ``pending`` (enqueued) → ``running`` (claimed by one worker, with a
lease: ``lease_owner`` + ``lease_expires_at``) → ``done`` or ``failed``. What to do with it comes from
its ``run_id``: the :class:`~samsearch.db.Run` written by :func:`enqueue` holds the ingest settings
(model, prompts, annotations, AMG settings, dataset and their ``settings_hash``).

* :func:`claim` takes up to ``n`` images that are pending or whose lease expired, in one statement:
  ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` on Postgres, so concurrent workers
  never block on or share an image; on SQLite the statement is atomic too, and
  :class:`SingleWorkerLock` keeps to one worker process (SQLite and Qdrant Edge have one writer).
* Lease times come from the database's clock on Postgres (workers on several machines need not agree
  on the time). A live worker renews its leases (:func:`renew`); a dead one's expire, and the images
  return to the queue. An image whose lease expired ``max_attempts`` times is marked failed instead
  (a poison pill: it crashed or hung every worker that took it).
* A worker that stops cleanly gives its unfinished claims back at once (:func:`release`).

Exactly-once storage does not depend on the lease alone: segment ids are deterministic, every write
of a claimed image first checks that the lease is still held (``samsearch.ingest.ingestor.LeaseLost``), and the
final commit locks the image row and checks it again, so at most one attempt marks an image done.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from samsearch.data.coco import AnnotationError, load_coco
from samsearch.data.imageio import (
    collect_image_paths,
    display_path,
    max_image_bytes,
    not_a_regular_file,
    too_many_bytes,
)
from samsearch.db import Image, ImageDataset, ImageStatus, Ingestion, Run
from samsearch.db.memberships import in_dataset
from samsearch.db.schema import utcnow
from samsearch.errors import InputError, SamsearchError
from samsearch.home import Home
from samsearch.identity import ModelRef
from samsearch.ingest.claim import unreadable_key
from samsearch.ingest.membership import join_dataset
from samsearch.ingest.options import PROMPT_MODES, IngestOptions
from samsearch.sam.amg import AmgSettings
from samsearch.sam.models import model_ref, sha256_file
from samsearch.sam.pooling import RECIPE, embedding_space

DEFAULT_LEASE_SECONDS = 120.0
DEFAULT_MAX_ATTEMPTS = 5
ENQUEUE_CHUNK = 500  # paths hashed and written per transaction
PENDING, RUNNING, DONE, FAILED = (s.value for s in ImageStatus)


class QueueBusy(SamsearchError):
    """Another worker holds a store that takes one worker at a time."""


def run_settings(options: IngestOptions, model: ModelRef, checkpoint: Path | None, inputs: Sequence[str]) -> dict:
    """Everything a worker needs to process images of this run (and what ``Ingestor.start_run`` records)."""
    return {
        "inputs": [str(i) for i in inputs], "dataset": options.dataset, "prompts": options.prompts,
        "annotations": str(Path(options.annotations).resolve()) if options.annotations else None,
        "model": model.name, "model_key": model.key,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "amg": options.amg.as_dict(), "max_pixels": options.max_pixels, "box_batch": options.box_batch,
        "settings_hash": options.settings_hash(model),  # type: ignore[arg-type]  (uses .key only)
        "recipe": RECIPE, "queued": True,
    }


def options_from_settings(settings: dict[str, Any]) -> IngestOptions:
    """The IngestOptions of a run (enqueued, or a plain ingest run) from its stored settings."""
    defaults = IngestOptions()
    return IngestOptions(
        dataset=settings.get("dataset", defaults.dataset),
        prompts=settings.get("prompts", defaults.prompts),
        annotations=Path(settings["annotations"]) if settings.get("annotations") else None,
        amg=AmgSettings(**settings["amg"]) if settings.get("amg") else AmgSettings(),
        max_pixels=settings.get("max_pixels", defaults.max_pixels),
        box_batch=settings.get("box_batch", defaults.box_batch),
    )


# -- enqueue -------------------------------------------------------------------------------------------


@dataclass
class EnqueueSummary:
    run_id: int
    images_seen: int = 0
    enqueued: int = 0
    already_done: int = 0  # stored with these settings already
    already_queued: int = 0  # pending with the same settings already
    in_progress: int = 0  # claimed by a worker (or a plain ingest) right now: left alone
    duplicates: int = 0  # same content as another file of this enqueue
    unreadable: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _hash_file(path: Path) -> tuple[Path, int, str] | tuple[Path, None, str]:
    """(path, size, sha256) or (path, None, reason): streamed, so big files are not held in memory."""
    if display_path(path) != str(path):
        return path, None, "file name is not valid UTF-8 (rename the file)"
    try:
        st = path.stat()
        # a FIFO would block the hashing, a device never end it; a file over the byte cap is not read
        why = not_a_regular_file(st.st_mode) or too_many_bytes(st.st_size, max_image_bytes())
        if why is not None:
            return path, None, why
        return path, st.st_size, sha256_file(path)
    except FileNotFoundError:
        return path, None, "unreadable: no such file"
    except IsADirectoryError:
        return path, None, "unreadable: is a directory"
    except PermissionError:
        return path, None, "unreadable: permission denied"
    except OSError as exc:
        return path, None, f"unreadable: {exc.strerror or exc}"


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert image rows; a content hash another process inserted meanwhile is skipped, not an error."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Image)
    session.execute(ins.on_conflict_do_nothing(index_elements=["content_hash"]), rows)


def enqueue(
    home: Home,
    inputs: Sequence[str | Path],
    model: str,
    options: IngestOptions | None = None,
    checkpoint: Path | None = None,
    progress: bool = False,
    threads: int = 8,
) -> EnqueueSummary:
    """Record the images under ``inputs`` as pending work for ``samsearch worker``, with ``options``.

    Files are hashed here (streamed, ``threads`` at a time), so duplicates are stored once and an image
    already stored with the same settings is not queued again. Images that failed, are pending, or were
    stored with other settings are (re)queued with these settings. Unreadable files are recorded as
    failed. Nothing is decoded and no model is loaded: decode errors show up when a worker takes the image.
    """
    options = options or IngestOptions()
    if options.prompts not in PROMPT_MODES:
        raise InputError(f"--prompts must be one of {', '.join(PROMPT_MODES)}, not {options.prompts!r}")
    if options.prompts in ("boxes", "masks") and options.annotations is None:
        raise InputError(f"--prompts {options.prompts} needs --annotations FILE (COCO JSON)")
    if options.annotations is not None:
        try:
            load_coco(Path(options.annotations))  # fail now, not in every worker
        except AnnotationError as exc:
            raise InputError(str(exc)) from exc
    try:
        paths = collect_image_paths(inputs)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc
    ref = model_ref(model, checkpoint)
    home.claim_embedding_space(embedding_space(ref))
    settings = run_settings(options, ref, checkpoint, [str(i) for i in inputs])
    with home.db.session() as s:
        run = Run(kind="ingest", status="queued", settings=settings)
        s.add(run)
        s.flush()
        summary = EnqueueSummary(run_id=run.id)

    from tqdm import tqdm

    bar = tqdm(total=len(paths), desc="enqueue", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(paths), ENQUEUE_CHUNK):
            hashed = list(pool.map(_hash_file, paths[start : start + ENQUEUE_CHUNK]))
            _enqueue_chunk(home, hashed, options.dataset, settings["settings_hash"], summary)
            bar.update(len(hashed))
    bar.close()
    with home.db.session() as s:
        run = s.get(Run, summary.run_id)
        run.counts = {**summary.as_dict(), "failures": summary.failures[:1000]}
    return summary


def _enqueue_chunk(home: Home, hashed: list, dataset: str, settings_hash: str, summary: EnqueueSummary) -> None:
    summary.images_seen += len(hashed)
    readable: dict[str, tuple[Path, int]] = {}
    unreadable: dict[str, tuple[Path, str]] = {}
    for path, size, value in hashed:
        if size is None:  # keyed by path, as a plain ingest records unreadable files
            unreadable[unreadable_key(path)] = (path, value)
        elif value in readable:
            summary.duplicates += 1  # identical files: stored once
        else:
            readable[value] = (path, size)
    now = utcnow()
    with home.db.session() as s:
        keys = [*readable, *unreadable]
        existing = {i.content_hash: i for i in s.scalars(
            select(Image).where(Image.content_hash.in_(keys)).with_for_update())}
        done = set(s.scalars(select(Ingestion.image_id).where(
            Ingestion.image_id.in_([i.id for i in existing.values()]), Ingestion.settings_hash == settings_hash)))
        pending_runs = {i.run_id for i in existing.values() if i.status == PENDING and i.run_id is not None}
        same_settings = {rid for rid, st in s.execute(select(Run.id, Run.settings).where(Run.id.in_(pending_runs)))
                         if (st or {}).get("settings_hash") == settings_hash}
        new_rows = []
        for key, (path, size) in readable.items():
            img = existing.get(key)
            if img is None:
                new_rows.append({"content_hash": key, "path": str(path), "file_size": size, "dataset": dataset,
                                 "status": PENDING, "error": None, "attempts": 0, "run_id": summary.run_id,
                                 "created_at": now, "updated_at": now})
            elif img.id in done:
                summary.already_done += 1
            elif img.status == PENDING and img.run_id == summary.run_id:
                summary.duplicates += 1  # queued by an earlier chunk of this enqueue
            elif img.status == PENDING and img.run_id in same_settings:
                summary.already_queued += 1
            elif img.status == RUNNING and (img.lease_expires_at is None or _aware(img.lease_expires_at) > now):
                summary.in_progress += 1
            else:
                img.status, img.run_id, img.error, img.attempts = PENDING, summary.run_id, None, 0
                img.lease_owner = img.lease_expires_at = None
                if not Path(img.path).exists():
                    img.path = str(path)
                summary.enqueued += 1
        for key, (path, reason) in unreadable.items():
            summary.unreadable += 1
            summary.failures.append({"path": display_path(path), "reason": reason})
            img = existing.get(key)
            if img is None:
                new_rows.append({"content_hash": key, "path": display_path(path), "file_size": None, "dataset": dataset,
                                 "status": FAILED, "error": reason, "attempts": 0, "run_id": summary.run_id,
                                 "created_at": now, "updated_at": now})
            else:
                img.status, img.error, img.run_id = FAILED, reason, summary.run_id
        _insert_ignoring_duplicates(s, new_rows)
        summary.enqueued += sum(r["status"] == PENDING for r in new_rows)
    # Every listed image belongs to ``dataset`` now, also one stored already (no SAM: SQL + payloads).
    with home.db.session() as s:
        ids = list(s.scalars(select(Image.id).where(Image.content_hash.in_(keys))))
    join_dataset(home, ids, dataset)


def _aware(ts: Any) -> Any:
    """SQLite hands back naive datetimes (stored as UTC): make them comparable with aware ones."""
    from datetime import timezone

    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


# -- claims and leases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueItem:
    image_id: int
    path: str
    content_hash: str
    run_id: int | None
    attempts: int


def _now(session: Session) -> Any:
    """The time leases are measured by: the database server's clock on Postgres, this host's on SQLite."""
    return func.now() if session.get_bind().dialect.name == "postgresql" else utcnow()


def _lease_expiry(session: Session, seconds: float) -> Any:
    return _now(session) + timedelta(seconds=seconds)


def claim(
    home: Home,
    owner: str,
    n: int = 1,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[QueueItem]:
    """Take up to ``n`` pending images (or images whose lease expired) for ``owner``, leased for
    ``lease_seconds``. Concurrent callers never get the same image."""
    with home.db.session() as s:
        now = _now(s)
        expired = and_(Image.status == RUNNING, Image.lease_expires_at.is_not(None), Image.lease_expires_at < now)
        # Poison pills: images whose lease expired max_attempts times are failed, not handed out again;
        # so are pending ones already tried max_attempts times (so attempts never climb past it).
        s.execute(
            update(Image).where(or_(expired, Image.status == PENDING), Image.attempts >= max_attempts).values(
                status=FAILED, lease_owner=None, lease_expires_at=None,
                error=f"abandoned after {max_attempts} attempts: the worker holding it died or hung each time "
                      "(samsearch queue retry-failed queues it again)"),
            execution_options={"synchronize_session": False},
        )
        wanted = (
            select(Image.id).where(or_(Image.status == PENDING, expired)).limit(n)
            .with_for_update(skip_locked=True)
        )
        rows = s.execute(
            update(Image).where(Image.id.in_(wanted.scalar_subquery())).values(
                status=RUNNING, lease_owner=owner, lease_expires_at=_lease_expiry(s, lease_seconds),
                attempts=Image.attempts + 1, updated_at=utcnow(),
            ).returning(Image.id, Image.path, Image.content_hash, Image.run_id, Image.attempts),
            execution_options={"synchronize_session": False},
        ).all()
    return sorted((QueueItem(*r) for r in rows), key=lambda i: i.image_id)


def renew(home: Home, owners: Iterable[str], lease_seconds: float = DEFAULT_LEASE_SECONDS) -> int:
    """Extend every lease held by ``owners``; returns how many images they hold."""
    owners = list(owners)
    if not owners:
        return 0
    with home.db.session() as s:
        res = s.execute(
            update(Image).where(Image.status == RUNNING, Image.lease_owner.in_(owners))
            .values(lease_expires_at=_lease_expiry(s, lease_seconds)),
            execution_options={"synchronize_session": False},
        )
        return int(res.rowcount or 0)


def release(home: Home, owner: str, image_ids: Sequence[int], reason: str | None = None,
            max_attempts: int | None = None, untried: bool = False) -> int:
    """Give claimed images back to the queue (pending) at once, e.g. when a worker stops or its store
    fails; ``reason`` is kept in the image's error field until it is processed.

    ``untried``: the worker never started on them, so their claim does not count as an attempt.
    ``max_attempts``: an image already tried that often is marked failed instead (a poison image that
    makes every attempt fail would otherwise crash-loop its workers). Returns how many went back or failed.
    """
    if not image_ids:
        return 0
    mine = and_(Image.id.in_(list(image_ids)), Image.status == RUNNING, Image.lease_owner == owner)
    n = 0
    with home.db.session() as s:
        if max_attempts is not None and not untried:
            res = s.execute(
                update(Image).where(mine, Image.attempts >= max_attempts).values(
                    status=FAILED, lease_owner=None, lease_expires_at=None,
                    error=f"failed {max_attempts} attempts, the last: {reason or 'no reason given'} "
                          "(samsearch queue retry-failed queues it again)"),
                execution_options={"synchronize_session": False},
            )
            n += int(res.rowcount or 0)
        values: dict[str, Any] = {"status": PENDING, "lease_owner": None, "lease_expires_at": None, "error": reason}
        if untried:
            values["attempts"] = case((Image.attempts > 0, Image.attempts - 1), else_=0)
        res = s.execute(update(Image).where(mine).values(**values), execution_options={"synchronize_session": False})
        return n + int(res.rowcount or 0)


def fail(home: Home, owner: str, image_id: int, reason: str) -> bool:
    """Mark a claimed image failed with ``reason``; False (nothing changed) if ``owner`` lost its lease."""
    with home.db.session() as s:
        res = s.execute(
            update(Image).where(Image.id == image_id, Image.status == RUNNING, Image.lease_owner == owner)
            .values(status=FAILED, error=reason, lease_owner=None, lease_expires_at=None),
            execution_options={"synchronize_session": False},
        )
        return bool(res.rowcount)


def release_expired(home: Home) -> int:
    """Put images whose lease expired back to pending (what ``doctor --repair`` does)."""
    with home.db.session() as s:
        now = _now(s)
        res = s.execute(
            update(Image).where(Image.status == RUNNING, Image.lease_expires_at.is_not(None),
                                Image.lease_expires_at < now)
            .values(status=PENDING, lease_owner=None, lease_expires_at=None,
                    error="lease expired (the worker died or hung); re-queued by samsearch doctor --repair"),
            execution_options={"synchronize_session": False},
        )
        return int(res.rowcount or 0)


def retry_failed(home: Home, dataset: str | None = None) -> dict[str, int]:
    """Queue failed images again (with the settings of the run that failed them). Files that could not
    be read at all have no content hash yet: they are left, and counted, for a new ``ingest --enqueue``."""
    with home.db.session() as s:
        cond = [Image.status == FAILED, Image.run_id.is_not(None)]
        if dataset is not None:
            cond.append(in_dataset(dataset))
        unhashed = s.scalar(select(func.count()).select_from(Image).where(
            *cond, Image.content_hash.like("path:%")))
        res = s.execute(
            update(Image).where(*cond, Image.content_hash.not_like("path:%"))
            .values(status=PENDING, error=None, attempts=0, lease_owner=None, lease_expires_at=None),
            execution_options={"synchronize_session": False},
        )
        return {"requeued": int(res.rowcount or 0), "unreadable_left": int(unhashed or 0)}


def is_drained(home: Home) -> bool:
    """Nothing pending and no image under a lease (expired ones included: they will be taken again)."""
    with home.db.session() as s:
        return not s.scalar(select(func.count()).select_from(Image).where(
            or_(Image.status == PENDING, and_(Image.status == RUNNING, Image.lease_expires_at.is_not(None)))))


def queue_status(home: Home) -> dict[str, Any]:
    """Images per status (overall and per dataset), leases in flight and expired, the workers holding
    leases now, and the queued embed jobs (``embed_jobs``: queued / done / failed)."""
    from samsearch.jobs.embed_jobs import embed_jobs_status

    with home.db.session() as s:
        now = _now(s)
        by_status = {st: 0 for st in (PENDING, RUNNING, DONE, FAILED)}
        datasets: dict[str, dict[str, int]] = {}
        for status, n in s.execute(select(Image.status, func.count()).group_by(Image.status)):
            by_status[status] = by_status.get(status, 0) + n
        for dataset, status, n in s.execute(  # an image counts in each of its datasets
            select(ImageDataset.dataset, Image.status, func.count()).join(Image, Image.id == ImageDataset.image_id)
            .group_by(ImageDataset.dataset, Image.status)
        ):
            datasets.setdefault(dataset, {st: 0 for st in (PENDING, RUNNING, DONE, FAILED)})[status] = n
        expired = s.scalar(select(func.count()).select_from(Image).where(
            Image.status == RUNNING, Image.lease_expires_at < now))
        unleased = s.scalar(select(func.count()).select_from(Image).where(
            Image.status == RUNNING, Image.lease_expires_at.is_(None)))
        workers = dict(s.execute(
            select(Image.lease_owner, func.count()).where(Image.status == RUNNING, Image.lease_expires_at >= now)
            .group_by(Image.lease_owner)).all())
        errors = [
            {"path": p, "error": e}
            for p, e in s.execute(select(Image.path, Image.error).where(Image.status == FAILED)
                                  .order_by(Image.id.desc()).limit(20))
        ]
    return {
        **by_status,
        "expired_leases": int(expired or 0),
        "running_without_lease": int(unleased or 0),
        "workers": dict(sorted(workers.items())),
        "datasets": dict(sorted(datasets.items())),
        "recent_failures": errors,
        "embed_jobs": embed_jobs_status(home),
    }


# -- one worker at a time on single-writer stores ------------------------------------------------------


def needs_single_worker(home: Home) -> bool:
    """SQLite and Qdrant Edge each take one writer process: several workers need Postgres + a Qdrant server."""
    return home.db.dialect == "sqlite" or home.qdrant_url is None


def lock_path(home: Home) -> Path:
    if home.db.dialect == "sqlite" and home.db.engine.url.database:
        db = Path(home.db.engine.url.database)
        return db.with_name(db.name + ".worker.lock")
    return home.root / "worker.lock"


class SingleWorkerLock:
    """An exclusive ``flock`` on a file beside the store; the kernel drops it when the process dies
    (even by SIGKILL), so a crashed worker never leaves a stale lock behind."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None

    def acquire(self) -> SingleWorkerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115  (held open for the lock's lifetime)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise QueueBusy(
                f"another worker ({holder}) is already running on this home: SQLite and the embedded vector "
                "store take one worker at a time; give that one --concurrency N, or use Postgres "
                "(SAMSEARCH_DATABASE_URL) and a Qdrant server (SAMSEARCH_QDRANT_URL) for several workers"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> SingleWorkerLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def new_owner_id(suffix: str = "") -> str:
    """A lease owner id: host, pid and a random tag (a restarted worker with a reused pid is another owner)."""
    tag = os.urandom(3).hex()
    return f"{socket.gethostname()}:{os.getpid()}:{tag}{suffix}"


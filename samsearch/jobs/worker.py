"""The queue worker behind ``samsearch worker``: claim images, process them with their run's settings,
mark them done; repeat.

One :class:`Worker` runs ``concurrency`` claim loops (threads sharing one loaded model and one home),
each with its own lease owner id, plus a heartbeat thread that renews their leases every third of the
lease. Each loop claims ``batch`` images at a time (:func:`samsearch.jobs.work_queue.claim`) and hands every one
to :meth:`samsearch.ingest.ingestor.Ingestor.process_claimed` with its lease owner, so a loop whose lease was
taken over writes nothing more (``LeaseLost``).

When no image is left to claim (none pending or leased), a loop runs the queued ``embed`` jobs
(:mod:`samsearch.jobs.embed_jobs`, ``samsearch embed --space NAME --enqueue``), one at a time per process.

Stopping: :meth:`Worker.stop` (the CLI calls it on SIGINT/SIGTERM) lets each loop finish the image in
hand and gives the rest of its batch back to the queue. An error (store unreachable, database gone)
gives back the image in hand and the rest of the batch, stops the other loops, and is raised. A worker
killed outright gives nothing back: its leases expire and other workers take the images.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from samsearch.data.imageio import ImageLoadError, read_bytes_and_hash
from samsearch.db import Run
from samsearch.db.engine import DatabaseError
from samsearch.errors import InputError, one_line
from samsearch.home import SEGMENTS, Home
from samsearch.ingest.containers import ClaimedImage, Failure, IngestSummary, LeaseLost
from samsearch.ingest.ingestor import Ingestor, report_line
from samsearch.ingest.options import STAGES
from samsearch.jobs.work_queue import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    QueueItem,
    SingleWorkerLock,
    claim,
    fail,
    is_drained,
    lock_path,
    needs_single_worker,
    new_owner_id,
    options_from_settings,
    release,
    renew,
)
from samsearch.sam.models import LoadedModel, load_model


@dataclass
class WorkerOptions:
    batch: int = 4  # images claimed per claim
    concurrency: int = 1  # claim loops in this process, sharing the model
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    drain: bool = False  # exit once nothing is pending or leased, instead of waiting for more work
    poll_seconds: float = 5.0  # wait between claims that found nothing
    max_images: int | None = None  # stop after claiming this many
    device: str | None = None
    checkpoint: Path | None = None  # local weights for official models (else the run's, else the cache)

    def __post_init__(self) -> None:
        for name in ("batch", "concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lease_seconds <= 0 or self.poll_seconds <= 0:
            raise InputError("--lease and --poll must be positive (seconds)")


@dataclass
class WorkerSummary:
    owner: str
    images_claimed: int = 0
    images_ingested: int = 0
    images_failed: int = 0
    leases_lost: int = 0  # images another worker took over after this one's lease expired
    images_released: int = 0  # given back unprocessed (stop or error)
    segments: int = 0
    seconds: float = 0.0
    stopped_by: str = ""  # drained | max-images | stop | error
    index_builds: int = 0  # vector index builds run while the queue was empty (not counting the last one)
    embed_jobs: int = 0  # queued embed jobs run (done or failed)
    segments_embedded: int = 0  # vectors those jobs wrote
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["failures"] = [f.__dict__ for f in self.failures]
        return d


class Worker:
    """Processes queued images of ``home`` until drained, stopped, or ``max_images`` were claimed."""

    def __init__(self, home: Home, options: WorkerOptions | None = None, model: LoadedModel | None = None,
                 progress: bool = False):
        self.home = home
        self.options = options or WorkerOptions()
        self.model = model
        self.progress = progress
        base = new_owner_id()
        self.owners = [base if self.options.concurrency == 1 else f"{base}-{i}"
                       for i in range(self.options.concurrency)]
        self.summary = WorkerSummary(owner=base)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # summary, claim budget, model and ingestor caches
        self._ingestors: dict[int, Ingestor] = {}
        self._errors: list[BaseException] = []
        self._bar: Any = None
        self._wrote_since_build = False  # a batch was written since the last idle index build
        self._embed_lock = threading.Lock()  # one embed job at a time in this process
        self._space_models: dict[str, Any] = {}  # loaded embedding spaces, reused across embed jobs

    def stop(self) -> None:
        """Finish the image in hand, give the rest of the batch back, and return from :meth:`run`."""
        self._stop.set()

    # -- setup per run --------------------------------------------------------------------------------
    def _ingestor(self, run_id: int | None) -> Ingestor | None:
        """The Ingestor for a run's settings (None when the run is gone); loads the model on first use."""
        with self._lock:
            if run_id in self._ingestors:
                return self._ingestors[run_id]
            with self.home.db.session() as s:
                settings = s.scalar(select(Run.settings).where(Run.id == run_id)) if run_id is not None else None
            if settings is None:
                return None
            if self.model is None:
                ckpt = self.options.checkpoint or (Path(settings["checkpoint"]) if settings.get("checkpoint") else None)
                self.model = load_model(settings["model"], checkpoint=ckpt, device=self.options.device,
                                        progress=self.progress)
            options = options_from_settings(settings)
            if settings.get("model") != self.model.name or options.settings_hash(self.model) != settings.get(
                "settings_hash"
            ):
                raise InputError(
                    f"run {run_id} was queued for model {settings.get('model_key', settings.get('model'))}; this "
                    f"worker runs {self.model.key} (start it with the same --checkpoint weights)"
                )
            ing = Ingestor(self.home, self.model, options)
            self._ingestors[run_id] = ing  # type: ignore[index]
            return ing

    # -- the loops ------------------------------------------------------------------------------------
    def run(self) -> WorkerSummary:
        lock = SingleWorkerLock(lock_path(self.home)).acquire() if needs_single_worker(self.home) else None
        try:
            self.home.claim_writes()  # before the first claim: an embedded store held elsewhere refuses here
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        started = time.perf_counter()
        from tqdm import tqdm

        self._bar = tqdm(desc="worker", unit="img", disable=not self.progress)
        heartbeat = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        done_beating = threading.Event()
        self._done_beating = done_beating
        heartbeat.start()
        # No vector index builds while images flow (each would stall the worker): one when the queue runs
        # dry (see _loop) and one when the run ends (drain, max_images, stop).
        bulk = self.home.vectors.bulk_load(SEGMENTS, report=self._report)
        try:
            with bulk:
                if len(self.owners) == 1:
                    self._loop_guarded(self.owners[0])
                else:
                    loops = [threading.Thread(target=self._loop_guarded, args=(o,), name=f"claim-loop-{i}")
                             for i, o in enumerate(self.owners)]
                    for t in loops:
                        t.start()
                    for t in loops:
                        t.join()
        finally:
            done_beating.set()
            heartbeat.join()
            self._bar.close()
            self.summary.seconds = round(time.perf_counter() - started, 3)
            if lock is not None:
                lock.release()
        if self._errors:
            self.summary.stopped_by = "error"
            exc = self._errors[0]
            if isinstance(exc, SQLAlchemyError):  # one line for the CLI, like every other store error
                raise DatabaseError(f"database {self.home.db.safe_url} failed: "
                                    f"{one_line(getattr(exc, 'orig', None) or exc)}") from exc
            raise exc
        return self.summary

    def _heartbeat(self) -> None:
        every = max(0.2, self.options.lease_seconds / 3)
        while not self._done_beating.wait(every):
            # A missed beat is harmless unless the lease runs out; the write fence then holds.
            with contextlib.suppress(Exception):
                renew(self.home, self.owners, self.options.lease_seconds)

    def _loop_guarded(self, owner: str) -> None:
        try:
            self._loop(owner)
        except BaseException as exc:
            with self._lock:
                self._errors.append(exc)
            self._stop.set()

    def _report(self, line: str) -> None:
        if self.progress:
            report_line(line)

    def _build_index_when_idle(self) -> None:
        """The queue ran dry: index what this worker wrote since the last build, so search is at indexed
        speed while it waits (the build runs in a child process on the embedded store; a claim loop that
        gets work meanwhile waits for the store until it ends)."""
        with self._lock:
            if not self._wrote_since_build:
                return
            self._wrote_since_build = False
        self.home.vectors.finish_index(SEGMENTS, report=self._report)
        with self._lock:
            self.summary.index_builds += 1

    def _embed_jobs(self) -> bool:
        """Run the queued embed jobs once no image is pending or leased; whether one ran."""
        from samsearch.jobs.embed_jobs import run_next_embed_job

        if not self._embed_lock.acquire(blocking=False):
            return False  # another loop of this process runs one
        ran = False
        try:
            while not self._stop.is_set() and is_drained(self.home):
                done = run_next_embed_job(self.home, self.options.device, self._space_models, self.progress)
                if done is None:
                    break
                ran = True
                with self._lock:
                    self.summary.embed_jobs += 1
                    if done[1] is not None:
                        self.summary.segments_embedded += done[1].segments_embedded
        finally:
            self._embed_lock.release()
        return ran

    def _budget(self) -> int:
        """How many images this loop may claim now (``max_images`` is shared by the loops)."""
        with self._lock:
            if self.options.max_images is None:
                return self.options.batch
            return max(0, min(self.options.batch, self.options.max_images - self.summary.images_claimed))

    def _loop(self, owner: str) -> None:
        opts = self.options
        ingest_summary = IngestSummary(run_id=0)
        timings = {k: 0.0 for k in STAGES}
        try:
            while not self._stop.is_set():
                n = self._budget()
                if n == 0:
                    self.summary.stopped_by = "max-images"
                    return
                items = claim(self.home, owner, n, opts.lease_seconds, opts.max_attempts)
                with self._lock:
                    self.summary.images_claimed += len(items)
                if not items:
                    if self._embed_jobs():
                        continue
                    if opts.drain and is_drained(self.home):
                        self.summary.stopped_by = "drained"
                        return
                    self._build_index_when_idle()
                    self._stop.wait(min(opts.poll_seconds, opts.lease_seconds / 2))
                    continue
                self._process_batch(owner, items, ingest_summary, timings)
                with self._lock:
                    self._wrote_since_build = True
            self.summary.stopped_by = self.summary.stopped_by or "stop"
        finally:
            with self._lock:
                s = self.summary
                s.images_ingested += ingest_summary.images_ingested
                s.images_failed += ingest_summary.images_failed
                s.segments += ingest_summary.segments
                s.failures.extend(ingest_summary.failures)
                for k, v in timings.items():
                    s.stage_seconds[k] = round(s.stage_seconds.get(k, 0.0) + v, 4)

    def _process_batch(self, owner: str, items: list[QueueItem], summary: IngestSummary,
                       timings: dict[str, float]) -> None:
        for k, item in enumerate(items):
            if self._stop.is_set():  # asked to stop: the rest goes back to the queue now
                self._give_back(owner, items[k:], "the worker stopped before taking it", untried=True)
                return
            try:
                self._process(owner, item, summary, timings)
            except LeaseLost:
                with self._lock:
                    self.summary.leases_lost += 1
            except BaseException as exc:
                reason = f"an attempt failed: {one_line(exc)}"
                # The image in hand counts an attempt (failed at --max-attempts), unless the worker was
                # interrupted (Ctrl-C, exit); the rest of the batch was not tried.
                tried = isinstance(exc, Exception)
                self._give_back(owner, items[k:k + 1], reason, max_attempts=self.options.max_attempts,
                                untried=not tried)
                self._give_back(owner, items[k + 1:], reason, untried=True)
                raise
            if self._bar is not None:
                with self._lock:
                    self._bar.update(1)

    def _give_back(self, owner: str, items: list[QueueItem], reason: str, max_attempts: int | None = None,
                   untried: bool = False) -> None:
        try:
            n = release(self.home, owner, [i.image_id for i in items], reason, max_attempts, untried)
        except Exception:  # the database is gone too: the leases will expire instead
            return
        with self._lock:
            self.summary.images_released += n

    def _process(self, owner: str, item: QueueItem, summary: IngestSummary, timings: dict[str, float]) -> None:
        path = Path(item.path)
        ing = self._ingestor(item.run_id)
        reason = None
        if ing is None:
            reason = "its ingest run's settings are gone; enqueue the file again"
        else:
            try:
                data, digest = read_bytes_and_hash(path)
            except ImageLoadError as exc:
                reason = exc.reason
            else:
                if digest != item.content_hash:
                    reason = (f"the file changed since it was enqueued (sha256 {digest[:12]}…, queued as "
                              f"{item.content_hash[:12]}…); enqueue it again")
        if reason is not None:
            if not fail(self.home, owner, item.image_id, reason):
                raise LeaseLost(f"image {item.image_id}: lease lost before it could be marked failed")
            summary.images_failed += 1
            summary.failures.append(Failure(str(path), reason))
            return
        assert ing is not None
        claimed = ClaimedImage(item.image_id, path, item.content_hash, data, item.run_id or 0, cleanup=True,
                               lease_owner=owner)
        ing.process_claimed(claimed, summary, timings)


def run_worker(home: Home, options: WorkerOptions | None = None, model: LoadedModel | None = None,
               progress: bool = False) -> WorkerSummary:
    """Library entry point: process queued images of ``home`` (see :class:`Worker`)."""
    return Worker(home, options, model, progress).run()

"""Overlapped ingest: the model never waits for disk or database.

Three kinds of threads, connected by bounded queues:

* **loaders** (``execution.loaders`` threads): read + hash, claim the image row, decode, look up its
  annotations and resize it to SAM's input (``Ingestor.prepare`` + :func:`samsearch.sam.encoder.resize_image`).
  At most ``execution.prefetch`` images are decoded ahead of the model, in input order.
* **model** (the calling thread): ``execution.encoder_batch`` images per image-encoder call, then per image
  the masks and the pooled embeddings (``Ingestor.encode`` / ``Ingestor.compute``), all on the model's
  device; on CUDA the copy of the masks to pinned host memory is queued on the device right away.
* **writer** (one thread, at most ``execution.write_queue`` images waiting): RLE + rows, one vector upsert
  for all the images waiting (so one flush, not one per image, when it falls behind), then per image the
  SQL transaction that marks it ``done`` (``Ingestor.store_batch``).

Crash safety is the sequential path's: an image is ``done`` only in the transaction that commits its rows,
after its vectors were written. Errors propagate: an exception in a loader, the model or the writer stops
the run and is re-raised in the caller's thread, after the writer has stored the images that were already
completely computed (their results are correct); images claimed but not stored stay ``running`` and are
redone by the next run. Identical files met within one run are computed once (the others count as skipped,
as in the sequential path).

``IngestSummary.stage_seconds`` gets the busy time of each stage (summed over loader threads) plus the
model thread's waits: ``wait_input`` (no decoded image ready) and ``wait_output`` (writer queue full), and
``drain`` (the wait for the writer at the end).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from samsearch.ingest.containers import ComputedImage, IngestSummary, PreparedImage, StoreItem
from samsearch.sam.encoder import resize_image

if TYPE_CHECKING:
    from samsearch.ingest.ingestor import Ingestor

_STOP = object()


class _Loaded:
    """What a loader hands to the model thread: the per-image summary and timings, and the image or None."""

    def __init__(self, path: Path, summary: IngestSummary, timings: dict[str, float],
                 prepared: PreparedImage | None):
        self.path, self.summary, self.timings, self.prepared = path, summary, timings, prepared


def _start_host_copy(computed: ComputedImage) -> None:
    """On CUDA, queue the copies of masks and vectors to pinned host memory behind the work that makes them,
    so the writer finds them on the host without stalling the device; elsewhere nothing to do."""
    if computed.seg.masks.device.type != "cuda":
        return

    def to_host(t: torch.Tensor) -> torch.Tensor:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return host.copy_(t, non_blocking=True)

    if isinstance(computed.seg.masks, torch.Tensor):  # LazyMasks are made on the host as the writer reads them
        computed.host_masks = to_host(computed.seg.masks)
    computed.vectors, computed.valid = to_host(computed.vectors), to_host(computed.valid)
    event = torch.cuda.Event()
    event.record()
    computed.ready = event


class _Writer(threading.Thread):
    """Stores computed images in order; remembers the first error and then only drains its queue."""

    def __init__(self, ingestor: Ingestor, run_id: int, summary: IngestSummary, timings: dict[str, float],
                 lock: threading.Lock, done: Callable[[Path], None], maxsize: int):
        super().__init__(name="samsearch-writer", daemon=True)
        self.ingestor, self.run_id, self.summary, self.timings = ingestor, run_id, summary, timings
        self.lock, self.done = lock, done
        self.batch = maxsize
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None

    def run(self) -> None:
        stop = False
        while not stop:
            # Whatever is waiting is written together: one vector upsert (and flush) for all of it.
            items = [self.queue.get()]
            while len(items) < self.batch and items[-1] is not _STOP:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if items[-1] is _STOP:
                stop = True
                items.pop()
            if self.error is not None or not items:
                continue
            try:
                self.ingestor.store_batch([StoreItem(loaded.prepared, computed, loaded.summary, loaded.timings)
                                           for loaded, computed in items], self.run_id)
                with self.lock:
                    for loaded, _ in items:
                        _merge(self.summary, self.timings, loaded)
                        self.done(loaded.path)
            except BaseException as exc:  # noqa: BLE001 - handed to the model thread, which re-raises it
                self.error = exc

    def put(self, item: object) -> None:
        """Block while the queue is full, but never on a writer that died."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def _merge(summary: IngestSummary, timings: dict[str, float], loaded: _Loaded) -> None:
    summary.merge(loaded.summary)
    _add(timings, loaded.timings)


def _add(timings: dict[str, float], delta: dict[str, float]) -> None:
    for k, v in delta.items():
        timings[k] = timings.get(k, 0.0) + v


def run_pipeline(ingestor: Ingestor, paths: Sequence[Path], run_id: int, summary: IngestSummary,
                 timings: dict[str, float], progress: bool = True,
                 on_image: Callable[[Path], None] | None = None) -> None:
    """Ingest ``paths`` with overlapped stages, accumulating into ``summary`` and ``timings``."""
    from tqdm import tqdm

    ex = ingestor.execution
    sam = ingestor.model.sam
    for key in ("wait_input", "wait_output", "drain"):
        timings.setdefault(key, 0.0)
    stage_keys = list(timings)
    lock = threading.Lock()
    bar = tqdm(total=len(paths), desc="ingest", unit="img", disable=not progress)

    def finished(path: Path) -> None:  # called with ``lock`` held
        bar.update(1)
        if on_image is not None:
            on_image(path)

    def load(path: Path) -> _Loaded:
        own = IngestSummary(run_id=run_id)
        own_timings = dict.fromkeys(stage_keys, 0.0)
        prepared = ingestor.prepare(path, run_id, own, own_timings)
        if prepared is not None:
            t0 = time.perf_counter()
            prepared.resized = resize_image(sam, prepared.rgb)
            own_timings["decode"] += time.perf_counter() - t0
        return _Loaded(path, own, own_timings, prepared)

    writer = _Writer(ingestor, run_id, summary, timings, lock, finished, ex.write_queue)
    writer.start()
    pool = ThreadPoolExecutor(max_workers=ex.loaders, thread_name_prefix="samsearch-loader")
    pending: deque[Future] = deque()
    todo = iter(paths)
    in_run: set[str] = set()  # content hashes already taken by this run (identical files are done once)
    batch: list[_Loaded] = []
    try:
        while True:
            while len(pending) < ex.prefetch:  # keep the loaders ahead of the model
                path = next(todo, None)
                if path is None:
                    break
                pending.append(pool.submit(load, path))
            if not pending and not batch:
                break
            if pending and len(batch) < ex.encoder_batch:
                t0 = time.perf_counter()
                loaded = pending.popleft().result()  # re-raises a loader's unexpected error
                loaded.timings["wait_input"] += time.perf_counter() - t0
                p = loaded.prepared
                if p is not None and p.content_hash in in_run:
                    loaded.summary.images_skipped += 1  # a copy of an image this run already has
                    loaded.prepared = p = None
                if p is None:
                    with lock:
                        _merge(summary, timings, loaded)
                        finished(loaded.path)
                    continue
                in_run.add(p.content_hash)
                batch.append(loaded)
                if len(batch) < ex.encoder_batch and pending:
                    continue
            _run_model(ingestor, batch, run_id, writer, lock, summary, timings, finished)
            batch = []
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        t0 = time.perf_counter()
        writer.queue.put(_STOP)
        writer.join()
        timings["drain"] += time.perf_counter() - t0  # the writer has stopped: no lock needed
        bar.close()
    if writer.error is not None:
        raise writer.error


def _run_model(ingestor: Ingestor, batch: list[_Loaded], run_id: int, writer: _Writer, lock: threading.Lock,
               summary: IngestSummary, timings: dict[str, float], finished: Callable[[Path], None]) -> None:
    """Encode a batch of images in one call, then masks + pooling per image, handing each to the writer.
    Timings go to each image's own dict (merged under ``lock`` when the image is finished)."""
    encode_t = {"encode": 0.0}
    encs = ingestor.encode([loaded.prepared for loaded in batch], encode_t)
    for loaded in batch:
        loaded.timings["encode"] += encode_t["encode"] / len(batch)
    for loaded, enc in zip(batch, encs, strict=True):
        computed = ingestor.compute(loaded.prepared, enc, run_id, loaded.summary, loaded.timings)
        if computed is None:  # failed (recorded in its summary)
            with lock:
                _merge(summary, timings, loaded)
                finished(loaded.path)
            continue
        _start_host_copy(computed)
        t0 = time.perf_counter()
        writer.put((loaded, computed))
        with lock:  # the writer may be merging this image's timings already
            timings["wait_output"] += time.perf_counter() - t0

"""Ingest pipeline: image files → SAM segments → one embedding each → vectors + metadata.

Stages per image: read+hash → decode → encode (once) → masks (auto / boxes / masks) → pool → write.
The image is the unit of atomicity: its row is marked ``running`` before anything is written, vectors
are upserted (durably) next, and the segments, the ingestion marker and ``done`` are committed in one
SQL transaction last. A crash anywhere leaves the image not ``done``; the next run of the same command
redoes the image. Segment ids are deterministic, so a
re-run never duplicates anything.

Per image, :meth:`Ingestor.prepare` claims the row (:meth:`Ingestor._claim_image`) and decodes it;
queue workers (``samsearch.worker``) claim rows from the queue and call :meth:`Ingestor.process_claimed`.
Those claims carry a lease owner: the vector write and the final commit check that the lease is still
theirs (:class:`LeaseLost` otherwise), so a worker whose lease expired and was taken over never marks
the image. A redone image overwrites the vectors of the earlier attempt and deletes any beyond the new
set; segment rows that already exist keep their label and cluster fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sqlalchemy import delete, insert, or_, select, update

from samsearch.accel import ExecutionOptions, autocast, compile_encoder, fused_attention
from samsearch.amg import AmgSettings, generate_masks
from samsearch.annotations import AnnotatedImage, AnnotationError, CocoAnnotations, load_coco
from samsearch.db import Image, ImageStatus, Ingestion, Segment
from samsearch.db.runs import finish_run, start_run
from samsearch.db.schema import utcnow
from samsearch.embed import RECIPE, pool_mask_embeddings
from samsearch.encoder import EncodedImage, encode_resized, resize_image
from samsearch.errors import InputError, SamsearchError
from samsearch.home import SEGMENTS, EmbeddingSpace, Home
from samsearch.imageio import ImageLoadError, collect_image_paths, decode_image, read_bytes_and_hash
from samsearch.masks import annotation_to_mask, masks_to_rles
from samsearch.models import LoadedModel
from samsearch.prompting import masks_from_boxes
from samsearch.vectors import Filter, Match, VectorStoreError

PromptMode = Literal["auto", "boxes", "masks"]
PROMPT_MODES: tuple[str, ...] = ("auto", "boxes", "masks")
SOURCE_OF_MODE = {"auto": "auto", "boxes": "box", "masks": "mask"}
SEGMENT_NAMESPACE = uuid.UUID("5b0e6a4e-3c1f-4f57-9a51-7d0c2f9b8e11")
DEFAULT_MAX_PIXELS = 200_000_000
# Per-stage timers of IngestSummary.stage_seconds ("transfer": masks and vectors to host memory).
STAGES: tuple[str, ...] = ("decode", "encode", "masks", "pooling", "transfer", "rle", "vectors", "sql")


@dataclass
class IngestOptions:
    dataset: str = "default"
    prompts: PromptMode = "auto"
    annotations: Path | None = None
    amg: AmgSettings = field(default_factory=AmgSettings)
    max_pixels: int = DEFAULT_MAX_PIXELS
    box_batch: int = 64
    # How to run (decoder, precision, batch sizes, pipeline): not part of the settings hash.
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)

    def settings_hash(self, model: LoadedModel) -> str:
        """Everything that decides which segments and vectors an image yields (not the dataset name)."""
        ident: dict[str, Any] = {"model": model.key, "recipe": RECIPE, "prompts": self.prompts}
        if self.prompts == "auto":
            ident["amg"] = self.amg.identity()
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Failure:
    path: str
    reason: str


@dataclass
class IngestSummary:
    run_id: int
    images_seen: int = 0
    images_ingested: int = 0
    images_skipped: int = 0  # already done with these settings (incl. duplicate content)
    images_failed: int = 0
    images_without_annotations: int = 0
    segments: int = 0
    empty_masks_dropped: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["failures"] = [f.__dict__ for f in self.failures]
        return d

    def merge(self, other: IngestSummary) -> None:
        """Add the image counts and failures of ``other`` (a per-image summary from a worker thread)."""
        for name in ("images_seen", "images_ingested", "images_skipped", "images_failed",
                     "images_without_annotations", "segments", "empty_masks_dropped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.extend(other.failures)


@dataclass
class SegmentedImage:
    """The checked container handed from the model stages to the writer."""

    masks: torch.Tensor  # (N,H,W) bool
    boxes_xyxy: np.ndarray  # (N,4) float
    predicted_iou: list[float | None]
    stability_score: list[float | None]
    prompts: list[dict[str, Any] | None]
    annotation_ids: list[int | None]
    categories: list[str | None]

    def __post_init__(self) -> None:
        n = int(self.masks.shape[0])
        lens = {len(self.boxes_xyxy), len(self.predicted_iou), len(self.stability_score), len(self.prompts),
                len(self.annotation_ids), len(self.categories)}
        if lens != {n} and not (n == 0 and lens <= {0}):
            raise ValueError(f"SegmentedImage fields disagree on the number of segments: {n} masks, {lens}")

    def __len__(self) -> int:
        return int(self.masks.shape[0])


@dataclass
class PreparedImage:
    """A claimed, decoded image waiting for the model (``resized``: SAM's input, when a loader made it)."""

    path: Path
    content_hash: str
    size: int
    image_id: int
    cleanup: bool  # an earlier attempt may have left vectors behind
    rgb: np.ndarray
    annotated: AnnotatedImage | None
    resized: np.ndarray | None = None
    run_id: int | None = None
    lease_owner: str | None = None  # set for queue claims: writes check the lease is still ours


@dataclass
class ComputedImage:
    """Masks and embeddings of one image, on the model's device, waiting for the writer."""

    seg: SegmentedImage
    vectors: torch.Tensor  # (N, C) float32
    valid: torch.Tensor  # (N,) bool
    host_masks: torch.Tensor | None = None  # set when a copy to host memory was started early
    ready: Any = None  # CUDA event the early copy completes at

    def masks_host(self) -> torch.Tensor:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host_masks if self.host_masks is not None else self.seg.masks.cpu()


@dataclass
class ClaimedImage:
    """An image row marked ``running`` for this process, with its bytes, ready for :meth:`process_claimed`."""

    image_id: int
    path: Path
    content_hash: str
    data: bytes
    run_id: int
    cleanup: bool  # an earlier attempt may have left vectors behind
    lease_owner: str | None = None  # set for queue claims: writes check the lease is still ours


class LeaseLost(SamsearchError):
    """The image's queue lease expired and another worker took it over; this attempt must not write."""


# Segment columns that hold labels/clusters, and the payload keys they are mirrored to in the vector store.
LABEL_PAYLOAD_KEYS = {"label": "label", "label_score": "label_score", "label_source": "label_source",
                      "label_bank": "bank", "cluster": "cluster"}


def segment_id(content_hash: str, settings_hash: str, index: int) -> str:
    return str(uuid.uuid5(SEGMENT_NAMESPACE, f"{content_hash}/{settings_hash}/{index}"))


def _fault(point: str, raises: type[Exception] | None = None) -> None:
    """Fault injection for the reliability tests: SAMSEARCH_FAULT=<point>:<n> kills the process the
    n-th time ``point`` is reached (a real crash: no cleanup, no exception handlers);
    SAMSEARCH_FAULT=<point>:<n>:raise raises ``raises`` there instead (e.g. a failing vector store)."""
    spec = os.environ.get("SAMSEARCH_FAULT")
    if not spec:
        return
    name, _, rest = spec.partition(":")
    nth, _, mode = rest.partition(":")
    if name != point:
        return
    count = _fault.counts.get(point, 0) + 1  # type: ignore[attr-defined]
    _fault.counts[point] = count  # type: ignore[attr-defined]
    if mode == "raise" and raises is not None:
        if count == int(nth or 1):
            raise raises(f"injected fault at {point} #{count} (SAMSEARCH_FAULT)")
    elif count >= int(nth or 1):
        os._exit(77)


_fault.counts = {}  # type: ignore[attr-defined]


def segment_image(
    model: LoadedModel,
    enc: EncodedImage,
    options: IngestOptions,
    annotated: AnnotatedImage | None,
    timings: dict[str, float],
) -> SegmentedImage:
    sam = model.sam
    h, w = enc.original_size
    t0 = time.perf_counter()
    exact = options.execution.decoder == "exact"
    if options.prompts == "auto":
        gen = generate_masks(sam, enc, options.amg, exact=exact, decoder_group=options.execution.decoder_group)
        out = SegmentedImage(
            gen.masks,
            gen.boxes_xyxy.cpu().numpy(),
            gen.predicted_iou.cpu().tolist(),
            gen.stability_score.cpu().tolist(),
            [{"point": [round(float(x), 2), round(float(y), 2)]} for x, y in gen.points.cpu().tolist()],
            [None] * len(gen),
            [None] * len(gen),
        )
    else:
        anns = sorted(annotated.annotations, key=lambda a: a.id) if annotated else []
        ids = [a.id for a in anns]
        cats = [a.category for a in anns]
        boxes = np.array([[a.bbox_xywh[0], a.bbox_xywh[1], a.bbox_xywh[0] + a.bbox_xywh[2],
                           a.bbox_xywh[1] + a.bbox_xywh[3]] for a in anns], dtype=np.float32).reshape(-1, 4)
        if options.prompts == "boxes":
            masks, ious = masks_from_boxes(sam, enc, boxes, options.box_batch, exact=exact)
            out = SegmentedImage(masks, boxes, ious.cpu().tolist(), [None] * len(anns),
                                 [{"box": [round(float(v), 2) for v in b]} for b in boxes], ids, cats)
        else:
            kept = [a for a in anns if a.segmentation is not None]
            stack = np.stack([annotation_to_mask(a.segmentation, h, w) for a in kept]) if kept else \
                np.zeros((0, h, w), dtype=bool)
            masks = torch.as_tensor(stack, device=sam.device)
            out = SegmentedImage(masks, boxes[[anns.index(a) for a in kept]] if kept else boxes[:0],
                                 [None] * len(kept), [None] * len(kept), [None] * len(kept),
                                 [a.id for a in kept], [a.category for a in kept])
    timings["masks"] += time.perf_counter() - t0
    return out


class Ingestor:
    """Runs ingest over files with one loaded model into one home. Reusable across calls."""

    def __init__(self, home: Home, model: LoadedModel, options: IngestOptions):
        if options.prompts not in PROMPT_MODES:
            raise InputError(f"--prompts must be one of {', '.join(PROMPT_MODES)}, not {options.prompts!r}")
        if options.prompts in ("boxes", "masks") and options.annotations is None:
            raise InputError(f"--prompts {options.prompts} needs --annotations FILE (COCO JSON)")
        self.home = home
        self.model = model
        options = dataclasses.replace(options, execution=options.execution.resolved(model))
        self.options = options
        self.execution = options.execution
        self._claims = threading.Lock()
        if self.execution.compile:
            compile_encoder(model.sam)
        self.settings_hash = options.settings_hash(model)
        self.coco: CocoAnnotations | None = None
        if options.annotations is not None:
            try:
                self.coco = load_coco(Path(options.annotations))
            except AnnotationError as exc:
                raise InputError(str(exc)) from exc
        self.space = EmbeddingSpace(model.name, model.checkpoint_sha256, RECIPE,
                                    int(model.sam.image_encoder.neck[0].out_channels))
        home.claim_embedding_space(self.space)

    # -- bookkeeping -----------------------------------------------------------------------------
    def start_run(self, inputs: Sequence[str]) -> int:
        return start_run(self.home.db, "ingest", {
            "inputs": [str(i) for i in inputs], "dataset": self.options.dataset,
            "prompts": self.options.prompts,
            "annotations": str(self.options.annotations) if self.options.annotations else None,
            "model": self.model.name, "model_key": self.model.key, "device": str(self.model.device),
            "amg": self.options.amg.as_dict(), "settings_hash": self.settings_hash, "recipe": RECIPE,
            "execution": self.execution.as_dict(),
        })

    def finish_run(self, summary: IngestSummary, status: str = "done") -> None:
        finish_run(self.home.db, summary.run_id, status, summary.as_dict())

    def _claim_image(self, content_hash: str, path: Path, size: int, run_id: int) -> tuple[int, bool, bool]:
        """Create or fetch the image row and mark it running. Returns (image_id, already_done,
        needs_cleanup) — cleanup when an earlier attempt may have left vectors behind."""
        with self.home.db.session() as s:
            img = s.execute(select(Image).where(Image.content_hash == content_hash)).scalar()
            if img is None:
                img = Image(content_hash=content_hash, path=str(path), file_size=size,
                            dataset=self.options.dataset, status=ImageStatus.running.value, run_id=run_id,
                            attempts=1)
                s.add(img)
                s.flush()
                return img.id, False, False
            done = s.execute(select(Ingestion.id).where(
                Ingestion.image_id == img.id, Ingestion.settings_hash == self.settings_hash)).first()
            if done is not None:
                return img.id, True, False
            img.status = ImageStatus.running.value
            img.attempts += 1
            img.run_id = run_id
            if not Path(img.path).exists():
                img.path = str(path)  # the file moved: remember where it is now
            return img.id, False, True

    def _mark_failed(self, image_id: int | None, path: Path, content_hash: str | None, size: int | None,
                     reason: str, run_id: int, owner: str | None = None) -> None:
        with self.home.db.session() as s:
            img = s.get(Image, image_id) if image_id is not None else None
            if owner is not None:
                _check_lease(img, owner)
                img.lease_owner = img.lease_expires_at = None
            if img is None:
                # Unreadable files have no content hash: key them by path so they are still listed.
                key = content_hash or "path:" + hashlib.sha256(str(path).encode()).hexdigest()[:59]
                img = s.execute(select(Image).where(Image.content_hash == key)).scalar()
                if img is None:
                    img = Image(content_hash=key, path=str(path), file_size=size,
                                dataset=self.options.dataset, attempts=1)
                    s.add(img)
            if img.status != ImageStatus.done.value:
                img.status = ImageStatus.failed.value
            img.error = reason
            img.run_id = run_id

    # -- the per-image work: prepare → encode → compute → store ------------------------------------
    # ingest_one runs the steps in sequence; samsearch.pipeline runs them overlapped in threads.
    def ingest_one(self, path: Path, run_id: int, summary: IngestSummary, timings: dict[str, float]) -> None:
        prepared = self.prepare(path, run_id, summary, timings)
        if prepared is None:
            return
        enc = self.encode([prepared], timings)[0]
        computed = self.compute(prepared, enc, run_id, summary, timings)
        if computed is not None:
            self.store(prepared, computed, run_id, summary, timings)

    def prepare(self, path: Path, run_id: int, summary: IngestSummary,
                timings: dict[str, float]) -> PreparedImage | None:
        """Read, hash, claim and decode one file. None when it is skipped or failed (recorded)."""
        summary.images_seen += 1
        t0 = time.perf_counter()
        try:
            data, content_hash = read_bytes_and_hash(path)
        except ImageLoadError as exc:
            self._fail(summary, None, path, None, None, exc.reason, run_id)
            return None
        with self._claims:  # one claim at a time: concurrent loaders must not race on a new row
            image_id, done, cleanup = self._claim_image(content_hash, path, len(data), run_id)
        if done:
            summary.images_skipped += 1
            return None
        timings["decode"] += time.perf_counter() - t0
        return self.prepare_claimed(ClaimedImage(image_id, path, content_hash, data, run_id, cleanup), summary,
                                    timings)

    def process_claimed(self, item: ClaimedImage, summary: IngestSummary, timings: dict[str, float]) -> bool:
        """Segment, embed and store one claimed image (the queue workers' entry point); True when stored,
        False when it failed (recorded with its reason). Raises LeaseLost (nothing written after the check)
        when ``item`` is a queue claim that another worker took over, and store errors (the image then
        stays not done)."""
        prepared = self.prepare_claimed(item, summary, timings)
        if prepared is None:
            return False
        enc = self.encode([prepared], timings)[0]
        computed = self.compute(prepared, enc, item.run_id, summary, timings)
        if computed is None:
            return False
        self.store(prepared, computed, item.run_id, summary, timings)
        return True

    def prepare_claimed(self, item: ClaimedImage, summary: IngestSummary,
                        timings: dict[str, float]) -> PreparedImage | None:
        """Decode a claimed image and find its annotations. None when it failed (recorded)."""
        path, data, image_id, content_hash, run_id = item.path, item.data, item.image_id, item.content_hash, \
            item.run_id
        owner = item.lease_owner
        t0 = time.perf_counter()
        try:
            rgb = decode_image(data, path, self.options.max_pixels)
        except ImageLoadError as exc:
            self._fail(summary, image_id, path, content_hash, len(data), exc.reason, run_id, owner)
            return None
        timings["decode"] += time.perf_counter() - t0

        annotated = None
        if self.coco is not None:
            annotated = self.coco.find_image(path)
            if annotated is None:
                summary.images_without_annotations += 1
            elif (annotated.height, annotated.width) != rgb.shape[:2] and annotated.height and annotated.width:
                self._fail(summary, image_id, path, content_hash, len(data),
                           f"size {rgb.shape[1]}x{rgb.shape[0]} differs from the annotations' "
                           f"{annotated.width}x{annotated.height} in {self.coco.path}", run_id, owner)
                return None
        return PreparedImage(path, content_hash, len(data), image_id, item.cleanup, rgb, annotated,
                             run_id=run_id, lease_owner=owner)

    def encode(self, images: Sequence[PreparedImage], timings: dict[str, float]) -> list[EncodedImage]:
        """One image-encoder call for a batch of prepared images."""
        t0 = time.perf_counter()
        sam = self.model.sam
        with self.model_context():
            encs = encode_resized(sam, [p.resized if p.resized is not None else resize_image(sam, p.rgb)
                                        for p in images], [p.rgb.shape[:2] for p in images])
        _sync(self.model)
        timings["encode"] += time.perf_counter() - t0
        return encs

    def compute(self, prepared: PreparedImage, enc: EncodedImage, run_id: int, summary: IngestSummary,
                timings: dict[str, float]) -> ComputedImage | None:
        """Masks and pooled embeddings of one encoded image, on the model's device. None when the image's
        annotations are malformed (recorded as failed)."""
        try:
            with self.model_context():
                seg = segment_image(self.model, enc, self.options, prepared.annotated, timings)
            t0 = time.perf_counter()
            vectors, valid = pool_mask_embeddings(seg.masks, enc)
            _sync(self.model)
            timings["pooling"] += time.perf_counter() - t0
        except ValueError as exc:  # malformed annotation geometry for this image
            p = prepared
            self._fail(summary, p.image_id, p.path, p.content_hash, p.size, str(exc), run_id, p.lease_owner)
            return None
        return ComputedImage(seg, vectors, valid)

    def store(self, prepared: PreparedImage, computed: ComputedImage, run_id: int, summary: IngestSummary,
              timings: dict[str, float]) -> None:
        """Write one image (see :meth:`store_batch`)."""
        self.store_batch([(prepared, computed, summary, timings)], run_id)

    def store_batch(self, items: Sequence[tuple[PreparedImage, ComputedImage, IngestSummary, dict[str, float]]],
                    run_id: int) -> None:
        """Write images: the vectors of all of them in one upsert (one flush), then per image its segments,
        ingestion marker and ``done`` in one SQL transaction: an image is done only after its vectors are
        durable. Each item carries the summary and timings its counts go to."""
        staged = []
        for prepared, computed, summary, timings in items:
            t0 = time.perf_counter()
            masks_np = computed.masks_host().numpy()  # waits for an early copy to host, if one was started
            vectors_np = computed.vectors.cpu().numpy().astype(np.float32)
            valid_np = computed.valid.cpu().numpy()
            timings["transfer"] += time.perf_counter() - t0
            rows, payloads, ids = self._segment_rows(computed.seg, masks_np, valid_np, prepared.image_id,
                                                     prepared.content_hash, timings)
            summary.empty_masks_dropped += int((~valid_np).sum())
            staged.append((rows, payloads, ids, vectors_np[valid_np]))

        t0 = time.perf_counter()
        for (prepared, *_), (_, payloads, ids, _) in zip(items, staged, strict=True):
            if prepared.cleanup:
                self._carry_labels(prepared.image_id, ids, payloads)
            if prepared.lease_owner is not None:
                with self.home.db.session() as s:  # fence: never write for a lease another worker took over
                    _check_lease(s.get(Image, prepared.image_id), prepared.lease_owner)
        _fault("vector_upsert", VectorStoreError)
        ids = [i for _, _, image_ids, _ in staged for i in image_ids]
        if ids:
            self.home.vectors.upsert(SEGMENTS, ids, np.concatenate([v for *_, v in staged]),
                                     [p for _, payloads, _, _ in staged for p in payloads])
        for (prepared, *_), (_, _, image_ids, _) in zip(items, staged, strict=True):
            if prepared.cleanup:
                self._delete_stale_vectors(prepared, image_ids)
        for *_, timings in items:
            timings["vectors"] += (time.perf_counter() - t0) / len(items)

        for (prepared, _, summary, timings), (rows, *_) in zip(items, staged, strict=True):
            _fault("after_vectors")
            t0 = time.perf_counter()
            self._commit(prepared, run_id, rows, (int(prepared.rgb.shape[0]), int(prepared.rgb.shape[1])))
            timings["sql"] += time.perf_counter() - t0
            summary.images_ingested += 1
            summary.segments += len(rows)

    def _delete_stale_vectors(self, item: PreparedImage, ids: list[str]) -> None:
        """After an earlier attempt at this image, delete the points it left beyond this attempt's ids.
        Called after the upsert: a crash in between leaves extra points (removed by the next attempt),
        never missing ones."""
        flt = Filter.of(Match("image_hash", item.content_hash), Match("settings_hash", self.settings_hash))
        keep = set(ids)
        stale = [r.id for batch in self.home.vectors.scroll(SEGMENTS, flt) for r in batch if r.id not in keep]
        if stale:
            self.home.vectors.delete(SEGMENTS, stale)

    def _carry_labels(self, image_id: int, ids: list[str], payloads: list[dict[str, Any]]) -> None:
        """A redone image keeps the labels/clusters its stored segments have: copy them into the payloads."""
        at = {sid: i for i, sid in enumerate(ids)}
        cols = [getattr(Segment, c) for c in LABEL_PAYLOAD_KEYS]
        with self.home.db.session() as s:
            found = s.execute(select(Segment.id, *cols).where(
                Segment.image_id == image_id, Segment.settings_hash == self.settings_hash,
                or_(*(c.is_not(None) for c in cols)))).all()
        for sid, *values in found:
            if sid in at:
                payloads[at[sid]].update({key: v for key, v in zip(LABEL_PAYLOAD_KEYS.values(), values, strict=True)
                                          if v is not None})

    def _commit(self, item: PreparedImage, run_id: int, rows: list[dict[str, Any]],
                size_hw: tuple[int, int]) -> None:
        """Segments, the ingestion marker and ``done`` in one transaction. Rows that already exist (a
        redone image) are updated in place, so their label and cluster fields survive; rows beyond
        the new set are deleted."""
        with self.home.db.session() as s:
            img = s.get(Image, item.image_id, with_for_update=item.lease_owner is not None)
            if item.lease_owner is not None:
                _check_lease(img, item.lease_owner)
            existing = set(s.scalars(select(Segment.id).where(
                Segment.image_id == item.image_id, Segment.settings_hash == self.settings_hash)))
            new_ids = {r["id"] for r in rows}
            if existing - new_ids:
                s.execute(delete(Segment).where(Segment.id.in_(existing - new_ids)))
            fresh = [r for r in rows if r["id"] not in existing]
            if fresh:
                s.execute(insert(Segment), fresh)
            kept = [{k: v for k, v in r.items() if k != "created_at"} for r in rows if r["id"] in existing]
            if kept:
                s.execute(update(Segment), kept)  # bulk UPDATE by primary key; label fields untouched
            marker = s.execute(select(Ingestion).where(Ingestion.image_id == item.image_id,
                                                       Ingestion.settings_hash == self.settings_hash)).scalar()
            if marker is None:
                s.add(Ingestion(image_id=item.image_id, settings_hash=self.settings_hash, run_id=run_id,
                                n_segments=len(rows)))
            else:
                marker.n_segments, marker.run_id = len(rows), run_id
            img.status = ImageStatus.done.value
            img.error = None
            img.height, img.width = size_hw
            img.lease_owner = None
            img.lease_expires_at = None

    def model_context(self) -> contextlib.ExitStack:
        """no_grad + the precision's autocast + fused encoder attention, for the model stages."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(autocast(self.model.device, self.execution.precision))
        stack.enter_context(fused_attention(self.model.sam, self.execution.fused_attention))
        return stack

    def _fail(self, summary, image_id, path, content_hash, size, reason, run_id, owner=None) -> None:
        self._mark_failed(image_id, path, content_hash, size, reason, run_id, owner)  # LeaseLost: not ours
        summary.images_failed += 1
        summary.failures.append(Failure(str(path), reason))

    def _segment_rows(self, seg: SegmentedImage, masks_np: np.ndarray, valid: np.ndarray, image_id: int,
                      content_hash: str, timings: dict[str, float]):
        t0 = time.perf_counter()
        keep = np.flatnonzero(valid)
        rles = masks_to_rles(masks_np[keep]) if len(keep) else []
        areas = masks_np[keep].sum(axis=(1, 2)) if len(keep) else []
        h, w = masks_np.shape[1:] if masks_np.ndim == 3 else (0, 0)
        rows, payloads, ids = [], [], []
        source = SOURCE_OF_MODE[self.options.prompts]
        for j, i in enumerate(keep):
            box = _mask_box_xywh(masks_np[i])
            sid = segment_id(content_hash, self.settings_hash, int(i))
            ids.append(sid)
            rows.append({
                "id": sid, "image_id": image_id, "settings_hash": self.settings_hash,
                "segment_index": int(i), "source": source, "model_key": self.model.key,
                "rle_counts": rles[j]["counts"], "height": int(h), "width": int(w),
                "bbox_x": box[0], "bbox_y": box[1], "bbox_w": box[2], "bbox_h": box[3],
                "area": int(areas[j]), "predicted_iou": seg.predicted_iou[i],
                "stability_score": seg.stability_score[i], "prompt": seg.prompts[i],
                "annotation_id": seg.annotation_ids[i], "annotation_category": seg.categories[i],
                "created_at": utcnow(),
            })
            payloads.append({
                "image_id": image_id, "image_hash": content_hash, "dataset": self.options.dataset,
                "settings_hash": self.settings_hash, "source": source, "area": int(areas[j]),
            })
        timings["rle"] += time.perf_counter() - t0
        return rows, payloads, ids

    def run(self, inputs: Sequence[str | Path], progress: bool = True,
            on_image: Callable[[Path], None] | None = None) -> IngestSummary:
        try:
            paths = collect_image_paths(inputs)
        except FileNotFoundError as exc:
            raise InputError(str(exc)) from exc
        run_id = self.start_run([str(i) for i in inputs])
        summary = IngestSummary(run_id=run_id)
        timings = {k: 0.0 for k in STAGES}
        started = time.perf_counter()
        status = "interrupted"
        try:
            from tqdm import tqdm

            if self.execution.pipeline:
                from samsearch.pipeline import run_pipeline

                run_pipeline(self, paths, run_id, summary, timings, progress, on_image)
            else:
                for path in tqdm(paths, desc="ingest", unit="img", disable=not progress):
                    self.ingest_one(path, run_id, summary, timings)
                    if on_image is not None:
                        on_image(path)
            status = "done"
        finally:
            summary.seconds = time.perf_counter() - started
            summary.stage_seconds = {k: round(v, 4) for k, v in timings.items()}
            self.finish_run(summary, status)
        return summary


def _check_lease(img: Image | None, owner: str) -> None:
    if img is None or img.status != ImageStatus.running.value or img.lease_owner != owner:
        where = f"now {img.status}, held by {img.lease_owner or 'nobody'}" if img is not None else "deleted"
        raise LeaseLost(f"image {img.id if img else '?'}: the lease of {owner} expired and moved on ({where})")


def _sync(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def _mask_box_xywh(mask: np.ndarray) -> list[float]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def ingest(home: Home, inputs: Sequence[str | Path], model: LoadedModel,
           options: IngestOptions | None = None, progress: bool = True) -> IngestSummary:
    """Library entry point: ingest files/folders/globs into ``home`` with ``model``."""
    return Ingestor(home, model, options or IngestOptions()).run(inputs, progress=progress)

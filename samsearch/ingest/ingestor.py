"""Ingest pipeline: image files → SAM segments → one embedding each → vectors + metadata.

Stages per image: read+hash → decode → encode (once) → masks (auto / boxes / masks) → pool → write.
The image is the unit of atomicity: its row is marked ``running`` before anything is written, vectors
are upserted (durably) next, and the segments, the ingestion marker and ``done`` are committed in one
SQL transaction last. A crash anywhere leaves the image not ``done``; the next run of the same command
redoes the image. Segment ids are deterministic, so a re-run never duplicates anything.

Per image, :meth:`Ingestor.prepare` claims the row (:func:`samsearch.ingest.claim.claim_image`) and decodes
it; queue workers (``samsearch.jobs.worker``) claim rows from the queue and call
:meth:`Ingestor.process_claimed`. Those claims carry a lease owner: the vector write and the final commit
check that the lease is still theirs (:class:`~samsearch.ingest.containers.LeaseLost` otherwise), so a
worker whose lease expired and was taken over never marks the image. Masks and vectors come from
:mod:`samsearch.sam.segment`; writing is :class:`samsearch.ingest.store.SegmentWriter`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from samsearch.data.coco import AnnotationError, CocoAnnotations, load_coco
from samsearch.data.imageio import (
    ImageLoadError,
    collect_image_paths,
    decode_image,
    display_path,
    read_bytes_and_hash,
)
from samsearch.db.runs import recorded_run
from samsearch.errors import InputError
from samsearch.home import SEGMENTS, Home, space_collection
from samsearch.ingest.claim import claim_image, mark_failed
from samsearch.ingest.containers import (
    ClaimedImage,
    ComputedImage,
    Failure,
    IngestSummary,
    PreparedImage,
    StoreItem,
    add_counts,
)
from samsearch.ingest.options import PROMPT_MODES, SOURCE_OF_MODE, STAGES, IngestOptions
from samsearch.ingest.store import SegmentWriter
from samsearch.sam.accel import autocast, compile_encoder, fused_attention
from samsearch.sam.amg import FILTER_STAGES
from samsearch.sam.encoder import EncodedImage, encode_resized, resize_image, too_thin
from samsearch.sam.models import LoadedModel
from samsearch.sam.pooling import RECIPE, embedding_space
from samsearch.sam.segment import Segments, segment


class Ingestor:
    """Runs ingest over files with one loaded model into one home. Reusable across calls."""

    def __init__(self, home: Home, model: LoadedModel, options: IngestOptions, spaces: Sequence[Any] = ()):
        """``spaces``: loaded extra embedding spaces (:func:`samsearch.spaces.models.load_space`) whose
        vectors are written in the same pass (one decode, one SAM run, each backbone once per image)."""
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
        self.space = embedding_space(model.ref)
        home.claim_writes()  # another process holding an embedded store: refused here, nothing written
        home.claim_embedding_space(self.space)
        self.spaces = list(spaces)
        for sm in self.spaces:
            home.claim_space(sm.spec.name, sm.space)
        self.writer = SegmentWriter(home, self.settings_hash, options.dataset, SOURCE_OF_MODE[options.prompts],
                                    model.key, self.spaces)

    # -- bookkeeping -----------------------------------------------------------------------------
    def run_settings(self, inputs: Sequence[str]) -> dict:
        """What the run's record keeps: its inputs and every setting (execution options included)."""
        return {
            "inputs": [str(i) for i in inputs], "dataset": self.options.dataset,
            "prompts": self.options.prompts,
            "annotations": str(self.options.annotations) if self.options.annotations else None,
            "model": self.model.name, "model_key": self.model.key, "device": str(self.model.device),
            "amg": self.options.amg.as_dict(), "settings_hash": self.settings_hash, "recipe": RECIPE,
            "execution": self.execution.as_dict(),
            **({"spaces": [sm.spec.name for sm in self.spaces]} if self.spaces else {}),
        }

    # -- the per-image work: prepare → encode → compute → store ------------------------------------
    # ingest_one runs the steps in sequence; samsearch.ingest.pipeline runs them overlapped in threads.
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
            image_id, done, cleanup = claim_image(self.home, content_hash, path, len(data), self.options.dataset,
                                                    self.settings_hash, run_id)
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
        thin = too_thin(rgb.shape[:2], self.model.sam.image_encoder.img_size)
        if thin is not None:
            self._fail(summary, image_id, path, content_hash, len(data), thin, run_id, owner)
            return None

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
            else:
                add_counts(summary.annotations_skipped, annotated.skipped)
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
                t0 = time.perf_counter()
                seg = self.segment(enc, prepared)
                timings["masks"] += time.perf_counter() - t0
            if seg.filtered is not None:  # automatic masks: what each filter step removed
                summary.candidate_masks += seg.candidates
                add_counts(summary.masks_filtered, seg.filtered)
                if len(seg) == 0 and seg.candidates:
                    last = [k for k in FILTER_STAGES if seg.filtered.get(k)][-1:]
                    add_counts(summary.images_emptied_by, dict.fromkeys(last, 1))
            t0 = time.perf_counter()
            vectors, valid = seg.pool(enc)
            _sync(self.model)
            timings["pooling"] += time.perf_counter() - t0
        except ValueError as exc:  # malformed annotation geometry for this image
            p = prepared
            self._fail(summary, p.image_id, p.path, p.content_hash, p.size, str(exc), run_id, p.lease_owner)
            return None
        return ComputedImage(seg, vectors, valid)

    def segment(self, enc: EncodedImage, prepared: PreparedImage) -> Segments:
        """The image's segments for this run's prompt mode (an image without annotations has none)."""
        annotations = prepared.annotated.annotations if prepared.annotated else []
        ex = self.execution
        return segment(self.model.sam, enc, self.options.prompts, annotations, self.options.amg,
                       exact=ex.decoder == "exact", decoder_group=ex.decoder_group, box_batch=self.options.box_batch)

    def store(self, prepared: PreparedImage, computed: ComputedImage, run_id: int, summary: IngestSummary,
              timings: dict[str, float]) -> None:
        """Write one image (see :meth:`store_batch`)."""
        self.store_batch([StoreItem(prepared, computed, summary, timings)], run_id)

    def store_batch(self, items: Sequence[StoreItem], run_id: int) -> None:
        """Write images (see :meth:`samsearch.ingest.store.SegmentWriter.store_batch`)."""
        self.writer.store_batch(items, run_id)

    def model_context(self) -> contextlib.ExitStack:
        """no_grad + the precision's autocast + fused encoder attention, for the model stages."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(autocast(self.model.device, self.execution.precision))
        stack.enter_context(fused_attention(self.model.sam, self.execution.fused_attention))
        return stack

    def _fail(self, summary, image_id, path, content_hash, size, reason, run_id, owner=None) -> None:
        mark_failed(self.home, image_id, path, content_hash, size, reason, self.options.dataset, run_id,
                    owner)  # LeaseLost: not ours
        summary.images_failed += 1
        summary.failures.append(Failure(display_path(path), reason))

    def run(self, inputs: Sequence[str | Path], progress: bool = True,
            on_image: Callable[[Path], None] | None = None) -> IngestSummary:
        try:
            paths = collect_image_paths(inputs)
        except FileNotFoundError as exc:
            raise InputError(str(exc)) from exc
        with recorded_run(self.home.db, "ingest", self.run_settings([str(i) for i in inputs])) as run:
            summary = IngestSummary(run_id=run.id)
            timings = {k: 0.0 for k in STAGES}
            started = time.perf_counter()

            def counts() -> dict:
                summary.seconds = time.perf_counter() - started
                summary.stage_seconds = {k: round(v, 4) for k, v in timings.items()}
                return summary.as_dict()

            run.counts = counts
            # No vector index builds while images flow (they stall the process); one at the end.
            with contextlib.ExitStack() as bulk:
                for coll in [SEGMENTS, *(space_collection(sm.spec.name) for sm in self.spaces)]:
                    bulk.enter_context(self.home.vectors.bulk_load(coll, report=report_line if progress else None))
                if self.execution.pipeline:
                    from samsearch.ingest.pipeline import run_pipeline

                    run_pipeline(self, paths, run.id, summary, timings, progress, on_image)
                else:
                    from tqdm import tqdm

                    for path in tqdm(paths, desc="ingest", unit="img", disable=not progress):
                        self.ingest_one(path, run.id, summary, timings)
                        if on_image is not None:
                            on_image(path)
            summary.notes = self.notes(summary)
        return summary

    def notes(self, summary: IngestSummary) -> list[str]:
        """Why images were stored without segments, when the automatic masks were all filtered out: which
        step removed how many, and what to change."""
        if self.options.prompts != "auto" or not summary.images_without_segments:
            return []
        amg, f = self.options.amg, summary.masks_filtered
        steps = [(f.get("pred_iou_thresh", 0), f"fell below --pred-iou-thresh {amg.pred_iou_thresh:g}"),
                 (f.get("stability_score_thresh", 0),
                  f"fell below --stability-score-thresh {amg.stability_score_thresh:g}"),
                 (f.get("box_nms_thresh", 0), f"were duplicates removed by --box-nms-thresh {amg.box_nms_thresh:g}"),
                 (f.get("min_mask_region_area", 0),
                  f"were removed by --min-mask-region-area {amg.min_mask_region_area}"),
                 (summary.empty_masks_dropped, "were empty")]
        steps = [(n, what) for n, what in steps if n]
        hint = ("tiny-random's random weights give low scores; try --prompts masks or boxes, or lower the "
                "thresholds" if self.model.name == "tiny-random"
                else "lower --pred-iou-thresh / --stability-score-thresh to keep more")
        grid = f"{amg.points_per_side}×{amg.points_per_side}"
        if summary.segments == 0:
            if len(steps) == 1:
                how = steps[0][1]
            else:
                how = "were filtered out: " + ", ".join(
                    f"{'the last ' if i == len(steps) - 1 else ''}{n} {what}" for i, (n, what) in enumerate(steps))
            return [f"0 segments: all {summary.candidate_masks} candidate masks (3 per point of the {grid} "
                    f"grid, {_images(summary.images_ingested)}) {how} ({hint})"]
        by = summary.images_emptied_by
        names = {"pred_iou_thresh": "--pred-iou-thresh", "stability_score_thresh": "--stability-score-thresh",
                 "box_nms_thresh": "--box-nms-thresh", "min_mask_region_area": "--min-mask-region-area"}
        where = ", ".join(f"{n} by {names[k]}" for k, n in by.items() if n)
        return [f"{summary.images_without_segments} of {summary.images_ingested} images got 0 segments: every "
                f"candidate mask was filtered out ({where or 'their masks were empty'}; {hint})"]


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def report_line(message: str) -> None:
    """A status line for a long step (the vector index build) on stderr, above any open progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _sync(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def ingest(home: Home, inputs: Sequence[str | Path], model: LoadedModel,
           options: IngestOptions | None = None, progress: bool = True, spaces: Sequence[Any] = ()) -> IngestSummary:
    """Library entry point: ingest files/folders/globs into ``home`` with ``model`` (and the loaded extra
    embedding ``spaces`` in the same pass)."""
    return Ingestor(home, model, options or IngestOptions(), spaces).run(inputs, progress=progress)

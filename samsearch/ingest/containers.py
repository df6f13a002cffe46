"""What flows between the ingest stages: a claimed image, a decoded one, its computed segments, and the
counts of a run (:class:`IngestSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samsearch.data.coco import AnnotatedImage
from samsearch.errors import SamsearchError
from samsearch.sam.lazymasks import LazyMasks
from samsearch.sam.segment import Segments


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
    images_without_segments: int = 0  # stored with no segment at all
    empty_masks_dropped: int = 0
    # Annotations of this run's images left out, per kind (samsearch.data.coco.SKIP_KINDS: NaN, zero- or
    # negative-size box, box outside the image).
    annotations_skipped: dict[str, int] = field(default_factory=dict)
    # --prompts auto: candidate masks (3 per grid point per image), how many each filter step removed
    # (samsearch.sam.amg.FILTER_STAGES), and per step the images whose last candidates it removed.
    candidate_masks: int = 0
    masks_filtered: dict[str, int] = field(default_factory=dict)
    images_emptied_by: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a run without segments should be told
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
                     "images_without_annotations", "segments", "images_without_segments", "empty_masks_dropped",
                     "candidate_masks"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("annotations_skipped", "masks_filtered", "images_emptied_by"):
            add_counts(getattr(self, name), getattr(other, name))
        self.failures.extend(other.failures)


def add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


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

    seg: Segments
    vectors: torch.Tensor  # (N, C) float32
    valid: torch.Tensor  # (N,) bool
    host_masks: torch.Tensor | None = None  # set when a copy to host memory was started early (not for LazyMasks)
    ready: Any = None  # CUDA event the early copy completes at

    def masks_host(self) -> torch.Tensor | LazyMasks:
        """The masks in host memory (LazyMasks: made a slice at a time as they are read)."""
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




@dataclass
class StoreItem:
    """One image for :meth:`SegmentWriter.store_batch`: what it is, what was computed, and where its
    counts and stage timings go."""

    prepared: PreparedImage
    computed: ComputedImage
    summary: IngestSummary
    timings: dict[str, float]

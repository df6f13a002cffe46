"""One path from an encoded image to pooled segments: the masks (from the automatic generator, from box
or point prompts, or given as annotation masks), then one mask-pooled embedding each.

:class:`Segments` is the checked container every caller uses: ingest (all three prompt modes), memory-bank
builds and prompted search queries. Build it with a ``from_*`` constructor, then :meth:`Segments.pool`::

    enc = encode_image(sam, rgb)
    segs = Segments.from_annotations(sam, enc, annotations, "boxes")
    vectors, valid = segs.pool(enc)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from samsearch.data.coco import ObjectAnnotation
from samsearch.data.masks import annotation_to_mask, masks_to_boxes_xywh, masks_to_rles, rles_to_masks
from samsearch.sam import lazymasks
from samsearch.sam.amg import AmgSettings, GeneratedMasks, generate_masks
from samsearch.sam.encoder import EncodedImage
from samsearch.sam.lazymasks import LazyMasks, masks_of
from samsearch.sam.pooling import pool_mask_embeddings
from samsearch.sam.prompting import mask_from_points, masks_from_boxes

PROMPT_MODES: tuple[str, ...] = ("auto", "boxes", "masks")


def _round(values: Sequence[float]) -> list[float]:
    return [round(float(v), 2) for v in values]


@dataclass
class Segments:
    """The segments of one image: masks on the model's device plus one entry per mask in every list."""

    masks: torch.Tensor | LazyMasks  # (N,H,W) bool; LazyMasks when a full stack would exceed MASK_BUDGET
    boxes_xyxy: np.ndarray  # (N,4) float
    predicted_iou: list[float | None]
    stability_score: list[float | None]
    prompts: list[dict[str, Any] | None]
    annotation_ids: list[int | None]
    categories: list[str | None]
    # Automatic masks only: the candidates (3 per grid point) and how many each filter step removed.
    candidates: int = 0
    filtered: dict[str, int] | None = None

    def __post_init__(self) -> None:
        n = int(self.masks.shape[0])
        lens = {len(self.boxes_xyxy), len(self.predicted_iou), len(self.stability_score), len(self.prompts),
                len(self.annotation_ids), len(self.categories)}
        if lens != {n} and not (n == 0 and lens <= {0}):
            raise ValueError(f"Segments fields disagree on the number of segments: {n} masks, {lens}")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    # -- constructors -----------------------------------------------------------------------------------
    @classmethod
    def from_generated(cls, gen: GeneratedMasks) -> Segments:
        """The automatic generator's masks, each with the grid point that prompted it."""
        n = len(gen)
        return cls(gen.masks, gen.boxes_xyxy.cpu().numpy(), gen.predicted_iou.cpu().tolist(),
                   gen.stability_score.cpu().tolist(), [{"point": _round(p)} for p in gen.points.cpu().tolist()],
                   [None] * n, [None] * n, gen.candidates, dict(gen.filtered))

    @classmethod
    def from_auto(cls, sam: Sam, enc: EncodedImage, amg: AmgSettings, exact: bool = False,
                  decoder_group: int | None = None) -> Segments:
        """Segment everything over a point grid (``SamAutomaticMaskGenerator``'s masks)."""
        return cls.from_generated(generate_masks(sam, enc, amg, exact=exact, decoder_group=decoder_group))

    @classmethod
    def from_boxes(cls, sam: Sam, enc: EncodedImage, boxes_xyxy: np.ndarray,
                   annotation_ids: Sequence[int | None] | None = None,
                   categories: Sequence[str | None] | None = None, batch_size: int = 64,
                   exact: bool = False) -> Segments:
        """One mask per box: SAM's single-mask output (the memory-bank recipe). When the masks at full
        resolution would exceed :data:`~samsearch.sam.lazymasks.MASK_BUDGET`, they are decoded a slice at a
        time and kept as RLE (a few kB each) until read (:class:`LazyMasks`)."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        h, w = enc.original_size
        if n * h * w <= lazymasks.MASK_BUDGET:
            masks, ious = masks_from_boxes(sam, enc, boxes, batch_size, exact=exact)
        else:
            rles: list[dict[str, Any]] = []
            iou_parts = []
            step = max(1, lazymasks.MASK_BUDGET // (h * w))
            for start in range(0, n, step):
                part, iou = masks_from_boxes(sam, enc, boxes[start:start + step], batch_size, exact=exact)
                rles += masks_to_rles(part.cpu().numpy())
                iou_parts.append(iou)
                del part
            ious = torch.cat(iou_parts)

            def make(a: int, b: int) -> torch.Tensor:
                return torch.from_numpy(rles_to_masks(rles[a:b]) if b > a else np.zeros((0, h, w), bool))

            masks = LazyMasks(n, h, w, sam.device, make)
        return cls(masks, boxes, ious.cpu().tolist(), [None] * n, [{"box": _round(b)} for b in boxes],
                   list(annotation_ids) if annotation_ids is not None else [None] * n,
                   list(categories) if categories is not None else [None] * n)

    @classmethod
    def from_points(cls, sam: Sam, enc: EncodedImage, points_xy: np.ndarray, labels: np.ndarray,
                    box_xyxy: np.ndarray | None = None) -> Segments:
        """One mask for clicks (label 1 foreground, 0 background) and an optional box: the best of SAM's
        multimask outputs by predicted IoU."""
        mask, iou = mask_from_points(sam, enc, points_xy, labels, box_xyxy)
        prompt: dict[str, Any] = {"points": [_round(p) for p in np.asarray(points_xy).reshape(-1, 2)],
                                  "labels": [int(v) for v in labels]}
        if box_xyxy is not None:
            prompt["box"] = _round(box_xyxy)
        return cls(mask[None], _mask_boxes_xyxy(mask[None]), [iou], [None], [prompt], [None], [None])

    @classmethod
    def from_masks(cls, masks: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
                   annotation_ids: Sequence[int | None] | None = None,
                   categories: Sequence[str | None] | None = None,
                   boxes_xyxy: np.ndarray | None = None) -> Segments:
        """Masks given as they are (no SAM prompt): (N,H,W) bool."""
        t = torch.as_tensor(np.ascontiguousarray(masks, dtype=bool) if isinstance(masks, np.ndarray) else masks,
                            device=device)
        n = int(t.shape[0])
        if boxes_xyxy is None:
            boxes_xyxy = _mask_boxes_xyxy(t)
        return cls(t, np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4), [None] * n, [None] * n, [None] * n,
                   list(annotation_ids) if annotation_ids is not None else [None] * n,
                   list(categories) if categories is not None else [None] * n)

    @classmethod
    def from_annotation_masks(cls, annotations: Sequence[ObjectAnnotation], height: int, width: int,
                              device: torch.device | str = "cpu") -> Segments:
        """The annotations' own masks (polygons or RLE); annotations without one are left out.
        ValueError for malformed geometry."""
        kept = [a for a in annotations if a.segmentation is not None]

        def make(start: int, stop: int) -> torch.Tensor:
            part = kept[start:stop]
            return torch.as_tensor(np.stack([annotation_to_mask(a.segmentation, height, width) for a in part])
                                   if part else np.zeros((0, height, width), dtype=bool))

        masks = masks_of(len(kept), height, width, device, make)
        if isinstance(masks, LazyMasks):  # rasterised a slice at a time by whoever reads them
            n = len(kept)
            return cls(masks, _annotation_boxes(kept), [None] * n, [None] * n, [None] * n, [a.id for a in kept],
                       [a.category for a in kept])
        return cls.from_masks(masks, device, [a.id for a in kept], [a.category for a in kept],
                              _annotation_boxes(kept))

    @classmethod
    def from_annotations(cls, sam: Sam, enc: EncodedImage, annotations: Sequence[ObjectAnnotation], mode: str,
                         box_batch: int = 64, exact: bool = False) -> Segments:
        """A labeled image's objects, in annotation-id order: SAM prompted with each box (``boxes``), or
        each annotation's own mask (``masks``)."""
        anns = sorted(annotations, key=lambda a: a.id)
        if mode == "boxes":
            return cls.from_boxes(sam, enc, _annotation_boxes(anns), [a.id for a in anns],
                                  [a.category for a in anns], box_batch, exact)
        if mode == "masks":
            h, w = enc.original_size
            return cls.from_annotation_masks(anns, h, w, sam.device)
        raise ValueError(f"annotations are segmented with 'boxes' or 'masks', not {mode!r}")

    # -- embedding ------------------------------------------------------------------------------------
    def pool(self, enc: EncodedImage) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask-pooled, L2-normalised embedding per segment (``maskpool-v1``) and a ``valid`` flag
        (False for an empty mask, whose row is zero)."""
        return pool_mask_embeddings(self.masks, enc)


def segment(sam: Sam, enc: EncodedImage, mode: str, annotations: Sequence[ObjectAnnotation] = (),
            amg: AmgSettings | None = None, exact: bool = False, decoder_group: int | None = None,
            box_batch: int = 64) -> Segments:
    """The segments of an encoded image for a prompt mode (``auto``, ``boxes``, ``masks``)."""
    if mode == "auto":
        return Segments.from_auto(sam, enc, amg or AmgSettings(), exact, decoder_group)
    return Segments.from_annotations(sam, enc, annotations, mode, box_batch, exact)


def _annotation_boxes(anns: Sequence[ObjectAnnotation]) -> np.ndarray:
    return np.array([[a.bbox_xywh[0], a.bbox_xywh[1], a.bbox_xywh[0] + a.bbox_xywh[2],
                      a.bbox_xywh[1] + a.bbox_xywh[3]] for a in anns], dtype=np.float32).reshape(-1, 4)


def _mask_boxes_xyxy(masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 4) tight XYXY boxes of (N, H, W) masks (zeros for an empty mask), from the data layer's boxes."""
    m = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    boxes = masks_to_boxes_xywh(m).astype(np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes

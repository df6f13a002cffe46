"""Automatic mask generation ("segment everything") over a point grid, on an already-encoded image.

Same algorithm, settings and results as ``segment_anything.SamAutomaticMaskGenerator`` (single crop
layer), reorganised so nothing is done for masks that will be thrown away:

1. the decoder returns low-resolution logits; predicted-IoU filtering needs no masks, so (fast decoder)
   prompts whose three masks all fail it are never upscaled at all. The fast decoder takes all grid points
   at once (as many per call as memory allows; ``points_per_batch`` only sizes the exact decoder's calls);
2. stability and boxes are computed on the full-resolution logits a chunk at a time, and the
   full-resolution tensors are dropped immediately;
3. box NMS runs over the survivors' boxes;
4. only the final masks are upsampled again (the same deterministic function), thresholded, and handed
   on as tensors on the model's device; RLE encoding happens once, at storage time.

There are no per-mask Python loops and no deep copies of RLE lists. The fast path waits for the device a
fixed number of times per decoder call (the IoU pass/fail matrix, the stability selection) and once for
NMS, never per prompt group or batch: filtering happens on the device and survivors are selected with one
index per step (tests/sam/test_amg_syncs.py counts it).

Two decoders: ``exact=True`` runs ``segment_anything``'s own ``MaskDecoder`` and ``postprocess_masks``
(bit-identical to the reference generator; a test proves it); the default runs
:class:`samsearch.sam.decoder.PromptDecoder` and :class:`samsearch.sam.logits.LogitUpsampler`, the same functions
reorganised (shared image-side work, no per-prompt copies of the image embedding, separable upsampling),
equal up to float rounding (tests check parity on tiny-random and a random vit_b).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score
from torchvision.ops.boxes import batched_nms

from samsearch.sam.decoder import PromptDecoder
from samsearch.sam.encoder import EncodedImage, resize_transform
from samsearch.sam.lazymasks import LazyMasks, masks_of
from samsearch.sam.logits import LogitUpsampler


@dataclass(frozen=True)
class AmgSettings:
    """SAM's automatic-mask-generator knobs, with SAM's defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that change which masks come out (batch size does not)."""
        d = self.as_dict()
        d.pop("points_per_batch")
        return d


# The steps that remove candidate masks, in order, each named by the setting that drives it.
FILTER_STAGES: tuple[str, ...] = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                                  "min_mask_region_area")


@dataclass
class GeneratedMasks:
    masks: torch.Tensor | LazyMasks  # (N, H, W) bool, on the model's device (LazyMasks: many large ones)
    boxes_xyxy: torch.Tensor  # (N, 4) float
    predicted_iou: torch.Tensor  # (N,)
    stability_score: torch.Tensor  # (N,)
    points: torch.Tensor  # (N, 2) prompt point, original-image pixels
    timings: dict[str, float] = field(default_factory=dict)
    # How many masks each step removed (FILTER_STAGES keys) out of ``candidates`` (3 per grid point).
    filtered: dict[str, int] = field(default_factory=dict)
    candidates: int = 0

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def _point_prompts(sam: Sam, enc: EncodedImage, points_xy: np.ndarray):
    """Prompt-encoder embeddings of N single foreground points (original pixels, float64 like the reference)."""
    transformed = resize_transform(sam).apply_coords(points_xy, enc.original_size)
    coords = torch.as_tensor(transformed, device=sam.device)[:, None, :]
    labels = torch.ones((coords.shape[0], 1), dtype=torch.int, device=sam.device)
    with torch.autocast(sam.device.type, enabled=False):  # positional encodings of coordinates stay fp32
        return sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)


@torch.no_grad()
def decode_point_batch(sam: Sam, enc: EncodedImage, points_xy: np.ndarray):
    """SAM's own mask decoder on N single-point prompts. Returns low-res logits (N,3,256,256) and
    predicted IoU (N,3)."""
    sparse, dense = _point_prompts(sam, enc, points_xy)
    low_res, iou = sam.mask_decoder(
        image_embeddings=enc.features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )
    return low_res, iou


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """SAM's hole/island removal (8-connectivity) with scipy instead of OpenCV."""
    from scipy import ndimage

    correct_holes = mode == "holes"
    working = correct_holes ^ mask
    regions, n = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not correct_holes:
        fill = [i for i in range(n + 1) if i not in fill]
        if not fill:  # every region is small: keep the largest
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def _postprocess_small_regions(masks: torch.Tensor, boxes: torch.Tensor, min_area: int, nms_thresh: float):
    """Apply hole/island removal, then NMS preferring unchanged masks (as SAM does). Returns keep idx,
    new masks and new boxes."""
    host = masks.cpu().numpy()
    new_masks, scores = [], []
    for m in host:
        m2, changed_holes = remove_small_regions(m, min_area, "holes")
        m3, changed_islands = remove_small_regions(m2, min_area, "islands")
        new_masks.append(m3)
        scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
    new = torch.as_tensor(np.stack(new_masks), device=masks.device)
    new_boxes = batched_mask_to_box(new)
    keep = batched_nms(new_boxes.float(), torch.as_tensor(scores, device=masks.device),
                       torch.zeros(len(new_boxes), device=masks.device), iou_threshold=nms_thresh)
    return keep, new, new_boxes


def _decode_exact(sam: Sam, enc: EncodedImage, points_xy: np.ndarray,
                  iou_thresh: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM's decoder on one batch of grid points, every prompt upscaled. Returns, for the masks that pass
    the predicted-IoU filter, their low-res logits (K,256,256), predicted IoU (K,) and prompt points (K,2)."""
    pts = torch.as_tensor(points_xy, device=sam.device)
    low_res, iou = decode_point_batch(sam, enc, points_xy)
    k = iou.shape[1]
    low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
    pts = pts.repeat_interleave(k, dim=0)
    if iou_thresh is not None:
        keep = iou > iou_thresh
        low_res, iou, pts = low_res[keep], iou[keep], pts[keep]
    return low_res, iou, pts


def _decode_fast(decoder: PromptDecoder, sparse: torch.Tensor, points: torch.Tensor,
                 iou_thresh: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fast decoder on ``sparse`` (N prompts at ``points``), in prompt-major, mask-minor order like SAM.
    Returns what :func:`_decode_exact` returns; the IoU selection costs one host transfer (in the decoder)."""
    out = decoder.decode(sparse, multimask=True, iou_thresh=iou_thresh)
    k = out.iou.shape[1]
    if out.passing is None:  # every mask of every prompt
        return out.low_res.flatten(0, 1), out.iou.flatten(0, 1), points.repeat_interleave(k, dim=0)
    prompt, mask = np.nonzero(out.passing)  # row-major: prompt-major, mask-minor
    row = np.searchsorted(np.flatnonzero(out.passing.any(axis=1)), prompt)  # the prompt's row in low_res
    dev = out.iou.device
    prompt_t, mask_t, row_t = (torch.as_tensor(a, device=dev) for a in (prompt, mask, row))
    return out.low_res[row_t, mask_t], out.iou[prompt_t, mask_t], points[prompt_t]


@torch.no_grad()
def generate_masks(sam: Sam, enc: EncodedImage, settings: AmgSettings, exact: bool = False,
                   decoder_group: int | None = None, pass_budget: int | None = None) -> GeneratedMasks:
    """SAM's automatic masks for one encoded image. ``exact``: SAM's own decoder and upsampling
    (bit-identical to ``SamAutomaticMaskGenerator``); otherwise the fast decoder (equal up to rounding).
    ``decoder_group``: prompts per fast-decoder step (default: a few on CPU, many on accelerators).
    ``pass_budget``: bytes of working memory per fast-decoder call (see
    :meth:`PromptDecoder.prompts_per_call`); the fast path synchronises with the host a fixed number of
    times per call (IoU selection, stability selection) plus once for NMS, never per group or batch."""
    timings = {"decoder": 0.0, "filter": 0.0, "nms": 0.0, "final_masks": 0.0}
    h, w = enc.original_size
    points = build_point_grid(settings.points_per_side) * np.array([[w, h]])
    thr = sam.mask_threshold
    dev = sam.device
    upsample = LogitUpsampler(sam, enc, exact=exact)
    step = upsample.chunk()
    t0 = time.perf_counter()
    decoder = None if exact else PromptDecoder(sam, enc.features, decoder_group)  # shared image-side work
    timings["decoder"] += time.perf_counter() - t0
    iou_thresh = settings.pred_iou_thresh if settings.pred_iou_thresh > 0.0 else None

    if decoder is None:  # SAM's decoder, points_per_batch prompts at a time
        sparse, grid, per_call = None, None, settings.points_per_batch
    else:  # all prompts at once, as many per decoder call as memory allows (one IoU transfer per call)
        sparse = _point_prompts(sam, enc, points)[0]
        grid = torch.as_tensor(points, device=dev)
        per_call = decoder.prompts_per_call(pass_budget)

    kept_low, kept_iou, kept_stab, kept_boxes, kept_points = [], [], [], [], []
    candidates = 3 * len(points)  # SAM's three multimask outputs per grid point
    filtered = dict.fromkeys(FILTER_STAGES, 0)
    passed_iou = 0
    for start in range(0, len(points), per_call):
        t0 = time.perf_counter()
        if decoder is None:
            low_res, iou, pts = _decode_exact(sam, enc, points[start:start + per_call], iou_thresh)
        else:
            assert sparse is not None and grid is not None
            low_res, iou, pts = _decode_fast(decoder, sparse[start:start + per_call], grid[start:start + per_call],
                                             iou_thresh)
        t1 = time.perf_counter()
        passed_iou += len(iou)  # a size the host knows already: no synchronisation
        # Stability and boxes need full-resolution logits: a chunk at a time, then dropped.
        stab = torch.empty(len(iou), device=dev)
        boxes = torch.empty((len(iou), 4), dtype=torch.long, device=dev)
        for s in range(0, len(iou), step):
            logits = upsample(low_res[s:s + step])
            stab[s:s + step] = calculate_stability_score(logits, thr, settings.stability_score_offset)
            boxes[s:s + step] = batched_mask_to_box(logits > thr)
        if settings.stability_score_thresh > 0.0:
            # one selection (one host synchronisation) for all five tensors
            keep = torch.nonzero(stab >= settings.stability_score_thresh)[:, 0]
            filtered["stability_score_thresh"] += len(iou) - len(keep)
            low_res, iou, pts, stab, boxes = low_res[keep], iou[keep], pts[keep], stab[keep], boxes[keep]
        kept_low.append(low_res)
        kept_iou.append(iou)
        kept_stab.append(stab)
        kept_boxes.append(boxes)
        kept_points.append(pts)
        timings["decoder"] += t1 - t0
        timings["filter"] += time.perf_counter() - t1

    t0 = time.perf_counter()
    low_res = torch.cat(kept_low) if kept_low else torch.zeros((0, 256, 256), device=dev)
    iou = torch.cat(kept_iou) if kept_iou else torch.zeros(0, device=dev)
    stab = torch.cat(kept_stab) if kept_stab else torch.zeros(0, device=dev)
    boxes = torch.cat(kept_boxes) if kept_boxes else torch.zeros((0, 4), dtype=torch.long, device=dev)
    pts = torch.cat(kept_points) if kept_points else torch.zeros((0, 2), device=dev)
    keep = batched_nms(boxes.float(), iou.float(), torch.zeros(len(boxes), device=dev),
                       iou_threshold=settings.box_nms_thresh)
    filtered["box_nms_thresh"] = len(iou) - len(keep)
    low_res, iou, stab, boxes, pts = low_res[keep], iou[keep], stab[keep], boxes[keep], pts[keep]
    t1 = time.perf_counter()

    # Final masks: upsample only the survivors.
    @torch.no_grad()
    def make(start: int, stop: int) -> torch.Tensor:
        out = torch.empty((stop - start, h, w), dtype=torch.bool, device=dev)
        for s in range(start, stop, step):
            out[s - start:s - start + step] = upsample(low_res[s:min(s + step, stop)]) > thr
        return out

    # Many large final masks are upsampled when read, a slice at a time (hole/island removal needs them all).
    masks = masks_of(len(iou), h, w, dev, make, lazy=settings.min_mask_region_area == 0)
    if settings.min_mask_region_area > 0 and len(masks):
        keep, new_masks, new_boxes = _postprocess_small_regions(
            masks, boxes, settings.min_mask_region_area, settings.box_nms_thresh
        )
        filtered["min_mask_region_area"] = len(masks) - len(keep)
        masks, boxes = new_masks[keep], new_boxes[keep]
        iou, stab, pts = iou[keep], stab[keep], pts[keep]
    timings["nms"] = t1 - t0
    timings["final_masks"] = time.perf_counter() - t1
    if decoder is not None:  # the decoder's share: the two-way transformer and the output upscaling
        timings.update({f"decoder_{k}": v for k, v in decoder.timings.items()})
    filtered["pred_iou_thresh"] = candidates - passed_iou
    return GeneratedMasks(masks, boxes.float(), iou.float(), stab, pts.float(), timings, filtered, candidates)

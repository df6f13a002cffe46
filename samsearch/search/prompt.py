"""A query segment from an image and a prompt (box, points, or a mask file), embedded exactly as ingest
embeds a segment: one encoder pass, SAM's prompted mask (box → single-mask output as ``--prompts boxes``;
points → the best multimask output), then the mask-pooled, L2-normalised feature (``maskpool-v1``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from samsearch.errors import InputError
from samsearch.sam.encoder import encode_image, too_thin
from samsearch.sam.models import LoadedModel
from samsearch.sam.segment import Segments

Point = tuple[float, float]


@dataclass
class Prompt:
    """What marks the query segment on its image, in original-image pixels.

    ``box`` is ``(x0, y0, x1, y1)`` (x1/y1 the exclusive edge, as in SAM); ``points`` are foreground and
    ``negative_points`` background clicks (they may refine a box); ``mask`` is an H×W bool array given
    as is (no SAM prompt then), ``mask_path`` where it came from.
    """

    box: tuple[float, float, float, float] | None = None
    points: list[Point] = field(default_factory=list)
    negative_points: list[Point] = field(default_factory=list)
    mask: np.ndarray | None = None
    mask_path: str | None = None

    def describe(self) -> dict[str, object]:
        """JSON-ready description (the ``prompt`` field of ``--json`` output)."""
        out: dict[str, object] = {}
        if self.box is not None:
            out["box"] = list(self.box)
        if self.points:
            out["points"] = [list(p) for p in self.points]
        if self.negative_points:
            out["negative_points"] = [list(p) for p in self.negative_points]
        if self.mask is not None:
            out["mask"] = self.mask_path or "<array>"
        return out


@dataclass
class EmbeddedSegment:
    vector: np.ndarray  # (C,) float32, L2-normalised
    mask: np.ndarray  # (H, W) bool
    predicted_iou: float | None  # SAM's estimate for a prompted mask; None for a given mask


def _numbers(text: str, n: int, what: str, form: str) -> list[float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} must be {form} ({n} numbers), got {text!r}")
    return values


def parse_box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = _numbers(text, 4, "--box", "x0,y0,x1,y1")
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"--box {text}: x1 must exceed x0 and y1 must exceed y0")
    return x0, y0, x1, y1


def parse_point(text: str, option: str = "--point") -> Point:
    x, y = _numbers(text, 2, option, "x,y")
    return x, y


def load_mask_file(path: Path | str) -> np.ndarray:
    """A mask image as an H×W bool array: non-zero pixels (after conversion to greyscale) are inside."""
    try:
        with PILImage.open(path) as im:
            return np.asarray(im.convert("L")) > 0
    except FileNotFoundError:
        raise InputError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the mask image ({' '.join(str(exc).split())})") from None


def check_prompt(prompt: Prompt, width: int, height: int, image_name: str) -> None:
    """InputError unless the prompt is one of box/points/mask, lies inside the image and fits its size."""
    has_sam_prompt = prompt.box is not None or bool(prompt.points) or bool(prompt.negative_points)
    if prompt.mask is not None and has_sam_prompt:
        raise InputError("--mask cannot be combined with --box, --point or --negative-point")
    if prompt.mask is None and prompt.box is None and not prompt.points:
        if prompt.negative_points:
            raise InputError("--negative-point needs a --box or a --point to refine")
        raise InputError("an --image query needs a prompt: --box, --point or --mask")
    size = f"{width}x{height}"
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            box = ",".join(f"{v:g}" for v in prompt.box)
            raise InputError(f"--box {box} lies outside the image {image_name} ({size})")
    for option, pts in (("--point", prompt.points), ("--negative-point", prompt.negative_points)):
        for x, y in pts:
            if not (0 <= x <= width and 0 <= y <= height):
                raise InputError(f"{option} {x:g},{y:g} lies outside the image {image_name} ({size})")
    if prompt.mask is not None:
        mh, mw = prompt.mask.shape[:2]
        if (mh, mw) != (height, width):
            raise InputError(
                f"{prompt.mask_path or 'mask'}: the mask is {mw}x{mh}, the image {image_name} is {size}"
            )
        if not prompt.mask.any():
            raise InputError(f"{prompt.mask_path or 'mask'}: the mask is empty (no non-zero pixel)")


@torch.no_grad()
def embed_prompted_segment(model: LoadedModel, rgb: np.ndarray, prompt: Prompt) -> EmbeddedSegment:
    """Encode ``rgb`` once, turn the prompt into a mask as ingest would, and pool its embedding."""
    sam = model.sam
    thin = too_thin(rgb.shape[:2], sam.image_encoder.img_size)
    if thin is not None:
        raise InputError(thin)
    enc = encode_image(sam, rgb)
    if prompt.mask is not None:
        segs = Segments.from_masks(prompt.mask[None], sam.device)
    elif not prompt.points and not prompt.negative_points:
        segs = Segments.from_boxes(sam, enc, np.asarray([prompt.box], dtype=np.float32))  # --prompts boxes
    else:
        pts = np.asarray([*prompt.points, *prompt.negative_points], dtype=np.float64).reshape(-1, 2)
        labels = np.asarray([1] * len(prompt.points) + [0] * len(prompt.negative_points), dtype=np.int64)
        box = None if prompt.box is None else np.asarray(prompt.box, dtype=np.float32)
        segs = Segments.from_points(sam, enc, pts, labels, box)
    vectors, valid = segs.pool(enc)
    if not bool(valid[0]):
        raise InputError("SAM found no segment for this prompt (the mask is empty); try another box or point")
    iou = segs.predicted_iou[0]
    return EmbeddedSegment(vectors[0].cpu().numpy().astype(np.float32), segs.masks[0].cpu().numpy(),
                           None if iou is None else float(iou))

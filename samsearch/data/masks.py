"""Mask and box helpers: COCO run-length encoding, COCO segmentations, box formats.

Conventions used throughout the project:

* a mask is a ``bool`` array of shape H×W (``True`` = inside the segment);
* an RLE is COCO *compressed* RLE as a JSON-ready dict ``{"size": [h, w], "counts": str}``
  (pycocotools gives ``bytes``; we store utf-8 ``str``); functions taking an RLE also accept
  ``bytes`` counts and uncompressed RLE (``counts`` as a list of run lengths);
* boxes are floats, ``xywh`` = COCO ``[x, y, width, height]``, ``xyxy`` = ``[x1, y1, x2, y2]``
  with ``x2 = x + width`` (exclusive pixel edge, as in COCO and SAM).

Decoding is done here in numpy rather than by ``pycocotools.mask.decode``: ours validates the run
lengths (pycocotools writes past its buffer when they add up to more than h*w) and does not emit
pycocotools' NumPy-2 DeprecationWarning on every call. Encoding, merging polygons, area and boxes use
pycocotools. :func:`annotation_to_mask` is the entry point for segmentations read from users' files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

Box = tuple[float, float, float, float]

# pycocotools rasterises polygons in int32 at 5× scale; keep coordinates far from overflow.
_MAX_POLYGON_COORD = 1e7
# Largest mask an RLE may describe (2**34 ≈ 17 gigapixels, far above any real image): it bounds every
# run length, so runs fit int64 with room to spare and a crafted size cannot ask for exabytes.
_MAX_RLE_PIXELS = 2**34


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode an H×W mask as compressed COCO RLE ``{"size": [h, w], "counts": str}``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H×W), got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m, dtype=np.uint8))
    return _jsonable(rle)


def masks_to_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode N×H×W masks in one pycocotools call; returns N RLE dicts (see :func:`mask_to_rle`)."""
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be 3-D (N×H×W), got shape {m.shape}")
    if m.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0), dtype=np.uint8))
    return [_jsonable(r) for r in rles]


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode an RLE (compressed, str or bytes counts, or uncompressed) to a C-contiguous bool H×W mask.

    Raises ValueError when the counts are malformed or do not add up to ``h * w``.
    """
    h, w = (int(v) for v in rle["size"])
    return _runs_to_mask(_counts_to_runs(rle["counts"]), h, w)


def rles_to_masks(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Decode RLEs of one common size to an N×H×W bool array."""
    if not rles:
        raise ValueError("rles_to_masks needs at least one RLE (the output shape comes from it)")
    masks = [rle_to_mask(r) for r in rles]
    if len({m.shape for m in masks}) != 1:
        raise ValueError("rles_to_masks needs RLEs of one common size")
    return np.stack(masks)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(_native(rle)))


def rle_to_box_xywh(rle: Mapping[str, Any]) -> list[float]:
    """Tight box ``[x, y, w, h]`` around the foreground; ``[0, 0, 0, 0]`` for an empty mask."""
    return [float(v) for v in mask_utils.toBbox(_native(rle))]


def mask_to_box_xywh(mask: np.ndarray) -> list[float]:
    """Tight box ``[x, y, w, h]`` around the foreground; ``[0, 0, 0, 0]`` for an empty mask."""
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(m.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1])
    x0, x1 = int(cols[0]), int(cols[-1])
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def masks_to_boxes_xywh(masks: np.ndarray) -> np.ndarray:
    """Tight boxes for N×H×W masks as an N×4 float64 array (zeros for empty masks)."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"masks must be 3-D (N×H×W), got shape {m.shape}")
    n, h, w = m.shape
    boxes = np.zeros((n, 4), dtype=np.float64)
    if n == 0:
        return boxes
    rows = m.any(axis=2)  # N×H
    cols = m.any(axis=1)  # N×W
    nonempty = rows.any(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = h - 1 - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - 1 - cols[:, ::-1].argmax(axis=1)
    boxes[:, 0] = x0
    boxes[:, 1] = y0
    boxes[:, 2] = x1 - x0 + 1
    boxes[:, 3] = y1 - y0 + 1
    boxes[~nonempty] = 0.0
    return boxes


def annotation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation to a bool H×W mask, validating it first.

    Accepts polygons (a list of ``[x1, y1, x2, y2, ...]`` lists, or one such flat list), uncompressed
    RLE (``counts`` a list of ints) and compressed RLE (``counts`` str or bytes). Raises ValueError with
    the reason for malformed input: a polygon with fewer than 3 points or an odd number of coordinates,
    non-finite coordinates, an RLE whose ``size`` is not ``[height, width]``, run lengths that do not add
    up to ``height * width``, an unparsable counts string.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    if isinstance(segmentation, Mapping):
        return _rle_segmentation_to_mask(segmentation, height, width)
    if isinstance(segmentation, (list, tuple)):
        polygons = _validate_polygons(segmentation)
        rles = mask_utils.frPyObjects(polygons, height, width)
        return rle_to_mask(mask_utils.merge(rles))
    raise ValueError(
        f"segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}"
    )


def box_xywh_to_xyxy(box: Sequence[float]) -> Box:
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)


def box_xyxy_to_xywh(box: Sequence[float]) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1, y1, x2 - x1, y2 - y1)


def clip_box_xyxy(box: Sequence[float], width: float, height: float) -> Box:
    """Clip to the image rectangle ``[0, width] × [0, height]`` (may leave a zero-area box)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = float(width), float(height)
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


def _jsonable(rle: Mapping[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": counts.decode("utf-8") if isinstance(counts, bytes) else counts,
    }


def _native(rle: Mapping[str, Any]) -> dict[str, Any]:
    """The dict pycocotools wants: compressed with bytes counts."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts.encode("utf-8")}
    if isinstance(counts, bytes):
        return {"size": [h, w], "counts": counts}
    return mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)


def _rle_segmentation_to_mask(seg: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    if "counts" not in seg or "size" not in seg:
        raise ValueError("RLE segmentation needs both 'counts' and 'size'")
    size = seg["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) for v in size):
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise ValueError(f"RLE size [{size[0]}, {size[1]}] does not match the image size [{height}, {width}]")
    counts = seg["counts"]
    if isinstance(counts, (list, tuple)) and not all(_is_int(c) for c in counts):
        raise ValueError("uncompressed RLE counts must be integers")
    return _runs_to_mask(_counts_to_runs(counts), height, width)


def _counts_to_runs(counts: Any) -> np.ndarray:
    """Run lengths (int64) from compressed counts (str/bytes) or uncompressed counts (a list)."""
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("RLE counts string has non-ASCII characters") from None
    if isinstance(counts, bytes):
        return _parse_compressed_counts(counts)
    if isinstance(counts, (list, tuple, np.ndarray)):
        # Check each run as an exact Python int before it meets int64 (10**30 would overflow).
        runs = [int(c) for c in np.asarray(counts, dtype=object).reshape(-1)]
        _check_runs(runs)
        return np.asarray(runs, dtype=np.int64)
    raise ValueError(f"RLE counts must be a string or a list of ints, got {type(counts).__name__}")


def _runs_to_mask(runs: np.ndarray, height: int, width: int) -> np.ndarray:
    if height < 0 or width < 0:
        raise ValueError(f"RLE size must be non-negative, got [{height}, {width}]")
    if height * width > _MAX_RLE_PIXELS:
        raise ValueError(f"RLE size [{height}, {width}] is larger than {_MAX_RLE_PIXELS} pixels")
    if (runs < 0).any():
        raise ValueError("RLE counts contain a negative run length")
    # Exact total: an int64 sum wraps (4 × 2**62 + 16 "adds up" to 16), and np.repeat would then
    # write far past its buffer (a segfault). Every run is already ≤ _MAX_RLE_PIXELS here.
    total = sum(runs.tolist())
    if total != height * width:
        raise ValueError(f"RLE run lengths add up to {total}, expected height*width = {height * width}")
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True  # runs alternate background/foreground, starting with background
    flat = np.repeat(values, runs)
    return np.ascontiguousarray(flat.reshape(width, height).T)  # COCO RLE is column-major


def _check_runs(runs: list[int]) -> None:
    if any(r < 0 for r in runs):
        raise ValueError("RLE counts contain a negative run length")
    if any(r > _MAX_RLE_PIXELS for r in runs):
        raise ValueError(f"RLE counts contain a run length above {_MAX_RLE_PIXELS} pixels")


def _parse_compressed_counts(data: bytes) -> np.ndarray:
    """Decode COCO's compressed counts string to run lengths, vectorised.

    Each number is a little-endian sequence of 5-bit groups, one per character (``char - 48``), bit 0x20
    marking "more groups follow" and bit 0x10 of the last group the sign; from the fourth number on, each
    is stored as the difference to the number two places earlier (pycocotools' ``rleFrString``).
    """
    if not data:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if bad.size:
        raise ValueError(f"RLE counts string has an invalid character {chr(data[bad[0]])!r}")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts string ends in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    k = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # group index within its number
    if k.max() > 11:
        raise ValueError("RLE counts string has a number too long to be a run length")
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * (k[ends][negative] + 1))
    # undo the delta coding: x[m] += x[m-2] for m > 2; in Python ints, as int64 cumsums can wrap
    runs = x.tolist()
    for m in range(3, len(runs)):
        runs[m] += runs[m - 2]
    _check_runs(runs)
    return np.asarray(runs, dtype=np.int64)


def _validate_polygons(segmentation: Sequence[Any]) -> list[list[float]]:
    if len(segmentation) == 0:
        raise ValueError("empty polygon list")
    if all(_is_number(v) for v in segmentation):
        segmentation = [segmentation]  # a single flat polygon
    polygons: list[list[float]] = []
    for i, poly in enumerate(segmentation):
        if not isinstance(poly, (list, tuple)) or not all(_is_number(v) for v in poly):
            raise ValueError(f"polygon {i} must be a flat list of numbers [x1, y1, x2, y2, ...]")
        if len(poly) % 2:
            raise ValueError(f"polygon {i} has an odd number of coordinates ({len(poly)})")
        if len(poly) < 6:
            raise ValueError(f"polygon {i} has fewer than 3 points ({len(poly) // 2})")
        # compare before float(): float(10**400) raises OverflowError, not a clear reason
        if any(isinstance(v, (int, np.integer)) and abs(int(v)) > _MAX_POLYGON_COORD for v in poly):
            raise ValueError(f"polygon {i} has a coordinate beyond ±{_MAX_POLYGON_COORD:g}")
        coords = [float(v) for v in poly]
        if not all(math.isfinite(v) for v in coords):
            raise ValueError(f"polygon {i} has a non-finite coordinate")
        if max(abs(v) for v in coords) > _MAX_POLYGON_COORD:
            raise ValueError(f"polygon {i} has a coordinate beyond ±{_MAX_POLYGON_COORD:g}")
        polygons.append(coords)
    return polygons


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

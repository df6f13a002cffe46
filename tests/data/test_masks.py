from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from samsearch.data.masks import (
    annotation_to_mask,
    box_xywh_to_xyxy,
    box_xyxy_to_xywh,
    clip_box_xyxy,
    mask_to_box_xywh,
    mask_to_rle,
    masks_to_boxes_xywh,
    masks_to_rles,
    rle_area,
    rle_to_box_xywh,
    rle_to_mask,
    rles_to_masks,
)


def _random_mask(rng: np.random.Generator, h: int, w: int, density: float) -> np.ndarray:
    return rng.random((h, w)) < density


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a (possibly empty) background run, as COCO does."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


@pytest.mark.parametrize(
    ("h", "w", "density"),
    [(1, 1, 0.5), (1, 1, 1.0), (7, 3, 0.0), (7, 3, 1.0), (37, 53, 0.3), (64, 64, 0.9), (120, 5, 0.5)],
)
def test_rle_round_trip(h: int, w: int, density: float) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    mask = _random_mask(rng, h, w, density)
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str)
    assert rle["size"] == [h, w]
    assert json.loads(json.dumps(rle)) == rle
    back = rle_to_mask(rle)
    assert back.dtype == bool and back.flags.c_contiguous
    np.testing.assert_array_equal(back, mask)
    assert rle_area(rle) == int(mask.sum())
    assert rle_to_box_xywh(rle) == mask_to_box_xywh(mask)
    # bytes counts and uncompressed counts decode the same
    np.testing.assert_array_equal(rle_to_mask({"size": [h, w], "counts": rle["counts"].encode()}), mask)
    np.testing.assert_array_equal(rle_to_mask({"size": [h, w], "counts": _uncompressed_counts(mask)}), mask)


def test_batched_helpers_match_single() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((5, 20, 30)) < 0.05
    masks[1] = False  # an empty mask
    rles = masks_to_rles(masks)
    assert rles == [mask_to_rle(m) for m in masks]
    np.testing.assert_array_equal(rles_to_masks(rles), masks)
    boxes = masks_to_boxes_xywh(masks)
    assert boxes.shape == (5, 4)
    assert boxes.tolist() == [mask_to_box_xywh(m) for m in masks]
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert masks_to_rles(np.zeros((0, 4, 4), dtype=bool)) == []


def test_box_from_mask() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_to_box_xywh(mask) == [3.0, 2.0, 6.0, 3.0]
    assert rle_to_box_xywh(mask_to_rle(mask)) == [3.0, 2.0, 6.0, 3.0]


def _shoelace(poly: list[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2.0


def _regular_polygon(cx: float, cy: float, r: float, n: int, phase: float) -> list[float]:
    out: list[float] = []
    for k in range(n):
        t = phase + 2 * math.pi * k / n
        out += [cx + r * math.cos(t), cy + r * math.sin(t)]
    return out


@pytest.mark.parametrize(
    "poly",
    [
        [10.0, 10.0, 50.0, 10.0, 50.0, 40.0, 10.0, 40.0],  # axis-aligned rectangle
        [5.0, 5.0, 60.0, 12.0, 20.0, 55.0],  # triangle
        _regular_polygon(40.0, 32.0, 25.0, 7, 0.3),
        _regular_polygon(30.0, 30.0, 12.5, 12, 1.1),
        [10.0, 10.0, 60.0, 10.0, 35.0, 30.0, 60.0, 50.0, 10.0, 50.0],  # concave
    ],
)
def test_polygon_area_matches_shoelace(poly: list[float]) -> None:
    mask = annotation_to_mask([poly], 64, 80)
    assert mask.shape == (64, 80)
    perimeter = sum(
        math.dist(poly[2 * i : 2 * i + 2], poly[(2 * i + 2) % len(poly) : (2 * i + 2) % len(poly) + 2])
        for i in range(len(poly) // 2)
    )
    # rasterisation error is bounded by about half a pixel along the outline
    assert abs(int(mask.sum()) - _shoelace(poly)) <= 0.5 * perimeter + 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under NumPy 2
def test_annotation_formats_agree() -> None:
    poly = [4.0, 4.0, 30.0, 6.0, 20.0, 25.0]
    from_poly = annotation_to_mask([poly], 32, 40)
    flat_poly = annotation_to_mask(poly, 32, 40)  # one polygon not wrapped in a list
    rle = mask_to_rle(from_poly)
    counts = _uncompressed_counts(from_poly)
    np.testing.assert_array_equal(flat_poly, from_poly)
    np.testing.assert_array_equal(annotation_to_mask(rle, 32, 40), from_poly)
    np.testing.assert_array_equal(
        annotation_to_mask({**rle, "counts": rle["counts"].encode()}, 32, 40), from_poly
    )
    np.testing.assert_array_equal(annotation_to_mask({"size": [32, 40], "counts": counts}, 32, 40), from_poly)
    # pycocotools' own rasteriser agrees
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], 32, 40))).astype(bool)
    np.testing.assert_array_equal(from_poly, expected)


def test_multi_polygon_union() -> None:
    a = [0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]
    b = [20.0, 20.0, 30.0, 20.0, 30.0, 30.0, 20.0, 30.0]
    both = annotation_to_mask([a, b], 40, 40)
    assert both.sum() == annotation_to_mask([a], 40, 40).sum() + annotation_to_mask([b], 40, 40).sum()


_GOOD_RLE = mask_to_rle(np.eye(4, dtype=bool))


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[1.0, 2.0, 3.0, 4.0]], "polygon 0 has fewer than 3 points (2)"),
        ([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]], "polygon 0 has an odd number of coordinates (7)"),
        ([[0.0, 0.0, 3.0, 0.0, 3.0, 3.0], [1.0, "a", 2.0, 2.0, 3.0, 3.0]], "polygon 1 must be a flat list"),
        ([[0.0, 0.0, 3.0, float("nan"), 3.0, 3.0]], "polygon 0 has a non-finite coordinate"),
        ([[0.0, 0.0, 3.0, 1e12, 3.0, 3.0]], "polygon 0 has a coordinate beyond"),
        ([], "empty polygon list"),
        (None, "segmentation must be a list of polygons or an RLE dict, got NoneType"),
        ({"counts": _GOOD_RLE["counts"]}, "RLE segmentation needs both 'counts' and 'size'"),
        ({**_GOOD_RLE, "size": [4, 5]}, "RLE size [4, 5] does not match the image size [4, 4]"),
        ({**_GOOD_RLE, "size": "4x4"}, "RLE size must be [height, width]"),
        ({"size": [4, 4], "counts": [3, 4]}, "RLE run lengths add up to 7, expected height*width = 16"),
        ({"size": [4, 4], "counts": [20, -4]}, "RLE counts contain a negative run length"),
        ({"size": [4, 4], "counts": [1.5, 14.5]}, "uncompressed RLE counts must be integers"),
        ({"size": [4, 4], "counts": "0~~~~"}, "RLE counts string has an invalid character '~'"),
        ({"size": [4, 4], "counts": "0P"}, "RLE counts string ends in the middle of a number"),
        ({"size": [4, 4], "counts": "5"}, "RLE run lengths add up to 5, expected height*width = 16"),
        ({"size": [4, 4], "counts": "é"}, "RLE counts string has non-ASCII characters"),
        ({"size": [4, 4], "counts": 16}, "RLE counts must be a string or a list of ints, got int"),
    ],
)
def test_annotation_to_mask_rejects(segmentation: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        annotation_to_mask(segmentation, 4, 4)
    assert str(info.value).startswith(message)


def test_box_conversions() -> None:
    assert box_xywh_to_xyxy([1, 2, 3, 4]) == (1.0, 2.0, 4.0, 6.0)
    assert box_xyxy_to_xywh((1.0, 2.0, 4.0, 6.0)) == (1.0, 2.0, 3.0, 4.0)
    assert box_xyxy_to_xywh(box_xywh_to_xyxy((0.5, 1.5, 10.25, 3.0))) == (0.5, 1.5, 10.25, 3.0)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((10, 10, 20, 20), (10.0, 10.0, 20.0, 20.0)),
        ((-5, -3, 20, 20), (0.0, 0.0, 20.0, 20.0)),
        ((90, 40, 130, 70), (90.0, 40.0, 100.0, 50.0)),
        ((120, 60, 130, 70), (100.0, 50.0, 100.0, 50.0)),  # entirely outside: collapses to zero area
    ],
)
def test_clip_box(box: tuple[float, ...], expected: tuple[float, ...]) -> None:
    assert clip_box_xyxy(box, 100, 50) == expected


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under NumPy 2
def test_decoder_matches_pycocotools() -> None:
    rng = np.random.default_rng(11)
    for i in range(60):
        h, w = (int(v) for v in rng.integers(1, 90, size=2))
        if i % 2:
            mask = rng.random((h, w)) < rng.random()
        else:  # long runs exercise multi-character numbers and negative deltas
            mask = np.zeros((h, w), dtype=bool)
            mask[rng.integers(0, h) :, rng.integers(0, w) :] = True
        rle = mask_to_rle(mask)
        theirs = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(rle_to_mask(rle), theirs)
        np.testing.assert_array_equal(theirs, mask)


def test_large_mask_round_trip() -> None:
    yy, xx = np.ogrid[:700, :900]
    mask = (yy - 300) ** 2 + (xx - 420) ** 2 < 280**2
    mask[::37, ::41] ^= True
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(mask)), mask)


def _compress_counts(runs: list[int]) -> str:
    """COCO's compressed counts string for any run lengths (pycocotools' rleToString, in Python ints)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


# Runs that add up to 2**64 + 16: an int64 total wraps to 16 = 4*4, and decoding them used to write
# far past np.repeat's buffer (exit 139). Every run and every delta fits COCO's 60-bit numbers.
_WRAPPING_RUNS = [16] + [k * 2**58 for k in range(1, 8) for _ in range(2)] + [2**61]


def test_compress_counts_helper_matches_pycocotools() -> None:
    rle = mask_to_rle(np.eye(4, dtype=bool))
    assert _compress_counts(_uncompressed_counts(np.eye(4, dtype=bool))) == rle["counts"]


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"size": [4, 4], "counts": [2**62, 2**62, 2**62, 2**62 + 16]}, "RLE counts contain a run length above"),
        ({"size": [4, 4], "counts": _WRAPPING_RUNS}, "RLE counts contain a run length above"),
        ({"size": [4, 4], "counts": _compress_counts(_WRAPPING_RUNS)}, "RLE counts contain a run length above"),
        ({"size": [4, 4], "counts": [10**30, 1]}, "RLE counts contain a run length above"),
        ({"size": [4, 4], "counts": [-(10**30), 1]}, "RLE counts contain a negative run length"),
        ([[0, 0, 10**400, 0, 5, 5]], "polygon 0 has a coordinate beyond"),
        ([[0.0, 0.0, 1e308 * 10, 0.0, 5.0, 5.0]], "polygon 0 has a non-finite coordinate"),
    ],
)
def test_crafted_rle_and_polygons_are_rejected_not_crashed(segmentation: Any, message: str) -> None:
    assert sum(_WRAPPING_RUNS) == 2**64 + 16
    with pytest.raises(ValueError) as info:
        annotation_to_mask(segmentation, 4, 4)
    assert str(info.value).startswith(message)


def test_rle_to_mask_rejects_huge_size() -> None:
    with pytest.raises(ValueError, match="larger than"):
        rle_to_mask({"size": [2**20, 2**20], "counts": [2**20, 2**20]})

"""samsearch's automatic mask generator gives SamAutomaticMaskGenerator's masks (same weights/settings)."""

import numpy as np
import pytest
from segment_anything import SamAutomaticMaskGenerator

from samsearch.data.imageio import load_image
from samsearch.sam.amg import AmgSettings, generate_masks, remove_small_regions
from samsearch.sam.encoder import encode_image


def _match(reference, ours):
    """For each reference mask, the best IoU among our masks."""
    best = []
    for r in reference:
        a = r["segmentation"]
        ious = [(a & b).sum() / max(1, (a | b).sum()) for b in ours]
        best.append(max(ious) if ious else 0.0)
    return np.array(best)


@pytest.mark.parametrize(
    "settings",
    [
        # thresholds lowered so that masks of the random-weight decoder survive
        dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99),
        dict(points_per_side=4, pred_iou_thresh=-0.19, stability_score_thresh=0.0, box_nms_thresh=0.99,
             points_per_batch=5),
        dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99,
             min_mask_region_area=200),
    ],
)
def test_amg_matches_segment_anything(tiny_model, shapes, settings):
    rgb = load_image(shapes.images[0].path).rgb
    ref_kwargs = {k: v for k, v in settings.items()}
    if settings.get("min_mask_region_area"):
        # SAM's own small-region removal needs OpenCV; compare against its algorithm on our port.
        import cv2  # noqa: F401  (installed with the dev extras)
    reference = SamAutomaticMaskGenerator(tiny_model.sam, **ref_kwargs).generate(rgb)
    ours = generate_masks(tiny_model.sam, encode_image(tiny_model.sam, rgb), AmgSettings(**settings), exact=True)
    assert len(reference) >= 2, "settings must leave several masks to compare"
    assert len(ours) == len(reference)
    masks = ours.masks.numpy()
    for r, m, iou, stab, box, pt in zip(reference, masks, ours.predicted_iou, ours.stability_score,
                                         ours.boxes_xyxy, ours.points, strict=True):
        assert np.array_equal(r["segmentation"], m)  # same masks, same order
        assert r["predicted_iou"] == pytest.approx(float(iou), abs=1e-5)
        assert r["stability_score"] == pytest.approx(float(stab), abs=1e-5)
        x, y, w, h = r["bbox"]
        assert [x, y, x + w, y + h] == pytest.approx(box.tolist())
        assert r["point_coords"][0] == pytest.approx(pt.tolist())


def test_amg_default_thresholds_filter_random_masks(tiny_model, shapes):
    # SAM's defaults (0.88 / 0.95) reject the random decoder's low-confidence masks, as the reference does.
    rgb = load_image(shapes.images[1].path).rgb
    settings = AmgSettings(points_per_side=2)
    ref = SamAutomaticMaskGenerator(tiny_model.sam, points_per_side=2).generate(rgb)
    ours = generate_masks(tiny_model.sam, encode_image(tiny_model.sam, rgb), settings, exact=True)
    assert len(ours) == len(ref)


@pytest.mark.parametrize(
    "mode, expected_changed, expected_sum",
    [("holes", True, 25), ("islands", True, 24)],
)
def test_remove_small_regions(mode, expected_changed, expected_sum):
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:7, 2:7] = True  # 25 px square
    mask[4, 4] = False  # a 1-px hole
    mask[9, 9] = True  # a 1-px island
    out, changed = remove_small_regions(mask, 5, mode)
    assert changed is expected_changed
    assert out[2:7, 2:7].sum() == (25 if mode == "holes" else 24)
    assert out[9, 9] == (mode == "holes")
    assert out.sum() == expected_sum + (1 if mode == "holes" else 0)

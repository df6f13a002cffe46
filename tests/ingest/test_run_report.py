"""What a run's report says about what it left out (issue 12): annotations with NaN, zero or negative box
sizes (dropped without a count before), and automatic masks that every filter step removed (a run ended
with 0 segments and exit 0 without a word)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.data.synthetic import make_dataset
from samsearch.sam.amg import FILTER_STAGES, AmgSettings, generate_masks
from samsearch.sam.encoder import encode_image

runner = CliRunner()


def test_left_out_annotations_are_counted_per_kind(tmp_path):
    data = make_dataset(tmp_path / "data", n_images=2, seed=7, objects_per_image=(4, 4))
    doc = json.loads(data.annotations_path.read_text())
    anns = doc["annotations"]
    anns[0]["bbox"][2] = 0  # zero width
    anns[1]["bbox"][3] = -5  # negative height
    anns[2]["bbox"][2] = float("nan")  # written as NaN, which Python's json reads
    anns[4]["bbox"][0] = 10_000  # outside the image
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    args = ["ingest", str(data.root), "--model", "tiny-random", "--device", "cpu",
            "--prompts", "masks", "--annotations", str(tmp_path / "edited.json"), "--quiet"]
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), *args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    expected = {"zero-size box": 1, "negative-size box": 1, "NaN box": 1, "box outside the image": 1}
    assert summary["annotations_skipped"] == expected
    assert summary["segments"] == len(anns) - 4

    shown = runner.invoke(app, ["--home", str(tmp_path / "h2"), *args])
    assert shown.exit_code == 0, shown.output
    assert (f"left out 4 annotations of {tmp_path / 'edited.json'} (zero-size box: 1, negative-size box: 1, "
            "NaN box: 1, box outside the image: 1)") in shown.output.splitlines()


def test_a_run_whose_masks_were_all_filtered_says_which_threshold(tmp_path):
    data = make_dataset(tmp_path / "data", n_images=1, seed=1)
    base = ["--home", str(tmp_path / "h"), "ingest", str(data.root), "--model", "tiny-random", "--device", "cpu",
            "--points-per-side", "4", "--quiet"]
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == (
        "0 segments: all 48 candidate masks (3 per point of the 4×4 grid, 1 image) fell below --pred-iou-thresh "
        "0.88 (tiny-random's random weights give low scores; try --prompts masks or boxes, or lower the "
        "thresholds)")

    result = runner.invoke(app, [*base, "--pred-iou-thresh", "0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["segments"] == 0 and summary["images_without_segments"] == 1
    assert summary["candidate_masks"] == 48
    assert summary["masks_filtered"] == {"pred_iou_thresh": 0, "stability_score_thresh": 48, "box_nms_thresh": 0,
                                         "min_mask_region_area": 0}
    assert summary["images_emptied_by"] == {"stability_score_thresh": 1}
    assert summary["notes"] == [
        "0 segments: all 48 candidate masks (3 per point of the 4×4 grid, 1 image) fell below "
        "--stability-score-thresh 0.95 (tiny-random's random weights give low scores; try --prompts masks or "
        "boxes, or lower the thresholds)"]


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_generate_masks_counts_what_each_step_removed(tiny_model, exact):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    enc = encode_image(tiny_model.sam, rgb)
    settings = AmgSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                           box_nms_thresh=0.5, min_mask_region_area=20)
    gen = generate_masks(tiny_model.sam, enc, settings, exact=exact)
    assert gen.candidates == 48 and set(gen.filtered) == set(FILTER_STAGES)
    assert gen.filtered["pred_iou_thresh"] == gen.filtered["stability_score_thresh"] == 0
    assert gen.filtered["box_nms_thresh"] > 0  # 48 masks of one small image overlap
    assert sum(gen.filtered.values()) + len(gen) == gen.candidates

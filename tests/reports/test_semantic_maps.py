"""Semantic maps on hand-built fixtures: every pixel equals the cluster/label value of the (smallest) segment
covering it, the legend says what each value means, and overlays tint the image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import insert, select
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.data.masks import mask_to_rle
from samsearch.db import ClusterName, ClusterRun, Image, ImageDataset, Segment, SegmentCluster
from samsearch.errors import InputError
from samsearch.home import Home
from samsearch.reports.semantic_maps import PaintSegment, export_semantic_maps, paint_label_map

runner = CliRunner()
H, W = 30, 40


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


# Hand-built segments of image 1: (id, mask, cluster, label). "big" holds "small"; "side" overlaps "big";
# "tie1"/"tie2" have equal areas and overlap; "lone" stands apart.
SEGS = [
    ("00000000-0000-0000-0000-000000000001", box(0, 20, 0, 30), 0, "road"),  # 600 px
    ("00000000-0000-0000-0000-000000000002", box(5, 10, 5, 15), 1, "car"),  # 50 px, inside big
    ("00000000-0000-0000-0000-000000000003", box(10, 25, 20, 40), -1, None),  # 300 px, noise, unlabeled
    ("00000000-0000-0000-0000-000000000004", box(26, 30, 0, 10), 2, "car"),  # 40 px
    ("00000000-0000-0000-0000-000000000005", box(21, 25, 0, 6), 1, "tree"),  # 24 px
    ("00000000-0000-0000-0000-000000000006", box(22, 26, 3, 9), 2, "sky"),  # 24 px, overlaps tie1
]
OTHER = ("00000000-0000-0000-0000-0000000000ff", box(0, 5, 0, 5), 0, "road")  # image 2, another dataset


def _segment_row(sid, image_id, mask, label, index):
    rle = mask_to_rle(mask)
    ys, xs = np.nonzero(mask)
    return {"id": sid, "image_id": image_id, "settings_hash": "s" * 32, "segment_index": index, "source": "mask",
            "model_key": "hand", "rle_counts": rle["counts"], "height": H, "width": W,
            "bbox_x": float(xs.min()), "bbox_y": float(ys.min()), "bbox_w": float(np.ptp(xs) + 1),
            "bbox_h": float(np.ptp(ys) + 1), "area": int(mask.sum()), "label": label,
            "label_source": "manual" if label else None}


@pytest.fixture
def hand_home(home, tmp_path):
    """Two images (the second one's file is missing), the segments above, and a current run "hand"."""
    path = tmp_path / "scene.png"
    rgb = np.full((H, W, 3), 100, np.uint8)
    PILImage.fromarray(rgb).save(path)
    with home.db.session() as s:
        s.execute(insert(Image), [
            {"id": 1, "content_hash": "a" * 64, "path": str(path), "dataset": "main", "status": "done",
             "width": W, "height": H},
            {"id": 2, "content_hash": "b" * 64, "path": str(tmp_path / "gone.png"), "dataset": "other",
             "status": "done", "width": W, "height": H},
        ])
        s.execute(insert(ImageDataset), [{"image_id": 1, "dataset": "main"}, {"image_id": 2, "dataset": "other"}])
        rows = [_segment_row(sid, 1, m, lab, i) for i, (sid, m, _, lab) in enumerate(SEGS)]
        rows.append(_segment_row(OTHER[0], 2, OTHER[1], OTHER[3], 0))
        s.execute(insert(Segment), rows)
        run = ClusterRun(name="hand", algorithm="kmeans", is_current=True, stats={"clusters": 3})
        s.add(run)
        s.flush()
        s.execute(insert(SegmentCluster), [{"run_id": run.id, "segment_id": sid, "cluster": c,
                                            "distance": None if c < 0 else 0.1} for sid, _, c, _ in [*SEGS, OTHER]])
        s.add(ClusterName(run_id=run.id, cluster=1, label="small things"))
    return home


def expected(values: dict[str, int]) -> np.ndarray:
    """The map by the documented rule, built independently: paint in area order, smallest last, ties by id."""
    out = np.zeros((H, W), np.int64)
    for sid, mask, _, _ in sorted(SEGS, key=lambda s: (-int(s[1].sum()), s[0])):
        if sid in values:
            out[mask] = values[sid]
    return out


def read_png(path) -> np.ndarray:
    return np.array(PILImage.open(path)).astype(np.int64)


def test_by_cluster_pixels_legend_overlay(hand_home, tmp_path):
    out = tmp_path / "maps"
    summary = export_semantic_maps(hand_home, out, by="cluster", progress=False)
    legend = json.loads((out / "legend.json").read_text())
    assert (summary.images, summary.overlays, summary.bit_depth, legend["run"]) == (2, 1, 8, "hand")
    assert summary.failures == [{"path": str(tmp_path / "gone.png"), "reason": "unreadable: no such file"}]
    assert [(v["value"], v["name"], v.get("cluster")) for v in legend["values"]] == [
        (0, "background", None), (1, "noise", -1), (2, "cluster 0", 0), (3, "small things", 1), (4, "cluster 2", 2)]

    got = read_png(out / legend["images"][0]["label_map"])
    assert got.shape == (H, W) and PILImage.open(out / legend["images"][0]["label_map"]).mode == "L"
    np.testing.assert_array_equal(got, expected({sid: c + 2 for sid, _, c, _ in SEGS}))
    # a few pixels by hand: background, big only, small on big, side (noise) on big, tie2 on tie1, lone
    assert [got[29, 39], got[0, 0], got[7, 7], got[15, 25], got[23, 4], got[21, 1], got[27, 2]] == \
        [0, 2, 3, 1, 4, 3, 4]
    assert legend["images"][0]["values"] == [0, 1, 2, 3, 4]

    overlay = np.array(PILImage.open(out / legend["images"][0]["overlay"]))
    assert overlay.shape == (H, W, 3)
    assert (overlay[29, 39] == 100).all()  # background untouched
    colors = {v["value"]: v["color"] for v in legend["values"]}
    tint = np.clip(np.round(0.45 * 100 + 0.55 * np.array(colors[3])), 0, 255)
    np.testing.assert_allclose(overlay[7, 7], tint, atol=1)

    second = read_png(out / legend["images"][1]["label_map"])  # file missing: map still written from the masks
    assert legend["images"][1]["overlay"] is None and (second[:5, :5] == 2).all() and second.sum() == 50


def test_by_label_and_dataset_filter(hand_home, tmp_path):
    out = tmp_path / "maps"
    summary = export_semantic_maps(hand_home, out, by="label", dataset="main", progress=False)
    legend = json.loads((out / "legend.json").read_text())
    assert summary.images == 1 and summary.failures == []
    assert [(v["value"], v["name"]) for v in legend["values"]] == [
        (0, "background"), (1, "car"), (2, "road"), (3, "sky"), (4, "tree")]
    got = read_png(out / legend["images"][0]["label_map"])
    values = {"car": 1, "road": 2, "sky": 3, "tree": 4}
    np.testing.assert_array_equal(got, expected({sid: values[lab] for sid, _, _, lab in SEGS if lab}))
    assert got[15, 25] == 2  # the unlabeled segment paints nothing: the road under it shows


def test_sixteen_bit_when_values_exceed_255(hand_home, tmp_path):
    with hand_home.db.session() as s:
        s.execute(SegmentCluster.__table__.update().where(SegmentCluster.segment_id == SEGS[3][0]).values(cluster=300))
    summary = export_semantic_maps(hand_home, tmp_path / "m", progress=False)
    legend = json.loads((tmp_path / "m" / "legend.json").read_text())
    assert summary.bit_depth == 16
    got = read_png(tmp_path / "m" / legend["images"][0]["label_map"])
    assert got[27, 2] == 302 and got[7, 7] == 3


@pytest.mark.parametrize("home", ["sqlite+edge"], indirect=True)
def test_no_current_run_and_bad_input(home, tmp_path):
    with pytest.raises(InputError, match="no current clustering run: pass --run RUN"):
        export_semantic_maps(home, tmp_path / "m", progress=False)
    with pytest.raises(InputError, match="--by must be cluster or label, not 'colour'"):
        export_semantic_maps(home, tmp_path / "m", by="colour", progress=False)
    with pytest.raises(InputError, match="nothing to export: no labeled segments"):
        export_semantic_maps(home, tmp_path / "m", by="label", progress=False)


def test_paint_rejects_mask_of_another_size():
    seg = PaintSegment("x", 4, mask_to_rle(np.ones((2, 2), bool)), 1)
    with pytest.raises(ValueError, match="mask is 2x2, not 40x30"):
        paint_label_map(H, W, [seg])


@pytest.mark.parametrize("home", ["sqlite+edge"], indirect=True)
def test_cli_export_semantic(hand_home, tmp_path):
    home_root = str(hand_home.root)
    hand_home.close()  # the CLI opens the home itself (one user of an embedded store at a time)
    out = tmp_path / "cli"
    result = runner.invoke(app, ["--home", home_root, "export", "semantic", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 2 label maps and 1 overlays to {out} (legend: {out / 'legend.json'})\n"
    assert result.stderr == f"no overlay: {tmp_path / 'gone.png'}: unreadable: no such file\n"
    result = runner.invoke(app, ["--home", home_root, "export", "semantic", str(out), "--by", "label", "--json",
                                 "--quiet"])
    assert json.loads(result.stdout)["by"] == "label"
    for args, message in [
        (["--run", "nope"], "Error: no clustering run named 'nope' (known runs: hand)\n"),
        (["--by", "label", "--run", "hand"], "Error: --run applies to --by cluster only\n"),
    ]:
        result = runner.invoke(app, ["--home", home_root, "export", "semantic", str(out), *args])
        assert (result.exit_code, result.stderr) == (1, message)
    with Home(home_root) as h, h.db.session() as s:
        assert s.execute(select(ClusterRun.name)).scalars().all() == ["hand"]

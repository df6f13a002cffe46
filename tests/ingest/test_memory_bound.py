"""Peak memory of one large image with many masks (issue 12: an 8000×6000 image with many masks was killed at
24 GB; every mask was held at full resolution at once, then copied for the RLEs and the areas). The masks
are now made a slice at a time where they are read (pooling, then the writer), so the peak no longer grows
with masks × pixels. Measured in a separate process: its peak RSS (ru_maxrss)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from samsearch.db import Segment
from samsearch.home import SEGMENTS, Home
from samsearch.ingest import store
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.sam import lazymasks
from samsearch.sam.amg import AmgSettings

W, H, N = 4000, 3000, 200  # 200 full-resolution masks: 2.4 GB as bool, 12 MB each
PEAK_BOUND_MIB = 2048  # measured: ~1.1 GiB now; 5-7 GiB before (docs/BENCHMARKS.md)


def _dataset(root: Path) -> tuple[Path, Path]:
    root.mkdir()
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 255 // W, y * 255 // H, (x + y) % 256], axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(root / "big.png")
    rng = np.random.default_rng(0)
    anns = []
    for i in range(N):
        bw, bh = int(rng.integers(W // 20, W // 4)), int(rng.integers(H // 20, H // 4))
        x0, y0 = int(rng.integers(0, W - bw)), int(rng.integers(0, H - bh))
        polygon = [float(v) for v in (x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh)]
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x0, y0, bw, bh],
                     "segmentation": [polygon], "area": bw * bh, "iscrowd": 0})
    doc = {"images": [{"id": 1, "file_name": "big.png", "width": W, "height": H}],
           "categories": [{"id": 1, "name": "box"}], "annotations": anns}
    (root / "ann.json").write_text(json.dumps(doc))
    return root / "big.png", root / "ann.json"


def test_peak_memory_does_not_grow_with_masks_times_pixels(tmp_path):
    image, annotations = _dataset(tmp_path / "data")
    ingest = [sys.executable, "-m", "samsearch", "--home", str(tmp_path / "h"), "ingest", str(image), "--prompts",
              "masks", "--annotations", str(annotations), "--model", "tiny-random", "--device", "cpu", "--quiet",
              "--json"]
    # A fresh process whose only child is the ingest: its children's ru_maxrss is the ingest's peak.
    driver = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
              "text=True); print(json.dumps({'rc': r.returncode, 'out': r.stdout, 'err': r.stderr[-3000:], "
              "'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    done = subprocess.run([sys.executable, "-c", driver, *ingest], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=1200)
    result = json.loads(done.stdout)
    assert result["rc"] == 0, result["err"]
    summary = json.loads(result["out"])
    assert summary["segments"] == N
    peak_mib = result["peak_kib"] / 1024
    print(f"peak RSS {peak_mib:.0f} MiB for {N} masks of {W}×{H}")
    assert peak_mib < PEAK_BOUND_MIB


def _stored(home: Home) -> list[tuple]:
    with home.db.session() as s:
        rows = s.scalars(select(Segment).order_by(Segment.id)).all()
        segs = [(r.id, r.rle_counts, r.bbox_x, r.bbox_y, r.bbox_w, r.bbox_h, r.area) for r in rows]
    vectors = home.vectors.retrieve(SEGMENTS, [r[0] for r in segs], with_vectors=True)
    return [(*seg, tuple(np.round(v.vector, 5))) for seg, v in zip(segs, vectors, strict=True)]


@pytest.mark.parametrize("prompts", ["masks", "auto", "boxes"])
def test_masks_made_a_slice_at_a_time_store_the_same_segments(tmp_path, tiny_model, shapes, monkeypatch, prompts):
    opts = IngestOptions(prompts=prompts, annotations=shapes.annotations_path,
                         amg=AmgSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                             box_nms_thresh=1.0))
    image = [shapes.images[0].path]
    with Home(tmp_path / "whole") as home:
        ingest(home, image, tiny_model, opts, progress=False)
        whole = _stored(home)
    monkeypatch.setattr(lazymasks, "MASK_BUDGET", 1)  # every stack is made on demand
    monkeypatch.setattr(store, "STORE_CHUNK", 1)  # and written one mask at a time
    with Home(tmp_path / "sliced") as home:
        ingest(home, image, tiny_model, opts, progress=False)
        sliced = _stored(home)
    assert len(whole) > 1 and sliced == whole

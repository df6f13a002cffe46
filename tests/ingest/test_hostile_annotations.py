"""Hostile COCO segmentations through the real ingest (SQLite + Qdrant Edge, Postgres + qdrant-client):
the image they belong to is a recorded failure, the others are stored, and the process does not die."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from samsearch.db import Image
from samsearch.home import SEGMENTS
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions

# Run lengths whose int64 total wraps to exactly 256*192: decoding them used to segfault (exit 139).
_WRAPPING = [256 * 192] + [k * 2**58 for k in range(1, 8) for _ in range(2)] + [2**61]


@pytest.mark.parametrize("crafted", [
    {"size": [192, 256], "counts": _WRAPPING},
    [[0, 0, 10**30, 0, 5, 5]],
])
def test_crafted_segmentation_is_a_recorded_failure(home, tiny_model, shapes, tmp_path, crafted):
    bad, good = shapes.images[0], shapes.images[1]
    assert (bad.height, bad.width) == (192, 256)
    doc = json.loads(shapes.annotations_path.read_text())
    for ann in doc["annotations"]:
        if ann["image_id"] == bad.id:
            ann["segmentation"] = crafted
            break
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(doc))
    opts = IngestOptions(prompts="masks", annotations=path, dataset="d")
    summary = ingest(home, [bad.path, good.path], tiny_model, opts, progress=False)
    assert (summary.images_ingested, summary.images_failed) == (1, 1)
    (failure,) = summary.failures
    assert failure.path == str(bad.path)
    assert "run length above" in failure.reason or "coordinate beyond" in failure.reason
    with home.db.session() as s:
        status = {i.path: (i.status, i.error) for i in s.scalars(select(Image))}
    assert status[str(bad.path)][0] == "failed" and status[str(good.path)] == ("done", None)
    assert home.vectors.count(SEGMENTS) == len(good.objects)

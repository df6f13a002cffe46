"""Ingest end to end on real stores: SQLite + Qdrant Edge, and Postgres + qdrant-client."""

import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from samsearch.data.masks import rle_to_mask
from samsearch.db import Image, Ingestion, Run, Segment
from samsearch.errors import EmbeddingSpaceMismatch, InputError
from samsearch.home import SEGMENTS
from samsearch.identity import EmbeddingSpace
from samsearch.ingest.ingestor import Ingestor, ingest
from samsearch.ingest.options import IngestOptions, segment_id
from samsearch.sam.amg import AmgSettings


def _segments(home):
    with home.db.session() as s:
        return s.execute(select(Segment).order_by(Segment.id)).scalars().all()


def _all_vectors(home):
    recs = [r for batch in home.vectors.scroll(SEGMENTS, with_vectors=True) for r in batch]
    return {r.id: r for r in recs}


def test_masks_mode_neighbours_share_the_class(home, tiny_model, shapes):
    summary = ingest(home, [shapes.root], tiny_model,
                     IngestOptions(dataset="shapes", prompts="masks", annotations=shapes.annotations_path),
                     progress=False)
    n_objects = len(shapes.objects)
    assert summary.images_ingested == len(shapes.images) and summary.images_failed == 0
    assert summary.segments == n_objects

    segs = _segments(home)
    vecs = _all_vectors(home)
    assert len(segs) == n_objects and set(vecs) == {s.id for s in segs}  # SQL and vectors agree
    category = {s.id: s.annotation_category for s in segs}
    assert all(category.values())

    # Every segment's 5 nearest stored neighbours (itself excluded) are mostly of its own class.
    same, total = 0, 0
    for s in segs:
        hits = home.vectors.search(SEGMENTS, vecs[s.id].vector, k=6)
        neighbours = [h for h in hits if h.id != s.id][:5]
        same += sum(category[h.id] == s.annotation_category for h in neighbours)
        total += len(neighbours)
    counts = Counter(category.values())
    chance = sum((c / n_objects) ** 2 for c in counts.values())
    precision = same / total
    assert precision >= 0.85, f"neighbour precision {precision:.2f} (chance {chance:.2f})"
    assert precision > 3 * chance

    # Stored masks, boxes and payloads describe the annotated objects.
    s = segs[0]
    mask = rle_to_mask(s.rle)
    assert mask.sum() == s.area and mask.shape == (s.height, s.width)
    ys, xs = np.nonzero(mask)
    assert (s.bbox_x, s.bbox_y, s.bbox_w, s.bbox_h) == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)
    p = vecs[s.id].payload
    assert p["dataset"] == ["shapes"] and p["source"] == "mask" and p["area"] == s.area
    with home.db.session() as sess:
        img = sess.get(Image, s.image_id)
        assert p["image_hash"] == img.content_hash and img.status == "done"
        assert (img.width, img.height) == (256, 192)
        assert s.id == segment_id(img.content_hash, s.settings_hash, s.segment_index)


def test_reingest_changes_nothing_and_duplicates_are_skipped(home, tiny_model, shapes, tmp_path):
    opts = IngestOptions(prompts="masks", annotations=shapes.annotations_path)
    files = [im.path for im in shapes.images[:3]]
    first = ingest(home, files, tiny_model, opts, progress=False)
    before_ids = [s.id for s in _segments(home)]
    # same files again, plus a byte-identical copy under another name
    copy = tmp_path / "copy_of_first.png"
    shutil.copyfile(files[0], copy)
    second = ingest(home, [*files, copy], tiny_model, opts, progress=False)
    assert first.images_ingested == 3 and second.images_ingested == 0 and second.images_skipped == 4
    assert [s.id for s in _segments(home)] == before_ids
    assert home.vectors.count(SEGMENTS) == len(before_ids)
    with home.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 3
        assert s.scalar(select(func.count()).select_from(Ingestion)) == 3
        assert s.scalar(select(func.count()).select_from(Run)) == 2


def test_auto_mode_stores_amg_scores(home, tiny_model, shapes):
    amg = AmgSettings(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99)
    summary = ingest(home, [shapes.images[0].path], tiny_model, IngestOptions(amg=amg), progress=False)
    segs = _segments(home)
    assert summary.segments == len(segs) > 1
    assert all(s.source == "auto" and s.predicted_iou is not None and s.prompt["point"] for s in segs)
    assert home.vectors.count(SEGMENTS) == len(segs)


def test_boxes_mode_keeps_annotation_ids(home, tiny_model, shapes):
    img = shapes.images[0]
    ingest(home, [img.path], tiny_model,
           IngestOptions(prompts="boxes", annotations=shapes.annotations_path), progress=False)
    segs = _segments(home)
    assert sorted(s.annotation_category for s in segs) == sorted(o.category for o in img.objects)
    assert all(s.source == "box" and s.prompt["box"] and s.annotation_id is not None for s in segs)


def test_different_settings_are_stored_side_by_side(home, tiny_model, shapes):
    img = shapes.images[0].path
    ingest(home, [img], tiny_model, IngestOptions(prompts="masks", annotations=shapes.annotations_path),
           progress=False)
    ingest(home, [img], tiny_model, IngestOptions(prompts="boxes", annotations=shapes.annotations_path),
           progress=False)
    segs = _segments(home)
    assert Counter(s.source for s in segs) == {"mask": len(shapes.images[0].objects),
                                               "box": len(shapes.images[0].objects)}
    assert home.vectors.count(SEGMENTS) == len(segs)


def test_bad_files_are_recorded_and_the_rest_goes_on(home, tiny_model, shapes, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for im in shapes.images[:2]:
        shutil.copyfile(im.path, folder / im.path.name)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    data = shapes.images[2].path.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    PILImage.new("L", (300, 300), 128).save(folder / "gray.png")
    PILImage.new("RGBA", (200, 100), (255, 0, 0, 128)).save(folder / "rgba.png")
    PILImage.new("RGB", (2000, 2000)).save(folder / "huge.png")
    opts = IngestOptions(prompts="auto", max_pixels=1_000_000,
                         amg=AmgSettings(points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0))
    summary = ingest(home, [folder], tiny_model, opts, progress=False)
    failed = {f.path.rsplit("/", 1)[-1]: f.reason for f in summary.failures}
    assert set(failed) == {"empty.png", "notes.jpg", "truncated.png", "huge.png"}
    assert failed["empty.png"] == "empty file"
    assert "decompression-bomb" in failed["huge.png"]
    assert summary.images_ingested == 4 and summary.images_failed == 4
    with home.db.session() as s:
        rows = {i.path.rsplit("/", 1)[-1]: i for i in s.execute(select(Image)).scalars()}
    assert {k for k, v in rows.items() if v.status == "failed"} == set(failed)
    assert rows["gray.png"].status == "done" and (rows["gray.png"].width, rows["gray.png"].height) == (300, 300)
    assert all(rows[k].error == failed[k] for k in failed)


def test_missing_input_and_missing_annotations_are_clear_errors(home, tiny_model, tmp_path):
    with pytest.raises(InputError, match="no such file, folder or matching glob"):
        ingest(home, [tmp_path / "nope"], tiny_model, progress=False)
    with pytest.raises(InputError, match="--prompts boxes needs --annotations"):
        ingest(home, [tmp_path], tiny_model, IngestOptions(prompts="boxes"), progress=False)
    bad = tmp_path / "ann.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="ann.json: not valid JSON"):
        ingest(home, [tmp_path], tiny_model, IngestOptions(prompts="masks", annotations=bad), progress=False)


def test_home_refuses_vectors_from_another_model(home, tiny_model, shapes):
    ingest(home, [shapes.images[0].path], tiny_model,
           IngestOptions(prompts="masks", annotations=shapes.annotations_path), progress=False)
    other = EmbeddingSpace("vit_b", "ec2df627" + "0" * 56, "maskpool-v1", 256)
    with pytest.raises(EmbeddingSpaceMismatch, match="cannot be mixed") as info:
        home.claim_embedding_space(other)
    assert "tiny-random" in str(info.value) and "vit_b" in str(info.value)
    assert home.embedding_space().model == "tiny-random"


def test_ingestor_validates_prompt_mode(home, tiny_model):
    with pytest.raises(InputError, match="--prompts must be one of auto, boxes, masks"):
        Ingestor(home, tiny_model, IngestOptions(prompts="everything"))  # type: ignore[arg-type]

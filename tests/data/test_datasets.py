"""Dataset readers: COCO, YOLO and BDD100K agree on the same data, and bad files give clear errors or
counted skips (never a crash mid-run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samsearch.data.datasets import DatasetError, detect_format, read_dataset
from samsearch.data.synthetic import coco_to_bdd100k, coco_to_yolo


def _boxes(dataset):
    return {Path(im.path).name: sorted((a.category, *np.round(a.bbox_xywh, 3)) for a in im.entry.annotations)
            for im in dataset.images}


@pytest.fixture(scope="module")
def converted(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    return {
        "coco": (shapes.annotations_path, shapes.root),
        "yolo": (coco_to_yolo(shapes.annotations_path, out / "yolo"), out / "yolo" / "images"),
        "bdd100k": (coco_to_bdd100k(shapes.annotations_path, out / "bdd.json"), shapes.root),
    }


@pytest.mark.parametrize("fmt", ["coco", "yolo", "bdd100k"])
def test_readers_agree_on_the_same_data(shapes, converted, fmt):
    annotations, images = converted[fmt]
    assert detect_format(annotations) == fmt
    dataset = read_dataset(annotations, images)
    assert dataset.format == fmt and dataset.skipped == []
    # COCO and YOLO list classes in the file's order; BDD100K frames name them as they first appear
    assert (sorted(dataset.categories) if fmt == "bdd100k" else dataset.categories) == \
        (sorted(shapes.classes) if fmt == "bdd100k" else list(shapes.classes))
    assert len(dataset.images) == len(shapes.images) and dataset.num_instances == len(shapes.objects)
    want = {im.path.name: sorted((o.category, *np.round(o.bbox_xywh, 3)) for o in im.objects) for im in shapes.images}
    got = _boxes(dataset)
    for name, objects in want.items():
        assert [o[0] for o in got[name]] == [o[0] for o in objects]
        # YOLO stores 6 decimals of normalised coordinates; BDD100K's inclusive x2 round-trips exactly
        assert np.allclose([o[1:] for o in got[name]], [o[1:] for o in objects], atol=2e-3)
    assert all(im.entry.width == 256 and im.entry.height == 192 for im in dataset.images)
    assert dataset.has_masks == (fmt == "coco")


# -- bad files: a small dataset of two 64×48 images, then one broken thing per case ---------------------------


def _images(root: Path) -> Path:
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48), (120, 120, 120)).save(folder / name)
    return folder


def _coco(root: Path, anns=None, images=None, raw=None) -> Path:
    doc = {
        "images": images or [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                             {"id": 2, "file_name": "b.png", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": anns if anns is not None else [{"id": 1, "image_id": 1, "category_id": 1,
                                                        "bbox": [4, 4, 10, 10]}],
    }
    path = root / "coco.json"
    path.write_text(raw if raw is not None else json.dumps(doc))
    return path


def _yolo(root: Path, yaml_text="names: [thing, other]\n", labels=None, corrupt=None) -> Path:
    images = _images(root)
    (root / "labels").mkdir(exist_ok=True)
    for name, text in (labels or {"a": "0 0.5 0.5 0.25 0.25\n"}).items():
        (root / "labels" / f"{name}.txt").write_text(text)
    if corrupt:
        (images / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    path = root / "data.yaml"
    path.write_text(yaml_text)
    return path


def _bdd(root: Path, frames) -> Path:
    path = root / "bdd.json"
    path.write_text(frames if isinstance(frames, str) else json.dumps(frames))
    return path


BOX = {"x1": 4, "y1": 4, "x2": 13, "y2": 13}


# (name, writer(root) -> annotations path, expected error (regex) or None, expected skips by reason, instances)
CASES = [
    ("coco: not JSON", lambda r: _coco(r, raw="{nope"), r"coco.json: not valid JSON \(line 1 column 2\)", None, 0),
    ("coco: unknown image_id", lambda r: _coco(r, anns=[{"id": 1, "image_id": 9, "category_id": 1,
                                                           "bbox": [1, 1, 2, 2]}]),
     "annotation 1 refers to unknown image_id 9", None, 0),
    ("coco: bbox not numbers", lambda r: _coco(r, anns=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": "x"}]),
     r"'bbox' must be 4 finite numbers", None, 0),
    ("coco: image file missing", lambda r: _coco(
        r, images=[{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "zz.png", "width": 64, "height": 48}],
        anns=[{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}]),
     None, {"unknown image": 1}, 0),
    ("coco: empty and outside boxes", lambda r: _coco(r, anns=[
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 0, 10]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [70, 4, 5, 5]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [60, 40, 10, 10]}]),  # partly outside: clipped
     None, {"box has no area": 1, "box lies entirely outside the 64×48 image": 1}, 1),
    ("yolo: yaml without names", lambda r: _yolo(r, yaml_text="nc: 2\n"), "data.yaml: missing key 'names'", None, 0),
    ("yolo: nc disagrees", lambda r: _yolo(r, yaml_text="nc: 3\nnames: [a, b]\n"),
     "'nc' is 3 but 'names' lists 2 classes", None, 0),
    ("yolo: 4 fields", lambda r: _yolo(r, labels={"a": "0 0.5 0.5 0.2\n"}),
     r"labels/a.txt line 1: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', got 4 fields", None, 0),
    ("yolo: class out of range", lambda r: _yolo(r, labels={"a": "\n0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n"}),
     r"labels/a.txt line 3: class index 7 is outside 0..1", None, 0),
    ("yolo: not a number", lambda r: _yolo(r, labels={"a": "0 0.5 abc 0.2 0.2\n"}),
     "coordinates must be numbers", None, 0),
    ("yolo: empty and outside boxes, corrupt image, image without labels",
     lambda r: _yolo(r, labels={"a": "0 0.5 0.5 0 0.2\n1 1.5 0.5 0.2 0.2\n1 0.95 0.5 0.2 0.2\n"}, corrupt="c.png"),
     None, {"box has no area": 1, "box lies entirely outside the 64×48 image": 1, "unreadable image": 1}, 1),
    ("yolo: polygon", lambda r: _yolo(r, labels={"b": "1 0.1 0.1 0.5 0.1 0.3 0.6\n"}), None, {}, 1),
    ("bdd100k: not a list", lambda r: _bdd(r, '"frames"'), "expected a list of frames, got a string", None, 0),
    ("bdd100k: frame without name", lambda r: _bdd(r, [{"labels": []}]),
     "frame 0: 'name' must be a non-empty string", None, 0),
    ("bdd100k: box2d not numbers", lambda r: _bdd(r, [{"name": "a.png", "labels": [
        {"category": "car", "box2d": {"x1": "4", "y1": 4, "x2": 9, "y2": 9}}]}]),
     "frame a.png label 0: 'box2d' must hold four finite numbers", None, 0),
    ("bdd100k: unknown image, lane line, empty box", lambda r: _bdd(r, [
        {"name": "a.png", "labels": [{"id": "1", "category": "car", "box2d": BOX},
                                     {"id": "2", "category": "lane", "poly2d": [{"vertices": [[0, 0], [9, 9]],
                                                                                  "closed": False}]},
                                     {"id": "3", "category": "car", "box2d": {"x1": 9, "y1": 4, "x2": 7, "y2": 9}}]},
        {"name": "missing.png", "labels": [{"id": "4", "category": "car", "box2d": BOX}]}]),
     None, {"poly2d is an open line, not a region": 1, "box has no area": 1, "unknown image": 1}, 1),
]


@pytest.mark.parametrize("name, write, error, skips, instances", CASES, ids=[c[0] for c in CASES])
def test_reader_errors_and_skips(tmp_path, name, write, error, skips, instances):
    images = _images(tmp_path)
    annotations = write(tmp_path)
    fmt = name.split(":")[0]
    if error is not None:
        with pytest.raises(DatasetError, match=error) as info:
            read_dataset(annotations, images, fmt)
        assert "\n" not in str(info.value) and str(annotations.parent) in str(info.value)
        return
    dataset = read_dataset(annotations, images, fmt)
    assert dataset.skip_reasons() == skips
    assert dataset.num_instances == instances
    if name.startswith("coco: empty"):
        assert dataset.images[0].entry.annotations[0].bbox_xywh == (60.0, 40.0, 4.0, 8.0)
    if name == "bdd100k: unknown image, lane line, empty box":
        assert dataset.images[0].entry.annotations[0].bbox_xywh == (4.0, 4.0, 10.0, 10.0)  # inclusive x2
    if name == "yolo: polygon":
        ann = dataset.images[1].entry.annotations[0]
        assert ann.category == "other" and ann.segmentation[0] == pytest.approx([6.4, 4.8, 32.0, 4.8, 19.2, 28.8])
        assert ann.bbox_xywh == pytest.approx((6.4, 4.8, 25.6, 24.0))


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda r: (r / "nope.json", r), "nope.json: no such file"),
        (lambda r: (_coco(r), r / "missing"), "missing: not a folder"),
        (lambda r: (Path(_coco(r)).rename(r / "ann.xml"), r), "ann.xml: cannot tell the format"),
    ],
)
def test_read_dataset_arguments(tmp_path, setup, message):
    _images(tmp_path)
    annotations, images = setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        read_dataset(annotations, images)

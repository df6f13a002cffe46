from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from samsearch.data.coco import load_coco
from samsearch.data.masks import annotation_to_mask
from samsearch.data.synthetic import (
    CLASSES,
    EXTRA_CLASSES,
    STYLES,
    SyntheticDataset,
    coco_to_bdd100k,
    coco_to_yolo,
    make_dataset,
    make_splits,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_dataset(tmp_path_factory.mktemp("synthetic") / "ds", 40, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_classes_are_distinct_styles() -> None:
    assert len(CLASSES) >= 6
    assert set(CLASSES) | set(EXTRA_CLASSES) <= set(STYLES)
    looks = {(s.shape, s.colors[0], s.texture) for s in STYLES.values()}
    assert len(looks) == len(STYLES)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", 5, seed=7)
    b = make_dataset(tmp_path / "b", 5, seed=7)
    c = make_dataset(tmp_path / "c", 5, seed=8)
    prefix = make_dataset(tmp_path / "p", 3, seed=7)
    files_a = _files(a.root)
    assert files_a == _files(b.root)
    assert files_a != _files(c.root)
    # the first images do not depend on how many are drawn
    for name, data in _files(prefix.root).items():
        if name.startswith("images/"):
            assert files_a[name] == data


def test_layout_and_counts(dataset: SyntheticDataset) -> None:
    assert dataset.annotations_path == dataset.root / "annotations.json"
    assert len(dataset.images) == 40
    assert [im.id for im in dataset.images] == list(range(1, 41))
    for im in dataset.images:
        assert im.path == dataset.root / im.file_name and im.path.suffix == ".png"
        assert (im.width, im.height) == (256, 192)
        assert 2 <= len(im.objects) <= 4
        assert len({o.category for o in im.objects}) == len(im.objects)  # distinct classes per image
    ids = [o.id for o in dataset.objects]
    assert ids == list(range(1, len(ids) + 1))
    assert {o.category for o in dataset.objects} == set(CLASSES)


def test_objects_do_not_overlap_and_have_sane_sizes(dataset: SyntheticDataset) -> None:
    for im in dataset.images:
        masks = np.stack([o.mask for o in im.objects])
        assert masks.sum(axis=0).max() == 1
        for obj in im.objects:
            x, y, w, h = obj.bbox_xywh
            assert obj.area == int(obj.mask.sum()) > 0
            assert min(x, y) >= 0 and x + w <= im.width and y + h <= im.height
            assert 0.1 * 192 <= max(w, h) <= 0.35 * 192 * 1.5  # rotated shapes are wider than their extent
        boxes = [o.bbox_xywh for o in im.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert (
                    a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
                )


def _palette_distance(pixels: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    diffs = pixels[:, None, :].astype(np.float32) - np.array(colors, dtype=np.float32)[None, :, :]
    return np.sqrt((diffs**2).sum(axis=2)).min(axis=1)


def test_masks_match_rendered_pixels(dataset: SyntheticDataset) -> None:
    all_colors = [c for s in STYLES.values() for c in s.colors]
    for im in dataset.images[:15]:
        with Image.open(im.path) as f:
            rgb = np.asarray(f.convert("RGB"))
        union = np.zeros(rgb.shape[:2], dtype=bool)
        for obj in im.objects:
            x, y, w, h = (int(v) for v in obj.bbox_xywh)
            x0, y0, x1, y1 = max(x - 3, 0), max(y - 3, 0), min(x + w + 3, im.width), min(y + h + 3, im.height)
            window = rgb[y0:y1, x0:x1].reshape(-1, 3)
            # pixels whose colour is close to the class palette, inside the (padded) box
            looks_like = (_palette_distance(window, list(STYLES[obj.category].colors)) < 45).reshape(
                y1 - y0, x1 - x0
            )
            truth = obj.mask[y0:y1, x0:x1]
            iou = (looks_like & truth).sum() / (looks_like | truth).sum()
            assert iou >= 0.95, (im.file_name, obj.category, iou)
            union |= obj.mask
        # the background never takes an object colour
        background = rgb[~union]
        assert _palette_distance(background, all_colors).min() > 45


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' annToMask under NumPy 2
def test_coco_file_loads_in_pycocotools_and_ours(dataset: SyntheticDataset) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(dataset.annotations_path))
    assert len(coco.getImgIds()) == 40
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    formats = set()
    for obj in dataset.objects:
        ann = coco.loadAnns(obj.id)[0]
        fmt = "rle" if isinstance(ann["segmentation"], dict) else "polygon"
        formats.add(fmt)
        assert STYLES[obj.category].segmentation_format == fmt
        assert ann["segmentation"] == (obj.rle if fmt == "rle" else obj.segmentation)
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), obj.mask)
        assert ann["bbox"] == list(obj.bbox_xywh) and ann["area"] == obj.area and ann["iscrowd"] == 0
    assert formats == {"rle", "polygon"}

    ours = load_coco(dataset.annotations_path)
    assert ours.skipped == []
    assert ours.num_annotations == len(dataset.objects)
    for im in dataset.images[:5]:
        found = ours.find_image(im.path.resolve())
        assert found is not None and found.id == im.id
        for ann, obj in zip(found.annotations, im.objects, strict=True):
            assert (ann.category, ann.bbox_xywh) == (obj.category, obj.bbox_xywh)
            np.testing.assert_array_equal(annotation_to_mask(ann.segmentation, im.height, im.width), obj.mask)


def test_split_names_repeat_basenames(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "s", 5, seed=1, split_names=("train", "val"))
    assert [im.file_name for im in ds.images] == [
        "images/train/00001.png",
        "images/train/00002.png",
        "images/train/00003.png",
        "images/val/00001.png",
        "images/val/00002.png",
    ]
    assert [im.split for im in ds.images] == ["train"] * 3 + ["val"] * 2
    doc = json.loads(ds.annotations_path.read_text())
    assert doc["images"][3]["split"] == "val"
    coco = load_coco(ds.annotations_path)
    assert coco.find_image(ds.images[3].path).id == 4  # type: ignore[union-attr]
    assert coco.find_image(tmp_path / "elsewhere" / "00001.png") is None  # ambiguous basename


def test_make_splits(tmp_path: Path) -> None:
    splits = make_splits(tmp_path / "sp", n_train=4, n_test=3, seed=2, classes=CLASSES[:4])
    train, test = splits["train"], splits["test"]
    assert train.root == tmp_path / "sp" / "train" and test.root == tmp_path / "sp" / "test"
    assert (len(train.images), len(test.images)) == (4, 3)
    cats_train = json.loads(train.annotations_path.read_text())["categories"]
    cats_test = json.loads(test.annotations_path.read_text())["categories"]
    assert cats_train == cats_test and [c["name"] for c in cats_train] == list(CLASSES[:4])
    assert train.images[0].path.read_bytes() != test.images[0].path.read_bytes()
    assert {o.category for o in train.objects + test.objects} <= set(CLASSES[:4])


def test_jpeg_and_custom_options(tmp_path: Path) -> None:
    ds = make_dataset(
        tmp_path / "j",
        3,
        seed=0,
        size=(160, 120),
        objects_per_image=(1, 1),
        classes=("orange_star", "red_disc"),
        name="coco.json",
        image_format="jpg",
    )
    assert ds.annotations_path.name == "coco.json"
    for im in ds.images:
        assert im.path.suffix == ".jpg"
        with Image.open(im.path) as f:
            assert f.size == (160, 120)
        assert len(im.objects) == 1
    assert ds.category_ids == {"orange_star": 1, "red_disc": 2}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"classes": ("red_disc", "pink_cloud")}, "unknown synthetic classes"),
        ({"classes": ()}, "non-empty sequence of distinct names"),
        ({"objects_per_image": (3, 2)}, "objects_per_image must be"),
        ({"image_format": "gif"}, "image_format must be"),
        ({"size": (16, 16)}, "size must be at least"),
        ({"split_names": ("a", "a")}, "split_names must be distinct"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        make_dataset(tmp_path / "bad", 2, **kwargs)  # type: ignore[arg-type]


def test_yolo_round_trip(dataset: SyntheticDataset, tmp_path: Path) -> None:
    yaml_path = coco_to_yolo(dataset.annotations_path, tmp_path / "yolo")
    data = yaml.safe_load(yaml_path.read_text())
    assert data["names"] == dict(enumerate(CLASSES)) and data["nc"] == len(CLASSES)
    assert Path(data["path"]) == (tmp_path / "yolo").resolve()
    for im in dataset.images:
        stem = Path(im.file_name).stem
        label = tmp_path / "yolo" / "labels" / f"{stem}.txt"
        assert (tmp_path / "yolo" / "images" / f"{stem}.png").read_bytes() == im.path.read_bytes()
        rows = [line.split() for line in label.read_text().splitlines()]
        assert len(rows) == len(im.objects)
        for row, obj in zip(rows, im.objects, strict=True):
            cls, cx, cy, w, h = int(row[0]), *(float(v) for v in row[1:])
            assert data["names"][cls] == obj.category
            box = ((cx - w / 2) * im.width, (cy - h / 2) * im.height, w * im.width, h * im.height)
            np.testing.assert_allclose(box, obj.bbox_xywh, atol=1e-3)


def test_bdd100k_round_trip(dataset: SyntheticDataset, tmp_path: Path) -> None:
    out = coco_to_bdd100k(dataset.annotations_path, tmp_path / "bdd" / "labels.json")
    frames = json.loads(out.read_text())
    assert [f["name"] for f in frames] == [im.file_name for im in dataset.images]
    for frame, im in zip(frames, dataset.images, strict=True):
        assert [lab["id"] for lab in frame["labels"]] == [str(o.id) for o in im.objects]
        for lab, obj in zip(frame["labels"], im.objects, strict=True):
            b = lab["box2d"]
            assert lab["category"] == obj.category
            # Scalabel boxes include their last pixel
            assert (b["x1"], b["y1"], b["x2"] - b["x1"] + 1, b["y2"] - b["y1"] + 1) == obj.bbox_xywh

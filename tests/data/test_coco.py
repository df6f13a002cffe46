from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samsearch.data.coco import AnnotationError, Category, CocoAnnotations, load_coco
from samsearch.data.masks import annotation_to_mask, mask_to_rle

_CROWD_MASK = np.zeros((80, 100), dtype=bool)
_CROWD_MASK[5:9, 3:20] = True

BASE: dict[str, Any] = {
    "info": {"description": "test"},
    "images": [
        {"id": 1, "file_name": "images/train/a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.jpg", "width": 50, "height": 50},
        {"id": 3, "file_name": "images/val/a.jpg", "width": 100.0, "height": 80},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog", "supercategory": "animal"}],
    "annotations": [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "bbox": [10, 20, 30, 40],
            "area": 600,
            "iscrowd": 0,
            "segmentation": [[10, 20, 40, 20, 40, 60]],
        },
        {"id": 11, "image_id": 1, "category_id": 7, "bbox": [90, 70, 20, 20]},  # clipped to 10×10
        {"id": 12, "image_id": 2, "category_id": 7, "bbox": [0, 0, 0, 5]},
        {"id": 13, "image_id": 2, "category_id": 1, "bbox": [60, 0, 5, 5]},
        {
            "id": 14,
            "image_id": 2,
            "category_id": 1,
            "bbox": [-10, -10, 10, 5],
        },  # touches x=0 only at its edge
        {
            "id": 15,
            "image_id": 3,
            "category_id": 1,
            "bbox": [3, 5, 17, 4],
            "iscrowd": 1,
            "segmentation": mask_to_rle(_CROWD_MASK),
        },
        {"id": 16, "image_id": 2, "category_id": 7, "bbox": [-5, 2.5, 10, 7.5], "segmentation": []},
    ],
}


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def coco(tmp_path: Path) -> CocoAnnotations:
    return load_coco(_write(tmp_path, BASE))


def test_load_valid(coco: CocoAnnotations, tmp_path: Path) -> None:
    assert coco.path == tmp_path / "ann.json"
    assert coco.categories == {1: Category(1, "cat"), 7: Category(7, "dog")}
    assert sorted(coco.images) == [1, 2, 3]
    first = coco.images[1]
    assert (first.file_name, first.width, first.height) == ("images/train/a.jpg", 100, 80)
    assert coco.images[3].width == 100 and isinstance(coco.images[3].width, int)
    assert [a.id for a in first.annotations] == [10, 11]
    ann = first.annotations[0]
    assert ann.category == "cat" and ann.category_id == 1 and ann.image_id == 1
    assert ann.bbox_xywh == (10.0, 20.0, 30.0, 40.0)
    assert ann.area == 600.0 and ann.iscrowd == 0
    assert annotation_to_mask(ann.segmentation, first.height, first.width).any()
    assert coco.num_annotations == 4


def test_boxes_clipped_and_skipped(coco: CocoAnnotations) -> None:
    clipped = coco.images[1].annotations[1]
    assert clipped.bbox_xywh == (90.0, 70.0, 10.0, 10.0)
    assert clipped.segmentation is None and clipped.area is None and clipped.iscrowd == 0
    left = coco.images[2].annotations[0]
    assert left.id == 16
    assert left.bbox_xywh == (0.0, 2.5, 5.0, 7.5)
    assert left.segmentation is None  # [] means "no segmentation"
    assert coco.skipped == [
        (12, "box has no area (width 0, height 5)"),
        (13, "box lies entirely outside the 50×50 image"),
        (14, "box lies entirely outside the 50×50 image"),
    ]


def test_crowd_rle_kept(coco: CocoAnnotations) -> None:
    crowd = coco.images[3].annotations[0]
    assert crowd.iscrowd == 1
    np.testing.assert_array_equal(annotation_to_mask(crowd.segmentation, 80, 100), _CROWD_MASK)


@pytest.mark.parametrize(
    ("image_path", "expected_id"),
    [
        ("/data/set/images/train/a.jpg", 1),
        ("/data/set/images/val/a.jpg", 3),
        ("images/val/a.jpg", 3),
        ("/elsewhere/a.jpg", None),  # basename shared by images 1 and 3: only the relative path decides
        ("/elsewhere/train/a.jpg", None),
        ("/elsewhere/b.jpg", 2),  # unique basename
        ("b.jpg", 2),
        ("/data/set/images/train/c.jpg", None),
        ("/data/set/images/train/A.jpg", None),  # matching is case-sensitive
    ],
)
def test_find_image(coco: CocoAnnotations, image_path: str, expected_id: int | None) -> None:
    found = coco.find_image(Path(image_path))
    assert (found.id if found else None) == expected_id


def test_find_image_prefers_longest_suffix(tmp_path: Path) -> None:
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 4, "height": 4},
            {"id": 2, "file_name": "x\\a.jpg", "width": 4, "height": 4},  # Windows separators
            {"id": 3, "file_name": "./y/a.jpg", "width": 4, "height": 4},
        ],
    }
    coco = load_coco(_write(tmp_path, doc))
    assert coco.find_image("/root/x/a.jpg").id == 2  # type: ignore[union-attr]
    assert coco.find_image("/root/y/a.jpg").id == 3  # type: ignore[union-attr]
    assert coco.find_image("/root/z/a.jpg").id == 1  # type: ignore[union-attr]
    assert coco.num_annotations == 0 and coco.categories == {}


def _mutate(fn: Callable[[dict[str, Any]], None]) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        doc = copy.deepcopy(BASE)
        fn(doc)
        return doc

    return build


def _ann(doc: dict[str, Any], aid: int) -> dict[str, Any]:
    return next(a for a in doc["annotations"] if a["id"] == aid)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_mutate(lambda d: d.pop("images")), "missing key 'images'"),
        (_mutate(lambda d: d.pop("categories")), "missing key 'categories'"),
        (_mutate(lambda d: d.update(images={})), "'images' must be a list, got an object"),
        (_mutate(lambda d: d.update(annotations=None)), "'annotations' must be a list, got null"),
        (_mutate(lambda d: d["images"].append(7)), "images[3] must be an object, got a number"),
        (_mutate(lambda d: d["images"][0].pop("id")), "images[0]: missing key 'id'"),
        (_mutate(lambda d: d["images"][1].pop("file_name")), "image 2: missing key 'file_name'"),
        (
            _mutate(lambda d: d["images"][1].update(file_name="")),
            "image 2: 'file_name' must be a non-empty string",
        ),
        (_mutate(lambda d: d["images"][1].update(width=0)), "image 2: 'width' must be positive, got 0"),
        (
            _mutate(lambda d: d["images"][1].update(height="50")),
            "image 2: 'height' must be an integer, got '50'",
        ),
        (_mutate(lambda d: d["images"][1].update(id=True)), "images[1]: 'id' must be an integer, got True"),
        (_mutate(lambda d: d["images"][2].update(id=1)), "duplicate image id 1"),
        (_mutate(lambda d: d["categories"].append({"id": 1, "name": "x"})), "duplicate category id 1"),
        (_mutate(lambda d: d["categories"][1].pop("name")), "category 7: 'name' must be a non-empty string"),
        (_mutate(lambda d: _ann(d, 12).update(image_id=99)), "annotation 12 refers to unknown image_id 99"),
        (
            _mutate(lambda d: _ann(d, 12).update(category_id=3)),
            "annotation 12 refers to unknown category_id 3",
        ),
        (_mutate(lambda d: _ann(d, 13).update(id=10)), "duplicate annotation id 10"),
        (_mutate(lambda d: _ann(d, 11).pop("bbox")), "annotation 11: missing key 'bbox'"),
        (
            _mutate(lambda d: _ann(d, 11).update(bbox=[1, 2, 3])),
            "annotation 11: 'bbox' must be 4 finite numbers [x, y, width, height], got [1, 2, 3]",
        ),
        (_mutate(lambda d: _ann(d, 11).update(iscrowd=2)), "annotation 11: 'iscrowd' must be 0 or 1, got 2"),
        (_mutate(lambda d: _ann(d, 11).update(area="big")), "annotation 11: 'area' must be a number"),
        (
            _mutate(lambda d: _ann(d, 11).update(segmentation="poly")),
            "annotation 11: 'segmentation' must be a list of polygons or an RLE object",
        ),
        (
            _mutate(lambda d: _ann(d, 11).update(segmentation={"counts": "abc"})),
            "annotation 11: RLE 'segmentation' needs 'counts' and 'size'",
        ),
        (lambda: [1, 2], "expected a JSON object at the top level, got a list"),
    ],
)
def test_errors(tmp_path: Path, build: Callable[[], Any], reason: str) -> None:
    path = _write(tmp_path, build())
    with pytest.raises(AnnotationError) as info:
        load_coco(path)
    assert str(info.value) == f"{path}: {reason}"
    assert info.value.reason == reason and info.value.path == path


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{\n  "images": [\n    ,\n', "not valid JSON (line 3 column 5)"),
        (b"", "not valid JSON (line 1 column 1)"),
        (b'{"images": "\xff\xfe\xfa"}', "not valid JSON (not UTF-8 text)"),
    ],
)
def test_invalid_json(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "ann.json"
    path.write_bytes(content)
    with pytest.raises(AnnotationError) as info:
        load_coco(path)
    assert str(info.value) == f"{path}: {reason}"


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="missing.json: no such file$"):
        load_coco(tmp_path / "missing.json")
    with pytest.raises(AnnotationError, match="is a directory"):
        load_coco(tmp_path)


def test_error_is_value_error_and_pickles() -> None:
    err = AnnotationError("ann.json", "missing key 'images'")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == "ann.json: missing key 'images'"


_BIG = 10**400  # json.dumps writes it as 401 digits; json.loads reads it back as a Python int


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (
            _mutate(lambda d: d["images"][1].update(id=2**63)),
            "images[1]: 'id' 9223372036854775808 does not fit in a 64-bit integer",
        ),
        (
            _mutate(lambda d: _ann(d, 11).update(id=-(2**63) - 1)),
            "annotations[1]: 'id' -9223372036854775809 does not fit in a 64-bit integer",
        ),
        (
            _mutate(lambda d: d["images"][1].update(width=_BIG)),
            "image 2: 'width' 1000000000…(401 digits) does not fit in a 64-bit integer",
        ),
        (_mutate(lambda d: _ann(d, 11).update(area=_BIG)), "annotation 11: 'area' must be a number"),
        (
            _mutate(lambda d: _ann(d, 10).update(segmentation=[[10, 20, _BIG, 20, 40, 60]])),
            "annotation 10: polygon coordinates must be finite numbers",
        ),
        (
            _mutate(lambda d: _ann(d, 15)["segmentation"].update(counts=[2**64, 1])),
            "annotation 15: RLE counts and size must fit in 64-bit integers",
        ),
    ],
)
def test_numbers_too_big_for_the_stores_are_refused_up_front(
    tmp_path: Path, build: Callable[[], Any], reason: str
) -> None:
    path = _write(tmp_path, build())
    with pytest.raises(AnnotationError) as info:
        load_coco(path)
    assert str(info.value) == f"{path}: {reason}"


@pytest.mark.parametrize("field", ["bbox", "area", "polygon"])
def test_float_literals_beyond_float_range_are_refused(tmp_path: Path, field: str) -> None:
    doc = copy.deepcopy(BASE)
    _ann(doc, 10).update(bbox=[10, 20, 30, 40], area=600, segmentation=[[10, 20, 40, 20, 40, 60]])
    text = json.dumps(doc)
    marker = {"bbox": "[10, 20, 30, 40]", "area": '"area": 600', "polygon": "[[10, 20, 40, 20, 40, 60]]"}[field]
    huge = {"bbox": "[10, 20, 1e400, 40]", "area": '"area": 1e400', "polygon": "[[10, 20, 1e400, 20, 40, 60]]"}
    assert text.count(marker) == 1
    path = tmp_path / "ann.json"
    path.write_text(text.replace(marker, huge[field]), encoding="utf-8")
    with pytest.raises(AnnotationError) as info:
        load_coco(path)
    assert str(info.value).startswith(f"{path}: annotation 10: ")
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_deeply_nested_json_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_text('{"images": ' + "[" * 200_000 + "]" * 200_000 + "}", encoding="utf-8")
    with pytest.raises(AnnotationError) as info:
        load_coco(path)
    assert str(info.value) == f"{path}: JSON is nested too deeply"

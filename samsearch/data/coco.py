"""Reading COCO-format annotation files (object detection / instance segmentation).

:func:`load_coco` validates the file up front and raises :class:`AnnotationError` (a ValueError) with a
one-line ``"{path}: {reason}"`` message for anything that would make the data ambiguous: invalid JSON,
missing or mistyped keys, duplicate ids, annotations pointing at unknown images or categories.

Boxes that carry no usable region are not errors: an annotation whose box has ``w <= 0`` or ``h <= 0``, a NaN
(JSON ``NaN``) anywhere, or lies entirely outside its image, is left out and listed in
``CocoAnnotations.skipped`` with the reason, and counted per kind in its image's ``AnnotatedImage.skipped``
(what an ingest run reports).
Boxes partly outside the image are clipped to it. Segmentations are checked for type only here;
:func:`samsearch.data.masks.annotation_to_mask` validates and rasterises them. An empty segmentation (``[]``)
is stored as ``None``.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any


class AnnotationError(ValueError):
    """The annotation file is unusable; ``str()`` is one line: ``"{path}: {reason}"``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = path
        self.reason = " ".join(str(reason).split())
        super().__init__(path, self.reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# Why an annotation of an image is left out (AnnotatedImage.skipped keys).
SKIP_KINDS: tuple[str, ...] = ("NaN box", "zero-size box", "negative-size box", "box outside the image")


@dataclass(frozen=True)
class Category:
    id: int
    name: str


@dataclass
class ObjectAnnotation:
    id: int
    image_id: int
    category_id: int
    category: str
    bbox_xywh: tuple[float, float, float, float]  # clipped to the image
    segmentation: Any | None  # COCO polygons or RLE, as in the file
    area: float | None
    iscrowd: int


@dataclass
class AnnotatedImage:
    id: int
    file_name: str
    width: int
    height: int
    annotations: list[ObjectAnnotation] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # annotations left out, per kind (SKIP_KINDS)


@dataclass
class CocoAnnotations:
    path: Path
    images: dict[int, AnnotatedImage]
    categories: dict[int, Category]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (annotation id, reason)

    def __post_init__(self) -> None:
        self._by_basename: dict[str, list[AnnotatedImage]] = defaultdict(list)
        for image in self.images.values():
            self._by_basename[_parts(image.file_name)[-1]].append(image)

    @property
    def num_annotations(self) -> int:
        return sum(len(im.annotations) for im in self.images.values())

    def find_image(self, image_path: str | os.PathLike[str]) -> AnnotatedImage | None:
        """The image entry for a file on disk, or None.

        First the COCO ``file_name`` (a relative path such as ``images/train/0001.jpg``) is matched as a
        path suffix of ``image_path``, the longest matching ``file_name`` winning. Failing that, the
        basename alone is used, but only when exactly one entry has that basename.
        """
        parts = _parts(os.fspath(image_path))
        candidates = self._by_basename.get(parts[-1], [])
        best: AnnotatedImage | None = None
        best_len = 0
        for image in candidates:
            name_parts = _parts(image.file_name)
            n = len(name_parts)
            if n <= len(parts) and tuple(parts[-n:]) == name_parts and n > best_len:
                best, best_len = image, n
        if best is not None:
            return best
        return candidates[0] if len(candidates) == 1 else None


def load_coco(path: str | os.PathLike[str]) -> CocoAnnotations:
    """Read and validate a COCO JSON file (see the module docstring for the rules)."""
    loader = _Loader(path)
    return loader.load()


def _parts(name: str) -> tuple[str, ...]:
    """Path components of a file name, tolerant of Windows separators and ``./`` prefixes."""
    pure = PurePath(name.replace("\\", "/"))
    return tuple(p for p in pure.parts if p not in (".", ""))


class _Loader:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path

    def fail(self, reason: str) -> AnnotationError:
        return AnnotationError(self.path, reason)

    def load(self) -> CocoAnnotations:
        doc = self._read_json()
        if not isinstance(doc, dict):
            raise self.fail(f"expected a JSON object at the top level, got {_json_type(doc)}")
        if "images" not in doc:
            raise self.fail("missing key 'images'")
        raw_images = self._list(doc, "images")
        raw_annotations = self._list(doc, "annotations") if "annotations" in doc else []
        if "categories" not in doc and raw_annotations:
            raise self.fail("missing key 'categories'")
        raw_categories = self._list(doc, "categories") if "categories" in doc else []

        categories = self._categories(raw_categories)
        images = self._images(raw_images)
        skipped: list[tuple[int, str]] = []
        seen: set[int] = set()
        for index, raw in enumerate(raw_annotations):
            ann = self._annotation(index, raw, images, categories, seen, skipped)
            if ann is not None:
                images[ann.image_id].annotations.append(ann)
        return CocoAnnotations(path=Path(self.path), images=images, categories=categories, skipped=skipped)

    def _read_json(self) -> Any:
        try:
            data = Path(self.path).read_bytes()
        except FileNotFoundError:
            raise self.fail("no such file") from None
        except IsADirectoryError:
            raise self.fail("is a directory, not a JSON file") from None
        except OSError as exc:
            raise self.fail(f"cannot read: {exc.strerror or exc}") from None
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise self.fail(f"not valid JSON (line {exc.lineno} column {exc.colno})") from None
        except UnicodeDecodeError:
            raise self.fail("not valid JSON (not UTF-8 text)") from None
        except RecursionError:
            raise self.fail("JSON is nested too deeply") from None

    def _list(self, doc: dict[str, Any], key: str) -> list[Any]:
        value = doc[key]
        if not isinstance(value, list):
            raise self.fail(f"'{key}' must be a list, got {_json_type(value)}")
        return value

    def _categories(self, raw_categories: list[Any]) -> dict[int, Category]:
        categories: dict[int, Category] = {}
        for index, raw in enumerate(raw_categories):
            where = f"categories[{index}]"
            raw = self._object(raw, where)
            cid = self._int(raw, "id", where)
            where = f"category {cid}"
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                raise self.fail(f"{where}: 'name' must be a non-empty string")
            if cid in categories:
                raise self.fail(f"duplicate category id {cid}")
            categories[cid] = Category(id=cid, name=name)
        return categories

    def _images(self, raw_images: list[Any]) -> dict[int, AnnotatedImage]:
        images: dict[int, AnnotatedImage] = {}
        for index, raw in enumerate(raw_images):
            where = f"images[{index}]"
            raw = self._object(raw, where)
            iid = self._int(raw, "id", where)
            where = f"image {iid}"
            file_name = raw.get("file_name")
            if file_name is None:
                raise self.fail(f"{where}: missing key 'file_name'")
            if not isinstance(file_name, str) or not file_name.strip():
                raise self.fail(f"{where}: 'file_name' must be a non-empty string")
            width = self._int(raw, "width", where, positive=True)
            height = self._int(raw, "height", where, positive=True)
            if iid in images:
                raise self.fail(f"duplicate image id {iid}")
            images[iid] = AnnotatedImage(id=iid, file_name=file_name, width=width, height=height)
        return images

    def _annotation(
        self,
        index: int,
        raw: Any,
        images: dict[int, AnnotatedImage],
        categories: dict[int, Category],
        seen: set[int],
        skipped: list[tuple[int, str]],
    ) -> ObjectAnnotation | None:
        raw = self._object(raw, f"annotations[{index}]")
        aid = self._int(raw, "id", f"annotations[{index}]")
        where = f"annotation {aid}"
        if aid in seen:
            raise self.fail(f"duplicate annotation id {aid}")
        seen.add(aid)
        image_id = self._int(raw, "image_id", where)
        category_id = self._int(raw, "category_id", where)
        if image_id not in images:
            raise self.fail(f"{where} refers to unknown image_id {image_id}")
        if category_id not in categories:
            raise self.fail(f"{where} refers to unknown category_id {category_id}")
        image = images[image_id]

        if "bbox" not in raw:
            raise self.fail(f"{where}: missing key 'bbox'")
        bbox = raw["bbox"]
        nan = isinstance(bbox, list) and len(bbox) == 4 and any(isinstance(v, float) and math.isnan(v) for v in bbox)
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(_is_finite(v) or (isinstance(v, float) and math.isnan(v)) for v in bbox)
        ):
            raise self.fail(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {_short_repr(bbox)}")
        x, y, w, h = (float(v) for v in bbox)
        kind = ("NaN box" if nan else "negative-size box" if w < 0 or h < 0
                else "zero-size box" if w == 0 or h == 0 else None)
        if kind is not None:
            reason = "box has NaN values" if nan else "box has no area"
            skipped.append((aid, f"{reason} (width {w:g}, height {h:g})"))
            image.skipped[kind] = image.skipped.get(kind, 0) + 1
            return None
        if x >= image.width or y >= image.height or x + w <= 0 or y + h <= 0:
            skipped.append((aid, f"box lies entirely outside the {image.width}×{image.height} image"))
            image.skipped["box outside the image"] = image.skipped.get("box outside the image", 0) + 1
            return None
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(image.width)), min(y + h, float(image.height))

        segmentation = raw.get("segmentation")
        if segmentation is not None and not isinstance(segmentation, (list, dict)):
            raise self.fail(f"{where}: 'segmentation' must be a list of polygons or an RLE object")
        if isinstance(segmentation, dict) and not {"counts", "size"} <= segmentation.keys():
            raise self.fail(f"{where}: RLE 'segmentation' needs 'counts' and 'size'")
        if isinstance(segmentation, list) and not segmentation:
            segmentation = None
        self._check_segmentation_numbers(segmentation, where)

        area = raw.get("area")
        if area is not None and not _is_finite(area):
            raise self.fail(f"{where}: 'area' must be a number")
        iscrowd = raw.get("iscrowd", 0)
        if not _is_number(iscrowd) or iscrowd not in (0, 1):
            raise self.fail(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")

        return ObjectAnnotation(
            id=aid,
            image_id=image_id,
            category_id=category_id,
            category=categories[category_id].name,
            bbox_xywh=(x1, y1, x2 - x1, y2 - y1),
            segmentation=segmentation,
            area=float(area) if area is not None else None,
            iscrowd=int(iscrowd),
        )

    def _check_segmentation_numbers(self, segmentation: Any, where: str) -> None:
        """Refuse numbers no store or float can hold (10**400, 1e400) now, before any image is processed.

        The shape of the segmentation is checked later, per image, by ``annotation_to_mask``.
        """
        if isinstance(segmentation, list):
            flat = [v for p in segmentation for v in (p if isinstance(p, list) else [p])]
            if any(_is_number(v) and not _is_finite(v) for v in flat):
                raise self.fail(f"{where}: polygon coordinates must be finite numbers")
        elif isinstance(segmentation, dict):
            counts, size = segmentation["counts"], segmentation["size"]
            values = (counts if isinstance(counts, list) else []) + (size if isinstance(size, list) else [])
            if any(isinstance(v, int) and not _INT64_MIN <= v <= _INT64_MAX for v in values):
                raise self.fail(f"{where}: RLE counts and size must fit in 64-bit integers")

    def _object(self, raw: Any, where: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(f"{where} must be an object, got {_json_type(raw)}")
        return raw

    def _int(self, raw: dict[str, Any], key: str, where: str, positive: bool = False) -> int:
        if key not in raw:
            raise self.fail(f"{where}: missing key '{key}'")
        value = raw[key]
        # integral floats (640.0) are accepted: some exporters write every number as a float
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{where}: '{key}' must be an integer, got {value!r}")
        if positive and value <= 0:
            raise self.fail(f"{where}: '{key}' must be positive, got {value}")
        if not _INT64_MIN <= value <= _INT64_MAX:
            # SQLite and Postgres store 64-bit integers; a bigger id would fail mid-run
            raise self.fail(f"{where}: '{key}' {_short(value)} does not fit in a 64-bit integer")
        return value


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    """A number a float holds finitely; exact for ints (``math.isfinite(10**400)`` raises OverflowError)."""
    if not _is_number(v):
        return False
    if isinstance(v, int):
        return abs(v) <= 2**1000  # far inside the float range, and no OverflowError converting it
    return math.isfinite(v)


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}…({len(text)} digits)"


def _json_type(v: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(v), "a number")


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

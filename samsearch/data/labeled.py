"""The one shape every dataset reader returns (:class:`LabeledDataset`: annotation entries matched to
image files, in the types of :mod:`samsearch.data.coco`), its skips and errors, and helpers the readers
share. The format modules are :mod:`samsearch.data.yolo`, :mod:`samsearch.data.bdd100k` and
:mod:`samsearch.data.datasets` (COCO, and the entry point ``read_dataset``)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samsearch.data.coco import AnnotatedImage, CocoAnnotations, ObjectAnnotation
from samsearch.data.imageio import ImageLoadError, collect_image_paths, header_size
from samsearch.errors import InputError


class DatasetError(InputError):
    """An annotation file is unusable; ``str()`` is one line naming the file and the reason."""


@dataclass(frozen=True)
class Skip:
    """Something left out of a dataset, and why (``where`` names the file/line/annotation)."""

    where: str
    reason: str


@dataclass
class DatasetImage:
    path: Path  # the image file on disk
    entry: AnnotatedImage  # its size and annotations (boxes clipped, in original pixels)


@dataclass
class LabeledDataset:
    source: Path  # the annotation file (COCO/BDD100K JSON, data.yaml or classes.txt)
    format: str
    images_dir: Path
    categories: list[str]  # class names, in the file's order
    images: list[DatasetImage]
    skipped: list[Skip] = field(default_factory=list)
    files_without_entry: int = 0  # image files under images_dir the annotations do not mention

    @property
    def num_instances(self) -> int:
        return sum(len(im.entry.annotations) for im in self.images)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(a.category for im in self.images for a in im.entry.annotations)
        return {c: counts[c] for c in self.categories if counts[c]}

    @property
    def has_masks(self) -> bool:
        return any(a.segmentation is not None for im in self.images for a in im.entry.annotations)

    def skip_reasons(self) -> dict[str, int]:
        """How many skips per reason kind (the text before the first ':' or '(')."""
        return dict(Counter(s.reason.split(":")[0].split(" (")[0] for s in self.skipped))


def iter_instances(dataset: LabeledDataset) -> Iterable[tuple[DatasetImage, ObjectAnnotation]]:
    for image in dataset.images:
        for ann in image.entry.annotations:
            yield image, ann


def _image_files(images_dir: Path) -> list[Path]:
    try:
        return collect_image_paths([images_dir])
    except FileNotFoundError as exc:
        raise DatasetError(str(exc)) from exc


def _unknown_image(entry: AnnotatedImage, images_dir: Path) -> Skip:
    n = len(entry.annotations)
    return Skip(f"image {entry.file_name}", f"unknown image: no such file under {images_dir} ({n} objects)")


def _annotation(
    ann_id: int,
    entry: AnnotatedImage,
    image_id: int,
    category_id: int,
    category: str,
    box: tuple[float, float, float, float],
    segmentation: Any,
    where: str,
    skipped: list[Skip],
) -> ObjectAnnotation | None:
    """The annotation with its box clipped to the image, or None (and a skip) when nothing is left."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        skipped.append(Skip(where, f"box has no area (width {w:g}, height {h:g})"))
        return None
    if x >= entry.width or y >= entry.height or x + w <= 0 or y + h <= 0:
        skipped.append(Skip(where, f"box lies entirely outside the {entry.width}×{entry.height} image"))
        return None
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(entry.width)), min(y + h, float(entry.height))
    return ObjectAnnotation(ann_id, image_id, category_id, category, (x1, y1, x2 - x1, y2 - y1),
                            segmentation, None, 0)


def _polygon_box(polygon: list[float]) -> tuple[float, float, float, float]:
    xs, ys = polygon[0::2], polygon[1::2]
    return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


def _header_size(file: Path, skipped: list[Skip]) -> tuple[int, int] | None:
    """(width, height) as decoding will see it (EXIF rotation applied), or None with a skip. An image
    above Pillow's decompression-bomb limit is read here (header only) and refused when decoded."""
    try:
        return header_size(file)
    except ImageLoadError as exc:
        skipped.append(Skip(f"image {file}", f"unreadable image: {exc.reason}"))
        return None


def _read_json(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not valid JSON (not UTF-8 text)") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_type(v: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(v), "a number")


def _match_files(coco: CocoAnnotations, images_dir: Path) -> tuple[dict[int, Path], int]:
    """Entry id → file for every file under ``images_dir`` that an entry names (the first file wins
    when several match one entry), and how many files matched none."""
    matched: dict[int, Path] = {}
    extra = 0
    for file in _image_files(images_dir):
        entry = coco.find_image(file)
        if entry is None:
            extra += 1
        elif entry.id not in matched:
            matched[entry.id] = file
    return matched, extra

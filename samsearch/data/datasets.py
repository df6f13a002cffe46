"""Labeled detection datasets from the formats users have: COCO JSON, YOLO, BDD100K (Scalabel) JSON.

Every reader returns a :class:`LabeledDataset`: the annotation entries matched to image files under an
images folder, in the types of :mod:`samsearch.data.coco` (boxes as COCO XYWH in original pixels,
clipped to the image; segmentations as COCO polygons or RLE, or None for box-only annotations). Bank
building and evaluation consume that one shape whatever the file format was.

Formats
    ``coco``     a COCO JSON file (boxes, polygons, RLE); read by :func:`samsearch.data.coco.load_coco`.
    ``yolo``     ``data.yaml`` (``names`` as a list or an index → name map) or ``classes.txt`` (one name a
                 line), plus one ``.txt`` per image: ``class cx cy w h`` (normalised to 0..1) for a box, or
                 ``class x1 y1 x2 y2 ...`` (normalised, at least 3 points) for an Ultralytics segment
                 polygon. A label file is looked up, for ``DIR/.../images/a/b.jpg``, at
                 ``DIR/.../labels/a/b.txt`` (Ultralytics' rule), next to the image (``b.txt``), then under
                 ``labels/`` beside the yaml/txt file. An image without a label file has no objects.
    ``bdd100k``  a JSON list of frames ``{"name", "labels": [{"id", "category", "box2d": {x1, y1, x2, y2}}]}``
                 (or Scalabel's ``{"frames": [...], "config": {"categories": [...]}}``). ``box2d`` is
                 *inclusive* of its last pixel, as Scalabel and BDD100K write it, so the box is
                 ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` (``synthetic.coco_to_bdd100k`` writes the inverse).
                 A label may also carry a mask: ``rle`` ``{counts, size}`` or a closed ``poly2d``
                 (``[{"vertices": [[x, y], ...], "closed": true}]``; Bezier control points are taken as
                 plain vertices). Labels with neither a box nor a closed polygon (lane lines, drivable
                 areas) are skipped.

Image sizes come from the COCO file, and from the image file's header for YOLO and BDD100K (EXIF
orientation applied, as decoding does).

Errors and skips. A file that cannot be read unambiguously raises :class:`DatasetError` (an
:class:`~samsearch.errors.InputError`) with one line ``"{file}: {reason}"`` (``"{file} line {n}: ..."``
for YOLO label files) before any image is processed: invalid JSON or YAML, wrong types, a YOLO line that
is not numbers or names a class index that does not exist, a BDD100K box that is not four numbers.
Recoverable problems are *counted skips* in ``LabeledDataset.skipped`` with the reason: boxes with no
area or lying entirely outside their image, entries whose image file is not under the images folder
(``unknown image``), image files whose header cannot be read, BDD100K labels without geometry.
Boxes partly outside the image are clipped.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from samsearch.data.coco import (
    AnnotatedImage,
    AnnotationError,
    CocoAnnotations,
    ObjectAnnotation,
    load_coco,
)
from samsearch.data.imageio import collect_image_paths
from samsearch.errors import InputError

FORMATS: tuple[str, ...] = ("coco", "yolo", "bdd100k")


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


def detect_format(path: Path) -> str:
    """``coco`` / ``bdd100k`` for JSON (by its top-level shape), ``yolo`` for .yaml/.yml/.txt."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml", ".txt"):
        return "yolo"
    if suffix == ".json":
        doc = _read_json(path)
        if isinstance(doc, list) or (isinstance(doc, dict) and "frames" in doc):
            return "bdd100k"
        if isinstance(doc, dict):
            return "coco"
    raise DatasetError(f"{path}: cannot tell the format from the file; pass --format coco|yolo|bdd100k")


def read_dataset(annotations: Path | str, images: Path | str, fmt: str | None = None) -> LabeledDataset:
    """Read ``annotations`` in ``fmt`` (detected when None) and match it to the files under ``images``."""
    annotations, images = Path(annotations), Path(images)
    if not annotations.exists():
        raise DatasetError(f"{annotations}: no such file")
    if not images.is_dir():
        raise DatasetError(f"{images}: not a folder (--images takes the folder holding the images)")
    fmt = fmt or detect_format(annotations)
    if fmt == "coco":
        return read_coco(annotations, images)
    if fmt == "yolo":
        return read_yolo(annotations, images)
    if fmt == "bdd100k":
        return read_bdd100k(annotations, images)
    raise DatasetError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


# -- COCO ------------------------------------------------------------------------------------------------


def read_coco(path: Path, images_dir: Path) -> LabeledDataset:
    try:
        coco = load_coco(path)
    except AnnotationError as exc:
        raise DatasetError(str(exc)) from exc
    skipped = [Skip(f"annotation {aid}", reason) for aid, reason in coco.skipped]
    matched, extra = _match_files(coco, images_dir)
    images: list[DatasetImage] = []
    for entry in sorted(coco.images.values(), key=lambda im: im.id):
        file = matched.get(entry.id)
        if file is None:
            skipped.append(_unknown_image(entry, images_dir))
            continue
        images.append(DatasetImage(file, entry))
    names = [coco.categories[c].name for c in sorted(coco.categories)]
    return LabeledDataset(path, "coco", images_dir, names, images, skipped, extra)


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


def _image_files(images_dir: Path) -> list[Path]:
    try:
        return collect_image_paths([images_dir])
    except FileNotFoundError as exc:
        raise DatasetError(str(exc)) from exc


def _unknown_image(entry: AnnotatedImage, images_dir: Path) -> Skip:
    n = len(entry.annotations)
    return Skip(f"image {entry.file_name}", f"unknown image: no such file under {images_dir} ({n} objects)")


# -- YOLO ------------------------------------------------------------------------------------------------


def read_yolo(path: Path, images_dir: Path) -> LabeledDataset:
    names, root = _yolo_names(path)
    skipped: list[Skip] = []
    images: list[DatasetImage] = []
    next_id = 1
    for index, file in enumerate(_image_files(images_dir), start=1):
        label_file = _yolo_label_file(file, images_dir, root)
        rows = _yolo_rows(label_file, len(names)) if label_file else []
        size = _header_size(file, skipped)
        if size is None:
            continue
        width, height = size
        rel = file.relative_to(images_dir).as_posix()
        entry = AnnotatedImage(index, rel, width, height)
        for line_no, cls, coords in rows:
            where = f"{label_file} line {line_no}"
            if len(coords) == 4:
                cx, cy, w, h = coords
                box = ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)
                segmentation = None
            else:
                polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
                box = _polygon_box(polygon)
                segmentation = [polygon]
            ann = _annotation(next_id, entry, index, cls + 1, names[cls], box, segmentation, where, skipped)
            next_id += 1
            if ann is not None:
                entry.annotations.append(ann)
        images.append(DatasetImage(file, entry))
    return LabeledDataset(path, "yolo", images_dir, names, images, skipped, 0)


def _yolo_names(path: Path) -> tuple[list[str], Path]:
    """Class names from ``data.yaml`` or ``classes.txt``, and the dataset root for ``labels/``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix.lower() == ".txt":
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{path}: no class names (one name a line)")
        return names, path.parent
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise DatasetError(f"{path}: missing key 'names' (the class names)")
    raw = doc["names"]
    if isinstance(raw, list):
        names = raw
    elif isinstance(raw, dict) and all(isinstance(k, int) for k in raw):
        if sorted(raw) != list(range(len(raw))):
            raise DatasetError(f"{path}: 'names' keys must be 0..{len(raw) - 1}, got {sorted(raw)}")
        names = [raw[i] for i in range(len(raw))]
    else:
        raise DatasetError(f"{path}: 'names' must be a list or a map from class index to name")
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DatasetError(f"{path}: 'names' must hold non-empty strings")
    if "nc" in doc and doc["nc"] != len(names):
        raise DatasetError(f"{path}: 'nc' is {doc['nc']} but 'names' lists {len(names)} classes")
    root = Path(doc["path"]) if isinstance(doc.get("path"), str) else path.parent
    return [str(n).strip() for n in names], (root if root.is_absolute() else path.parent / root)


def _yolo_label_file(image: Path, images_dir: Path, root: Path) -> Path | None:
    parts = list(image.parts)
    candidates = []
    if "images" in parts:  # Ultralytics: the last 'images' folder becomes 'labels'
        i = len(parts) - 1 - parts[::-1].index("images")
        candidates.append(Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt"))
    candidates.append(image.with_suffix(".txt"))
    candidates.append((root / "labels" / image.relative_to(images_dir)).with_suffix(".txt"))
    return next((c for c in candidates if c.is_file()), None)


def _yolo_rows(label_file: Path, n_classes: int) -> list[tuple[int, int, list[float]]]:
    try:
        text = label_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{label_file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file} line {line_no}"
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            raise DatasetError(f"{where}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', "
                               f"got {len(fields)} fields")
        try:
            cls = int(fields[0])
        except ValueError:
            raise DatasetError(f"{where}: class {fields[0]!r} is not an integer index") from None
        if not 0 <= cls < n_classes:
            raise DatasetError(f"{where}: class index {cls} is outside 0..{n_classes - 1}")
        try:
            coords = [float(v) for v in fields[1:]]
        except ValueError:
            raise DatasetError(f"{where}: coordinates must be numbers, got {' '.join(fields[1:])!r}") from None
        if not all(math.isfinite(v) for v in coords):
            raise DatasetError(f"{where}: coordinates must be finite numbers")
        rows.append((line_no, cls, coords))
    return rows


# -- BDD100K ---------------------------------------------------------------------------------------------


def read_bdd100k(path: Path, images_dir: Path) -> LabeledDataset:
    doc = _read_json(path)
    config_names: list[str] = []
    if isinstance(doc, dict):
        if not isinstance(doc.get("frames"), list):
            raise DatasetError(f"{path}: expected a list of frames, or an object with a 'frames' list")
        config_names = _scalabel_categories(path, doc.get("config"))
        frames = doc["frames"]
    elif isinstance(doc, list):
        frames = doc
    else:
        raise DatasetError(f"{path}: expected a list of frames, got {_json_type(doc)}")

    parsed = [_bdd_frame(path, i, f) for i, f in enumerate(frames)]
    entries = {i + 1: AnnotatedImage(i + 1, name, 0, 0) for i, (name, _) in enumerate(parsed)}
    index = CocoAnnotations(path, entries, {})
    matched, extra = _match_files(index, images_dir)
    names = list(config_names)
    seen = set(names)
    for _, labels in parsed:
        for lab in labels:
            if lab["category"] not in seen:
                seen.add(lab["category"])
                names.append(lab["category"])
    cat_id = {n: i + 1 for i, n in enumerate(names)}

    skipped: list[Skip] = []
    images: list[DatasetImage] = []
    next_id = 1
    for image_id, (name, labels) in enumerate(parsed, start=1):
        entry = entries[image_id]
        file = matched.get(image_id)
        if file is None:
            skipped.append(Skip(f"frame {name}", f"unknown image: no such file under {images_dir} "
                                                 f"({len(labels)} labels)"))
            next_id += len(labels)
            continue
        size = _header_size(file, skipped)
        if size is None:
            next_id += len(labels)
            continue
        entry.width, entry.height = size
        for lab in labels:
            where = f"{path} frame {name} label {lab['id']}"
            if lab["skip"]:
                skipped.append(Skip(where, lab["skip"]))
                next_id += 1
                continue
            box = lab["box"] if lab["box"] is not None else _polygon_box(lab["polygon"])
            segmentation = lab["rle"] or ([lab["polygon"]] if lab["polygon"] else None)
            ann = _annotation(next_id, entry, image_id, cat_id[lab["category"]], lab["category"], box,
                              segmentation, where, skipped)
            next_id += 1
            if ann is not None:
                entry.annotations.append(ann)
        images.append(DatasetImage(file, entry))
    return LabeledDataset(path, "bdd100k", images_dir, names, images, skipped, extra)


def _scalabel_categories(path: Path, config: Any) -> list[str]:
    if config is None:
        return []
    cats = config.get("categories") if isinstance(config, dict) else None
    if cats is None:
        return []
    if not isinstance(cats, list):
        raise DatasetError(f"{path}: 'config.categories' must be a list")
    names = []
    for c in cats:
        name = c.get("name") if isinstance(c, dict) else c
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{path}: 'config.categories' entries must be names or {{\"name\": ...}}")
        names.append(name)
    return names


def _bdd_frame(path: Path, index: int, frame: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(frame, dict):
        raise DatasetError(f"{path}: frame {index} must be an object, got {_json_type(frame)}")
    name = frame.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"{path}: frame {index}: 'name' must be a non-empty string")
    raw_labels = frame.get("labels") or []
    if not isinstance(raw_labels, list):
        raise DatasetError(f"{path}: frame {name}: 'labels' must be a list")
    labels = []
    for j, lab in enumerate(raw_labels):
        where = f"{path}: frame {name} label {j}"
        if not isinstance(lab, dict):
            raise DatasetError(f"{where} must be an object")
        category = lab.get("category")
        if not isinstance(category, str) or not category:
            raise DatasetError(f"{where}: 'category' must be a non-empty string")
        box = _bdd_box(where, lab.get("box2d"))
        polygon, skip = _bdd_polygon(where, lab.get("poly2d"))
        rle = lab.get("rle")
        if rle is not None and not (isinstance(rle, dict) and {"counts", "size"} <= rle.keys()):
            raise DatasetError(f"{where}: 'rle' needs 'counts' and 'size'")
        if box is None and polygon is None:
            skip = skip or "no geometry: neither box2d nor a closed poly2d"
        elif box is None and rle is not None:
            skip = "rle without box2d"
        else:
            skip = None
        labels.append({"id": lab.get("id", j), "category": category, "box": box, "polygon": polygon,
                       "rle": rle, "skip": skip})
    return name, labels


def _bdd_box(where: str, raw: Any) -> tuple[float, float, float, float] | None:
    if raw is None:
        return None
    keys = ("x1", "y1", "x2", "y2")
    if not isinstance(raw, dict) or not all(_is_number(raw.get(k)) and math.isfinite(raw[k]) for k in keys):
        raise DatasetError(f"{where}: 'box2d' must hold four finite numbers x1, y1, x2, y2, got {raw!r}")
    x1, y1, x2, y2 = (float(raw[k]) for k in keys)
    return (x1, y1, x2 - x1 + 1.0, y2 - y1 + 1.0)  # Scalabel's box2d includes its last pixel


def _bdd_polygon(where: str, raw: Any) -> tuple[list[float] | None, str | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], dict):
        raise DatasetError(f"{where}: 'poly2d' must be a list of {{\"vertices\": [[x, y], ...]}} objects")
    poly = raw[0]
    vertices = poly.get("vertices")
    if not isinstance(vertices, list) or not all(
        isinstance(v, list) and len(v) == 2 and all(_is_number(c) and math.isfinite(c) for c in v) for v in vertices
    ):
        raise DatasetError(f"{where}: 'poly2d' vertices must be [x, y] pairs of finite numbers")
    if not poly.get("closed", True):
        return None, "poly2d is an open line, not a region"
    if len(vertices) < 3:
        return None, f"poly2d has fewer than 3 vertices ({len(vertices)})"
    return [float(c) for v in vertices for c in v], None


# -- shared helpers -----------------------------------------------------------------------------------------


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
    """(width, height) as decoding will see it (EXIF rotation applied), or None with a skip."""
    try:
        with Image.open(file) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        skipped.append(Skip(f"image {file}", f"unreadable image: {' '.join(str(exc).split())}"))
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


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


def iter_instances(dataset: LabeledDataset) -> Iterable[tuple[DatasetImage, ObjectAnnotation]]:
    for image in dataset.images:
        for ann in image.entry.annotations:
            yield image, ann


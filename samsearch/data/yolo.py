"""YOLO datasets: ``data.yaml`` or ``classes.txt`` plus one label file per image (see
:mod:`samsearch.data.datasets` for the format rules)."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from samsearch.data.coco import (
    AnnotatedImage,
)
from samsearch.data.labeled import (
    DatasetError,
    DatasetImage,
    LabeledDataset,
    Skip,
    _annotation,
    _header_size,
    _image_files,
    _polygon_box,
)


def read_yolo(path: Path, images_dir: Path) -> LabeledDataset:
    names, root = _yolo_names(path)
    # The image files come back absolute with symlinks resolved: so must the folder they are made relative to.
    images_dir = images_dir.resolve()
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
        rel = _relative(file, images_dir).as_posix()
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
    candidates.append((root / "labels" / _relative(image, images_dir)).with_suffix(".txt"))
    return next((c for c in candidates if c.is_file()), None)


def _relative(image: Path, images_dir: Path) -> Path:
    """``image`` relative to ``images_dir``; just its name when it lies elsewhere (a symlink out of it)."""
    try:
        return image.relative_to(images_dir)
    except ValueError:
        return Path(image.name)


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


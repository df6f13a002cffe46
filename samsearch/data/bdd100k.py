"""BDD100K / Scalabel detection JSON (``box2d`` inclusive of its last pixel; optional ``rle`` or closed
``poly2d`` masks; see :mod:`samsearch.data.datasets`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from samsearch.data.coco import (
    AnnotatedImage,
    CocoAnnotations,
)
from samsearch.data.labeled import (
    DatasetError,
    DatasetImage,
    LabeledDataset,
    Skip,
    _annotation,
    _header_size,
    _is_number,
    _json_type,
    _match_files,
    _polygon_box,
    _read_json,
)


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


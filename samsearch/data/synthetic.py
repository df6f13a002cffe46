"""A deterministic synthetic image dataset with exact ground truth, for tests and demos.

Each image is a noisy, low-saturation textured background (grey-ish base colour, a linear gradient,
soft blotches, pixel noise) carrying a few non-overlapping objects of visually distinct classes:
colour, shape and texture all differ (see :data:`STYLES`). Objects are 15-35 % of the image's short side,
placed at random with a gap between their boxes, with a slight per-object colour jitter and pixel noise.
Object colours are saturated or far from the background's grey range, so a pixel's colour tells object
from background.

Ground truth is exact: every object is rendered through its mask, and the mask is what the COCO file
stores. Polygonal shapes are rasterised from the very polygon written to the file (with pycocotools, so
the COCO convention holds) and stored as polygons; discs and rings are stored as compressed RLE. Both
segmentation paths of a COCO reader get exercised. Boxes are the tight boxes of the masks.

Determinism: image ``i`` is drawn from its own generator seeded with ``(stream, seed, i)``, so the same
arguments always give byte-identical files, and the first ``k`` images do not depend on ``n_images``.

Layout written by :func:`make_dataset`::

    out_dir/annotations.json                 # file_name values are relative to out_dir
    out_dir/images/00001.png ...             # or images/<split>/00001.png with split_names
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from samsearch.data.coco import load_coco
from samsearch.data.masks import mask_to_box_xywh, mask_to_rle, rle_to_mask

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassStyle:
    name: str
    shape: str  # disc | ring | square | triangle | rect | star
    colors: tuple[RGB, ...]  # one colour for solid fills, two for stripes/checker
    texture: str = "solid"  # solid | stripes | checker

    @property
    def segmentation_format(self) -> str:
        return "rle" if self.shape in ("disc", "ring") else "polygon"


STYLES: dict[str, ClassStyle] = {
    s.name: s
    for s in (
        ClassStyle("red_disc", "disc", ((225, 30, 30),)),
        ClassStyle("blue_square", "square", ((30, 70, 225),)),
        ClassStyle("green_triangle", "triangle", ((30, 195, 45),)),
        ClassStyle("yellow_stripes", "rect", ((245, 215, 20), (20, 20, 115)), "stripes"),
        ClassStyle("purple_ring", "ring", ((155, 40, 195),)),
        ClassStyle("cyan_checker", "square", ((20, 215, 225), (248, 248, 248)), "checker"),
        ClassStyle("orange_star", "star", ((250, 135, 10),)),
    )
}
# The default class set; EXTRA_CLASSES are held back, e.g. as a class no model has seen.
CLASSES: tuple[str, ...] = (
    "red_disc",
    "blue_square",
    "green_triangle",
    "yellow_stripes",
    "purple_ring",
    "cyan_checker",
)
EXTRA_CLASSES: tuple[str, ...] = ("orange_star",)

_SIZE_RANGE = (0.15, 0.35)  # object extent as a fraction of the image's short side
_GAP = 3.0  # minimum gap in pixels between object boxes
_COLOR_JITTER = 12
_OBJECT_NOISE = 3.0
_BACKGROUND_NOISE = 3.0


@dataclass
class SyntheticObject:
    id: int  # COCO annotation id
    image_id: int
    category: str
    category_id: int
    bbox_xywh: tuple[float, float, float, float]
    area: int
    rle: dict[str, Any]  # exact mask, compressed RLE
    segmentation: Any  # what the COCO file holds: polygons or the RLE

    @property
    def mask(self) -> np.ndarray:
        return rle_to_mask(self.rle)


@dataclass
class SyntheticImage:
    id: int
    file_name: str  # relative to the dataset root, as in the COCO file
    path: Path
    width: int
    height: int
    split: str | None
    objects: list[SyntheticObject] = field(default_factory=list)


@dataclass
class SyntheticDataset:
    root: Path
    annotations_path: Path
    classes: tuple[str, ...]  # category id = index + 1
    images: list[SyntheticImage]

    @property
    def category_ids(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.classes)}

    @property
    def objects(self) -> list[SyntheticObject]:
        return [obj for image in self.images for obj in image.objects]


def make_dataset(
    out_dir: Path,
    n_images: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 192),
    objects_per_image: tuple[int, int] = (2, 4),
    classes: Sequence[str] = CLASSES,
    name: str = "annotations.json",
    image_format: str = "png",
    split_names: Sequence[str] | None = None,
) -> SyntheticDataset:
    """Draw ``n_images`` images of ``size`` (W, H) into ``out_dir`` plus one COCO file ``out_dir/name``.

    ``objects_per_image`` is an inclusive range; within an image the classes are distinct while there are
    enough of them. ``image_format`` is ``"png"`` (lossless; use it when pixels are compared) or ``"jpg"``.
    With ``split_names`` (e.g. ``("train", "val")``) the images are divided into consecutive near-equal
    groups written to ``images/<split>/`` with numbering restarting per split, so basenames repeat across
    splits; each COCO image entry then carries a ``"split"`` key.
    """
    return _make(
        Path(out_dir), n_images, (0, seed), size, objects_per_image, classes, name, image_format, split_names
    )


def make_splits(
    out_dir: Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 192),
    objects_per_image: tuple[int, int] = (2, 4),
    classes: Sequence[str] = CLASSES,
    name: str = "annotations.json",
    image_format: str = "png",
) -> dict[str, SyntheticDataset]:
    """Write ``out_dir/train`` and ``out_dir/test``, each a :func:`make_dataset` layout with its own COCO
    file and the same categories; the two splits come from independent random streams."""
    out_dir = Path(out_dir)
    common = (size, objects_per_image, classes, name, image_format, None)
    return {
        "train": _make(out_dir / "train", n_train, (1, seed), *common),
        "test": _make(out_dir / "test", n_test, (2, seed), *common),
    }


def _make(
    out_dir: Path,
    n_images: int,
    stream: tuple[int, int],
    size: tuple[int, int],
    objects_per_image: tuple[int, int],
    classes: Sequence[str],
    name: str,
    image_format: str,
    split_names: Sequence[str] | None,
) -> SyntheticDataset:
    classes = tuple(classes)
    unknown = [c for c in classes if c not in STYLES]
    if unknown:
        raise ValueError(f"unknown synthetic classes {unknown}; known: {sorted(STYLES)}")
    if not classes or len(set(classes)) != len(classes):
        raise ValueError("classes must be a non-empty sequence of distinct names")
    if n_images < 0 or stream[1] < 0:
        raise ValueError("n_images and seed must be >= 0")
    lo, hi = objects_per_image
    if not 0 <= lo <= hi:
        raise ValueError(
            f"objects_per_image must be (min, max) with 0 <= min <= max, got {objects_per_image}"
        )
    width, height = (int(v) for v in size)
    if width < 32 or height < 32:
        raise ValueError(f"size must be at least 32×32, got {width}×{height}")
    fmt = image_format.lower()
    if fmt not in ("png", "jpg", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    ext = "jpg" if fmt in ("jpg", "jpeg") else "png"

    out_dir.mkdir(parents=True, exist_ok=True)
    category_ids = {c: i + 1 for i, c in enumerate(classes)}
    images: list[SyntheticImage] = []
    coco_images: list[dict[str, Any]] = []
    coco_annotations: list[dict[str, Any]] = []
    next_ann_id = 1
    for index, (split, number) in enumerate(_file_numbers(n_images, split_names)):
        image_id = index + 1
        rng = np.random.default_rng([stream[0], stream[1], index])
        n_objects = int(rng.integers(lo, hi + 1))
        pixels, drawn = _render(rng, width, height, n_objects, classes)

        file_name = f"images/{split}/{number:05d}.{ext}" if split else f"images/{number:05d}.{ext}"
        path = out_dir / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(pixels, path, ext)

        image = SyntheticImage(image_id, file_name, path, width, height, split)
        entry: dict[str, Any] = {"id": image_id, "file_name": file_name, "width": width, "height": height}
        if split:
            entry["split"] = split
        coco_images.append(entry)
        for cls, mask, segmentation in drawn:
            rle = mask_to_rle(mask)
            if segmentation is None:  # discs and rings are stored as RLE
                segmentation = rle
            bbox = tuple(mask_to_box_xywh(mask))
            area = int(mask.sum())
            obj = SyntheticObject(
                next_ann_id, image_id, cls, category_ids[cls], bbox, area, rle, segmentation
            )
            image.objects.append(obj)
            coco_annotations.append(
                {
                    "id": obj.id,
                    "image_id": image_id,
                    "category_id": obj.category_id,
                    "bbox": list(bbox),
                    "area": float(area),
                    "iscrowd": 0,
                    "segmentation": segmentation,
                }
            )
            next_ann_id += 1
        images.append(image)

    doc = {
        "info": {"description": "samsearch synthetic shapes", "version": "1", "seed": stream[1]},
        "licenses": [],
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": [{"id": category_ids[c], "name": c, "supercategory": "shape"} for c in classes],
    }
    annotations_path = out_dir / name
    annotations_path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return SyntheticDataset(out_dir, annotations_path, classes, images)


def _file_numbers(n_images: int, split_names: Sequence[str] | None) -> list[tuple[str | None, int]]:
    if not split_names:
        return [(None, i + 1) for i in range(n_images)]
    splits = list(split_names)
    if len(set(splits)) != len(splits) or not all(s and "/" not in s and "\\" not in s for s in splits):
        raise ValueError(f"split_names must be distinct, non-empty folder names, got {splits}")
    out: list[tuple[str | None, int]] = []
    for k, split in enumerate(splits):
        count = n_images // len(splits) + (1 if k < n_images % len(splits) else 0)
        out.extend((split, i + 1) for i in range(count))
    return out


def _save(pixels: np.ndarray, path: Path, ext: str) -> None:
    im = Image.fromarray(pixels)
    if ext == "png":
        im.save(path, format="PNG", compress_level=1)
    else:
        im.save(path, format="JPEG", quality=92)


def _render(
    rng: np.random.Generator, width: int, height: int, n_objects: int, classes: tuple[str, ...]
) -> tuple[np.ndarray, list[tuple[str, np.ndarray, Any]]]:
    canvas = _background(rng, width, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    short = min(width, height)
    picks = rng.choice(len(classes), size=n_objects, replace=n_objects > len(classes))
    sizes = np.sort(rng.uniform(*_SIZE_RANGE, size=n_objects) * short)[::-1]  # biggest first
    placed: list[tuple[float, float, float, float]] = []
    drawn: list[tuple[str, np.ndarray, Any]] = []
    for pick, extent in zip(picks, sizes, strict=True):
        style = STYLES[classes[int(pick)]]
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        shape = _place(rng, style, float(extent), angle, width, height, placed)
        if shape is None:
            continue
        mask, segmentation, (cx, cy) = shape
        if not mask.any():
            continue
        _paint(rng, canvas, mask, style, xs - cx, ys - cy, angle, float(extent))
        drawn.append((style.name, mask, segmentation))
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return pixels, drawn


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = rng.uniform(100.0, 150.0) + rng.uniform(-10.0, 10.0, size=3)  # grey-ish, never saturated
    phi = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xs * math.cos(phi) + ys * math.sin(phi)) / math.hypot(width, height)  # within [-1, 1]
    gradient = rng.uniform(8.0, 15.0) * ramp
    coarse = rng.uniform(-6.0, 6.0, size=(height // 24 + 2, width // 24 + 2)).astype(np.float32)
    blotches = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32
    )
    canvas = base[None, None, :] + (gradient + blotches)[:, :, None]
    canvas += rng.normal(0.0, _BACKGROUND_NOISE, size=canvas.shape)
    return canvas.astype(np.float32)


def _place(
    rng: np.random.Generator,
    style: ClassStyle,
    extent: float,
    angle: float,
    width: int,
    height: int,
    placed: list[tuple[float, float, float, float]],
) -> tuple[np.ndarray, Any, tuple[float, float]] | None:
    """Find a free spot for the object (shrinking it if the image is crowded); mask, segmentation, centre."""
    for attempt in range(120):
        if attempt and attempt % 40 == 0:
            extent *= 0.8
        local = _outline(style.shape, extent, angle)  # vertices around (0, 0), or None for round shapes
        if local is None:
            hx = hy = extent / 2.0
        else:
            hx, hy = float(np.abs(local[:, 0]).max()), float(np.abs(local[:, 1]).max())
        if 2 * hx + 2 > width or 2 * hy + 2 > height:
            continue
        cx = float(rng.uniform(hx + 1.0, width - hx - 1.0))
        cy = float(rng.uniform(hy + 1.0, height - hy - 1.0))
        box = (cx - hx, cy - hy, cx + hx, cy + hy)
        if any(_boxes_near(box, other) for other in placed):
            continue
        placed.append(box)
        if local is None:
            return _round_mask(style.shape, cx, cy, extent, width, height), None, (cx, cy)
        poly = [round(float(v), 2) for v in (local + np.array([cx, cy])).reshape(-1)]
        rles = mask_utils.frPyObjects([poly], height, width)
        mask = rle_to_mask(mask_utils.merge(rles))
        return mask, [poly], (cx, cy)
    return None


def _boxes_near(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return not (a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1])


def _outline(shape: str, extent: float, angle: float) -> np.ndarray | None:
    if shape in ("disc", "ring"):
        return None
    if shape == "square":
        s = extent / 2.0
        pts = np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    elif shape == "rect":
        w, h = extent / 2.0, extent * 0.3
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    elif shape == "triangle":
        r = extent / math.sqrt(3.0) * 1.1
        t = np.array([math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)])
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif shape == "star":
        t = np.array([math.pi / 2 + k * math.pi / 5 for k in range(10)])
        r = np.where(np.arange(10) % 2 == 0, extent / 2.0, extent / 2.0 * 0.45)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s_ = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s_], [-s_, c]])


def _round_mask(shape: str, cx: float, cy: float, extent: float, width: int, height: int) -> np.ndarray:
    ys, xs = np.ogrid[0:height, 0:width]
    # pixel centres at +0.5, as in the polygon rasteriser
    d2 = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2
    r = extent / 2.0
    mask = d2 <= r * r
    if shape == "ring":
        mask &= d2 >= (0.55 * r) ** 2
    return np.ascontiguousarray(mask)


def _paint(
    rng: np.random.Generator,
    canvas: np.ndarray,
    mask: np.ndarray,
    style: ClassStyle,
    dx: np.ndarray,
    dy: np.ndarray,
    angle: float,
    extent: float,
) -> None:
    colors = [
        np.clip(np.array(c, dtype=np.float32) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3), 0, 255)
        for c in style.colors
    ]
    n = int(mask.sum())
    if style.texture == "solid":
        values = np.broadcast_to(colors[0], (n, 3)).copy()
    else:
        c, s = math.cos(angle), math.sin(angle)
        u = (dx * c + dy * s)[mask]
        v = (-dx * s + dy * c)[mask]
        period = max(4.0, extent / 6.0)
        if style.texture == "stripes":
            index = np.floor(u / period).astype(np.int64) % 2
        else:
            index = (np.floor(u / period) + np.floor(v / period)).astype(np.int64) % 2
        values = np.stack(colors)[index]
    canvas[mask] = values + rng.normal(0.0, _OBJECT_NOISE, size=(n, 3))


def coco_to_yolo(coco_json: Path, out_dir: Path, copy_images: bool = True) -> Path:
    """Write a YOLO (Ultralytics) detection dataset; returns the path of ``data.yaml``.

    Labels go to ``out_dir/labels/<rel>.txt``, one ``class cx cy w h`` line per box (normalised to 0..1,
    6 decimals), where ``<rel>`` is the COCO ``file_name`` without its suffix and without a leading
    ``images/`` folder; images with no boxes get an empty file. Class indices are the categories in id
    order, from 0. With ``copy_images`` the images are copied to ``out_dir/images/<rel>.<ext>``, so
    ``out_dir`` is a complete dataset. ``data.yaml`` holds ``path``, ``train``/``val`` (both ``images``),
    ``nc`` and ``names`` (index -> name).
    """
    coco_json, out_dir = Path(coco_json), Path(out_dir)
    coco = load_coco(coco_json)
    category_ids = sorted(coco.categories)
    class_index = {cid: i for i, cid in enumerate(category_ids)}
    for image in sorted(coco.images.values(), key=lambda im: im.id):
        rel = _relative_name(image.file_name)
        label_path = (out_dir / "labels" / rel).with_suffix(".txt")
        label_path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for ann in image.annotations:
            x, y, w, h = ann.bbox_xywh
            cx, cy = (x + w / 2.0) / image.width, (y + h / 2.0) / image.height
            nw, nh = w / image.width, h / image.height
            lines.append(f"{class_index[ann.category_id]} {cx:.6f} {cy:.6f} {nw:.6f} {nh:.6f}")
        label_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if copy_images:
            source = coco_json.parent / image.file_name
            target = out_dir / "images" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    data = {
        "path": str(out_dir.resolve()),
        "train": "images",
        "val": "images",
        "nc": len(category_ids),
        "names": {i: coco.categories[cid].name for i, cid in enumerate(category_ids)},
    }
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return yaml_path


def coco_to_bdd100k(coco_json: Path, out_json: Path) -> Path:
    """Write BDD100K / Scalabel detection labels: a JSON list of frames
    ``{"name": file_name, "labels": [{"id": str, "category": name, "box2d": {x1, y1, x2, y2}}]}``.

    Scalabel's box2d is *inclusive* of its last pixel: ``x2 = x + w - 1`` (its own COCO converter computes
    ``w = x2 - x1 + 1``). Label ids are the COCO annotation ids as strings; frames follow image id order.
    """
    coco_json, out_json = Path(coco_json), Path(out_json)
    coco = load_coco(coco_json)
    frames = []
    for image in sorted(coco.images.values(), key=lambda im: im.id):
        labels = []
        for ann in image.annotations:
            x, y, w, h = ann.bbox_xywh
            box2d = {"x1": x, "y1": y, "x2": x + w - 1.0, "y2": y + h - 1.0}
            labels.append({"id": str(ann.id), "category": ann.category, "box2d": box2d})
        frames.append({"name": image.file_name, "labels": labels})
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(frames, indent=1) + "\n", encoding="utf-8")
    return out_json


def _relative_name(file_name: str) -> Path:
    parts = [p for p in file_name.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) > 1 and parts[0] == "images":
        parts = parts[1:]
    return Path(*parts)

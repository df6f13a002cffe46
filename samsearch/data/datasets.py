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

from pathlib import Path

from samsearch.data.bdd100k import read_bdd100k
from samsearch.data.coco import (
    AnnotationError,
    load_coco,
)
from samsearch.data.labeled import (
    DatasetError,
    DatasetImage,
    LabeledDataset,
    Skip,
    _match_files,
    _read_json,
    _unknown_image,
)
from samsearch.data.yolo import read_yolo

FORMATS: tuple[str, ...] = ("coco", "yolo", "bdd100k")


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


__all__ = ["FORMATS", "DatasetError", "LabeledDataset", "detect_format", "read_bdd100k", "read_coco", "read_dataset",
           "read_yolo"]

"""Automatic semantic maps (the second seed's output): per image, a PNG label map and a colour overlay.

Pixel values of a label map (one legend for the whole export, ``DIR/legend.json``):

* ``0``: background: no segment in scope covers the pixel;
* ``by="cluster"``: a segment of the run (default: the current run) paints ``cluster + 2``, so noise
  (``-1``) is ``1`` and cluster ``0`` is ``2``;
* ``by="label"``: a labeled segment (any ``label_source``) paints its label's value, labels sorted by name
  getting ``1, 2, ...``.

Overlapping segments: segments are painted in decreasing area (equal areas: the larger segment id last), so
a pixel takes the
value of the **smallest** segment covering it (a part on top of its whole).

Files: ``DIR/labels/<image id>_<stem>.png`` (8-bit grey when every value fits in 255, else 16-bit),
``DIR/overlays/<image id>_<stem>.png`` (the image with each class tinted in its legend colour), and
``DIR/legend.json`` (``values``: value -> name, cluster, colour; ``images``: the files of every image).
Images with at least one segment in scope are exported; an unreadable image still gets its label map
(its size comes from the masks) and is listed without an overlay.
"""

from __future__ import annotations

import colorsys
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select, text

from samsearch.cluster.job import NOISE, current_run_name, find_run
from samsearch.data.imageio import ImageLoadError, load_image
from samsearch.data.masks import rle_to_mask
from samsearch.db import ClusterName, Image, ImageDataset, Segment
from samsearch.errors import InputError
from samsearch.home import Home

By = Literal["cluster", "label"]
BACKGROUND = 0
NOISE_VALUE = 1  # by="cluster": value = cluster + 2
OVERLAY_ALPHA = 0.55


@dataclass
class PaintSegment:
    segment_id: str
    area: int
    rle: dict[str, Any]
    value: int


@dataclass
class LegendEntry:
    value: int
    name: str
    color: tuple[int, int, int]
    cluster: int | None = None


@dataclass
class SemanticExport:
    out_dir: str
    by: str
    run: str | None
    images: int
    overlays: int
    bit_depth: int
    legend: str
    failures: list[dict[str, str]] = field(default_factory=list)  # images without an overlay, and why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def color_for(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic colour per class index (golden-angle hues)."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def paint_label_map(height: int, width: int, segments: Sequence[PaintSegment]) -> np.ndarray:
    """The label map of one image: background 0, larger segments first so the smallest one wins."""
    out = np.zeros((height, width), dtype=np.uint16)
    for seg in sorted(segments, key=lambda s: (-s.area, s.segment_id)):
        mask = rle_to_mask(seg.rle)
        if mask.shape != out.shape:
            raise ValueError(f"segment {seg.segment_id} mask is {mask.shape[1]}x{mask.shape[0]}, "
                             f"not {width}x{height}")
        out[mask] = seg.value
    return out


def overlay(rgb: np.ndarray, label_map: np.ndarray, colors: dict[int, tuple[int, int, int]]) -> np.ndarray:
    out = rgb.astype(np.float32)
    lut = np.zeros((int(label_map.max()) + 1, 3), dtype=np.float32)
    for value, color in colors.items():
        if value < len(lut):
            lut[value] = color
    painted = label_map > 0
    out[painted] = (1 - OVERLAY_ALPHA) * out[painted] + OVERLAY_ALPHA * lut[label_map[painted]]
    return out.clip(0, 255).astype(np.uint8)


def _legend(home: Home, by: By, run_id: int | None, dataset: str | None) -> list[LegendEntry]:
    with home.db.session() as s:
        if by == "cluster":
            clusters = s.execute(text("SELECT DISTINCT cluster FROM segment_clusters WHERE run_id = :rid "
                                      "ORDER BY cluster"), {"rid": run_id}).scalars().all()
            names = dict(s.execute(select(ClusterName.cluster, ClusterName.label)
                                   .where(ClusterName.run_id == run_id)).all())
            return [LegendEntry(c + 2, "noise" if c == NOISE else names.get(c) or f"cluster {c}",
                                (128, 128, 128) if c == NOISE else color_for(c), c) for c in clusters]
        stmt = select(Segment.label).where(Segment.label.is_not(None)).distinct()
        if dataset is not None:
            stmt = stmt.where(Segment.image_id.in_(select(ImageDataset.image_id)
                                                   .where(ImageDataset.dataset == dataset)))
        labels = sorted(s.execute(stmt).scalars().all())
        return [LegendEntry(i + 1, lab, color_for(i)) for i, lab in enumerate(labels)]


def _scope(by: By, dataset: str | None) -> str:
    """FROM/WHERE of the segments in scope (parameters :rid and :dataset)."""
    sql = ("FROM segment_clusters sc JOIN segments sg ON sg.id = sc.segment_id " if by == "cluster"
           else "FROM segments sg ")
    where = ["sc.run_id = :rid" if by == "cluster" else "sg.label IS NOT NULL"]
    if dataset is not None:
        where.append("sg.image_id IN (SELECT image_id FROM image_datasets WHERE dataset = :dataset)")
    return sql + "WHERE " + " AND ".join(where)


def _segments(home: Home, by: By, run_id: int | None, dataset: str | None, values: dict[Any, int]):
    """(image id, [PaintSegment]) per image in scope, streamed in image id order."""
    key = "sc.cluster" if by == "cluster" else "sg.label"
    sql = (f"SELECT sg.image_id, sg.id, sg.area, sg.rle_counts, sg.height, sg.width, {key} "
           f"{_scope(by, dataset)} ORDER BY sg.image_id, sg.id")
    with home.db.session() as s:
        rows = s.execute(text(sql), {"rid": run_id, "dataset": dataset}, execution_options={"yield_per": 2000})
        for image_id, group in itertools.groupby(rows, key=lambda r: r[0]):
            yield int(image_id), [
                PaintSegment(sid, int(area), {"size": [int(h), int(w)], "counts": counts}, values[k])
                for _, sid, area, counts, h, w, k in group
            ]


def export_semantic_maps(
    home: Home, out_dir: Path | str, by: str = "cluster", run: str | None = None, dataset: str | None = None,
    progress: bool = True,
) -> SemanticExport:
    """Write a label map and an overlay per image, plus ``legend.json`` (see the module docstring)."""
    from tqdm import tqdm

    if by not in ("cluster", "label"):
        raise InputError(f"--by must be cluster or label, not {by!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    run_id = None
    if by == "cluster":
        run = run or current_run_name(home)
        if run is None:
            raise InputError("no current clustering run: pass --run RUN or run `samsearch cluster` first")
        with home.db.session() as s:
            run_id = find_run(s, run).id
    elif run is not None:
        raise InputError("--run applies to --by cluster only")
    entries = _legend(home, by, run_id, dataset)
    if not entries:
        what = f"segments in run {run!r}" if by == "cluster" else "labeled segments"
        raise InputError(f"nothing to export: no {what}" + (f" in dataset {dataset!r}" if dataset else ""))
    top = max(e.value for e in entries)
    if top > 65535:
        raise InputError(f"{top} classes do not fit a 16-bit label map")
    bit_depth = 8 if top <= 255 else 16
    values = {(e.cluster if by == "cluster" else e.name): e.value for e in entries}
    colors = {e.value: e.color for e in entries}
    with home.db.session() as s:
        images = dict(s.execute(select(Image.id, Image.path)).all())
        total = s.execute(text(f"SELECT COUNT(DISTINCT sg.image_id) {_scope(by, dataset)}"),
                          {"rid": run_id, "dataset": dataset}).scalar()

    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    listed: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for image_id, segs in tqdm(_segments(home, by, run_id, dataset, values), total=total, desc="semantic maps",
                               unit="img", disable=not progress):
        path = images[image_id]
        h, w = segs[0].rle["size"]
        label_map = paint_label_map(h, w, segs)
        stem = f"{image_id}_{Path(path).stem}"
        arr = label_map.astype(np.uint8) if bit_depth == 8 else label_map
        PILImage.fromarray(arr).save(out / "labels" / f"{stem}.png")
        entry: dict[str, Any] = {"image_id": image_id, "path": path, "label_map": f"labels/{stem}.png",
                                 "overlay": None, "values": sorted(int(v) for v in np.unique(label_map))}
        try:
            rgb = load_image(path).rgb
            if rgb.shape[:2] != label_map.shape:
                raise ImageLoadError(path, f"is {rgb.shape[1]}x{rgb.shape[0]}, its segments {w}x{h}")
            PILImage.fromarray(overlay(rgb, label_map, colors)).save(out / "overlays" / f"{stem}.png")
            entry["overlay"] = f"overlays/{stem}.png"
        except ImageLoadError as exc:
            failures.append({"path": path, "reason": exc.reason})
        listed.append(entry)
    legend = {
        "by": by, "run": run, "dataset": dataset, "bit_depth": bit_depth,
        "background": BACKGROUND,
        "rule": "segments painted largest first; a pixel takes the value of the smallest segment covering it",
        "values": [{"value": BACKGROUND, "name": "background", "color": [0, 0, 0]}]
        + [{"value": e.value, "name": e.name, "color": list(e.color),
            **({"cluster": e.cluster} if by == "cluster" else {})} for e in entries],
        "images": listed,
    }
    legend_path = out / "legend.json"
    tmp = legend_path.with_name("legend.json.tmp")
    tmp.write_text(json.dumps(legend, indent=1))
    tmp.replace(legend_path)
    return SemanticExport(str(out), by, run, len(listed), len(listed) - len(failures), bit_depth,
                          str(legend_path), failures)

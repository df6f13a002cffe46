"""Export stored segments as a COCO instance-segmentation file (pycocotools, CVAT, Label Studio).

One ``images`` entry per finished image of the selection (``file_name`` is the stored path, or relative
to ``relative_to``), one category per label (ids from 1 in name order; segments without a label go to
the category ``unlabeled``), and one annotation per segment:

``{"id", "image_id", "category_id", "segmentation": compressed RLE {"size": [h, w], "counts": str},
"area", "bbox": [x, y, w, h], "iscrowd": 0, "score", "segment_id", "source_annotation_id",
"attributes": {"label_source", "bank", "source", "predicted_iou"}}``

``score`` is the label score (cosine similarity to the bank centroid), 1.0 for manual labels and 0.0 for
unlabeled segments, so the file also loads as detection results (``COCO.loadRes``). Segments ingested
from an annotation file (``--prompts boxes|masks``) carry that file's annotation id in
``source_annotation_id`` (null otherwise). The file is written to a temporary name and renamed when
complete, so a failed export never leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, literal, select

from samsearch.bank.store import UNKNOWN
from samsearch.db import Image, ImageStatus, Segment
from samsearch.db.memberships import has_dataset, in_dataset, known_datasets
from samsearch.errors import InputError
from samsearch.home import Home

UNLABELED = "unlabeled"


@dataclass
class ExportSummary:
    path: str
    images: int
    annotations: int
    categories: dict[str, int]  # name -> annotations

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _segment_filter(dataset: str | None, labeled_only: bool, min_score: float | None) -> list[Any]:
    conds: list[Any] = []
    if dataset is not None:
        conds.append(in_dataset(dataset))
    if labeled_only:
        conds += [Segment.label.is_not(None), Segment.label != UNKNOWN]
    if min_score is not None:
        # manual labels have no score and always pass; the threshold is on bank/cluster scores
        conds.append((Segment.label_source == "manual") | (Segment.label_score >= min_score))
    return conds


def export_coco(home: Home, out: Path | str, dataset: str | None = None, labeled_only: bool = False,
                min_score: float | None = None, relative_to: Path | str | None = None,
                progress: bool = True) -> ExportSummary:
    """Write the selected segments to ``out`` as COCO JSON (see the module docstring)."""
    from tqdm import tqdm

    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the path of the JSON file to write")
    if not out.parent.exists():
        raise InputError(f"{out.parent}: no such folder")
    base = Path(relative_to).resolve() if relative_to is not None else None
    seg_conds = _segment_filter(dataset, labeled_only, min_score)
    with home.db.session() as s:
        if dataset is not None and not has_dataset(s, dataset):
            known = known_datasets(s)
            raise InputError(f"no dataset {dataset!r} in this home (datasets: {', '.join(known) or 'none'})")
        labels = s.execute(
            # the literal is inlined: Postgres must see GROUP BY's expression equal to the SELECT's
            select(func.coalesce(Segment.label, literal(UNLABELED, literal_execute=True)), func.count())
            .join(Image, Image.id == Segment.image_id).where(*seg_conds)
            .group_by(func.coalesce(Segment.label, literal(UNLABELED, literal_execute=True)))
        ).all()
        image_conds = [Image.status == ImageStatus.done.value]
        if dataset is not None:
            image_conds.append(in_dataset(dataset))
        images = s.execute(select(Image.id, Image.path, Image.width, Image.height)
                           .where(*image_conds).order_by(Image.id)).all()
        total = sum(n for _, n in labels)
    category_id = {name: i + 1 for i, name in enumerate(sorted(name for name, _ in labels))}

    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write('{"info": {"description": "samsearch export"}, "licenses": [],\n"images": [\n')
            f.write(",\n".join(json.dumps({"id": i.id, "file_name": _file_name(i.path, base), "width": i.width,
                                           "height": i.height}) for i in images))
            f.write('\n],\n"categories": [\n')
            f.write(",\n".join(json.dumps({"id": cid, "name": name, "supercategory": "segment"})
                               for name, cid in category_id.items()))
            f.write('\n],\n"annotations": [\n')
            n = 0
            with home.db.session() as s, tqdm(total=total, desc="export", unit="seg", disable=not progress) as bar:
                rows = s.execute(
                    select(Segment).join(Image, and_(Image.id == Segment.image_id)).where(*seg_conds)
                    .order_by(Segment.image_id, Segment.settings_hash, Segment.segment_index)
                    .execution_options(yield_per=2000)
                ).scalars()
                for seg in rows:
                    f.write(",\n" if n else "")
                    n += 1
                    f.write(json.dumps(_annotation(n, seg, category_id)))
                    bar.update(1)
            f.write("\n]}\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportSummary(str(out), len(images), n, {name: int(c) for name, c in sorted(labels)})


def _file_name(path: str, base: Path | None) -> str:
    if base is None:
        return path
    try:
        return Path(path).resolve().relative_to(base).as_posix()
    except ValueError:
        return path


def _annotation(ann_id: int, seg: Segment, category_id: dict[str, int]) -> dict[str, Any]:
    label = seg.label or UNLABELED
    if seg.label is None:
        score = 0.0
    elif seg.label_score is None:
        score = 1.0  # a manual label
    else:
        score = float(seg.label_score)
    return {
        "id": ann_id,
        "image_id": seg.image_id,
        "category_id": category_id[label],
        "segmentation": {"size": [seg.height, seg.width], "counts": seg.rle_counts},
        "area": float(seg.area),
        "bbox": [seg.bbox_x, seg.bbox_y, seg.bbox_w, seg.bbox_h],
        "iscrowd": 0,
        "score": round(score, 6),
        "segment_id": seg.id,
        "source_annotation_id": seg.annotation_id,
        "attributes": {"label_source": seg.label_source, "bank": seg.label_bank, "source": seg.source,
                       "predicted_iou": seg.predicted_iou},
    }

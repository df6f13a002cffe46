"""Evaluate stored segments and their labels against COCO ground truth.

Stored images are matched to the ground truth's images by file path (the COCO ``file_name`` as a suffix
of the stored path, else a unique basename, as ingest matches them). Within an image, segments and
ground-truth objects (crowd regions left out; ``source`` restricts segments to one way of making them)
are matched one to one, greedily by mask IoU (highest
first), when the IoU is at least ``iou`` (0.5). A ground-truth object without a segmentation counts with
its box as its mask.

Reported (``as_dict`` is what ``--json`` prints):

* ``coverage``: matched ground-truth objects / all ground-truth objects of the matched images;
* ``accuracy``: matched pairs whose segment label equals the object's category / matched pairs
  (a segment without a label counts as ``unlabeled``, one below the thresholds as ``unknown``: both wrong);
* per class: ``precision`` = correct / matched segments labeled with the class, ``recall`` = correct /
  matched objects of the class, plus ``coverage`` of the class's objects;
* the confusion matrix over matched pairs (rows: ground truth, columns: predicted label);
* COCO segmentation mAP (pycocotools ``COCOeval``, ``segm``, over the matched images, each segment a
  detection of its label's category scored by its label score) when the segments came from SAM
  (``auto`` or ``box`` prompts). Segments that *are* the ground-truth masks (``--prompts masks``) would
  make mAP a restatement of the accuracy, so it is left out with the reason.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from sqlalchemy import select

from samsearch.data.coco import AnnotationError, load_coco
from samsearch.data.masks import annotation_to_mask, box_xywh_to_xyxy, mask_to_rle
from samsearch.db import Image, ImageStatus, Segment
from samsearch.db.memberships import in_dataset
from samsearch.errors import InputError
from samsearch.home import Home
from samsearch.reports.coco_export import UNLABELED


@dataclass
class EvalReport:
    annotations: str
    dataset: str | None
    iou_threshold: float
    source: str | None = None
    images_matched: int = 0
    gt_images_missing: int = 0  # ground-truth images with no stored image
    gt_objects: int = 0
    segments: int = 0
    matched: int = 0
    correct: int = 0
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    confusion: dict[str, Any] = field(default_factory=dict)
    segm_map: dict[str, Any] = field(default_factory=dict)
    gt_failed: list[str] = field(default_factory=list)  # objects whose geometry could not be read

    @property
    def coverage(self) -> float:
        return self.matched / self.gt_objects if self.gt_objects else 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.matched if self.matched else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["coverage"] = round(self.coverage, 4)
        d["accuracy"] = round(self.accuracy, 4)
        return d


def evaluate(home: Home, annotations: Path | str, dataset: str | None = None, iou: float = 0.5,
             source: str | None = None) -> EvalReport:
    """Match the home's segments to the ground truth in ``annotations`` (COCO) and score them. ``source``
    (auto, box or mask) keeps only segments made that way, and only images that have such segments: a
    home can hold several segmentations of the same images."""
    if not 0.0 < iou <= 1.0:
        raise InputError(f"--iou must be in (0, 1], got {iou}")
    if source not in (None, "auto", "box", "mask"):
        raise InputError(f"--source must be auto, box or mask, not {source!r}")
    try:
        gt = load_coco(annotations)
    except AnnotationError as exc:
        raise InputError(str(exc)) from exc
    report = EvalReport(str(annotations), dataset, iou, source)

    with home.db.session() as s:
        conds = [Image.status == ImageStatus.done.value]
        if dataset is not None:
            conds.append(in_dataset(dataset))
        query = select(Image.id, Image.path).where(*conds).order_by(Image.id)
        if source is not None:
            query = query.where(Image.id.in_(select(Segment.image_id).where(Segment.source == source)))
        stored = s.execute(query).all()
    pairs: dict[int, int] = {}  # gt image id -> stored image id
    for image_id, path in stored:
        entry = gt.find_image(path)
        if entry is not None and entry.id not in pairs:
            pairs[entry.id] = image_id
    if not pairs:
        where = f"dataset {dataset!r}" if dataset else "this home"
        made = f" with {source} segments" if source else ""
        raise InputError(f"{annotations}: none of its {len(gt.images)} images is stored in {where}{made} "
                         "(images are matched by file name)")
    report.images_matched = len(pairs)
    report.gt_images_missing = len(gt.images) - len(pairs)

    gt_names = [gt.categories[c].name for c in sorted(gt.categories)]
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    class_gt: Counter[str] = Counter()
    class_matched: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    detections: list[dict[str, Any]] = []
    sources: Counter[str] = Counter()
    name_to_cat = {c.name: c.id for c in gt.categories.values()}

    for gt_id, image_id in sorted(pairs.items()):
        entry = gt.images[gt_id]
        with home.db.session() as s:
            query = select(Segment).where(Segment.image_id == image_id)
            if source is not None:
                query = query.where(Segment.source == source)
            segs = s.execute(query.order_by(Segment.settings_hash, Segment.segment_index)).scalars().all()
        objects, gt_rles = [], []
        for ann in entry.annotations:
            if ann.iscrowd:
                continue
            try:
                mask = _gt_mask(ann, entry.height, entry.width)
            except ValueError as exc:
                report.gt_failed.append(f"annotation {ann.id}: {' '.join(str(exc).split())}")
                continue
            objects.append(ann)
            gt_rles.append(_native(mask_to_rle(mask)))
        report.gt_objects += len(objects)
        report.segments += len(segs)
        class_gt.update(a.category for a in objects)
        segs = [sg for sg in segs if (sg.height, sg.width) == (entry.height, entry.width)]
        seg_rles = [_native(sg.rle) for sg in segs]
        sources.update(sg.source for sg in segs)
        for sg in segs:
            if sg.label in name_to_cat:
                detections.append({"image_id": gt_id, "category_id": name_to_cat[sg.label],
                                   "segmentation": sg.rle,
                                   "score": 1.0 if sg.label_score is None else float(sg.label_score)})
        if not segs or not objects:
            continue
        ious = np.asarray(mask_utils.iou(seg_rles, gt_rles, [0] * len(gt_rles)), dtype=np.float64)
        for i, j in _greedy_match(ious, iou):
            want, got = objects[j].category, segs[i].label or UNLABELED
            report.matched += 1
            report.correct += int(want == got)
            class_matched[want] += 1
            predicted[got] += 1
            confusion[want][got] += 1

    for name in gt_names:
        tp = confusion[name][name]
        report.per_class[name] = {
            "gt": class_gt[name], "matched": class_matched[name], "predicted": predicted[name], "correct": tp,
            "precision": round(tp / predicted[name], 4) if predicted[name] else None,
            "recall": round(tp / class_matched[name], 4) if class_matched[name] else None,
            "coverage": round(class_matched[name] / class_gt[name], 4) if class_gt[name] else None,
        }
    columns = gt_names + sorted({p for p in predicted if p not in gt_names})
    report.confusion = {"rows": gt_names, "columns": columns,
                        "matrix": [[confusion[r][c] for c in columns] for r in gt_names]}
    report.segm_map = _segm_map(annotations, sorted(pairs), detections, sources)
    return report


def _gt_mask(ann: Any, height: int, width: int) -> np.ndarray:
    if ann.segmentation is not None:
        return annotation_to_mask(ann.segmentation, height, width)
    x1, y1, x2, y2 = box_xywh_to_xyxy(ann.bbox_xywh)
    mask = np.zeros((height, width), dtype=bool)
    mask[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
    return mask


def _native(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def _greedy_match(ious: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (segment, object) pairs, highest IoU first, each at least ``threshold``."""
    order = np.argsort(-ious, axis=None, kind="stable")
    used_s, used_g, out = set(), set(), []
    for flat in order:
        i, j = divmod(int(flat), ious.shape[1])
        if ious[i, j] < threshold:
            break
        if i in used_s or j in used_g:
            continue
        used_s.add(i)
        used_g.add(j)
        out.append((i, j))
    return out


def _segm_map(annotations: Path | str, image_ids: list[int], detections: list[dict[str, Any]],
              sources: Counter[str]) -> dict[str, Any]:
    if not sources:
        return {"map": None, "reason": "no segments in the matched images"}
    if set(sources) == {"mask"}:
        return {"map": None, "reason": "the segments are the ground-truth masks (--prompts masks): mAP would "
                                       "only restate the classification accuracy"}
    if not detections:
        return {"map": None, "reason": "no segment carries a label among the ground truth's categories"}
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
        coco_gt = COCO(str(annotations))
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": round(float(ev.stats[0]), 4), "map50": round(float(ev.stats[1]), 4),
            "map75": round(float(ev.stats[2]), 4), "detections": len(detections),
            "sources": dict(sources)}


"""The whole chain on a small synthetic corpus, offline, in a couple of minutes on a laptop CPU.

1. draw a labeled synthetic train/test split (:mod:`samsearch.data.synthetic`);
2. build a memory bank from the train half (``tiny-random``, the annotation masks as given);
3. ingest the test half into the demo home and label it with the bank;
4. evaluate the labels against the test half's ground truth;
5. write a search gallery (for one test segment of each class, its nearest stored segments) and a COCO
   export of the labels.

Everything lands in ``out`` (``data/``, ``home/``, ``gallery/index.html``, ``labels.coco.json``). Running it
again reuses what is there (ingest skips stored images; the bank is rebuilt).

The gallery's neighbour search goes through :data:`GALLERY_NEIGHBOURS`, a plain vector-store query over
the segments collection. It is the hook for the project's search module: point it at that function once
search exists, and the gallery shows what ``samsearch search`` returns.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from samsearch.data.masks import rle_to_mask
from samsearch.db import Image, Segment
from samsearch.home import SEGMENTS, Home

DATASET = "demo"
BANK = "demo"


def similar_segments(home: Home, segment_id: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` stored segments most similar to ``segment_id`` (itself excluded), with cosine scores."""
    rec = home.vectors.retrieve(SEGMENTS, [segment_id], with_vectors=True)
    if not rec or rec[0].vector is None:
        return []
    hits = home.vectors.search(SEGMENTS, rec[0].vector, k=k + 1)
    return [(h.id, h.score) for h in hits if h.id != segment_id][:k]


# Hook: (home, segment id, k) -> [(segment id, score)]. Swap in the search module's query once it exists.
GALLERY_NEIGHBOURS: Callable[[Home, str, int], list[tuple[str, float]]] = similar_segments


@dataclass
class DemoSummary:
    out: str
    train_images: int
    test_images: int
    bank: dict[str, Any]
    labeled: dict[str, int]
    evaluation: dict[str, Any]
    gallery: str
    export: str
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_demo(out: Path | str, n_train: int = 16, n_test: int = 16, seed: int = 0, neighbours: int = 5,
             progress: bool = True) -> DemoSummary:
    from samsearch.bank.build import BankBuildOptions, build_bank
    from samsearch.bank.classify import LabelOptions, label_segments
    from samsearch.data.datasets import read_dataset
    from samsearch.data.synthetic import make_splits
    from samsearch.ingest.ingestor import ingest
    from samsearch.ingest.options import IngestOptions
    from samsearch.reports.coco_export import export_coco
    from samsearch.reports.evaluate import evaluate
    from samsearch.sam.models import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stages: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        stages[name] = round(now - t0, 2)
        return now

    t = time.perf_counter()
    splits = make_splits(out / "data", n_train, n_test, seed=seed)
    model = load_model("tiny-random", device="cpu", progress=False)
    t = lap("data+model", t)
    with Home(out / "home") as home:
        train = read_dataset(splits["train"].annotations_path, splits["train"].root, "coco")
        built = build_bank(home, model, train, BankBuildOptions(name=BANK, prompts="masks", replace=True),
                           progress=progress)
        t = lap("bank", t)
        test = splits["test"]
        ingest(home, [test.root], model, IngestOptions(dataset=DATASET, prompts="masks",
                                                        annotations=test.annotations_path), progress=progress)
        t = lap("ingest", t)
        labeled = label_segments(home, LabelOptions(bank=BANK, dataset=DATASET, relabel=True), progress=False)
        t = lap("label", t)
        report = evaluate(home, test.annotations_path, dataset=DATASET)
        t = lap("eval", t)
        gallery = write_gallery(home, out / "gallery", neighbours)
        export = export_coco(home, out / "labels.coco.json", dataset=DATASET, progress=False)
        lap("gallery+export", t)
    return DemoSummary(str(out), len(splits["train"].images), len(test.images), built.bank.as_dict(),
                       labeled.counts, report.as_dict(), str(gallery), export.path,
                       round(time.perf_counter() - started, 1), stages)


def write_gallery(home: Home, folder: Path, k: int = 5) -> Path:
    """``folder/index.html``: for the first test segment of each label, its query crop and its ``k``
    nearest stored segments (crops with label and similarity). Returns the HTML file."""
    folder.mkdir(parents=True, exist_ok=True)
    with home.db.session() as s:
        rows = s.execute(select(Segment, Image.path).join(Image, Image.id == Segment.image_id)
                         .where(Image.dataset == DATASET).order_by(Segment.image_id, Segment.segment_index)).all()
    by_id = {seg.id: (seg, path) for seg, path in rows}
    queries: dict[str, str] = {}
    for seg, _ in rows:
        queries.setdefault(seg.label or "unlabeled", seg.id)
    parts = ["<!doctype html><meta charset='utf-8'><title>samsearch demo gallery</title>",
             "<style>body{font-family:sans-serif} td{text-align:center;font-size:12px;padding:4px}"
             " img{height:96px;border:1px solid #ccc}</style>",
             "<h1>samsearch demo: nearest segments</h1>",
             "<p>Left: a test segment (its label from the bank). Right: the stored segments nearest to it "
             "(cosine similarity of the mask-pooled SAM embeddings), with their labels.</p><table>"]
    for label, qid in sorted(queries.items()):
        cells = [_cell(folder, *by_id[qid], f"query: {label}")]
        for nid, score in GALLERY_NEIGHBOURS(home, qid, k):
            if nid in by_id:
                seg, path = by_id[nid]
                cells.append(_cell(folder, seg, path, f"{seg.label or 'unlabeled'} · {score:.2f}"))
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    page = folder / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _cell(folder: Path, seg: Segment, path: str, caption: str) -> str:
    name = f"{seg.id}.png"
    _crop(seg, Path(path)).save(folder / name)
    return f"<td><img src='{name}'><br>{html.escape(caption)}</td>"


def _crop(seg: Segment, path: Path, pad: int = 6) -> PILImage.Image:
    """The segment's box (padded) from its image, with everything outside the mask dimmed."""
    from samsearch.data.imageio import load_image

    rgb = load_image(path).rgb.astype(np.float32)
    mask = rle_to_mask(seg.rle)
    rgb[~mask] = rgb[~mask] * 0.35 + 255 * 0.65
    x0, y0 = max(int(seg.bbox_x) - pad, 0), max(int(seg.bbox_y) - pad, 0)
    x1 = min(int(seg.bbox_x + seg.bbox_w) + pad, rgb.shape[1])
    y1 = min(int(seg.bbox_y + seg.bbox_h) + pad, rgb.shape[0])
    return PILImage.fromarray(rgb[y0:y1, x0:x1].clip(0, 255).astype(np.uint8))

"""The whole chain on a small synthetic corpus, offline, in a couple of minutes on a laptop CPU.

1. draw a labeled synthetic train/test split (:mod:`samsearch.data.synthetic`);
2. build a memory bank from the train half (``tiny-random``, the annotation masks as given);
3. ingest the test half into the demo home and label it with the bank;
4. evaluate the labels against the test half's ground truth;
5. write a search gallery (for one test segment of each class, its nearest stored segments) and a COCO
   export of the labels.

Everything lands in ``out`` (``data/``, ``home/``, ``gallery/index.html``, ``labels.coco.json``). Running it
again reuses what is there (ingest skips stored images; the bank is rebuilt).

The gallery is what ``samsearch search --segment ID --gallery`` shows, one row per query: the demo calls
:func:`samsearch.search.query.search_by_segment` and :func:`samsearch.reports.gallery.write_gallery` like any
other caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from samsearch.db import Image, Segment
from samsearch.home import Home

DATASET = "demo"
BANK = "demo"


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
    """``folder/index.html``: for the first test segment of each label, the segment and its ``k`` nearest
    stored segments (what ``samsearch search --segment`` returns), drawn by the one gallery writer."""
    from samsearch.reports.gallery import GalleryItem, GallerySection
    from samsearch.reports.gallery import write_gallery as write_page
    from samsearch.search.query import search_by_segment
    from samsearch.search.segments import fetch_segments

    with home.db.session() as s:
        rows = s.execute(select(Segment.id, Segment.label).join(Image, Image.id == Segment.image_id)
                         .where(Image.dataset == DATASET).order_by(Segment.image_id, Segment.segment_index)).all()
    queries: dict[str, str] = {}
    for sid, label in rows:
        queries.setdefault(label or "unlabeled", sid)
    infos = fetch_segments(home, list(queries.values()))
    sections = []
    for label, qid in sorted(queries.items()):
        q = infos[qid]
        items = [GalleryItem(q.image_path, q.rle, [f"query: {label}", Path(q.image_path).name], title="query")]
        for hit in search_by_segment(home, qid, k=k):
            items.append(GalleryItem(hit.image_path, hit.rle, [f"{hit.label or 'unlabeled'} · {hit.score:.2f}",
                                                               Path(hit.image_path).name]))
        sections.append(GallerySection(f"{label}: a test segment and its {k} nearest stored segments", items))
    return write_page(folder / "index.html", "samsearch demo: nearest segments", sections)

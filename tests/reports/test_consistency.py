"""Randomized consistency: ingests under several dataset names and prompt modes, re-runs, enqueues, manual
labels, bank labeling, clustering runs (new, current, deleted), in a random order on both backends. After
every step SQL and the vector payloads agree on every field a filter reads (doctor's own comparison, in
full), and every segment has exactly one vector."""

from __future__ import annotations

import os
import random
from collections import defaultdict

import numpy as np
import pytest
from sqlalchemy import select

from samsearch.bank.classify import LabelOptions, label_segments, set_manual_labels
from samsearch.bank.store import create_bank
from samsearch.cluster.job import ClusterOptions, delete_run, run_clustering, use_run
from samsearch.db import ClusterRun, Segment
from samsearch.errors import InputError, NotFoundError
from samsearch.home import SEGMENTS
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.jobs.work_queue import enqueue
from samsearch.reports.doctor import compare_payloads, diagnose

DATASETS = ("a", "b", "c")
STEPS = int(os.environ.get("SAMSEARCH_CONSISTENCY_STEPS", "14"))


def _segment_ids(home) -> list[str]:
    with home.db.session() as s:
        return sorted(s.scalars(select(Segment.id)))


def _assert_consistent(home, step: str) -> None:
    checked, found = compare_payloads(home, full=True)
    assert found == [], f"after {step}: {found[:3]}"
    ids = _segment_ids(home)
    assert checked == len(ids), f"after {step}: {checked} of {len(ids)} segments have a vector"
    report = diagnose(home)
    assert (report.missing_vectors, report.orphan_vectors, report.payload_mismatches) == (0, 0, 0), step


@pytest.mark.parametrize("seed", [int(os.environ.get("SAMSEARCH_CONSISTENCY_SEED", "12"))])
def test_random_operations_keep_sql_and_payloads_in_agreement(home, tiny_model, shapes, seed):
    rng = random.Random(seed)
    files = [im.path for im in shapes.images[:5]]
    done: list[str] = []

    def do_ingest() -> str:
        chosen = rng.sample(files, rng.randint(1, 3))
        dataset, prompts = rng.choice(DATASETS), rng.choice(("masks", "boxes"))
        ingest(home, chosen, tiny_model, IngestOptions(dataset=dataset, prompts=prompts,
                                                       annotations=shapes.annotations_path), progress=False)
        return f"ingest {len(chosen)} files --dataset {dataset} --prompts {prompts}"

    def do_rerun() -> str:  # the same files with settings used before: nothing to redo but a new name
        ingest(home, files[:2], tiny_model, IngestOptions(dataset=rng.choice(DATASETS), prompts="masks",
                                                          annotations=shapes.annotations_path), progress=False)
        return "re-run of masks ingest"

    def do_enqueue() -> str:
        dataset = rng.choice(DATASETS)
        enqueue(home, rng.sample(files, 2), "tiny-random",
                IngestOptions(dataset=dataset, prompts="masks", annotations=shapes.annotations_path))
        return f"enqueue --dataset {dataset}"

    def do_manual() -> str:
        ids = _segment_ids(home)
        if not ids:
            return "manual (nothing stored)"
        set_manual_labels(home, rng.sample(ids, min(len(ids), rng.randint(1, 4))), rng.choice(("x", "y")))
        return "manual labels"

    def do_label() -> str:
        recs = [r for b in home.vectors.scroll(SEGMENTS, with_vectors=True) for r in b]
        with home.db.session() as s:
            cat = dict(s.execute(select(Segment.id, Segment.annotation_category)).all())
        by_class: dict[str, list[np.ndarray]] = defaultdict(list)
        for r in recs:
            by_class[cat.get(r.id) or "other"].append(r.vector)
        if not by_class:
            return "label (nothing stored)"
        create_bank(home, "bank", {k: np.stack(v) for k, v in by_class.items()}, per_class=2, replace=True)
        dataset = rng.choice((None, *DATASETS))
        relabel = rng.random() < 0.5
        label_segments(home, LabelOptions(bank="bank", dataset=dataset, relabel=relabel), progress=False)
        return f"label --dataset {dataset} relabel={relabel}"

    def do_cluster() -> str:
        name, dataset = rng.choice(("k1", "k2")), rng.choice((None, *DATASETS))
        try:
            run_clustering(home, ClusterOptions(algorithm="kmeans", n_clusters=2, dataset=dataset, name=name),
                           progress=False)
        except InputError as exc:  # too few segments in the selection: a clean refusal changes nothing
            return f"cluster {name} --dataset {dataset} refused: {exc}"
        return f"cluster {name} --dataset {dataset}"

    def do_switch() -> str:
        with home.db.session() as s:
            runs = list(s.scalars(select(ClusterRun.name)))
        if not runs:
            return "switch (no runs)"
        name = rng.choice(runs)
        try:
            if rng.random() < 0.5:
                use_run(home, name, progress=False)
                return f"cluster use {name}"
            delete_run(home, name)
            return f"cluster delete {name}"
        except NotFoundError:
            return f"switch {name}: gone"

    steps = [do_ingest, do_ingest, do_rerun, do_enqueue, do_manual, do_label, do_cluster, do_switch]
    log = [do_ingest()]
    _assert_consistent(home, log[-1])
    for _ in range(STEPS):
        log.append(rng.choice(steps)())
        _assert_consistent(home, " → ".join(log))
    done.extend(log)
    print("\n" + " → ".join(log))
    assert any(s.startswith("ingest") for s in done)

"""samsearch: segment search and bulk labeling on Segment Anything (SAM) embeddings.

The library is the product; the ``samsearch`` command is a thin layer over it. The entry points a library
user needs are importable from here (loaded on first use, so ``import samsearch`` stays cheap)::

    from samsearch import Home, IngestOptions, load_model, search_by_segment
    from samsearch.ingest import ingest  # ``samsearch.ingest`` is the package; the function lives in it

    with Home("~/my-home") as home:
        ingest(home, ["photos/"], load_model("vit_b"), IngestOptions(dataset="photos"))

Where things live: ``data`` (files and formats) ← ``sam`` (the model: masks and embeddings) ← ``db``,
``vectors``, ``home`` (the stores) ← ``ingest`` ← ``jobs``, ``cluster`` ← ``bank`` ← ``search`` ←
``reports`` ← ``cli``; each package's docstring says what it owns.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Home": "samsearch.home",
    "load_model": "samsearch.sam.models",
    "IngestOptions": "samsearch.ingest.options",
    "read_dataset": "samsearch.data.datasets",
    "build_bank": "samsearch.bank.build",
    "BankBuildOptions": "samsearch.bank.build",
    "create_bank": "samsearch.bank.store",
    "rebuild_bank": "samsearch.bank.store",
    "label_segments": "samsearch.bank.classify",
    "LabelOptions": "samsearch.bank.classify",
    "set_manual_labels": "samsearch.bank.classify",
    "SearchFilters": "samsearch.search.query",
    "search_by_segment": "samsearch.search.query",
    "search_by_image": "samsearch.search.query",
    "search_by_vector": "samsearch.search.query",
    "search_by_label": "samsearch.search.query",
    "search_by_examples": "samsearch.search.query",
    "search_text": "samsearch.search.query",
    "run_clustering": "samsearch.cluster.job",
    "ClusterOptions": "samsearch.cluster.job",
    "name_cluster": "samsearch.cluster.naming",
    "enqueue": "samsearch.jobs.work_queue",
    "run_worker": "samsearch.jobs.worker",
    "WorkerOptions": "samsearch.jobs.worker",
    "diagnose": "samsearch.reports.doctor",
    "export_coco": "samsearch.reports.coco_export",
    "evaluate": "samsearch.reports.evaluate",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'samsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

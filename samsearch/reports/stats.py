"""Counts over a home: images per dataset and status, segments per dataset, model and label, failures."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from samsearch.db import Image, ImageDataset, Run, Segment
from samsearch.home import SEGMENTS, Home, space_collection
from samsearch.vectors.server import safe_url


def collect_stats(home: Home, max_failures: int = 50) -> dict[str, Any]:
    with home.db.session() as s:
        by_dataset: dict[str, dict[str, Any]] = {}
        # An image counts in each dataset it belongs to (image_datasets), and so do its segments.
        for dataset, status, n in s.execute(
            select(ImageDataset.dataset, Image.status, func.count()).join(Image, Image.id == ImageDataset.image_id)
            .group_by(ImageDataset.dataset, Image.status)
        ):
            entry = by_dataset.setdefault(dataset, {"images": 0, "segments": 0, "by_status": {}})
            entry["images"] += n
            entry["by_status"][status] = n
        for dataset, n in s.execute(
            select(ImageDataset.dataset, func.count(Segment.id))
            .join(Segment, Segment.image_id == ImageDataset.image_id).group_by(ImageDataset.dataset)
        ):
            by_dataset.setdefault(dataset, {"images": 0, "segments": 0, "by_status": {}})["segments"] = n
        by_model = {k: n for k, n in s.execute(select(Segment.model_key, func.count()).group_by(Segment.model_key))}
        failures = [
            {"path": p, "error": e}
            for p, e in s.execute(
                select(Image.path, Image.error).where(Image.status == "failed").order_by(Image.path)
                .limit(max_failures)
            )
        ]
        n_failed = s.scalar(select(func.count()).select_from(Image).where(Image.status == "failed"))
        n_images = s.scalar(select(func.count()).select_from(Image))
        n_segments = s.scalar(select(func.count()).select_from(Segment))
        n_runs = s.scalar(select(func.count()).select_from(Run))
    space = home.embedding_space()
    vectors = home.vectors.count(SEGMENTS) if home.vectors.has_collection(SEGMENTS) else 0
    spaces = {}
    for name, sp in home.spaces().items():
        coll = space_collection(name)
        spaces[name] = {**sp.__dict__, "collection": coll,
                        "vectors": home.vectors.count(coll) if home.vectors.has_collection(coll) else 0}
    return {
        "home": str(home.root),
        "database": home.db.safe_url,
        "vector_store": safe_url(home.qdrant_url) if home.qdrant_url else "qdrant-edge",
        "embedding_space": space.__dict__ if space else None,
        "images": n_images,
        "segments": n_segments,
        "vectors": vectors,
        "spaces": spaces,  # name -> identity, collection and vector count of every space
        "runs": n_runs,
        "failed_images": n_failed,
        "datasets": dict(sorted(by_dataset.items())),
        "models": by_model,
        "failures": failures,
        "labels": label_counts(home),  # segments per label and label source; label None = unlabeled
    }


def label_counts(home: Home) -> list[dict[str, Any]]:
    """Segments per label (facets), most frequent first; ``label`` None counts the unlabeled ones.
    ``by_source`` splits each count by who set it (manual, bank, cluster)."""
    with home.db.session() as s:
        rows = s.execute(select(Segment.label, Segment.label_source, func.count())
                         .group_by(Segment.label, Segment.label_source)).all()
    out: dict[str | None, dict[str, Any]] = {}
    for label, source, n in rows:
        entry = out.setdefault(label, {"label": label, "count": 0, "by_source": {}})
        entry["count"] += int(n)
        if source is not None:
            entry["by_source"][source] = entry["by_source"].get(source, 0) + int(n)
    return sorted(out.values(), key=lambda e: (-e["count"], e["label"] is None, e["label"] or ""))

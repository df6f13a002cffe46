"""Stored segments as typed objects: metadata from SQL (one query for any number of ids), the mask
decodable from its COCO RLE, and a picture of one segment over its image (``samsearch show``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import bindparam, select

from samsearch.data.masks import rle_to_mask
from samsearch.db import Image, ImageDataset, Segment
from samsearch.db.memberships import in_dataset
from samsearch.db.segment_ids import resolve_segment_id
from samsearch.errors import InputError, NotFoundError
from samsearch.home import Home

# Columns read for a segment: plain columns (no ORM entities), so fetching a page of hits stays cheap.
_COLUMNS = (
    Segment.id, Segment.image_id, Image.path, Image.dataset, Segment.bbox_x, Segment.bbox_y, Segment.bbox_w,
    Segment.bbox_h, Segment.area, Segment.height, Segment.width, Segment.rle_counts, Segment.source,
    Segment.annotation_category, Segment.label, Segment.label_score, Segment.cluster,
)
# Built once: SQLAlchemy caches its compiled form, and the id list is bound as an expanding IN parameter.
_BY_IDS = (select(*_COLUMNS).join(Image, Image.id == Segment.image_id)
           .where(Segment.id.in_(bindparam("ids", expanding=True))))
_DATASETS = (select(ImageDataset.image_id, ImageDataset.dataset)
             .where(ImageDataset.image_id.in_(bindparam("images", expanding=True))))


@dataclass(frozen=True)
class SegmentInfo:
    """One stored segment. ``bbox_xywh`` is COCO XYWH in original-image pixels."""

    segment_id: str
    image_id: int
    image_path: str
    dataset: str  # the image's first dataset (a search filtered by dataset reports the one it matched)
    bbox_xywh: tuple[float, float, float, float]
    area: int
    height: int
    width: int
    rle: dict[str, Any]  # COCO compressed RLE {"size": [h, w], "counts": str}
    source: str  # auto | box | mask
    annotation_category: str | None
    label: str | None
    label_score: float | None
    cluster: int | None
    datasets: tuple[str, ...] = ()  # every dataset the image belongs to, sorted

    def mask(self) -> np.ndarray:
        """The mask as an H×W ``bool`` array over the original image."""
        return rle_to_mask(self.rle)


def _info(row: Any, datasets: dict[int, list[str]]) -> SegmentInfo:
    return SegmentInfo(
        segment_id=row.id, image_id=row.image_id, image_path=row.path, dataset=row.dataset,
        bbox_xywh=(row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h), area=row.area, height=row.height,
        width=row.width, rle={"size": [row.height, row.width], "counts": row.rle_counts}, source=row.source,
        annotation_category=row.annotation_category, label=row.label, label_score=row.label_score,
        cluster=row.cluster, datasets=tuple(sorted(datasets.get(row.image_id, [row.dataset]))),
    )


def fetch_segments(home: Home, ids: Sequence[str]) -> dict[str, SegmentInfo]:
    """The stored segments among ``ids``, keyed by id, in one SQL query (unknown ids are absent)."""
    if not ids:
        return {}
    # A plain connection, not an ORM session: this sits on the search path, where every 0.1 ms shows.
    with home.db.engine.connect() as conn:
        rows = conn.execute(_BY_IDS, {"ids": list(ids)}).all()
        datasets = _datasets(conn, rows)  # one query for all the rows' images
        return {row.id: _info(row, datasets) for row in rows}


def _datasets(conn: Any, rows: Sequence[Any]) -> dict[int, list[str]]:
    """Image id -> its datasets, for the images of ``rows`` (one query)."""
    datasets: dict[int, list[str]] = {}
    if rows:
        for image_id, name in conn.execute(_DATASETS, {"images": sorted({r.image_id for r in rows})}):
            datasets.setdefault(image_id, []).append(name)
    return datasets


def get_segment(home: Home, segment_id: str) -> SegmentInfo:
    """One stored segment, by its id or a unique prefix of it (at least 4 hex digits)."""
    segment_id = resolve_segment_id(home.db, segment_id, f" in {home.root}")
    found = fetch_segments(home, [segment_id]).get(segment_id)
    if found is None:
        raise NotFoundError(f"no segment {segment_id!r} in {home.root}")
    return found


def list_segments(home: Home, limit: int = 100, offset: int = 0, dataset: str | None = None,
                  label: str | None = None, cluster: int | None = None, min_score: float | None = None,
                  max_score: float | None = None) -> list[SegmentInfo]:
    """One page of stored segments (ordered by image, then id), optionally only those of ``dataset``,
    carrying ``label``, in ``cluster``, or whose label score (the bank's cosine for the label it gave;
    a manual label has none) lies in ``[min_score, max_score]``: a reviewer pages through the doubtful
    labels first. Reads SQL only, so a page costs the same at any corpus size up to the offset scan."""
    if not 1 <= limit <= 1000:
        raise InputError(f"limit must be 1..1000, got {limit}")
    if offset < 0:
        raise InputError(f"offset must be >= 0, got {offset}")
    for name, bound in (("min_score", min_score), ("max_score", max_score)):
        if bound is not None and not -1.0 <= bound <= 1.0:
            raise InputError(f"{name} must be a cosine in -1..1, got {bound}")
    query = select(*_COLUMNS).join(Image, Image.id == Segment.image_id)
    if dataset is not None:
        query = query.where(in_dataset(dataset))  # membership: an image may belong to several
    if label is not None:
        query = query.where(Segment.label == label)
    if cluster is not None:
        query = query.where(Segment.cluster == cluster)
    if min_score is not None:
        query = query.where(Segment.label_score >= min_score)  # NULL (no score) never matches a bound
    if max_score is not None:
        query = query.where(Segment.label_score <= max_score)
    query = query.order_by(Segment.image_id, Segment.id).limit(limit).offset(offset)
    with home.db.engine.connect() as conn:
        rows = conn.execute(query).all()
        datasets = _datasets(conn, rows)
        return [_info(row, datasets) for row in rows]



@dataclass(frozen=True)
class ImageInfo:
    """A registered image and its stored segments (ordered by id)."""

    image_id: int
    image_path: str
    dataset: str
    width: int | None
    height: int | None
    status: str
    segments: list[SegmentInfo]


def get_image(home: Home, image_id: int) -> ImageInfo:
    """One image of the home and all its segments (two SQL queries)."""
    with home.db.engine.connect() as conn:
        row = conn.execute(select(Image.id, Image.path, Image.dataset, Image.width, Image.height, Image.status)
                           .where(Image.id == int(image_id))).first()
        if row is None:
            raise NotFoundError(f"no image {image_id} in {home.root}")
        segs = conn.execute(select(*_COLUMNS).join(Image, Image.id == Segment.image_id)
                            .where(Segment.image_id == int(image_id)).order_by(Segment.id)).all()
        datasets = _datasets(conn, segs)
        segments = [_info(r, datasets) for r in segs]
    return ImageInfo(row.id, row.path, row.dataset, row.width, row.height, str(row.status), segments)

"""Dataset membership in SQL (``image_datasets``): the condition every dataset filter uses, and the
datasets of given images. A dataset is a named set of images; one image may belong to several."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from samsearch.db.schema import Image, ImageDataset

CHUNK = 500  # ids per IN (...) list


def in_dataset(names: str | Sequence[str]) -> Any:
    """SQL condition on ``Image.id``: the image belongs to ``names`` (one name, or any of several)."""
    names = [names] if isinstance(names, str) else list(names)
    return Image.id.in_(select(ImageDataset.image_id).where(ImageDataset.dataset.in_(names)))


def datasets_of(session: Session, image_ids: Iterable[int]) -> dict[int, list[str]]:
    """Image id -> its datasets, sorted (the order the vector payloads hold them in); images without a
    membership are absent."""
    ids = sorted({int(i) for i in image_ids})
    out: dict[int, list[str]] = {}
    for start in range(0, len(ids), CHUNK):
        for image_id, name in session.execute(
                select(ImageDataset.image_id, ImageDataset.dataset)
                .where(ImageDataset.image_id.in_(ids[start:start + CHUNK]))):
            out.setdefault(image_id, []).append(name)
    return {i: sorted(names) for i, names in out.items()}


def known_datasets(session: Session) -> list[str]:
    return list(session.scalars(select(ImageDataset.dataset).distinct().order_by(ImageDataset.dataset)))


def has_dataset(session: Session, name: str) -> bool:
    return session.execute(select(ImageDataset.image_id).where(ImageDataset.dataset == name).limit(1)).first() \
        is not None

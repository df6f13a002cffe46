"""Image rows as units of work: claim one for this run (``running``), record a failure, and check that a
queue lease is still ours before anything is written for it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sqlalchemy import select

from samsearch.data.imageio import display_path
from samsearch.db import Image, ImageStatus, Ingestion
from samsearch.home import Home
from samsearch.ingest.containers import LeaseLost
from samsearch.ingest.membership import join_dataset


def unreadable_key(path: Path | str) -> str:
    """The ``content_hash`` of a file that could not be read: keyed by its path, so it is still listed."""
    return "path:" + hashlib.sha256(os.fsencode(path)).hexdigest()[:59]  # bytes: any file name works


def claim_image(home: Home, content_hash: str, path: Path, size: int, dataset: str, settings_hash: str,
                run_id: int) -> tuple[int, bool, bool]:
    """Create or fetch the image row and mark it running. Returns (image_id, already_done,
    needs_cleanup) — cleanup when an earlier attempt may have left vectors behind. An image already
    stored joins ``dataset`` (SQL and the payloads of its segments), done or not."""
    image_id, done, cleanup = _claim(home, content_hash, path, size, dataset, settings_hash, run_id)
    if cleanup or done:
        join_dataset(home, [image_id], dataset)
    return image_id, done, cleanup


def _claim(home: Home, content_hash: str, path: Path, size: int, dataset: str, settings_hash: str,
           run_id: int) -> tuple[int, bool, bool]:
    with home.db.session() as s:
        img = s.execute(select(Image).where(Image.content_hash == content_hash)).scalar()
        if img is None:
            img = Image(content_hash=content_hash, path=str(path), file_size=size, dataset=dataset,
                        status=ImageStatus.running.value, run_id=run_id, attempts=1)
            s.add(img)
            s.flush()
            return img.id, False, False
        done = s.execute(select(Ingestion.id).where(
            Ingestion.image_id == img.id, Ingestion.settings_hash == settings_hash)).first()
        if done is not None:
            return img.id, True, False
        img.status = ImageStatus.running.value
        img.attempts += 1
        img.run_id = run_id
        if not Path(img.path).exists():
            img.path = str(path)  # the file moved: remember where it is now
        return img.id, False, True


def mark_failed(home: Home, image_id: int | None, path: Path, content_hash: str | None, size: int | None,
                reason: str, dataset: str, run_id: int, owner: str | None = None) -> None:
    """Record ``reason`` on the image (created if unknown); a done image keeps its status. With a queue
    ``owner``, LeaseLost (nothing written) unless its lease is still held. A file name that is not valid
    UTF-8 is stored as :func:`display_path` shows it."""
    shown = display_path(path)
    with home.db.session() as s:
        img = s.get(Image, image_id) if image_id is not None else None
        existed = img is not None
        if owner is not None:
            check_lease(img, owner)
            img.lease_owner = img.lease_expires_at = None
        if img is None:
            key = content_hash or unreadable_key(path)
            img = s.execute(select(Image).where(Image.content_hash == key)).scalar()
            existed = img is not None
            if img is None:
                img = Image(content_hash=key, path=shown, file_size=size, dataset=dataset, attempts=1)
                s.add(img)
        if img.status != ImageStatus.done.value:
            img.status = ImageStatus.failed.value
        img.error = reason
        img.run_id = run_id
        s.flush()
        failed_id = img.id
    if existed:
        join_dataset(home, [failed_id], dataset)


def check_lease(img: Image | None, owner: str) -> None:
    """LeaseLost unless ``img`` is running under ``owner``'s lease."""
    if img is None or img.status != ImageStatus.running.value or img.lease_owner != owner:
        where = f"now {img.status}, held by {img.lease_owner or 'nobody'}" if img is not None else "deleted"
        raise LeaseLost(f"image {img.id if img else '?'}: the lease of {owner} expired and moved on ({where})")

"""Adding an embedding space to a home without running SAM again (``samsearch embed --space NAME``).

Each stored segment's mask (RLE, from SQL) is pooled in the space's backbone over its image (decoded once
per image, one backbone pass per image), and written to the space's collection ``segments.<space>`` under
the segment's own id, with the same payload the ``segments`` collection carries (from SQL, the source of
truth: image, dataset, settings, area, and any label or cluster already set).

Unit of work: an image. Vectors first (one upsert per batch of images, durable when it returns), then one
SQL transaction writing a ``space_embeddings`` row per image of the batch. A crash in between leaves vectors
without a row; the re-run redoes those images and overwrites the same point ids (point id = segment id),
so every segment ends with exactly one vector in the space. Images with a row are skipped.

Only images ``done`` by ingest are embedded; an image whose file is missing, unreadable or changed since
ingest (another sha256) is counted as failed with the reason, and retried by the next run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, insert, select

from samsearch.data.imageio import ImageLoadError, decode_image, read_bytes_and_hash
from samsearch.data.masks import rles_to_masks
from samsearch.db import Image, ImageStatus, Segment, SpaceEmbedding
from samsearch.db.memberships import datasets_of, in_dataset
from samsearch.db.runs import recorded_run
from samsearch.errors import InputError
from samsearch.faults import fault_point
from samsearch.home import SAM_SPACE, Home, space_collection
from samsearch.ingest.options import DEFAULT_MAX_PIXELS, LABEL_PAYLOAD_KEYS
from samsearch.vectors import VectorStoreError


@dataclass
class EmbedOptions:
    space: str
    dataset: str | None = None  # only images of this dataset
    weights: Path | None = None  # local copy of the space's weights (``--weights DIR``)
    device: str | None = None  # None: CUDA when present
    batch_images: int = 8  # images per backbone batch, vector upsert and SQL transaction
    limit: int | None = None  # at most this many images this run (the rest stay pending)
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class EmbedFailure:
    image_id: int
    path: str
    reason: str


@dataclass
class EmbedSummary:
    run_id: int
    space: str
    images_pending: int = 0  # images without the space when the run started
    images_embedded: int = 0
    images_failed: int = 0
    segments_embedded: int = 0
    empty_masks: int = 0  # segments whose mask pooled to nothing (not written; a stored mask is never empty)
    failures: list[EmbedFailure] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "failures"}
        d["failures"] = [f.__dict__ for f in self.failures]
        return d


def pending_images(home: Home, space: str, dataset: str | None = None) -> list[tuple[int, str, str, list[str]]]:
    """(image id, path, content hash, datasets) of the done images without a ``space`` row, by id."""
    done = select(SpaceEmbedding.image_id).where(SpaceEmbedding.space == space)
    q = select(Image.id, Image.path, Image.content_hash, Image.dataset).where(
        Image.status == ImageStatus.done.value, Image.id.not_in(done))
    if dataset is not None:
        q = q.where(in_dataset(dataset))
    with home.db.session() as s:
        rows = s.execute(q.order_by(Image.id)).all()
        member = datasets_of(s, [r.id for r in rows])
    # The payload's dataset field is the list of the image's datasets (as ingest writes it).
    return [(r.id, r.path, r.content_hash, member.get(r.id, [r.dataset])) for r in rows]


def _segment_rows(home: Home, image_id: int) -> list[Any]:
    cols = [Segment.id, Segment.settings_hash, Segment.source, Segment.area, Segment.rle_counts, Segment.height,
            Segment.width, *(getattr(Segment, c) for c in LABEL_PAYLOAD_KEYS)]
    with home.db.session() as s:
        return s.execute(select(*cols).where(Segment.image_id == image_id).order_by(Segment.id)).all()


def _payload(row: Any, image_id: int, content_hash: str, dataset: list[str]) -> dict[str, Any]:
    """The payload ingest (and labeling, clustering since) gave this segment in ``segments``, from SQL."""
    p: dict[str, Any] = {"image_id": image_id, "image_hash": content_hash, "dataset": dataset,
                         "settings_hash": row.settings_hash, "source": row.source, "area": int(row.area)}
    for col, key in LABEL_PAYLOAD_KEYS.items():
        value = getattr(row, col)
        if value is not None:
            p[key] = value
    return p


def embed_space(home: Home, options: EmbedOptions, progress: bool = True, space_model: Any = None) -> EmbedSummary:
    """Write every stored segment's vector in ``options.space`` (see the module docstring). ``space_model``:
    an already loaded :class:`~samsearch.spaces.models.load_space` result` (else loaded here)."""
    from tqdm import tqdm

    from samsearch.spaces.models import embed_images, load_space

    if options.space == SAM_SPACE:
        raise InputError("the sam space is written by `samsearch ingest`; embed adds another space "
                         "(e.g. --space dinov2-b)")
    if options.batch_images < 1:
        raise InputError(f"--batch must be at least 1, got {options.batch_images}")
    if options.limit is not None and options.limit < 0:
        raise InputError(f"--limit must be at least 0, got {options.limit}")
    home.claim_writes()  # before the model load and any write
    sm = space_model or load_space(options.space, options.weights, options.device)
    if sm.spec.name != options.space:
        raise InputError(f"the loaded model is space {sm.spec.name!r}, not {options.space!r}")
    home.claim_space(options.space, sm.space)  # refuses other weights than the space already holds
    coll = space_collection(options.space)
    settings = {"space": options.space, "embedding_space": sm.space.as_dict(), "dataset": options.dataset,
                "weights": str(options.weights) if options.weights else None}
    with recorded_run(home.db, "embed", settings) as run:
        summary = EmbedSummary(run_id=run.id, space=options.space)
        started = time.perf_counter()

        def counts() -> dict[str, Any]:
            summary.seconds = time.perf_counter() - started
            return summary.as_dict()

        run.counts = counts
        todo = pending_images(home, options.space, options.dataset)
        summary.images_pending = len(todo)
        if options.limit is not None:
            todo = todo[:options.limit]
        # No index builds while vectors flow; one at the end (see VectorStore.bulk_load), said on stderr.
        from samsearch.ingest.ingestor import report_line

        report = report_line if progress else None
        with home.vectors.bulk_load(coll, report=report), tqdm(total=len(todo), desc=f"embed {options.space}",
                                                               unit="img", disable=not progress) as bar:
            for start in range(0, len(todo), options.batch_images):
                batch = todo[start:start + options.batch_images]
                _embed_batch(home, sm, coll, batch, run.id, options, summary, embed_images)
                bar.update(len(batch))
    return summary


def _embed_batch(home: Home, sm: Any, coll: str, batch: Sequence[tuple[int, str, str, list[str]]], run_id: int,
                 options: EmbedOptions, summary: EmbedSummary, embed_images: Any) -> None:
    """One batch of images: decode, one backbone pass, pool every mask, one upsert, then one transaction."""
    loaded: list[tuple[int, str, list[str], np.ndarray, list[Any]]] = []
    for image_id, path, content_hash, dataset in batch:
        try:
            data, digest = read_bytes_and_hash(path)
            if digest != content_hash:
                raise ValueError(f"{path}: the file changed since it was ingested (sha256 differs); "
                                 "ingest it again")
            rgb = decode_image(data, path, options.max_pixels)
            rows = _segment_rows(home, image_id)
            if rows and (rows[0].height, rows[0].width) != rgb.shape[:2]:
                raise ValueError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]}, its stored masks "
                                 f"{rows[0].width}x{rows[0].height}")
        except ImageLoadError as exc:
            summary.images_failed += 1
            summary.failures.append(EmbedFailure(image_id, str(path), exc.reason))
            continue
        except ValueError as exc:
            summary.images_failed += 1
            summary.failures.append(EmbedFailure(image_id, str(path), " ".join(str(exc).split())))
            continue
        loaded.append((image_id, content_hash, dataset, rgb, rows))
    if not loaded:
        return
    masks = [rles_to_masks([{"size": [r.height, r.width], "counts": r.rle_counts} for r in rows]) if rows
             else np.zeros((0, *rgb.shape[:2]), dtype=bool) for _, _, _, rgb, rows in loaded]
    embedded = embed_images(sm, [item[3] for item in loaded], masks, batch_size=options.batch_images)
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    payloads: list[dict[str, Any]] = []
    n_per_image: list[int] = []
    for (image_id, content_hash, dataset, _, rows), (vecs, valid) in zip(loaded, embedded, strict=True):
        n = 0
        if rows:
            vecs, valid = vecs.cpu().numpy().astype(np.float32), valid.cpu().numpy()
            summary.empty_masks += int((~valid).sum())
            for row, v, ok in zip(rows, vecs, valid, strict=True):
                if ok:
                    ids.append(row.id)
                    vectors.append(v)
                    payloads.append(_payload(row, image_id, content_hash, dataset))
                    n += 1
        n_per_image.append(n)
    fault_point("embed_vectors", VectorStoreError)
    if ids:
        home.vectors.upsert(coll, ids, np.stack(vectors), payloads)
    fault_point("embed_after_vectors")  # a crash here: vectors without their rows, redone by the next run
    with home.db.session() as s:
        image_ids = [item[0] for item in loaded]
        s.execute(SpaceEmbedding.__table__.delete().where(and_(
            SpaceEmbedding.space == options.space, SpaceEmbedding.image_id.in_(image_ids))))
        s.execute(insert(SpaceEmbedding), [
            {"image_id": image_id, "space": options.space, "run_id": run_id, "n_segments": n}
            for image_id, n in zip(image_ids, n_per_image, strict=True)])
    summary.images_embedded += len(loaded)
    summary.segments_embedded += len(ids)

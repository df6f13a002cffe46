"""The writer stage: an image's segments become vectors (one upsert for a batch of images) and SQL rows
(one transaction per image, which marks it ``done``).

Order is what makes a crash harmless: vectors first, durably, then the transaction; an image is done only
after its vectors are stored. A redone image overwrites the points of the earlier attempt and deletes any
beyond the new set; rows that already exist are updated in place, so their label and cluster fields
survive (and are copied into the new payloads).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy import delete, insert, or_, select, update

from samsearch.data.masks import mask_to_box_xywh, masks_to_rles
from samsearch.db import Image, ImageStatus, Ingestion, Segment, SpaceEmbedding
from samsearch.db.memberships import datasets_of
from samsearch.db.schema import utcnow
from samsearch.faults import fault_point
from samsearch.home import SEGMENTS, Home
from samsearch.ingest.claim import check_lease
from samsearch.ingest.containers import PreparedImage, StoreItem
from samsearch.ingest.options import LABEL_PAYLOAD_KEYS, segment_id
from samsearch.sam.lazymasks import LazyMasks
from samsearch.sam.segment import Segments
from samsearch.vectors import Filter, Match, VectorStoreError

STORE_CHUNK = 1 << 26  # mask pixels the writer reads at a time (64 MiB as bool)


@dataclass
class _Staged:
    """One image's rows, payloads, point ids and vectors, ready to write."""

    item: StoreItem
    rows: list[dict[str, Any]]
    payloads: list[dict[str, Any]]
    ids: list[str]
    vectors: np.ndarray
    datasets: list[str]  # the image's datasets the payloads name
    masks: np.ndarray | None = None  # (len(ids), H, W) bool: kept only when extra spaces pool them


class SegmentWriter:
    """Stores computed images of one run's settings into ``home``."""

    def __init__(self, home: Home, settings_hash: str, dataset: str, source: str, model_key: str,
                 spaces: Sequence[Any] = ()):
        # spaces: loaded extra embedding spaces (samsearch.spaces SpaceModel) written in the same pass
        self.spaces = list(spaces)
        self.home = home
        self.settings_hash = settings_hash
        self.dataset = dataset
        self.source = source  # auto | box | mask
        self.model_key = model_key

    def store_batch(self, items: Sequence[StoreItem], run_id: int) -> None:
        """Write images: the vectors of all of them in one upsert (one flush), then per image its segments,
        ingestion marker and ``done`` in one SQL transaction: an image is done only after its vectors are
        durable. Each item carries the summary and timings its counts go to."""
        with self.home.db.session() as s:
            names = datasets_of(s, [item.prepared.image_id for item in items])
        staged = [self._stage(item, names.get(item.prepared.image_id) or [self.dataset]) for item in items]

        t0 = time.perf_counter()
        for st in staged:
            prepared = st.item.prepared
            if prepared.cleanup:
                self._carry_labels(prepared.image_id, st.ids, st.payloads)
            if prepared.lease_owner is not None:
                with self.home.db.session() as s:  # fence: never write for a lease another worker took over
                    check_lease(s.get(Image, prepared.image_id), prepared.lease_owner)
        fault_point("vector_upsert", VectorStoreError)
        ids = [i for st in staged for i in st.ids]
        if ids:
            self.home.vectors.upsert(SEGMENTS, ids, np.concatenate([st.vectors for st in staged]),
                                     [p for st in staged for p in st.payloads])
        for st in staged:
            if st.item.prepared.cleanup:
                self._delete_stale_vectors(st.item.prepared, st.ids)
        if self.spaces:
            self._write_spaces(staged)
        for item in items:
            item.timings["vectors"] += (time.perf_counter() - t0) / len(items)

        for st in staged:
            fault_point("after_vectors")
            t0 = time.perf_counter()
            prepared = st.item.prepared
            self._commit(prepared, run_id, st.rows, (int(prepared.rgb.shape[0]), int(prepared.rgb.shape[1])),
                         st.ids, st.datasets)
            if self.spaces:  # own transaction after the image's: a crash between only redoes its spaces
                self._mark_spaces(prepared.image_id, run_id, len(st.rows))
            st.item.timings["sql"] += time.perf_counter() - t0
            st.item.summary.images_ingested += 1
            st.item.summary.segments += len(st.rows)
            st.item.summary.images_without_segments += not st.rows

    def _stage(self, item: StoreItem, datasets: list[str]) -> _Staged:
        t0 = time.perf_counter()
        computed = item.computed
        masks = computed.masks_host()  # waits for an early copy to host, if one was started
        vectors_np = computed.vectors.cpu().numpy().astype(np.float32)
        valid_np = computed.valid.cpu().numpy()
        item.timings["transfer"] += time.perf_counter() - t0
        rows, payloads, ids, kept = self._segment_rows(computed.seg, masks, valid_np, item.prepared.image_id,
                                                       item.prepared.content_hash, datasets, item.timings,
                                                       keep_masks=bool(self.spaces))
        item.summary.empty_masks_dropped += int((~valid_np).sum())
        return _Staged(item, rows, payloads, ids, vectors_np[valid_np], datasets, kept)

    def _write_spaces(self, staged: Sequence[_Staged]) -> None:
        """The extra spaces' vectors of a batch: one backbone pass per image over the decoded image already
        in memory, the same masks, ids and payloads; written before the images' SQL rows and their
        ``space_embeddings`` marks, so a crash leaves nothing marked without its vectors (an image done but
        not marked is embedded by ``samsearch embed``, which ``ingest --spaces`` runs at its end)."""
        from samsearch.home import space_collection
        from samsearch.spaces.models import embed_images

        for sm in self.spaces:
            embedded = embed_images(sm, [st.item.prepared.rgb for st in staged], [st.masks for st in staged],
                                    batch_size=len(staged))
            ids, vecs, payloads = [], [], []
            for st, (v, ok) in zip(staged, embedded, strict=True):
                if not st.ids:
                    continue
                for sid, row, good, p in zip(st.ids, v.cpu().numpy(), ok.cpu().numpy(), st.payloads, strict=True):
                    if good:
                        ids.append(sid)
                        vecs.append(row)
                        payloads.append(p)
            coll = space_collection(sm.spec.name)
            if ids:
                self.home.vectors.upsert(coll, ids, np.stack(vecs).astype(np.float32), payloads)
            for st in staged:
                if st.item.prepared.cleanup:
                    self._delete_stale_vectors(st.item.prepared, st.ids, coll)

    def _delete_stale_vectors(self, item: PreparedImage, ids: list[str], coll: str = SEGMENTS) -> None:
        """After an earlier attempt at this image, delete the points it left beyond this attempt's ids.
        Called after the upsert: a crash in between leaves extra points (removed by the next attempt),
        never missing ones."""
        flt = Filter.of(Match("image_hash", item.content_hash), Match("settings_hash", self.settings_hash))
        keep = set(ids)
        stale = [r.id for batch in self.home.vectors.scroll(coll, flt) for r in batch if r.id not in keep]
        if stale:
            self.home.vectors.delete(coll, stale)

    def _carry_labels(self, image_id: int, ids: list[str], payloads: list[dict[str, Any]]) -> None:
        """A redone image keeps the labels/clusters its stored segments have: copy them into the payloads."""
        at = {sid: i for i, sid in enumerate(ids)}
        cols = [getattr(Segment, c) for c in LABEL_PAYLOAD_KEYS]
        with self.home.db.session() as s:
            found = s.execute(select(Segment.id, *cols).where(
                Segment.image_id == image_id, Segment.settings_hash == self.settings_hash,
                or_(*(c.is_not(None) for c in cols)))).all()
        for sid, *values in found:
            if sid in at:
                payloads[at[sid]].update({key: v for key, v in zip(LABEL_PAYLOAD_KEYS.values(), values, strict=True)
                                          if v is not None})

    def _commit(self, item: PreparedImage, run_id: int, rows: list[dict[str, Any]],
                size_hw: tuple[int, int], ids: list[str], datasets: list[str]) -> None:
        """Segments, the ingestion marker and ``done`` in one transaction. Rows that already exist (a
        redone image) are updated in place, so their label and cluster fields survive; rows beyond
        the new set are deleted. With the image row locked, the payloads' dataset list is checked
        against SQL once more (another run may have added the image to a dataset meanwhile)."""
        with self.home.db.session() as s:
            img = s.get(Image, item.image_id, with_for_update=True)
            if item.lease_owner is not None:
                check_lease(img, item.lease_owner)
            now = datasets_of(s, [item.image_id]).get(item.image_id) or datasets
            if now != datasets and ids:
                self.home.set_segment_payload(ids, {"dataset": now})
            existing = set(s.scalars(select(Segment.id).where(
                Segment.image_id == item.image_id, Segment.settings_hash == self.settings_hash)))
            new_ids = {r["id"] for r in rows}
            if existing - new_ids:
                s.execute(delete(Segment).where(Segment.id.in_(existing - new_ids)))
            fresh = [r for r in rows if r["id"] not in existing]
            if fresh:
                s.execute(insert(Segment), fresh)
            kept = [{k: v for k, v in r.items() if k != "created_at"} for r in rows if r["id"] in existing]
            if kept:
                s.execute(update(Segment), kept)  # bulk UPDATE by primary key; label fields untouched
            marker = s.execute(select(Ingestion).where(Ingestion.image_id == item.image_id,
                                                       Ingestion.settings_hash == self.settings_hash)).scalar()
            if marker is None:
                s.add(Ingestion(image_id=item.image_id, settings_hash=self.settings_hash, run_id=run_id,
                                n_segments=len(rows)))
            else:
                marker.n_segments, marker.run_id = len(rows), run_id
            img.status = ImageStatus.done.value
            img.error = None
            img.height, img.width = size_hw
            img.lease_owner = None
            img.lease_expires_at = None

    def _mark_spaces(self, image_id: int, run_id: int, n: int) -> None:
        """The image's ``space_embeddings`` rows (what ``samsearch embed`` would have written)."""
        names = [sm.spec.name for sm in self.spaces]
        with self.home.db.session() as s:
            s.execute(delete(SpaceEmbedding).where(SpaceEmbedding.image_id == image_id,
                                                   SpaceEmbedding.space.in_(names)))
            s.execute(insert(SpaceEmbedding), [{"image_id": image_id, "space": name, "run_id": run_id,
                                                "n_segments": n} for name in names])

    def _segment_rows(self, seg: Segments, masks: torch.Tensor | LazyMasks, valid: np.ndarray, image_id: int,
                      content_hash: str, datasets: list[str], timings: dict[str, float], keep_masks: bool = False):
        """Rows, payloads and ids of the valid masks (and those masks, with ``keep_masks``). The masks are
        read a slice of at most STORE_CHUNK pixels at a time: RLE, area and box, then the slice is dropped."""
        t0 = time.perf_counter()
        n = len(masks)
        h, w = (int(v) for v in masks.shape[1:]) if len(masks.shape) == 3 else (0, 0)
        keep = np.flatnonzero(valid)
        rles: list[dict[str, Any]] = []
        areas: list[int] = []
        boxes: list[list[float]] = []
        kept: list[np.ndarray] = []
        per = max(1, STORE_CHUNK // max(1, h * w))
        for start in range(0, n, per):
            sel = valid[start:start + per]
            if not sel.any():
                continue
            block = masks[start:start + per]
            block_np = (block.cpu() if isinstance(block, torch.Tensor) else block).numpy()[sel]
            rles.extend(masks_to_rles(block_np))
            areas.extend(int(a) for a in block_np.sum(axis=(1, 2)))
            boxes.extend(mask_to_box_xywh(m) for m in block_np)
            if keep_masks:
                kept.append(block_np)
        rows, payloads, ids = [], [], []
        for j, i in enumerate(keep):
            box = boxes[j]
            sid = segment_id(content_hash, self.settings_hash, int(i))
            ids.append(sid)
            rows.append({
                "id": sid, "image_id": image_id, "settings_hash": self.settings_hash,
                "segment_index": int(i), "source": self.source, "model_key": self.model_key,
                "rle_counts": rles[j]["counts"], "height": int(h), "width": int(w),
                "bbox_x": box[0], "bbox_y": box[1], "bbox_w": box[2], "bbox_h": box[3],
                "area": areas[j], "predicted_iou": seg.predicted_iou[i],
                "stability_score": seg.stability_score[i], "prompt": seg.prompts[i],
                "annotation_id": seg.annotation_ids[i], "annotation_category": seg.categories[i],
                "created_at": utcnow(),
            })
            payloads.append({
                "image_id": image_id, "image_hash": content_hash, "dataset": list(datasets),
                "settings_hash": self.settings_hash, "source": self.source, "area": areas[j],
            })
        timings["rle"] += time.perf_counter() - t0
        masks_kept = (np.concatenate(kept) if kept else np.zeros((0, h, w), dtype=bool)) if keep_masks else None
        return rows, payloads, ids, masks_kept

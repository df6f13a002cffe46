"""Stored segments without SAM: clustered unit vectors plus the SQL rows ingest would write, for the bank
and labeling tests (imported by them; not a test module)."""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy import insert, select

from samsearch.db import Image, Segment
from samsearch.db.schema import utcnow
from samsearch.home import SEGMENTS, Home
from samsearch.identity import EmbeddingSpace

DIM = 16
SPACE = EmbeddingSpace("tiny-random", "seed:0", "maskpool-v1", DIM)
CLASSES = ("a", "b", "c", "d")


def centres(seed: int = 0, n: int = len(CLASSES)) -> np.ndarray:
    c = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def around(rng: np.random.Generator, rows: np.ndarray, noise: float = 0.1) -> np.ndarray:
    x = rows + rng.standard_normal(rows.shape).astype(np.float32) * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bank_instances(seed: int, per_class: int = 20, classes=CLASSES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = centres()
    return {name: around(rng, np.repeat(c[CLASSES.index(name)][None], per_class, axis=0)) for name in classes}


def fill_segments(home: Home, n: int, dataset: str = "d1", seed: int = 1, image_base: int = 0) -> dict[str, str]:
    """``n`` segments (10 per image) around the class centres, in SQL and the vector store with ingest's
    payload fields; returns segment id -> true class."""
    home.claim_embedding_space(SPACE)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(CLASSES), n)
    x = around(rng, centres()[truth])
    ids = [str(uuid.uuid4()) for _ in range(n)]
    n_images = (n + 9) // 10
    with home.db.session() as s:
        for i in range(n_images):
            s.add(Image(id=image_base + i + 1, content_hash=f"{dataset}-{i}", path=f"/data/{dataset}/{i}.png",
                        dataset=dataset, status="done", width=64, height=48))
        s.flush()
        s.execute(insert(Segment), [
            {"id": sid, "image_id": image_base + k // 10 + 1, "settings_hash": "s", "segment_index": k % 10,
             "source": "mask", "model_key": "tiny-random:seed:0", "rle_counts": "0`9", "height": 48, "width": 64,
             "bbox_x": 0.0, "bbox_y": 0.0, "bbox_w": 1.0, "bbox_h": 1.0, "area": 1, "created_at": utcnow()}
            for k, sid in enumerate(ids)
        ])
    home.vectors.upsert(SEGMENTS, ids, x, [
        {"image_id": image_base + k // 10 + 1, "image_hash": f"{dataset}-{k // 10}", "dataset": dataset,
         "settings_hash": "s", "source": "mask", "area": 1}
        for k in range(n)
    ])
    return {sid: CLASSES[t] for sid, t in zip(ids, truth, strict=True)}


def snapshot(home: Home) -> dict[str, tuple]:
    """Every segment's label fields in SQL and in the payload, for before/after comparisons."""
    with home.db.session() as s:
        rows = s.execute(select(Segment.id, Segment.label, Segment.label_score, Segment.label_source,
                                Segment.label_bank)).all()
    payloads = {r.id: r.payload for batch in home.vectors.scroll(SEGMENTS, batch_size=4096) for r in batch}
    keys = ("label", "label_score", "label_source", "bank")
    return {r.id: (tuple(r[1:]), tuple(payloads[r.id].get(k) for k in keys)) for r in rows}

"""Clustering a large home end to end: read vectors from the store, cluster, write cluster ids back.

    .venv/bin/python scripts/bench_cluster.py --segments 1000000 --clusters 20 --repeats 3

Fills a fresh home (SQLite + Qdrant Edge by default; SAMSEARCH_DATABASE_URL / SAMSEARCH_QDRANT_URL are
honoured) with synthetic clustered 256-d unit vectors and matching SQL image/segment rows, in bulk and
without SAM; then times the recommended route (``minibatch-kmeans`` fitted on ``--sample`` vectors, every
vector assigned to its nearest centre, payload + SQL written back) ``--repeats`` times, and the baseline
route (the same algorithm fitted on every vector) once, side by side. Between runs the previous run is
deleted (untimed), so every timed run writes all 1M cluster ids to SQL and to the payloads.
Also times point-by-point payload writes on a subset (the approach the grouped writes replace).
Prints one JSON object: per-stage medians, ARI against the generating labels, peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score
from sqlalchemy import insert, select, update

from samsearch.cluster.job import ClusterOptions, delete_run, run_clustering
from samsearch.cluster.writeback import clustered_payloads, plan_payload
from samsearch.data.masks import mask_to_rle
from samsearch.db import ClusterRun, Image, Segment, SegmentCluster
from samsearch.db.schema import utcnow
from samsearch.home import SEGMENTS, Home
from samsearch.identity import EmbeddingSpace
from samsearch.reports.clusters import list_runs
from samsearch.sam.pooling import RECIPE

DIM = 256
ID_BASE = 1 << 64  # point ids are UUID(int=ID_BASE + i): the generating label of a point is labels[i]
SEGMENTS_PER_IMAGE = 50


def point_id(i: int) -> str:
    return str(uuid.UUID(int=ID_BASE + i))


def index_of(pid: str) -> int:
    return uuid.UUID(pid).int - ID_BASE


def make_labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, k + 1) ** 0.7  # unequal cluster sizes (largest ~5x the smallest for k=20)
    return rng.choice(k, size=n, p=weights / weights.sum())


def fill(home: Home, n: int, k: int, noise: float, seed: int, batch: int = 20_000) -> np.ndarray:
    """SQL rows and vectors for ``n`` segments in ``k`` clusters; returns the generating labels."""
    from samsearch.vectors.edge import EdgeVectorStore

    rng = np.random.default_rng(seed)
    labels = make_labels(n, k, rng)
    centres = rng.standard_normal((k, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    home.claim_embedding_space(EmbeddingSpace("synthetic", "0" * 64, RECIPE, DIM))
    n_images = (n + SEGMENTS_PER_IMAGE - 1) // SEGMENTS_PER_IMAGE
    now = utcnow()
    with home.db.session() as s:
        s.execute(insert(Image), [
            {"content_hash": f"{i:064x}", "path": f"/synthetic/{i:07d}.png", "dataset": "synthetic",
             "status": "done", "width": 64, "height": 64, "attempts": 1, "created_at": now, "updated_at": now}
            for i in range(n_images)])
        first_image = s.scalar(select(Image.id).order_by(Image.id).limit(1))
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    rle = mask_to_rle(mask)["counts"]
    settings = "0" * 32
    with home.db.session() as s:
        conn = s.connection()
        cols = ("id", "image_id", "settings_hash", "segment_index", "source", "model_key", "rle_counts", "height",
                "width", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "area", "created_at")
        rows = ((point_id(i), first_image + i // SEGMENTS_PER_IMAGE, settings, i % SEGMENTS_PER_IMAGE, "mask",
                 "synthetic", rle, 64, 64, 8.0, 8.0, 32.0, 32.0, 1024, now) for i in range(n))
        raw = conn.connection.driver_connection
        if conn.dialect.name == "postgresql":
            with raw.cursor() as cur, cur.copy(f"COPY segments ({', '.join(cols)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cur = raw.cursor()
            cur.executemany(f"INSERT INTO segments ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                            ((*r[:-1], r[-1].strftime("%Y-%m-%d %H:%M:%S.%f")) for r in rows))
            cur.close()
    # Bulk upsert without building HNSW (clustering never searches) and without a flush per batch.
    store = home.vectors
    if isinstance(store, EdgeVectorStore):
        store = EdgeVectorStore(store.root, fsync=False, index_threshold=0)
        home.vectors.close()
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        x = centres[labels[idx]] + noise * rng.standard_normal((len(idx), DIM), dtype=np.float32)
        payloads = [{"image_id": int(first_image + i // SEGMENTS_PER_IMAGE), "image_hash": f"{i // 50:064x}",
                     "dataset": "synthetic", "settings_hash": settings, "source": "mask", "area": 1024}
                    for i in idx.tolist()]
        store.upsert(SEGMENTS, [point_id(i) for i in idx.tolist()], x, payloads)
    store.close()
    return labels


def timed_run(root: Path, options: ClusterOptions, labels: np.ndarray) -> dict:
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    with Home(root) as home:
        opened = time.perf_counter() - t0
        summary = run_clustering(home, options, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with Home(root) as home, home.db.session() as s:
        got = s.execute(select(SegmentCluster.segment_id, SegmentCluster.cluster)
                        .where(SegmentCluster.run_id == summary.run_id)).all()
    pred = np.full(len(labels), -2)
    pred[[index_of(sid) for sid, _ in got]] = [c for _, c in got]
    return {"wall": wall, "cpu": cpu, "open_home": opened, **summary.stage_seconds,
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], "segments": summary.segments,
            "stored": summary.stored, "payload_updates": summary.payload_updates, "clusters": summary.clusters,
            "ari": float(adjusted_rand_score(labels, pred))}


def reset(root: Path, name: str) -> None:
    with Home(root) as home:
        delete_run(home, name)


def pointwise_payload_seconds(root: Path, n: int) -> float:
    """Seconds per vector for ``n`` single-point set_payload calls (the baseline the grouped writes beat)."""
    with Home(root) as home:
        ids = [point_id(i) for i in range(n)]
        t0 = time.perf_counter()
        for i in ids:
            home.vectors.set_payload(SEGMENTS, [i], {"cluster": 0})
        per = (time.perf_counter() - t0) / n
        home.vectors.set_payload(SEGMENTS, ids, {"cluster": None})
    return per


def rowwise_sql_seconds(root: Path, n: int) -> float:
    """Seconds per segment for the row-by-row SQL write (one INSERT + one UPDATE per segment, one
    transaction, rolled back): the baseline the set-based statements beat."""
    with Home(root) as home:
        s = home.db.new_session()
        try:
            run = ClusterRun(name="bench-rowwise", algorithm="x", settings={}, stats={})
            s.add(run)
            s.flush()
            t0 = time.perf_counter()
            for i in range(n):
                sid = point_id(i)
                s.execute(insert(SegmentCluster).values(run_id=run.id, segment_id=sid, cluster=0, distance=0.1))
                s.execute(update(Segment).where(Segment.id == sid).values(cluster=0, cluster_run="bench-rowwise"))
            s.flush()
            return (time.perf_counter() - t0) / n
        finally:
            s.rollback()
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--segments", type=int, default=1_000_000)
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.05, help="per-dimension noise around the centres")
    ap.add_argument("--sample", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="skip the fit-on-everything route")
    ap.add_argument("--pointwise", type=int, default=2000, help="points for the point-by-point payload baseline")
    ap.add_argument("--rowwise", type=int, default=20000, help="segments for the row-by-row SQL baseline")
    ap.add_argument("--home", type=Path, help="keep the home here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true",
                    help="--home was filled by an earlier run with the same --segments/--clusters: skip the fill")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.home or Path(tmp) / "home"
        t0 = time.perf_counter()
        if args.reuse:
            labels = make_labels(args.segments, args.clusters, np.random.default_rng(0))  # as fill() drew them
            with Home(root) as home:
                for run in list_runs(home):  # untimed: start from a home without runs or cluster payloads
                    delete_run(home, run["name"])
                empty = np.zeros(0, np.int64)
                plan_payload([], empty, empty, clustered_payloads(home)).apply(home)
        else:
            with Home(root) as home:
                labels = fill(home, args.segments, args.clusters, args.noise, seed=0)
        fill_s = time.perf_counter() - t0
        print(json.dumps({"filled": args.segments, "seconds": round(fill_s, 1)}), flush=True)

        recommended = []
        for _ in range(args.repeats):
            opts = ClusterOptions(algorithm="minibatch-kmeans", n_clusters=args.clusters, sample=args.sample,
                                  name="bench-sample")
            recommended.append(timed_run(root, opts, labels))
            print(json.dumps({"recommended": recommended[-1]}), flush=True)
            reset(root, "bench-sample")
        baseline = None
        if not args.no_baseline:
            opts = ClusterOptions(algorithm="minibatch-kmeans", n_clusters=args.clusters, name="bench-all")
            baseline = timed_run(root, opts, labels)
            print(json.dumps({"baseline": baseline}), flush=True)
            reset(root, "bench-all")
        pointwise = pointwise_payload_seconds(root, args.pointwise) if args.pointwise else None
        rowwise = rowwise_sql_seconds(root, args.rowwise) if args.rowwise else None

    skip = ("segments", "stored", "payload_updates", "clusters", "ari", "load_avg_1m")
    stages = [k for k in recommended[0] if k not in skip]
    med = {k: round(statistics.median(r[k] for r in recommended), 3) for k in stages}
    grouped_per_vec = med["payload"] / args.segments
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "segments": args.segments, "clusters": args.clusters, "noise": args.noise, "sample": args.sample,
        "fill_seconds": round(fill_s, 1), "repeats": args.repeats,
        "recommended_median_seconds": med,
        "recommended_ari": [round(r["ari"], 4) for r in recommended],
        "load_avg_1m_before_after": [r["load_avg_1m"] for r in recommended],
        "baseline_fit_on_all": baseline,
        "baseline_over_recommended_wall": round(baseline["wall"] / med["wall"], 2) if baseline else None,
        "pointwise_payload_seconds_per_1m": round(pointwise * args.segments, 1) if pointwise else None,
        "grouped_payload_seconds_per_1m": round(grouped_per_vec * 1_000_000, 1),
        "rowwise_sql_seconds_per_1m": round(rowwise * args.segments, 1) if rowwise else None,
        "set_based_sql_seconds_per_1m": round(med["sql"] / args.segments * 1_000_000, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }, indent=2))


if __name__ == "__main__":
    main()

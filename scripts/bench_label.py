"""Bulk labeling throughput on the embedded store (SQLite + Qdrant Edge), next to a naive loop.

    .venv/bin/python scripts/bench_label.py --segments 1000000 --repeats 3 --naive-sample 300

Fills a fresh home with ``--segments`` synthetic clustered unit vectors (``--classes`` Gaussian clusters
on the sphere, ``--dim`` dimensions) and matching SQL segment rows, inserted in bulk (no SAM), builds a
bank of ``--classes`` × ``--per-class`` centroids from separate samples of the same clusters, then, for
each repeat, side by side (this box is shared, so the load changes over minutes):

* the naive loop on a random sample: per segment, fetch its vector by id, query the bank's collection for
  the nearest centroid, set that one point's payload, and UPDATE its SQL row (one transaction each); with
  the store's default durability (Qdrant Edge flushes after every write) on a tenth of the sample, and
  inside ``deferred_flush`` (the durability the bulk job has) on all of it. Its rate is extrapolated to the
  whole corpus;
* :func:`samsearch.bank.classify.label_segments` over everything (the first run labels the unlabeled segments;
  later repeats use ``relabel``, which selects and rewrites every segment again), timed end to end,
  write-back (SQL + payload, flushed) included, with the CPU time of the process and of its main thread.

Segment rows carry an RLE string of ``--rle-bytes`` characters (real masks take hundreds of bytes), since
SQLite rewrites the whole row on an update.

Vectors go in with Qdrant Edge's HNSW optimizer off (``index_threshold=0``): building HNSW over 1M
vectors takes far longer than the benchmark, and labeling never uses it (it reads every vector and
computes an exact NN over the bank). ``--floor`` adds, after the runs, the engine's floor: reading every
vector and writing the label payload to every point, each timed alone with nothing else around it (see
:func:`engine_floor`). Prints one JSON object; medians over repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import text

from samsearch.bank.classify import LabelOptions, label_segments
from samsearch.bank.store import bank_collection, create_bank
from samsearch.home import SEGMENTS, Home
from samsearch.identity import EmbeddingSpace
from samsearch.vectors.edge import EdgeVectorStore

NOISE = 0.35  # per-dimension noise × sqrt(dim) relative to the unit cluster centre


def around(rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """One noisy unit vector around each row of ``centres``."""
    dim = centres.shape[1]
    x = centres + rng.standard_normal(centres.shape, dtype=np.float32) * (NOISE / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fill(home: Home, n: int, centres: np.ndarray, seed: int, rle_bytes: int,
         chunk: int = 20_000) -> tuple[dict, np.ndarray]:
    """SQL rows (images of 100 segments each) and Edge vectors, in bulk; returns fill timings and the
    true class of every segment (segment i has id UUID(int=i + 1))."""
    rng = np.random.default_rng(seed)
    store = home.vectors
    assert isinstance(store, EdgeVectorStore)
    store.index_threshold = 0  # no HNSW builds while filling (see the module docstring)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    n_images = (n + 99) // 100
    t_sql = t_vec = 0.0
    truth = rng.integers(0, len(centres), n)
    rle = ("PQ1c0" * (rle_bytes // 5 + 1))[:rle_bytes]
    t0 = time.perf_counter()
    with home.db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO images (id, content_hash, path, dataset, status, attempts, width, height, created_at, "
            "updated_at) VALUES (?, ?, ?, 'bench', 'done', 1, 640, 480, ?, ?)",
            [(i + 1, f"{i + 1:064x}", f"/bench/{i + 1}.jpg", now, now) for i in range(n_images)],
        )
    t_sql += time.perf_counter() - t0
    for start in range(0, n, chunk):
        with store.deferred_flush():  # one flush per chunk keeps the WAL (and memory) small
            m = min(chunk, n - start)
            ids = [str(uuid.UUID(int=start + i + 1)) for i in range(m)]
            x = around(rng, centres[truth[start:start + m]])
            t0 = time.perf_counter()
            with home.db.engine.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO segments (id, image_id, settings_hash, segment_index, source, model_key, "
                    "rle_counts, height, width, bbox_x, bbox_y, bbox_w, bbox_h, area, created_at) "
                    "VALUES (?, ?, 'bench', ?, 'auto', 'bench', ?, 480, 640, 0, 0, 1, 1, 1, ?)",
                    [(sid, (start + i) // 100 + 1, (start + i) % 100, rle, now) for i, sid in enumerate(ids)],
                )
            t1 = time.perf_counter()
            payloads = [{"image_id": (start + i) // 100 + 1, "dataset": "bench", "source": "auto", "area": 1}
                        for i in range(m)]
            store.upsert(SEGMENTS, ids, x, payloads)
            t_sql += t1 - t0
            t_vec += time.perf_counter() - t1
    return {"sql_fill_s": round(t_sql, 1), "vector_fill_s": round(t_vec, 1)}, truth


def accuracy(home: Home, truth: np.ndarray, sample: int = 20_000) -> float:
    """Share of a sample of segments whose SQL label is their true cluster."""
    picks = np.random.default_rng(7).choice(len(truth), min(sample, len(truth)), replace=False)
    ids = {str(uuid.UUID(int=int(i) + 1)): f"class{truth[i]:02d}" for i in picks}
    with home.db.engine.connect() as conn:
        got = dict(conn.execute(text("SELECT id, label FROM segments WHERE id IN (SELECT value FROM json_each(:ids))"),
                                {"ids": json.dumps(list(ids))}).all())
    return float(np.mean([got.get(i) == c for i, c in ids.items()]))


def naive_loop(home: Home, bank: str, ids: list[str]) -> float:
    """Seconds per segment for the one-query-per-segment implementation over ``ids`` (with the store's
    current durability): fetch the vector, query the bank's collection, set one payload, UPDATE one row."""
    coll = bank_collection(bank)
    t0 = time.perf_counter()
    with home.db.engine.connect() as conn:
        for sid in ids:
            vec = home.vectors.retrieve(SEGMENTS, [sid], with_vectors=True)[0].vector
            hit = home.vectors.search(coll, vec, k=1)[0]
            home.vectors.set_payload(SEGMENTS, [sid], {"label": hit.payload["label"], "label_score": hit.score,
                                                      "label_source": "bank", "bank": bank})
            with conn.begin():
                conn.execute(text("UPDATE segments SET label = :l, label_score = :s, label_source = 'bank', "
                                  "label_bank = :b WHERE id = :i"),
                             {"l": hit.payload["label"], "s": hit.score, "b": bank, "i": sid})
    return (time.perf_counter() - t0) / max(1, len(ids))


def engine_floor(home: Home, n_classes: int, seed: int) -> dict[str, float]:
    """The least any labeling job on this store must do, timed alone: read every vector into a matrix
    (``scroll_vectors``, nothing else), and write the label payload (the four fields ``label_segments``
    writes, one score value per class, so one ``set_payload`` per class: the fewest and largest calls
    possible) to every point, flushed. Their sum bounds the rate of any implementation on this engine. Last,
    the same write into one unindexed field: the bound even if no label field were indexed."""
    t0 = time.perf_counter()
    ids: list[str] = []
    for batch in home.vectors.scroll_vectors(SEGMENTS, None, 16384):
        ids.extend(batch.ids)
    read_s = time.perf_counter() - t0
    cls = np.random.default_rng(seed).integers(0, n_classes, len(ids))
    arr = np.asarray(ids, dtype=object)
    t0 = time.perf_counter()
    with home.vectors.deferred_flush():
        home.vectors.set_payloads(SEGMENTS, ((arr[cls == c].tolist(), {
            "label": f"class{c:02d}", "label_score": 0.5, "label_source": "bank", "bank": "floor"})
            for c in range(n_classes)))
    write_s = time.perf_counter() - t0
    # The same write into one field no payload index covers: what a payload write costs at the least.
    t0 = time.perf_counter()
    with home.vectors.deferred_flush():
        home.vectors.set_payloads(SEGMENTS, ((arr[cls == c].tolist(), {"floor_probe": f"class{c:02d}"})
                                             for c in range(n_classes)))
    bare_s = time.perf_counter() - t0
    n = len(ids)
    return {"read_all_vectors_s": round(read_s, 2), "write_label_payload_s": round(write_s, 2),
            "write_unindexed_field_s": round(bare_s, 2),
            "read_us_per_segment": round(read_s / n * 1e6, 2), "write_us_per_segment": round(write_s / n * 1e6, 2),
            "max_segments_per_s": round(n / (read_s + write_s)),
            "max_segments_per_s_without_indexes": round(n / (read_s + bare_s))}


def memory_mb() -> dict[str, int]:
    """Current and peak resident memory of this process (Linux), in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return {"rss_mb": fields.get("VmRSS", -1), "peak_rss_mb": fields.get("VmHWM", -1)}


def reset_peak_memory() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-sample", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--write-every", type=int, default=None, help="payload group size [8 × batch size]")
    ap.add_argument("--home", type=Path, default=None, help="where to build the home (default: a temp folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--floor", action="store_true",
                    help="after the runs, time the engine floor: read all vectors, write the label payload")
    ap.add_argument("--rle-bytes", type=int, default=300)
    args = ap.parse_args()

    root = args.home or Path(tempfile.mkdtemp(prefix="bench_label_"))
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.classes, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs".strip(),
        "load_avg_at_start": [round(v, 2) for v in os.getloadavg()],
        "segments": args.segments, "dim": args.dim, "bank": f"{args.classes} classes x {args.per_class}",
        "batch_size": args.batch_size, "write_every": args.write_every, "repeats": args.repeats,
    }
    try:
        with Home(root) as home:
            home.claim_embedding_space(EmbeddingSpace("bench", "synthetic", "maskpool-v1", args.dim))
            timings, truth = fill(home, args.segments, centres, args.seed + 1, args.rle_bytes)
            out.update(timings)
            cls = np.repeat(np.arange(args.classes), 50)  # 50 bank instances per class
            inst = around(np.random.default_rng(args.seed + 2), centres[cls])
            create_bank(home, "bench", {f"class{c:02d}": inst[cls == c] for c in range(args.classes)},
                        per_class=args.per_class)

            out["memory_after_fill"] = memory_mb()
            reset_peak_memory()
            pick = np.random.default_rng(args.seed + 3)
            runs, naive, naive_deferred = [], [], []
            for r in range(args.repeats):
                # Side by side under the same load: the naive loop on random samples, then one full run (the
                # first labels unlabeled segments, later ones --relabel everything again).
                sample = [str(uuid.UUID(int=int(i) + 1)) for i in pick.choice(args.segments, args.naive_sample)]
                naive.append(naive_loop(home, "bench", sample[: max(1, args.naive_sample // 10)]))
                with home.vectors.deferred_flush():
                    naive_deferred.append(naive_loop(home, "bench", sample))
                opts = LabelOptions(bank="bench", relabel=r > 0, batch_size=args.batch_size,
                                    write_every=args.write_every)
                t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
                summary = label_segments(home, opts, progress=False)
                wall, cpu, main_cpu = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - m0
                # main thread: store reads, classify, payload writes; the SQL worker thread: the rest
                runs.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "main_thread_cpu_s": round(main_cpu, 2),
                             "labeled": summary.labeled, "per_s": round(summary.labeled / wall),
                             "load_avg_1m": round(os.getloadavg()[0], 2), **summary.stage_seconds})
            out["memory_during_labeling"] = memory_mb()
            out["accuracy_on_sample"] = round(accuracy(home, truth), 4)
            if args.floor:
                out["engine_floor"] = engine_floor(home, args.classes, args.seed + 4)
            info = home.vectors._get(SEGMENTS).shard.info()  # type: ignore[attr-defined]
    finally:
        if args.home is None:
            shutil.rmtree(root, ignore_errors=True)
    med_rate = statistics.median(r["per_s"] for r in runs)
    naive_s, naive_deferred_s = statistics.median(naive), statistics.median(naive_deferred)
    out.update({
        "runs": runs,
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "median_segments_per_s": med_rate,
        "median_cpu_us_per_segment": round(statistics.median(r["cpu_s"] / r["labeled"] * 1e6 for r in runs), 1),
        "median_main_thread_cpu_us_per_segment": round(
            statistics.median(r["main_thread_cpu_s"] / r["labeled"] * 1e6 for r in runs), 1),
        "median_stage_s": {k: round(statistics.median(r[k] for r in runs), 2)
                           for k in ("read", "classify", "sql", "sql_wait", "payload")},
        "naive_sample": [max(1, args.naive_sample // 10), args.naive_sample],
        "naive_ms_per_segment": round(naive_s * 1000, 3),
        "naive_extrapolated_s": round(naive_s * args.segments, 1),
        "speedup_vs_naive": round(med_rate * naive_s, 1),
        "naive_deferred_ms_per_segment": round(naive_deferred_s * 1000, 3),
        "naive_deferred_extrapolated_s": round(naive_deferred_s * args.segments, 1),
        "speedup_vs_naive_deferred": round(med_rate * naive_deferred_s, 1),
        "edge_segments_after": info.segments_count,
    })
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

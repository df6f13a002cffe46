"""Search speed and recall over a large embedded home, without SAM.

    .venv/bin/python scripts/bench_search.py --n 1000000 --queries 200 --home /tmp/bench-1m [--local-n 100000]

Fills a home (SQLite + Qdrant Edge, the embedded default) with ``--n`` synthetic 256-d vectors shaped like
mask-pooled SAM embeddings: L2-normalised, with a component shared by all (SAM features of any segment are
far from orthogonal), 20 "label" super-clusters of 50 sub-clusters each, and noise. Every vector gets a
segment row in SQL (8 segments per image) and the payload ingest writes, with ``dataset`` one of 10 values
independent of the clusters. Vectors are written the way ingest writes them (``upsert`` batches, the store
building HNSW as it goes); ``label`` (the super-cluster) is written afterwards with ``set_payload``, as
labeling does. The script then reports:

* the state ingest leaves (segments, indexed points), the store's own optimize runs, and the latency of
  that state before the final ``optimize``;
* ``search_by_segment`` / ``search_by_vector`` end to end (library call: vector lookup, HNSW search, one
  SQL query for the hits' metadata; no process start), p50/p99, recall@10 against exact brute force;
* the same kind of query with NumPy brute force over the full matrix, and Edge's exact (full-scan) search;
* filtered queries (one dataset of ten; one label of twenty; an area range; one image): latency and recall
  against brute force over the matching subset, next to Edge's exact filtered scan;
* qdrant-client's local mode (":memory:", via our ServerVectorStore) on the first ``--local-n`` vectors,
  next to NumPy brute force and Edge on that same subset.

Before timing, every file of the home is read once (page cache), and each series uses its own queries.

``--home DIR`` keeps the filled home: a second run with the same ``--n``/``--seed`` skips the fill.
Prints one JSON object (also written to ``DIR/bench_search.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert

from samsearch.data.masks import mask_to_rle
from samsearch.db import Image, Segment
from samsearch.home import SEGMENTS, Home
from samsearch.identity import EmbeddingSpace
from samsearch.sam.pooling import RECIPE
from samsearch.search.query import SearchFilters, search_by_segment, search_by_vector

DIM = 256
N_LABELS, SUBS_PER_LABEL, N_DATASETS = 20, 50, 10
SEGMENTS_PER_IMAGE = 8
CHUNK = 10_000


# -- synthetic corpus ---------------------------------------------------------------------------------


class Corpus:
    """Deterministic vectors and metadata: chunk ``c`` always comes out the same for a given seed."""

    def __init__(self, n: int, seed: int, dim: int = DIM):
        self.n, self.seed, self.dim = n, seed, dim
        rng = np.random.default_rng([seed, 0])
        unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
        self.shared = unit(rng.normal(size=dim))
        self.label_centres = unit(rng.normal(size=(N_LABELS, dim)))
        self.sub_centres = unit(rng.normal(size=(N_LABELS * SUBS_PER_LABEL, dim)))

    def chunk(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(vectors, label index, dataset index, area) of rows [c*CHUNK, ...)."""
        m = min(CHUNK, self.n - c * CHUNK)
        rng = np.random.default_rng([self.seed, 1, c])
        sub = rng.integers(0, N_LABELS * SUBS_PER_LABEL, m)
        label = sub // SUBS_PER_LABEL
        noise = rng.normal(size=(m, self.dim)) / np.sqrt(self.dim)
        x = 0.6 * self.shared + 0.6 * self.label_centres[label] + 0.6 * self.sub_centres[sub] + 0.5 * noise
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        dataset = rng.integers(0, N_DATASETS, m)
        area = rng.integers(50, 50_000, m)
        return x, label.astype(np.uint8), dataset.astype(np.uint8), area

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every chunk, concatenated: (vectors, label index, dataset index, area) of all ``n`` rows."""
        chunks = [self.chunk(c) for c in range((self.n + CHUNK - 1) // CHUNK)]
        return tuple(np.concatenate(part) for part in zip(*chunks, strict=True))  # type: ignore[return-value]

    def ids(self, rows: np.ndarray | range) -> list[str]:
        return [str(uuid.UUID(int=int(i) + 1)) for i in rows]


def image_of(row: int) -> int:
    return row // SEGMENTS_PER_IMAGE + 1


def fill(home: Home, corpus: Corpus, x_all: np.ndarray, labels: np.ndarray, datasets: np.ndarray,
         bulk: bool = False) -> dict:
    """SQL rows and vectors for every row, written as ingest writes them; returns timings. ``bulk``: inside
    ``bulk_load`` as ingest writes today (one index build at the end, in a child process); otherwise with
    the store's incremental builds (how the numbers of issues 3-5 were measured)."""
    store = home.vectors
    optimize_seconds: list[tuple[int, float]] = []
    original = store._optimize  # type: ignore[attr-defined]

    def timed_optimize(name: str, coll: Any) -> None:  # record each optimize the store runs by itself
        t = time.perf_counter()
        original(name, coll)
        optimize_seconds.append((coll.size_at_optimize, time.perf_counter() - t))

    store._optimize = timed_optimize  # type: ignore[attr-defined]
    store.fsync = False  # one flush at the end instead of one per batch; ingest's batches are per image
    home.claim_embedding_space(EmbeddingSpace("bench-synthetic", "0" * 64, RECIPE, DIM))
    tiny = np.zeros((8, 8), dtype=bool)
    tiny[2:6, 2:6] = True
    rle = mask_to_rle(tiny)["counts"]
    t_sql = t_vec = 0.0
    n_images = image_of(corpus.n - 1)
    t = time.perf_counter()
    with home.db.session() as s:
        for start in range(0, n_images, 50_000):
            s.execute(insert(Image), [
                {"id": i, "content_hash": f"{i:064x}", "path": f"/bench/images/{i:07d}.jpg", "dataset": "bench",
                 "status": "done", "width": 8, "height": 8, "attempts": 1}
                for i in range(start + 1, min(n_images, start + 50_000) + 1)])
    t_sql += time.perf_counter() - t
    # bulk: no index builds while writing, one at the end of the block (timed with the vectors)
    with store.bulk_load(SEGMENTS, report=print) if bulk else contextlib.nullcontext():
        for c in range(0, (corpus.n + CHUNK - 1) // CHUNK):
            x, label, dataset, area = corpus.chunk(c)
            rows = range(c * CHUNK, c * CHUNK + len(x))
            part = slice(rows.start, rows.stop)
            x_all[part], labels[part], datasets[part] = x, label, dataset
            ids = corpus.ids(rows)
            t = time.perf_counter()
            with home.db.session() as s:
                s.execute(insert(Segment), [
                    {"id": sid, "image_id": image_of(r), "settings_hash": "bench",
                     "segment_index": r % SEGMENTS_PER_IMAGE, "source": "auto", "model_key": "bench",
                     "rle_counts": rle, "height": 8, "width": 8, "bbox_x": 2.0, "bbox_y": 2.0, "bbox_w": 4.0,
                     "bbox_h": 4.0, "area": int(a), "label": f"label{int(lb):02d}"}
                    for sid, r, a, lb in zip(ids, rows, area, label, strict=True)])
            t_sql += time.perf_counter() - t
            payloads = [
                {"image_id": image_of(r), "image_hash": f"{image_of(r):064x}", "dataset": f"ds{int(d)}",
                 "settings_hash": "bench", "source": "auto", "area": int(a)}
                for r, d, a in zip(rows, dataset, area, strict=True)]
            t = time.perf_counter()
            store.upsert(SEGMENTS, ids, x, payloads)
            t_vec += time.perf_counter() - t
            if (c + 1) % 10 == 0:
                print(f"  filled {rows.stop:,} ({t_vec:.0f}s vectors incl. optimize, {t_sql:.0f}s sql)",
                      flush=True)
        t = time.perf_counter()  # the block's closing build and the flush count as vector time
    store.flush()  # type: ignore[attr-defined]
    t_vec += time.perf_counter() - t
    # Labels come later in a real home (labeling writes them with set_payload), so they do too here:
    # the segments indexed by then carry no per-value links for them.
    t = time.perf_counter()
    for lb in range(N_LABELS):
        store.set_payload(SEGMENTS, corpus.ids(np.flatnonzero(labels == lb)), {"label": f"label{lb:02d}"})
    store.flush()  # type: ignore[attr-defined]
    t_label = time.perf_counter() - t
    store._optimize = original  # type: ignore[attr-defined]
    store.fsync = True
    return {"sql_seconds": round(t_sql, 1), "vector_seconds_incl_optimize": round(t_vec, 1),
            "label_set_payload_seconds": round(t_label, 1), "optimize_runs": len(optimize_seconds),
            "optimize_seconds_total": round(sum(s for _, s in optimize_seconds), 1),
            "optimize_runs_detail": [(n, round(s, 1)) for n, s in optimize_seconds]}


def warm_page_cache(root: Path) -> float:
    """Read every file of the home once, so that timings see the data in memory (as a serving process
    that has been up a while does) rather than whatever the shared machine left in the page cache."""
    t = time.perf_counter()
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    return round(time.perf_counter() - t, 1)


# -- measuring ----------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def summary(times: list[float], recalls: list[float] | None = None) -> dict[str, float]:
    out = {"p50_ms": round(pct(times, 50), 3), "p99_ms": round(pct(times, 99), 3), "n": len(times)}
    if recalls is not None:
        out["recall_at_10"] = round(float(np.mean(recalls)), 4)
    return out


def exact_top(x: np.ndarray, q: np.ndarray, k: int, exclude: int | None = None,
              rows: np.ndarray | None = None) -> list[int]:
    """Row numbers of the exact top-k by dot product; ``x`` holds the rows listed in ``rows`` (sorted;
    all rows when None); the row ``exclude`` (the query itself) is left out."""
    scores = x @ q
    if exclude is not None:
        j = exclude if rows is None else int(np.searchsorted(rows, exclude))
        if j < len(scores) and (rows is None or rows[j] == exclude):
            scores[j] = -np.inf
    kk = min(k, int(np.isfinite(scores).sum()))
    if kk == 0:
        return []
    top = np.argpartition(-scores, kk - 1)[:kk]
    top = top[np.argsort(-scores[top])]
    return [int(i) for i in (top if rows is None else rows[top])]


def row_of(segment_id: str) -> int:
    return uuid.UUID(segment_id).int - 1


def recall(found: list[str], truth: list[int]) -> float:
    if not truth:
        return 1.0
    return len({row_of(i) for i in found} & set(truth)) / len(truth)


def time_numpy(x: np.ndarray, queries: np.ndarray, k: int = 10) -> list[float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        scores = x @ q
        top = np.argpartition(-scores, k)[:k]
        top[np.argsort(-scores[top])]
        times.append(time.perf_counter() - t)
    return times


def bench_segment_queries(home: Home, x: np.ndarray, query_rows: np.ndarray, filters: SearchFilters | None,
                          subset: np.ndarray | None, k: int = 10) -> dict:
    times, recalls = [], []
    xs = x if subset is None else x[subset]
    for r in query_rows:
        sid = str(uuid.UUID(int=int(r) + 1))
        t = time.perf_counter()
        res = search_by_segment(home, sid, k=k, filters=filters)
        times.append(time.perf_counter() - t)
        truth = exact_top(xs, x[r], k, exclude=int(r), rows=subset)
        recalls.append(recall([h.segment_id for h in res], truth))
    return summary(times, recalls)


def rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024, 2)


def sid(row: int) -> str:
    return str(uuid.UUID(int=int(row) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", type=Path, default=None, help="keep (and reuse) the filled home here")
    ap.add_argument("--local-n", type=int, default=100_000, help="qdrant-client local mode on this many (0: skip)")
    args = ap.parse_args()

    tmp = None
    root = args.home
    if root is None:
        tmp = tempfile.mkdtemp(prefix="bench_search_")
        root = Path(tmp) / "home"
    marker = root / "bench_fill.json"
    corpus = Corpus(args.n, args.seed)
    x = np.empty((args.n, DIM), dtype=np.float32)
    labels = np.empty(args.n, dtype=np.uint8)
    datasets = np.empty(args.n, dtype=np.uint8)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "n": args.n, "dim": DIM, "queries": args.queries,
    }
    reuse = marker.exists() and json.loads(marker.read_text()).get("key") == [args.n, args.seed]
    if not reuse:
        shutil.rmtree(root, ignore_errors=True)
    home = Home(root)
    rng = np.random.default_rng([args.seed, 99])
    # Disjoint query rows for every measured series: no series runs on queries another one warmed up.
    pool = iter(np.array_split(rng.choice(args.n, size=24 * args.queries, replace=False), 24))
    try:
        t0 = time.perf_counter()
        if reuse:
            for c in range(0, (args.n + CHUNK - 1) // CHUNK):
                xc, lc, dc, _ = corpus.chunk(c)
                x[c * CHUNK:c * CHUNK + len(xc)], labels[c * CHUNK:c * CHUNK + len(xc)] = xc, lc
                datasets[c * CHUNK:c * CHUNK + len(xc)] = dc
            report["fill"] = json.loads(marker.read_text())["fill"]
        else:
            print(f"filling {args.n:,} vectors into {root} ...", flush=True)
            report["fill"] = fill(home, corpus, x, labels, datasets)
            report["fill"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
            marker.write_text(json.dumps({"key": [args.n, args.seed], "fill": report["fill"]}))
        store = home.vectors
        shard = store._get(SEGMENTS).shard  # type: ignore[attr-defined]
        info = shard.info()
        report["after_fill"] = {"segments": info.segments_count, "points": info.points_count,
                                "indexed": info.indexed_vectors_count}
        report["warm_page_cache_seconds"] = warm_page_cache(root)
        for r in next(pool)[:20]:  # warm-up calls (first-call costs: SQL statement cache, ...)
            search_by_segment(home, sid(r), k=10)
        if info.indexed_vectors_count < info.points_count:
            report["as_ingest_left_it"] = bench_segment_queries(home, x, next(pool)[:100], None, None)
            t = time.perf_counter()
            store.optimize(SEGMENTS)  # type: ignore[attr-defined]
            info = shard.info()
            report["final_optimize"] = {"seconds": round(time.perf_counter() - t, 1),
                                        "segments": info.segments_count, "indexed": info.indexed_vectors_count}
            report["warm_page_cache_seconds_after_optimize"] = warm_page_cache(root)
        for r in next(pool)[:20]:  # warm-up calls (first-call costs: SQL statement cache, ...)
            search_by_segment(home, sid(r), k=10)

        print("unfiltered ...", flush=True)
        report["search_by_segment"] = bench_segment_queries(home, x, next(pool), None, None)

        def fresh_queries(rows: np.ndarray) -> np.ndarray:  # not stored: perturbed copies of stored vectors
            q = x[rows] + rng.normal(scale=0.3 / np.sqrt(DIM), size=(len(rows), DIM)).astype(np.float32)
            return q / np.linalg.norm(q, axis=1, keepdims=True)

        times, recalls = [], []
        for q in fresh_queries(next(pool)):
            t = time.perf_counter()
            res = search_by_vector(home, q, k=10)
            times.append(time.perf_counter() - t)
            recalls.append(recall([h.segment_id for h in res], exact_top(x, q, 10)))
        report["search_by_vector"] = summary(times, recalls)
        times = []
        for q in fresh_queries(next(pool)):
            t = time.perf_counter()
            store.search(SEGMENTS, q, k=10)
            times.append(time.perf_counter() - t)
        report["store_search_only"] = summary(times)
        report["numpy_brute_force"] = summary(time_numpy(x, fresh_queries(next(pool)[:50])))
        times = []
        for q in fresh_queries(next(pool)[:20]):
            t = time.perf_counter()
            store.search(SEGMENTS, q, k=10, exact=True)
            times.append(time.perf_counter() - t)
        report["edge_exact_scan"] = summary(times)

        print("filtered ...", flush=True)
        areas = np.concatenate([corpus.chunk(c)[3] for c in range(0, (args.n + CHUNK - 1) // CHUNK)])
        cases = {
            "dataset (1 of 10)": (SearchFilters(dataset="ds3"), np.flatnonzero(datasets == 3)),
            "label (1 of 20, written after indexing)": (SearchFilters(label="label07"), np.flatnonzero(labels == 7)),
            "area >= 45000 (10 %, range)": (SearchFilters(min_area=45_000), np.flatnonzero(areas >= 45_000)),
        }
        del areas
        filtered: dict[str, Any] = {}
        for name, (flt, rows) in cases.items():
            entry = bench_segment_queries(home, x, next(pool)[:100], flt, rows)
            entry["matching_points"] = int(len(rows))
            entry["numpy_brute_force_over_subset"] = summary(time_numpy(x[rows], fresh_queries(next(pool)[:30])))
            times = []
            for q in fresh_queries(next(pool)[:20]):
                t = time.perf_counter()
                store.search(SEGMENTS, q, k=10, flt=flt.to_filter(), exact=True)
                times.append(time.perf_counter() - t)
            entry["edge_exact_filtered_scan"] = summary(times)
            filtered[name] = entry
        # one image: a handful of points, answered from the payload index
        times, recalls = [], []
        for r in next(pool)[:100]:
            img = image_of(int(rng.integers(0, args.n)))
            rows = np.arange((img - 1) * SEGMENTS_PER_IMAGE, min(args.n, img * SEGMENTS_PER_IMAGE))
            t = time.perf_counter()
            res = search_by_segment(home, sid(r), k=10, filters=SearchFilters(image_id=img))
            times.append(time.perf_counter() - t)
            recalls.append(recall([h.segment_id for h in res], exact_top(x[rows], x[r], 10, exclude=int(r), rows=rows)))
        filtered["image_id (8 points)"] = summary(times, recalls)
        report["filtered"] = filtered
        report["rss_gb_peak"] = rss_gb()
        qv = fresh_queries(next(pool))
    finally:
        home.close()

    if args.local_n:
        report["subset"] = bench_subset(x, labels, datasets, qv, min(args.local_n, args.n))
        report["rss_gb_peak"] = rss_gb()
    out = json.dumps(report, indent=2)
    print(out)
    (root / "bench_search.json").write_text(out)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_subset(x: np.ndarray, labels: np.ndarray, datasets: np.ndarray, qv: np.ndarray, n: int) -> dict:
    """qdrant-client local mode vs Edge vs NumPy on the first ``n`` vectors (same payloads, same queries)."""
    from samsearch.vectors.edge import EdgeVectorStore
    from samsearch.vectors.server import ServerVectorStore

    xs = x[:n]
    queries = qv[:30]
    out: dict[str, Any] = {"n": n}
    tmp = tempfile.mkdtemp(prefix="bench_subset_")
    payloads = [{"dataset": f"ds{int(d)}", "label": f"label{int(lb):02d}"} for d, lb in zip(datasets[:n], labels[:n],
                                                                                             strict=True)]
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    flt = SearchFilters(dataset="ds3").to_filter()
    ds_rows = np.flatnonzero(datasets[:n] == 3)
    try:
        for name, store in (("qdrant_client_local", ServerVectorStore(location=":memory:")),
                            ("edge", EdgeVectorStore(Path(tmp) / "edge", fsync=False))):
            store.ensure_collection("c", DIM)
            t = time.perf_counter()
            for s in range(0, n, CHUNK):
                store.upsert("c", ids[s:s + CHUNK], xs[s:s + CHUNK], payloads[s:s + CHUNK])
            if name == "edge":
                store.optimize("c")
            fill_s = time.perf_counter() - t
            entry: dict[str, Any] = {"fill_seconds": round(fill_s, 1)}
            for label, f, rows in (("unfiltered", None, None), ("dataset (1 of 10)", flt, ds_rows)):
                times, recalls = [], []
                for q in queries:
                    t = time.perf_counter()
                    hits = store.search("c", q, k=10, flt=f)
                    times.append(time.perf_counter() - t)
                    sub = xs if rows is None else xs[rows]
                    recalls.append(recall([h.id for h in hits], exact_top(sub, q, 10, rows=rows)))
                entry[label] = summary(times, recalls)
            out[name] = entry
            store.close()
        out["numpy_brute_force"] = {"unfiltered": summary(time_numpy(xs, queries)),
                                    "dataset (1 of 10)": summary(time_numpy(xs[ds_rows], queries))}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()

"""Search latency per embedding space at ``--n`` stored segments (issue 13: "search latency per space at 1M").

Each space is one collection of the embedded store (``segments`` for ``sam``, ``segments.<space>`` for the
others; see ``samsearch.home.space_collection``), so what differs between spaces is the vector width: 256
(``sam``), 384 (``dinov2-s``), 512 (``clip-b32``/``clip-b16``), 768 (``dinov2-b``/``clip-l14``), 1024
(``dinov2-l``), 1536 (``dinov2-g``). For each space the script fills a fresh collection with ``--n``
synthetic unit vectors of that width, shaped like pooled embeddings (``bench_search``'s recipe at any width:
a component shared by all, 20 label centres with 50 sub-centres each, noise), with ingest's payload
(``image_id``, ``dataset`` one of 10, ...), written as ingest writes them (``bulk_load``, upserts of 320, one
closing index build in a child process). Then, on the indexed collection:

* search by a stored segment's vector plus a little noise (what ``search_by_segment`` sends), k=10:
  p50/p99 and recall@10 against an exact (full-scan) search of the same collection;
* the same with a filter on one dataset of ten;
* write and build seconds, and the collection's size on disk.

The store call is what differs between spaces; the library's SQL lookup of the hits around it is the same
for every space (``bench_search``/``bench_serve`` measure it end to end for ``sam``).

    PYTHONPATH=$PWD python scripts/bench_space_search.py --n 1000000 --spaces sam,clip-b32,dinov2-b
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import CHUNK, N_DATASETS, SEGMENTS_PER_IMAGE, Corpus  # noqa: E402

from samsearch.home import SAM_SPACE, space_collection  # noqa: E402
from samsearch.sam.pooling import EMBEDDING_DIM  # noqa: E402
from samsearch.spaces.registry import SPACES  # noqa: E402
from samsearch.vectors.base import Filter, Match  # noqa: E402
from samsearch.vectors.edge import EdgeVectorStore  # noqa: E402

BATCH = 320  # segments per upsert: one ingest write


def width(space: str) -> int:
    return EMBEDDING_DIM if space == SAM_SPACE else SPACES[space].dim


def payload(row: int) -> dict:
    image = row // SEGMENTS_PER_IMAGE + 1
    return {"image_id": image, "image_hash": f"h{image}", "dataset": f"d{image % N_DATASETS}",
            "settings_hash": "s", "source": "auto", "area": 100 + row % 5000}


def fill(store: EdgeVectorStore, coll: str, corpus: Corpus, n: int) -> np.ndarray:
    """Write ``n`` vectors as ingest does; returns the stored rows the queries start from."""
    rng = np.random.default_rng([corpus.seed, 2])
    query_rows = np.sort(rng.choice(n, 400, replace=False))
    picked = []
    with store.bulk_load(coll, report=lambda line: print(f"  {line}", flush=True)):
        for c in range((n + CHUNK - 1) // CHUNK):
            a = c * CHUNK
            x = corpus.chunk(c)[0]
            for b in range(0, len(x), BATCH):
                rows = range(a + b, a + min(b + BATCH, len(x)))
                store.upsert(coll, [str(uuid.UUID(int=r + 1)) for r in rows], x[b:b + len(rows)],
                             [payload(r) for r in rows])
            inside = query_rows[(query_rows >= a) & (query_rows < a + len(x))]
            picked.append(x[inside - a])
    return np.concatenate(picked)


def timed(store: EdgeVectorStore, coll: str, queries: np.ndarray, flt: Filter | None) -> tuple[list, np.ndarray]:
    hits, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits.append(store.search(coll, q, k=10, flt=flt))
        times.append(time.perf_counter() - t0)
    return hits, np.array(times) * 1000


def recall(store: EdgeVectorStore, coll: str, queries: np.ndarray, hits: list, flt: Filter | None) -> float:
    found = [len({h.id for h in got} & {h.id for h in store.search(coll, q, k=10, flt=flt, exact=True)}) / 10
             for q, got in zip(queries, hits, strict=True)]
    return round(float(np.mean(found)), 3)


def measure(space: str, n: int, queries_n: int, recall_n: int, seed: int, root: Path) -> dict:
    dim, coll = width(space), space_collection(space)
    store = EdgeVectorStore(root, fsync=False)
    try:
        store.ensure_collection(coll, dim)
        t0, cpu0 = time.perf_counter(), sum(os.times()[:4])
        base = fill(store, coll, Corpus(n, seed, dim), n)
        build = store.last_child_build or {}
        fill_s = time.perf_counter() - t0
        noise = np.random.default_rng([seed, 3]).normal(size=base.shape).astype(np.float32) * 0.05 / np.sqrt(dim)
        queries = base + noise
        store.search(coll, queries[0], k=10)  # reopens the rebuilt shard and warms it (the store's own step)
        timed(store, coll, queries[:100], None)  # page cache and CPU caches, as a serving process would be
        out: dict = {"space": space, "dim": dim, "n": n, "collection": coll,
                     "fill_seconds": round(fill_s, 1), "child_build": build,
                     "cpu_seconds_fill": round(sum(os.times()[:4]) - cpu0, 1)}
        for label, flt in (("all", None), ("one_dataset_of_10", Filter(must=[Match("dataset", "d3")]))):
            qs = queries[100:100 + queries_n]
            hits, ms = timed(store, coll, qs, flt)
            out[label] = {"p50_ms": round(float(np.median(ms)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
                          "recall@10": recall(store, coll, qs[:recall_n], hits[:recall_n], flt)}
        info = store._get(coll).shard.info()
        out.update(points=info.points_count, indexed=info.indexed_vectors_count)
        store.flush()
        # allocated blocks, not apparent sizes: Edge preallocates sparse files
        out["disk_mb"] = round(sum(f.stat().st_blocks * 512 for f in (root / coll).rglob("*") if f.is_file()) / 2**20)
        return out
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="stored segments per space")
    ap.add_argument("--spaces", default="sam,dinov2-s,clip-b32,dinov2-b,dinov2-l",
                    help="comma-separated space names (each is filled and measured in turn)")
    ap.add_argument("--queries", type=int, default=300, help="timed searches per series")
    ap.add_argument("--recall", type=int, default=50, help="of which this many are checked against exact search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a temporary folder)")
    args = ap.parse_args()
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    for s in spaces:
        if s != SAM_SPACE and s not in SPACES:
            ap.error(f"unknown space {s!r} (known: sam, {', '.join(SPACES)})")
    if args.queries > 300:
        ap.error("--queries: at most 300 (400 query rows are drawn, 100 of them warm up)")
    parent = Path(tempfile.mkdtemp(prefix="bench-spaces-", dir=args.dir))
    results = []
    try:
        for s in spaces:
            print(f"{s}: {args.n:,} vectors of width {width(s)}", flush=True)
            root = parent / s
            res = measure(s, args.n, args.queries, args.recall, args.seed, root)
            res.update(load_avg=round(os.getloadavg()[0], 1), machine=f"{platform.machine()}, {os.cpu_count()} cores")
            print(json.dumps(res), flush=True)
            results.append(res)
            shutil.rmtree(root, ignore_errors=True)  # a 1M-point store of a wide space is several GB
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    print("| space | width | fill + build s | p50 / p99 ms | recall@10 "
          "| one dataset: p50 / p99 ms | recall@10 | disk MB |")
    for r in results:
        a, d = r["all"], r["one_dataset_of_10"]
        print(f"| {r['space']} | {r['dim']} | {r['fill_seconds']} | {a['p50_ms']} / {a['p99_ms']} | {a['recall@10']} "
              f"| {d['p50_ms']} / {d['p99_ms']} | {d['recall@10']} | {r['disk_mb']} |")


if __name__ == "__main__":
    main()

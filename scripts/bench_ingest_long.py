"""Sustained fill of the embedded vector store the way ingest writes it, with and without ``bulk_load``.

Synthetic 256-d vectors with ingest's payload (image_id, image_hash, dataset, settings_hash, source, area)
go through ``EdgeVectorStore.upsert`` in batches of one ingest write (``--batch`` segments: 8 images of ~40
segments each), the call ``SegmentWriter.store_batch`` makes. Beside it a heartbeat thread wakes every
10 ms and records how late it woke: a build holding the GIL shows up as a stall of its length.

``--vectors clustered`` (the default) writes ``bench_search``'s embedding-like vectors, the ones the issue's
own numbers were measured on; ``--vectors gaussian`` writes i.i.d. normal vectors (phases 1-3 used these:
they have no structure, so every HNSW build on them costs 2-4x more, and the ratios differ).

Modes (``--mode all`` runs baseline, child, deferred one after the other, same vectors, fresh store each):
- ``child``: today's ingest: writes inside ``bulk_load``, one index build when it ends, in a child process
  (the store closes the shard, a child process optimizes it, the store reopens it).
- ``deferred``: the same single build at the end, but in this process (``build_in_child=False``; phase 1).
- ``baseline``: the behaviour before issue 16: incremental builds inside ``upsert`` (every 20k points or
  10 %), and the final ``optimize`` a user would have to run by hand to reach indexed search speed.

Reported per mode: seconds per 10k segments written, the longest heartbeat stall while writing and during
the final build, the time to a fully indexed store, and search p50 (k=10, no filter) right after the run
(for baseline also after its final optimize).

    PYTHONPATH=$PWD python scripts/bench_ingest_long.py --n 300000 --mode all
    PYTHONPATH=$PWD python scripts/bench_ingest_long.py --n 300000 --mode both --parallel   # shared load
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import Corpus  # noqa: E402

from samsearch.vectors.edge import EdgeVectorStore  # noqa: E402

DIM = 256
COLL = "segments"


class Heartbeat:
    """A thread that sleeps ``period`` at a time and keeps the longest delay past it, per phase."""

    def __init__(self, period: float = 0.01):
        self.period = period
        self.phase = "idle"
        self.worst: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(self.period)
            now = time.perf_counter()
            late = now - last - self.period
            self.worst[self.phase] = max(self.worst.get(self.phase, 0.0), late)
            last = now

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def p50_ms(store: EdgeVectorStore, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        store.search(COLL, q, k=10)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 2)


def run(mode: str, n: int, batch: int, seed: int, queries: np.ndarray, log, pool: np.ndarray | None = None,
        fsync: bool = True) -> dict:
    """One mode. ``pool``: the ``n`` vectors to write (``--vectors clustered``), or None for Gaussian ones."""
    rng = np.random.default_rng(seed)
    vectors = "gaussian" if pool is None else "clustered"
    with tempfile.TemporaryDirectory(prefix=f"bench-ingest-{mode}-") as tmp:
        # fsync=True is what ingest runs with (the store's default: a flush after every write); phases 1-4
        # of docs/BENCHMARKS.md ran with --no-fsync, which leaves the whole flush to the closing build
        store = EdgeVectorStore(Path(tmp) / "vectors", fsync=fsync, build_in_child=mode == "child")
        store.ensure_collection(COLL, DIM)
        per_10k: list[float] = []
        out: dict = {"mode": mode, "n": n, "batch": batch, "vectors": vectors, "fsync": fsync,
                     "load_avg_start": os.getloadavg()[0]}
        cpu0 = sum(os.times()[:4])
        with Heartbeat() as hb:
            hb.phase = "write"
            t_start = time.perf_counter()
            bulk = store.bulk_load(COLL, report=log) if mode != "baseline" else None
            if bulk is not None:
                bulk.__enter__()
            t_block, written = time.perf_counter(), 0
            while written < n:
                m = min(batch, n - written)
                x = (pool[written:written + m] if pool is not None
                     else rng.standard_normal((m, DIM)).astype(np.float32))
                ids = [str(uuid.UUID(int=written + i + 1)) for i in range(m)]
                payloads = [{"image_id": (written + i) // 40, "image_hash": f"h{(written + i) // 40}",
                             "dataset": f"d{(written + i) // 40 % 10}", "settings_hash": "s", "source": "auto",
                             "area": int(rng.integers(10, 5000))} for i in range(m)]
                store.upsert(COLL, ids, x, payloads)
                written += m
                if written % 10_000 < batch or written == n:
                    now = time.perf_counter()
                    per_10k.append(round(now - t_block, 2))
                    t_block = now
            t_written = time.perf_counter()
            hb.phase = "final build"
            if bulk is not None:
                bulk.__exit__(None, None, None)
                t_built = time.perf_counter()
                # The store reopens the rebuilt shard on its next use: here, the first search.
                hb.phase = "first search"
                t0 = time.perf_counter()
                store.search(COLL, queries[0], k=10)
                out["first_search_after_build_s"] = round(time.perf_counter() - t0, 2)
                out["p50_ms_after_run"] = p50_ms(store, queries)
            else:
                out["p50_ms_after_run"] = p50_ms(store, queries)  # what main's ingest leaves
                t0 = time.perf_counter()
                store.optimize(COLL)  # the manual step main needs for indexed search
                log(f"baseline: final optimize took {time.perf_counter() - t0:.1f} s")
            t_indexed = (t_built if bulk is not None else time.perf_counter()) - t_start
            hb.phase = "idle"
        info = store._get(COLL).shard.info()
        out.update({
            "write_seconds": round(t_written - t_start, 1),
            "seconds_per_10k": per_10k,
            "final_build_seconds": round(t_indexed - (t_written - t_start), 1),
            "seconds_to_fully_indexed": round(t_indexed, 1),
            "longest_stall_while_writing_s": round(hb.worst.get("write", 0.0), 2),
            "longest_stall_during_final_build_s": round(hb.worst.get("final build", 0.0), 2),
            "longest_stall_during_first_search_s": round(hb.worst.get("first search", 0.0), 2),
            "p50_ms_fully_indexed": p50_ms(store, queries),
            "points": info.points_count, "indexed": info.indexed_vectors_count,
            "load_avg_end": os.getloadavg()[0],
            # CPU seconds of this process and of finished children (the child build), for a load-robust view
            "cpu_seconds": round(sum(os.times()[:4]) - cpu0, 1),
            "child_build_steps_s": store.last_child_build,
        })
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000, help="segments to write")
    ap.add_argument("--batch", type=int, default=320, help="segments per upsert (one ingest write batch)")
    ap.add_argument("--mode", choices=["child", "deferred", "baseline", "both", "all"], default="both",
                    help="child = bulk_load with the build in a child process (today), deferred = the same "
                         "build in-process, baseline = incremental builds; both = baseline + child; all = the three")
    ap.add_argument("--queries", type=int, default=200, help="searches for each p50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fsync", dest="fsync", action="store_false",
                    help="no flush after each write (ingest flushes after each; the closing flush then does it all)")
    ap.add_argument("--vectors", choices=["clustered", "gaussian"], default="clustered",
                    help="clustered = bench_search's embedding-like vectors (how the issue measured); gaussian = "
                         "i.i.d. normal, HNSW's worst case (phases 1-3 above used these)")
    ap.add_argument("--parallel", action="store_true",
                    help="run the modes at the same time, one process each, so that they share the machine's "
                         "load (on a busy machine a sequential run compares different loads); the first to "
                         "finish leaves the others more CPU, which favours the slower mode")
    args = ap.parse_args()

    def log(line: str) -> None:
        print(line, flush=True)

    queries = np.random.default_rng(99).standard_normal((args.queries, DIM)).astype(np.float32)
    # bench_search's vectors (the issue's own measurement): shaped like mask-pooled embeddings, with a shared
    # component and label/sub-cluster structure; HNSW builds on them cost what they cost on real data
    pool = Corpus(args.n, args.seed).arrays()[0] if args.vectors == "clustered" else None
    if pool is not None:  # queries near stored vectors, as a search by segment would be
        rows = np.random.default_rng(99).choice(args.n, args.queries, replace=False)
        queries = pool[rows] + 0.05 * queries / np.sqrt(DIM)
    modes = {"both": ["baseline", "child"], "all": ["baseline", "child", "deferred"]}.get(args.mode, [args.mode])
    results = []
    if args.parallel and len(modes) > 1:
        import subprocess

        procs = [subprocess.Popen([sys.executable, __file__, "--n", str(args.n), "--batch", str(args.batch),
                                   "--mode", mode, "--queries", str(args.queries), "--seed", str(args.seed),
                                   "--vectors", args.vectors] + ([] if args.fsync else ["--no-fsync"]),
                                  stdout=subprocess.PIPE, text=True) for mode in modes]
        for mode, proc in zip(modes, procs, strict=True):
            out, _ = proc.communicate()
            for line in out.splitlines():
                print(f"[{mode}] {line}", flush=True)
            results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
        modes = []
    for mode in modes:
        res = run(mode, args.n, args.batch, args.seed, queries, log, pool, args.fsync)
        print(json.dumps(res), flush=True)
        results.append(res)
    for res in results[1:] if results[0]["mode"] == "baseline" else []:
        base = results[0]
        print(json.dumps({"mode": res["mode"], "vs": base["mode"], "parallel": args.parallel,
                          "ratio_time_to_indexed": round(res["seconds_to_fully_indexed"]
                                                         / base["seconds_to_fully_indexed"], 2),
                          "ratio_cpu_seconds": round(res["cpu_seconds"] / base["cpu_seconds"], 2),
                          "ratio_p50_after_run_vs_baseline_indexed": round(res["p50_ms_after_run"]
                                                                           / base["p50_ms_fully_indexed"], 2)}),
              flush=True)


if __name__ == "__main__":
    main()

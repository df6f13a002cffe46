"""Search-by-segment over HTTP (``samsearch serve``) next to the library call, in one run.

    .venv/bin/python scripts/bench_serve.py --n 100000 --queries 300 [--home /tmp/bench-serve-100k]

Fills a home (SQLite + Qdrant Edge) with ``--n`` synthetic vectors and their SQL rows exactly as
``scripts/bench_search.py`` does (its ``Corpus`` and ``fill``), builds the index, reads the home once into
the page cache, then measures on disjoint random stored segments:

* ``library_1``: ``search_by_segment(home, id, k=10)`` in this process, one at a time;
* ``library_8``: the same from 8 threads at once (the store's own concurrency: Edge serialises its calls);
* ``http_1`` / ``http_8``: ``POST /api/search {"segment_id": id, "k": 10}`` against the real app served by
  uvicorn (a thread of this process, which owns the home: an Edge shard has one user) from a client
  *process* with 1 or 8 threads, each on its own keep-alive connection (``http.client``); a request's time
  includes sending it and parsing the JSON answer.

Every series reports p50/p99 in ms and the throughput; ``http_overhead_p50_ms`` is ``http_1`` p50 minus
``library_1`` p50 (the target: at most 2 ms). The load average before and after is recorded, because this
is meant for a shared machine. ``--home DIR`` keeps the filled home for the next run (same ``--n``/``--seed``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import CHUNK, DIM, Corpus, fill, summary, warm_page_cache  # noqa: E402

from samsearch.home import SEGMENTS, Home  # noqa: E402
from samsearch.search.query import search_by_segment  # noqa: E402

# The client: a separate process, so its JSON work and the server's do not share one GIL.
CLIENT = r"""
import http.client, json, sys, threading, time
port, threads, ids = int(sys.argv[1]), int(sys.argv[2]), json.load(sys.stdin)
chunks = [ids[i::threads] for i in range(threads)]
times = [[] for _ in range(threads)]
start = threading.Barrier(threads)
def run(j):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}
    for sid in chunks[j][:3]:  # warm the connection
        conn.request("POST", "/api/search", json.dumps({"segment_id": sid, "k": 10}), headers)
        conn.getresponse().read()
    start.wait()
    for sid in chunks[j][3:]:
        t = time.perf_counter()
        conn.request("POST", "/api/search", json.dumps({"segment_id": sid, "k": 10}), headers)
        r = conn.getresponse()
        body = json.loads(r.read())
        times[j].append(time.perf_counter() - t)
        assert r.status == 200 and len(body["hits"]) == 10, (r.status, body)
t0 = time.perf_counter()
ts = [threading.Thread(target=run, args=(j,)) for j in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"times": [x for t in times for x in t], "wall": time.perf_counter() - t0}))
"""


def sid(row: int) -> str:
    import uuid

    return str(uuid.UUID(int=int(row) + 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def library(home: Home, rows: np.ndarray, threads: int) -> dict[str, Any]:
    def one(r: int) -> float:
        t = time.perf_counter()
        res = search_by_segment(home, sid(r), k=10)
        assert len(res) == 10
        return time.perf_counter() - t

    t0 = time.perf_counter()
    if threads == 1:
        times = [one(r) for r in rows]
    else:
        with ThreadPoolExecutor(threads) as pool:
            times = list(pool.map(one, rows))
    wall = time.perf_counter() - t0
    return {**summary(times), "queries_per_s": round(len(times) / wall, 1), "threads": threads}


def http(port: int, rows: np.ndarray, threads: int) -> dict[str, Any]:
    ids = [sid(r) for r in rows]
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(threads)], input=json.dumps(ids),
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    return {**summary(res["times"]), "queries_per_s": round(len(res["times"]) / res["wall"], 1),
            "clients": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="stored segments (1M is the issue's size)")
    ap.add_argument("--queries", type=int, default=300, help="queries per series")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", type=Path, default=None, help="keep (and reuse) the filled home here")
    args = ap.parse_args()

    import uvicorn

    from samsearch.serve import create_app

    tmp = None
    root = args.home
    if root is None:
        tmp = tempfile.mkdtemp(prefix="bench_serve_")
        root = Path(tmp) / "home"
    marker = root / "bench_fill.json"
    reuse = marker.exists() and json.loads(marker.read_text()).get("key") == [args.n, args.seed]
    if not reuse:
        shutil.rmtree(root, ignore_errors=True)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "n": args.n, "dim": DIM, "queries_per_series": args.queries, "loadavg_before": os.getloadavg(),
    }
    home = Home(root)
    server = None
    try:
        if not reuse:
            print(f"filling {args.n:,} vectors into {root} ...", file=sys.stderr, flush=True)
            corpus = Corpus(args.n, args.seed)
            x = np.empty((args.n, DIM), dtype=np.float32)
            labels = np.empty(args.n, dtype=np.uint8)
            datasets = np.empty(args.n, dtype=np.uint8)
            t = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # fill's progress lines; stdout is the JSON
                report["fill"] = fill(home, corpus, x, labels, datasets, bulk=True)  # as ingest writes
            home.vectors.optimize(SEGMENTS)  # type: ignore[attr-defined]
            report["fill"]["wall_seconds"] = round(time.perf_counter() - t, 1)
            marker.write_text(json.dumps({"key": [args.n, args.seed], "fill": report["fill"]}))
            del x
        report["warm_page_cache_seconds"] = warm_page_cache(root)
        assert home.vectors.count(SEGMENTS) == args.n, "the home holds another corpus"
        rng = np.random.default_rng([args.seed, 7])
        pool = iter(np.array_split(rng.choice(args.n, size=6 * args.queries, replace=False), 6))

        library(home, next(pool)[:50], 1)  # warm-up: SQL statement cache, first-call costs
        report["library_1"] = library(home, next(pool), 1)
        report["library_8"] = library(home, next(pool), 8)

        port = _free_port()
        config = uvicorn.Config(create_app(home), host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        report["http_1"] = http(port, next(pool), 1)
        report["http_8"] = http(port, next(pool), 8)
        # the library again, last: a drift between the first and last series shows how noisy the machine was
        report["library_1_again"] = library(home, next(pool), 1)
        report["http_overhead_p50_ms"] = round(report["http_1"]["p50_ms"] - report["library_1"]["p50_ms"], 3)
        report["http_overhead_p50_ms_vs_library_again"] = round(
            report["http_1"]["p50_ms"] - report["library_1_again"]["p50_ms"], 3)
        report["loadavg_after"] = os.getloadavg()
    finally:
        if server is not None:
            server.should_exit = True
            time.sleep(0.3)
        home.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    assert CHUNK > 0
    main()

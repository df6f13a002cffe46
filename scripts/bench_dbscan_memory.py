"""Peak memory of `samsearch cluster --algorithm dbscan` (our settings: cosine, brute force, eps 0.1,
min-samples 5) at a few sizes, each in a fresh subprocess (ru_maxrss), on 256-d unit vectors (the `sam`
space's dimension):

* ``dense``: 6 tight clusters (every pair inside a cluster is within eps), like the synthetic shapes with
  tiny-random, the worst case: DBSCAN keeps every neighbour pair (n^2/6 of them) as int64 indices;
* ``spread``: random unit vectors (no pair within eps), the best case: only the distance chunks.

    .venv/bin/python scripts/bench_dbscan_memory.py --sizes 5000,10000,20000,40000 [--kinds dense,spread]
        [--algorithm dbscan|hdbscan]

Prints one JSON line per run: kind, n, peak RSS (MB) of the fit beyond the data, seconds, clusters.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

DIM = 256


def _data(kind: str, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "dense":
        centres = rng.standard_normal((6, DIM)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        x = centres[rng.integers(0, 6, n)] + 0.012 * rng.standard_normal((n, DIM)).astype(np.float32)
    else:
        x = rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _child(kind: str, n: int, algorithm: str) -> None:
    from samsearch.cluster.job import ClusterOptions, fit_labels

    x = _data(kind, n)
    import sklearn.cluster  # noqa: F401  (imported before the baseline)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    labels = fit_labels(x, ClusterOptions(algorithm=algorithm, eps=0.1, min_samples=5, allow_large=True))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"algorithm": algorithm, "kind": kind, "n": n, "baseline_mb": round(before),
                      "peak_mb": round(peak), "fit_mb": round(peak - before), "seconds": round(seconds, 1),
                      "clusters": int(labels.max()) + 1, "noise": int((labels < 0).sum())}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,10000,20000,40000")
    ap.add_argument("--kinds", default="dense,spread")
    ap.add_argument("--algorithm", default="dbscan", choices=["dbscan", "hdbscan"])
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"))
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.algorithm)
        return
    for kind in args.kinds.split(","):
        for n in map(int, args.sizes.split(",")):
            subprocess.run([sys.executable, __file__, "--child", kind, str(n), "--algorithm", args.algorithm],
                           check=True)


if __name__ == "__main__":
    main()

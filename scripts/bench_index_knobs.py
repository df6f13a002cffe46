"""Time of one Qdrant Edge HNSW build (``optimize``) of ``--n`` ingest-like points under HNSW/optimizer knobs.

Each config gets a fresh store filled with the same vectors and payloads (no build while filling), then one
``optimize``; reported: build seconds, indexed count, segments, and recall@10 of 100 queries against exact search.

    PYTHONPATH=$PWD python scripts/bench_index_knobs.py --n 30000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from samsearch.vectors.edge import EdgeVectorStore

DIM = 256
COLL = "segments"


class KnobStore(EdgeVectorStore):
    def __init__(self, root: Path, hnsw: dict, opt: dict) -> None:
        super().__init__(root, fsync=False, index_threshold=0)
        self.hnsw, self.opt = hnsw, opt

    def _config(self, dim: int) -> qe.EdgeConfig:
        base = super()._config(dim)
        hnsw = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10_000, **self.hnsw}
        return qe.EdgeConfig(vectors=base.vectors, hnsw_config=qe.HnswIndexConfig(**hnsw),
                             optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1000, **self.opt))


CONFIGS = {
    "default (m16 ef100 threads=auto)": ({}, {}),
    "ef_construct=64": ({"ef_construct": 64}, {}),
    "max_indexing_threads=1": ({"max_indexing_threads": 1}, {}),
    "default_segment_number=1": ({}, {"default_segment_number": 1}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30_000, help="points per build")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, DIM)).astype(np.float32)
    q = rng.standard_normal((100, DIM)).astype(np.float32)
    for label, (hnsw, opt) in CONFIGS.items():
        with tempfile.TemporaryDirectory(prefix="knobs-") as tmp:
            s = KnobStore(Path(tmp) / "v", hnsw, opt)
            s.ensure_collection(COLL, DIM)
            for a in range(0, args.n, 2000):
                ids = [str(uuid.UUID(int=i + 1)) for i in range(a, min(a + 2000, args.n))]
                s.upsert(COLL, ids, x[a:a + len(ids)], [{"image_id": i // 40, "dataset": f"d{i // 40 % 10}",
                                                        "source": "auto"} for i in range(a, a + len(ids))])
            t0 = time.perf_counter()
            s.optimize(COLL)
            dt = time.perf_counter() - t0
            info = s._get(COLL).shard.info()
            rec = np.mean([len({h.id for h in s.search(COLL, v, 10)}
                               & {h.id for h in s.search(COLL, v, 10, exact=True)}) / 10 for v in q])
            print(json.dumps({"config": label, "n": args.n, "build_s": round(dt, 1),
                              "indexed": info.indexed_vectors_count, "segments": info.segments_count,
                              "recall@10": round(float(rec), 3)}), flush=True)
            s.close()


if __name__ == "__main__":
    main()

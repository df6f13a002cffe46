"""Time of one Qdrant Edge HNSW build (``optimize``) of ``--n`` ingest-like points under HNSW/optimizer knobs.

Each config gets a fresh store filled with the same vectors and payloads (no build while filling: the store's
own threshold is off), then one ``optimize``, timed in wall and CPU seconds. Then ``--queries`` searches
(stored vectors plus noise, k=10) report p50 and recall@10 against exact search, with no filter and with a
filter on one dataset of ten (the filter the ``dataset`` field's per-value HNSW links exist for).

``--vectors clustered`` (default) uses ``bench_search``'s embedding-like vectors; ``gaussian`` uses i.i.d.
normal vectors, HNSW's worst case (recall is low on them whatever the knobs). Configs ending in ``@ef100``
search with ``hnsw_ef=100``, the beam the default config searches with (Qdrant's default search beam is the
build's ``ef_construct``), so that they differ from the default in the graph only.

    PYTHONPATH=$PWD python scripts/bench_index_knobs.py --n 300000 \
        --configs default@ef100,ef_construct=80@ef100,ef_construct=64@ef100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import DIM, Corpus  # noqa: E402

from samsearch.vectors import edge  # noqa: E402
from samsearch.vectors.base import Filter, Match  # noqa: E402
from samsearch.vectors.edge import EdgeVectorStore  # noqa: E402

COLL = "segments"
LINKED_SCHEMAS = edge._index_schemas  # the store's own

# name -> (HnswIndexConfig overrides, EdgeOptimizersConfig overrides, extra: quantization / links / search ef)
CONFIGS: dict[str, tuple[dict, dict, dict]] = {
    "default": ({}, {}, {}),
    "default@ef100": ({}, {}, {"hnsw_ef": 100}),
    "ef_construct=80@ef100": ({"ef_construct": 80}, {}, {"hnsw_ef": 100}),
    "ef_construct=64@ef100": ({"ef_construct": 64}, {}, {"hnsw_ef": 100}),
    "ef_construct=64": ({"ef_construct": 64}, {}, {}),
    "m=12": ({"m": 12}, {}, {}),
    "payload_m=8": ({"payload_m": 8}, {}, {}),
    "max_indexing_threads=1": ({"max_indexing_threads": 1}, {}, {}),
    "no per-value links": ({}, {}, {"links": False}),
    "int8 quantization": ({}, {}, {"int8": True}),
    "2 segments": ({}, {"default_segment_number": 2, "max_segment_size": 160_000}, {}),
}


class KnobStore(EdgeVectorStore):
    def __init__(self, root: Path, hnsw: dict, opt: dict, extra: dict) -> None:
        super().__init__(root, fsync=False, index_threshold=0, hnsw_ef=extra.get("hnsw_ef"))
        self.hnsw, self.opt, self.int8 = hnsw, opt, extra.get("int8", False)

    def _config(self, dim: int) -> qe.EdgeConfig:
        base = super()._config(dim)
        hnsw = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10_000, **self.hnsw}
        quant = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, always_ram=True) if self.int8 else None
        return qe.EdgeConfig(vectors=base.vectors, hnsw_config=qe.HnswIndexConfig(**hnsw), quantization_config=quant,
                             optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1000, **self.opt))


def unlinked_schemas() -> dict[str, Any]:
    """The store's payload indexes with no per-value HNSW links on any field."""
    out: dict[str, Any] = {}
    for f, p in LINKED_SCHEMAS().items():
        if isinstance(p, qe.IntegerIndexParams):
            out[f] = qe.IntegerIndexParams(lookup=True, range=True, enable_hnsw=False)
        else:
            out[f] = type(p)(enable_hnsw=False)
    return out


def vectors(n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "gaussian":
        rng = np.random.default_rng(0)
        return rng.standard_normal((n, DIM)).astype(np.float32), rng.integers(0, 10, n)
    x, _, datasets, _ = Corpus(n, 0).arrays()
    return x, datasets


def series(store: EdgeVectorStore, queries: np.ndarray, flt: Filter | None) -> tuple[float, float]:
    """(recall@10 against exact search, p50 ms)."""
    found, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        got = store.search(COLL, q, 10, flt=flt)
        times.append(time.perf_counter() - t0)
        exact = store.search(COLL, q, 10, flt=flt, exact=True)
        found.append(len({h.id for h in got} & {h.id for h in exact}) / 10)
    return round(float(np.mean(found)), 3), round(float(np.median(times)) * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30_000, help="points per build")
    ap.add_argument("--configs", default="default,ef_construct=64@ef100,default@ef100",
                    help=f"comma-separated, from: {'; '.join(CONFIGS)}")
    ap.add_argument("--vectors", choices=["clustered", "gaussian"], default="clustered")
    ap.add_argument("--queries", type=int, default=300, help="searches per series")
    args = ap.parse_args()
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in names:
        if name not in CONFIGS:
            ap.error(f"unknown config {name!r}")
    x, datasets = vectors(args.n, args.vectors)
    rng = np.random.default_rng(5)
    queries = x[rng.choice(args.n, args.queries, replace=False)]
    queries = queries + 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
    for name in names:
        hnsw, opt, extra = CONFIGS[name]
        edge._index_schemas = LINKED_SCHEMAS if extra.get("links", True) else unlinked_schemas
        try:
            with tempfile.TemporaryDirectory(prefix="knobs-") as tmp:
                s = KnobStore(Path(tmp) / "v", hnsw, opt, extra)
                s.ensure_collection(COLL, DIM)
                for a in range(0, args.n, 2000):
                    rows = range(a, min(a + 2000, args.n))
                    s.upsert(COLL, [str(uuid.UUID(int=i + 1)) for i in rows], x[a:a + len(rows)],
                             [{"image_id": i // 8, "dataset": f"d{datasets[i]}", "source": "auto", "area": 100}
                              for i in rows])
                t0, cpu0 = time.perf_counter(), time.process_time()
                s.optimize(COLL)
                build, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                info = s._get(COLL).shard.info()
                recall, p50 = series(s, queries, None)
                recall_ds, p50_ds = series(s, queries, Filter(must=[Match("dataset", "d3")]))
                print(json.dumps({"config": name, "n": args.n, "vectors": args.vectors, "build_s": round(build, 1),
                                  "cpu_s": round(cpu, 1), "indexed": info.indexed_vectors_count,
                                  "segments": info.segments_count, "recall@10": recall, "p50_ms": p50,
                                  "recall@10_one_dataset": recall_ds, "p50_ms_one_dataset": p50_ds}), flush=True)
                s.close()
        finally:
            edge._index_schemas = LINKED_SCHEMAS


if __name__ == "__main__":
    main()

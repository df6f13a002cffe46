"""Storage of a second embedding space on Qdrant Edge: named vectors in one shard vs one shard per space.

Measures, for N points with a 256-d ``sam`` vector and a D-d second space (raw qdrant-edge calls, the
store's own indexes left out so that only the layout differs):
  * write: upsert of both spaces at ingest; adding the second space to points already stored
    (``update_vectors`` of a named vector created afterwards vs upsert into a new shard);
  * label payload write: ``set_payload`` of one label on half the points (one shard vs two);
  * search latency in each space after ``optimize`` (HNSW), mean over Q queries;
  * disk after flush.

    python scripts/bench_space_storage.py --n 20000 --dim 768 --queries 200
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import qdrant_edge as qe

SAM_DIM = 256


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def params(dim: int) -> qe.EdgeVectorParams:
    return qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)


def config(vectors) -> qe.EdgeConfig:
    return qe.EdgeConfig(vectors=vectors, hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100,
                                                                          full_scan_threshold=10_000))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def search_ms(shard, queries: np.ndarray, using: str | None) -> float:
    t = time.perf_counter()
    for q in queries:
        shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(q.tolist(), using=using),
                                    with_payload=False))
    return 1000 * (time.perf_counter() - t) / len(queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="points")
    ap.add_argument("--dim", type=int, default=768, help="dimension of the second space")
    ap.add_argument("--queries", type=int, default=200, help="search queries per space")
    ap.add_argument("--batch", type=int, default=1000, help="points per write call")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(a.n)]
    sam, extra = unit(rng.normal(size=(a.n, SAM_DIM))), unit(rng.normal(size=(a.n, a.dim)))
    payloads = [{"dataset": "d", "image_id": i // 10, "area": i} for i in range(a.n)]
    qs, qx = unit(rng.normal(size=(a.queries, SAM_DIM))), unit(rng.normal(size=(a.queries, a.dim)))
    half = ids[: a.n // 2]
    spans = [range(s, min(s + a.batch, a.n)) for s in range(0, a.n, a.batch)]
    root = Path(tempfile.mkdtemp(prefix="bench_space_storage_"))
    out: dict[str, dict[str, float]] = {"named": {}, "per-space": {}}
    try:
        # -- named vectors: "" (sam) + "x" in one shard -------------------------------------------
        p = root / "named"
        p.mkdir()
        sh = qe.EdgeShard.create(str(p), config({"": params(SAM_DIM), "x": params(a.dim)}))
        out["named"]["ingest both s"] = timed(lambda: [sh.update(qe.UpdateOperation.upsert_points(
            [qe.Point(ids[i], {"": sam[i].tolist(), "x": extra[i].tolist()}, payloads[i]) for i in r]))
            for r in spans] and sh.flush())
        sh.close()
        shutil.rmtree(p)
        p.mkdir()
        sh = qe.EdgeShard.create(str(p), config(params(SAM_DIM)))
        for r in spans:
            sh.update(qe.UpdateOperation.upsert_points([qe.Point(ids[i], sam[i].tolist(), payloads[i])
                                                        for i in r]))
        sh.flush()

        def add_named() -> None:
            sh.update(qe.UpdateOperation.create_dense_vector("x", a.dim, qe.Distance.Cosine))
            for r in spans:
                sh.update(qe.UpdateOperation.update_vectors(
                    [qe.PointVectors(ids[i], {"x": extra[i].tolist()}) for i in r]))
            sh.flush()

        out["named"]["add space s"] = timed(add_named)
        out["named"]["label write s"] = timed(lambda: (sh.update(qe.UpdateOperation.set_payload(
            half, {"label": "car"})), sh.flush()))
        out["named"]["optimize s"] = timed(sh.optimize)
        out["named"]["search sam ms"] = search_ms(sh, qs, None)
        out["named"]["search x ms"] = search_ms(sh, qx, "x")
        sh.flush()
        sh.close()
        out["named"]["disk MB"] = du(p) / 1e6

        # -- one shard per space --------------------------------------------------------------------
        shards = {}
        for name, dim, vecs in (("sam", SAM_DIM, sam), ("x", a.dim, extra)):
            q = root / name
            q.mkdir()
            shards[name] = s = qe.EdgeShard.create(str(q), config(params(dim)))
            dt = timed(lambda s=s, vecs=vecs: [s.update(qe.UpdateOperation.upsert_points(
                [qe.Point(ids[i], vecs[i].tolist(), payloads[i]) for i in r])) for r in spans] and s.flush())
            out["per-space"]["ingest both s" if name == "sam" else "add space s"] = dt
        out["per-space"]["ingest both s"] += out["per-space"]["add space s"]
        out["per-space"]["label write s"] = sum(timed(lambda s=s: (s.update(qe.UpdateOperation.set_payload(
            half, {"label": "car"})), s.flush())) for s in shards.values())
        out["per-space"]["optimize s"] = sum(timed(s.optimize) for s in shards.values())
        out["per-space"]["search sam ms"] = search_ms(shards["sam"], qs, None)
        out["per-space"]["search x ms"] = search_ms(shards["x"], qx, None)
        for s in shards.values():
            s.flush()
            s.close()
        out["per-space"]["disk MB"] = (du(root / "sam") + du(root / "x")) / 1e6
    finally:
        shutil.rmtree(root, ignore_errors=True)
    keys = list(out["named"])
    print(f"n={a.n} sam=256-d second={a.dim}-d queries={a.queries} batch={a.batch}")
    print(f"{'':16}{'named':>12}{'per-space':>12}")
    for k in keys:
        print(f"{k:16}{out['named'][k]:12.3f}{out['per-space'][k]:12.3f}")


if __name__ == "__main__":
    main()

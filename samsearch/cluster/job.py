"""Clustering as a batch job: group every stored segment by its embedding to discover classes nobody labeled.

One run: stream the selected segments' vectors out of the vector store (``dataset``/``label`` filters run
inside the store), cluster them with scikit-learn, and write the result back under a named run:

* SQL: a ``cluster_runs`` row, and one ``segment_clusters`` row per segment (cluster id, cosine distance to
  its cluster's centre), written through a temporary table in one set-based statement;
* when the run is current (the default for a new run; one run at a time): ``segments.cluster`` /
  ``segments.cluster_run`` and the indexed integer payload field ``cluster`` of every vector mirror it,
  which is what ``--cluster`` filters match. Payloads are set with one call per cluster (in chunks of
  ``cluster_writeback.PAYLOAD_CHUNK`` ids), never point by point, and only where the value changes;
  SQL and payloads are written at the same time (see :mod:`samsearch.cluster.writeback`).

Cluster ids: ``0, 1, ...`` by decreasing size (ties by the algorithm's own order); noise (DBSCAN, HDBSCAN)
is :data:`NOISE` (``-1``), never 0. Centres are the normalised means of the members' vectors in the
original space, whatever space the algorithm ran in; distance = ``1 - cosine(vector, centre)``.

Determinism: vectors are read in id order and every random choice is seeded (``seed``), so re-running a
run with the same settings on the same segments gives the same ids, and re-running a named run replaces
its rows (no duplicates).

Scale: KMeans and MiniBatchKMeans are linear in the number of segments. DBSCAN and HDBSCAN compare
every pair of vectors (quadratic time; HDBSCAN also quadratic memory): fine for tens of thousands of
segments, hopeless for a million. For a million segments use ``minibatch-kmeans`` with ``sample``
(fit on a random sample, then assign every segment to its nearest centre); see docs/BENCHMARKS.md.
``sample`` with DBSCAN/HDBSCAN fits on the sample and assigns the rest by nearest neighbour (DBSCAN:
the nearest core sample within ``eps``, else noise; HDBSCAN: the label of the nearest sampled segment).
``pca`` runs the algorithm on a PCA-reduced, re-normalised copy (fitted on at most 100,000 vectors).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session
from threadpoolctl import threadpool_limits

from samsearch.cluster.writeback import MISSING, clustered_payloads, make_current_sql, plan_payload, write_back
from samsearch.db import ClusterRun, SegmentCluster
from samsearch.db.runs import recorded_run
from samsearch.errors import InputError, NotFoundError
from samsearch.home import SAM_SPACE, Home, space_collection
from samsearch.vectors import Filter, IsNull, Match

ALGORITHMS: tuple[str, ...] = ("kmeans", "minibatch-kmeans", "dbscan", "hdbscan")
KMEANS_FAMILY = ("kmeans", "minibatch-kmeans")
NOISE = -1
DEFAULT_EPS = 0.1  # cosine distance; see README (Clustering) for how to pick it
PCA_FIT_MAX = 100_000
_NN_BLOCK = 2**24  # entries of one query×reference similarity block (64 MB of float32)
# Most vectors DBSCAN fits on (without ``allow_large``). It keeps every neighbour pair within eps: ~1.1 GB of
# distance chunks plus 8 bytes a pair, and k tight clusters make ~n²/k pairs. Measured (docs/BENCHMARKS.md,
# 256-d, 6 tight clusters): 20k 1.8 GB, 40k 3.2 GB; so ~4.4 GB at 50k and ~54 GB at 200k.
FIT_LIMITS = {"dbscan": 50_000}


@dataclass
class ClusterOptions:
    """What to cluster and how. ``n_clusters`` is required by the KMeans family; ``eps`` (cosine distance)
    and ``min_samples`` drive DBSCAN; HDBSCAN uses ``min_cluster_size`` (default ``min_samples``) and
    ``min_samples``. ``sample``/``pca`` are the large-collection route (see the module docstring)."""

    algorithm: str = "minibatch-kmeans"
    n_clusters: int | None = None
    eps: float = DEFAULT_EPS
    min_samples: int = 5
    min_cluster_size: int | None = None
    dataset: str | None = None
    label: str | None = None
    unlabeled: bool = False
    sample: int | None = None
    pca: int | None = None
    seed: int = 0
    name: str | None = None
    make_current: bool = True
    read_batch: int = 4096
    space: str = SAM_SPACE  # the embedding space whose vectors are clustered
    allow_large: bool = False  # fit DBSCAN on more than FIT_LIMITS vectors anyway

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise InputError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        if self.algorithm in KMEANS_FAMILY and self.n_clusters is None:
            raise InputError(f"--algorithm {self.algorithm} needs --n-clusters N")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise InputError(f"--n-clusters must be at least 1, not {self.n_clusters}")
        if not 0 < self.eps <= 2:
            raise InputError(f"--eps is a cosine distance in (0, 2], not {self.eps}")
        if self.min_samples < 1:
            raise InputError(f"--min-samples must be at least 1, not {self.min_samples}")
        if self.min_cluster_size is not None and self.min_cluster_size < 2:
            raise InputError(f"--min-cluster-size must be at least 2, not {self.min_cluster_size}")
        if self.sample is not None and self.sample < 1:
            raise InputError(f"--sample must be at least 1, not {self.sample}")
        if self.pca is not None and self.pca < 1:
            raise InputError(f"--pca must be at least 1, not {self.pca}")
        if self.label is not None and self.unlabeled:
            raise InputError("--label and --unlabeled exclude each other")
        if self.name is not None and not (0 < len(self.name) <= 200 and self.name.strip() == self.name):
            raise InputError(f"--name must be 1-200 characters without surrounding spaces, not {self.name!r}")

    def check_fit_size(self, n: int) -> None:
        """Refuse to fit on more vectors than :data:`FIT_LIMITS` allows (``--sample`` fits on fewer)."""
        limit = FIT_LIMITS.get(self.algorithm)
        fit = min(n, self.sample) if self.sample is not None else n
        if limit is None or fit <= limit or self.allow_large:
            return
        what = f"a sample of {fit} segments" if fit < n else f"{n} segments"
        raise InputError(
            f"--algorithm {self.algorithm} on {what} is above its limit of {limit:,} (it keeps every neighbour "
            f"pair in memory: ~4.4 GB at 50,000 segments in tight clusters, docs/BENCHMARKS.md); add --sample "
            f"{limit} (fit on a sample, assign the rest to the nearest core sample within --eps), or "
            "--allow-large to run it anyway")

    def identity(self) -> dict[str, Any]:
        """Everything that decides the result (not the run's name or whether it becomes current)."""
        params: dict[str, Any] = {"algorithm": self.algorithm}
        if self.algorithm in KMEANS_FAMILY:
            params["n_clusters"] = self.n_clusters
        elif self.algorithm == "dbscan":
            params.update(eps=self.eps, min_samples=self.min_samples)
        else:
            params.update(min_cluster_size=self.min_cluster_size or max(2, self.min_samples),
                          min_samples=self.min_samples)
        params.update(dataset=self.dataset, label=self.label, unlabeled=self.unlabeled, sample=self.sample,
                      pca=self.pca, seed=self.seed)
        if self.space != SAM_SPACE:  # runs in ``sam`` keep the names and settings they had before spaces
            params["space"] = self.space
        return params

    def run_name(self) -> str:
        """``name``, or ``<algorithm>-<hash of the settings>``: the same command names the same run."""
        if self.name:
            return self.name
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.algorithm}-{digest}"

    def describe_filter(self) -> str:
        parts = [f"--dataset {self.dataset}" if self.dataset is not None else "",
                 f"--label {self.label}" if self.label is not None else "", "--unlabeled" if self.unlabeled else ""]
        parts = [p for p in parts if p]
        return f" matching {' '.join(parts)}" if parts else ""

    def store_filter(self) -> Filter | None:
        must: list[Any] = []
        if self.dataset is not None:
            must.append(Match("dataset", self.dataset))
        if self.label is not None:
            must.append(Match("label", self.label))
        if self.unlabeled:
            must.append(IsNull("label"))
        return Filter.of(*must)


@dataclass
class ClusterSummary:
    run: str
    run_id: int
    algorithm: str
    settings: dict[str, Any]
    segments: int  # vectors clustered
    stored: int  # of them with a segment row in SQL (the rest are leftovers of an interrupted ingest)
    clusters: int
    noise: int
    sizes: list[int]  # members per cluster id 0..clusters-1
    current: bool
    replaced: bool  # the named run existed and was recomputed
    names_dropped: int  # cluster names forgotten because the settings changed
    payload_updates: int  # vectors whose payload ``cluster`` changed
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Selection:
    """The vectors of one run, in store (id) order, with their ``cluster`` payload before the run."""

    ids: list[str]
    vectors: np.ndarray  # (n, d) float32, unit rows
    old_clusters: np.ndarray  # (n,) int64, MISSING where the payload has none


# -- reading -----------------------------------------------------------------------------------------


def read_vectors(home: Home, flt: Filter | None, batch: int = 4096, progress: bool = False,
                 space_name: str = SAM_SPACE) -> Selection:
    """Stream the matching vectors of space ``space_name`` out of the store (the filter runs in the store)
    into one matrix."""
    from tqdm import tqdm

    coll = space_collection(space_name)
    if space_name == SAM_SPACE:
        space = home.embedding_space()
        if space is None or not home.vectors.has_collection(coll):
            raise InputError(f"{home.root}: no segments to cluster (run `samsearch ingest` first)")
    else:
        space = home.space(space_name)  # NotFoundError naming the spaces the home has
    total = home.vectors.count(coll, flt)
    x = np.empty((total, space.dim), dtype=np.float32)
    old = np.full(total, MISSING, dtype=np.int64)
    ids: list[str] = []
    with tqdm(total=total, desc="read vectors", unit="vec", disable=not progress) as bar:
        for b in home.vectors.scroll_vectors(coll, flt, batch_size=batch, payload_fields=("cluster",)):
            start, end = len(ids), len(ids) + len(b.ids)
            if end > len(x):  # segments arrived since the count: grow
                grow = max(end, int(len(x) * 1.25) + 1)
                x = np.concatenate([x, np.empty((grow - len(x), space.dim), np.float32)])
                old = np.concatenate([old, np.full(grow - len(old), MISSING, np.int64)])
            x[start:end] = b.vectors
            values = [p.get("cluster") for p in b.payloads]
            old[start:end] = [MISSING if v is None else int(v) for v in values]
            ids.extend(b.ids)
            bar.update(len(b.ids))
    n = len(ids)
    return Selection(ids, x[:n], old[:n])


# -- clustering ----------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32, copy=False)


def _nearest(queries: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and cosine distance to each query's nearest reference row (unit rows), in blocks."""
    idx = np.empty(len(queries), dtype=np.int64)
    dist = np.empty(len(queries), dtype=np.float32)
    step = max(1, _NN_BLOCK // max(1, len(refs)))
    for s in range(0, len(queries), step):
        sims = queries[s:s + step] @ refs.T
        best = sims.argmax(axis=1)
        idx[s:s + step] = best
        dist[s:s + step] = 1.0 - sims[np.arange(len(best)), best]
    return idx, dist


def _reduce(x: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """A PCA-reduced, re-normalised copy (so that cosine geometry still holds), fitted on a sample."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    dims = min(dims, x.shape[1], len(x))
    fit_on = x if len(x) <= PCA_FIT_MAX else x[np.sort(rng.choice(len(x), PCA_FIT_MAX, replace=False))]
    pca = PCA(n_components=dims, random_state=seed, svd_solver="randomized" if dims < x.shape[1] else "full")
    pca.fit(fit_on)
    out = np.empty((len(x), dims), dtype=np.float32)
    for s in range(0, len(x), 65536):
        out[s:s + 65536] = pca.transform(x[s:s + 65536])
    return _unit(out)


def fit_labels(x: np.ndarray, options: ClusterOptions, timings: dict[str, float] | None = None) -> np.ndarray:
    """Raw cluster labels (``-1`` = noise) of the unit rows ``x`` under ``options``."""
    from sklearn.cluster import DBSCAN, HDBSCAN, KMeans, MiniBatchKMeans

    timings = timings if timings is not None else {}
    n = len(x)
    options.check_fit_size(n)
    t0 = time.perf_counter()
    space = _reduce(x, options.pca, options.seed) if options.pca else x
    timings["pca"] = time.perf_counter() - t0
    sampled = options.sample is not None and options.sample < n
    fit_idx = np.sort(np.random.default_rng(options.seed).choice(n, options.sample, replace=False)) if sampled \
        else None
    fit_x = space[fit_idx] if fit_idx is not None else space

    t0 = time.perf_counter()
    if options.algorithm in KMEANS_FAMILY:
        k = min(int(options.n_clusters or 1), len(fit_x))
        if options.algorithm == "kmeans":
            model: Any = KMeans(n_clusters=k, n_init=10, random_state=options.seed)
            model.fit(fit_x)
        else:
            model = MiniBatchKMeans(n_clusters=k, n_init=10, batch_size=4096, random_state=options.seed)
            # One thread: its many small steps spend more time synchronising two OpenMP threads than
            # computing (8x slower wall time on a busy 2-core machine, no faster on an idle one).
            with threadpool_limits(limits=1):
                model.fit(fit_x)
        timings["fit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = model.predict(space) if sampled else model.labels_
    else:  # dbscan / hdbscan: fit on the sample, then label the rest from it
        if options.algorithm == "dbscan":
            model = DBSCAN(eps=options.eps, min_samples=options.min_samples, metric="cosine", algorithm="brute")
        else:
            model = HDBSCAN(min_cluster_size=options.min_cluster_size or max(2, options.min_samples),
                            min_samples=options.min_samples, metric="cosine", copy=True)
        fit_labels_ = model.fit(fit_x).labels_
        timings["fit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = fit_labels_
        if sampled:
            labels = np.full(n, NOISE, dtype=np.int64)
            labels[fit_idx] = fit_labels_
            rest = np.setdiff1d(np.arange(n), fit_idx)
            if options.algorithm == "dbscan":
                # DBSCAN's own rule for border points: the cluster of the nearest core sample within eps.
                cores = model.core_sample_indices_
                if len(cores) and len(rest):
                    nn, d = _nearest(space[rest], fit_x[cores])
                    labels[rest] = np.where(d <= options.eps, fit_labels_[cores][nn], NOISE)
            elif len(rest):  # HDBSCAN: the label of the nearest sampled segment
                nn, _ = _nearest(space[rest], fit_x)
                labels[rest] = fit_labels_[nn]
    timings["assign"] = time.perf_counter() - t0
    # HDBSCAN marks infinite/missing values -2, -3: both are noise to us
    return np.where(np.asarray(labels) >= 0, labels, NOISE).astype(np.int64)


def renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids 0.. by decreasing size (ties: lower old id first); noise stays ``-1``."""
    members = labels >= 0
    if not members.any():
        return labels.copy()
    old_ids, counts = np.unique(labels[members], return_counts=True)
    order = np.lexsort((old_ids, -counts))
    mapping = np.full(int(old_ids.max()) + 1, NOISE, dtype=np.int64)
    mapping[old_ids[order]] = np.arange(len(old_ids))
    return np.where(members, mapping[np.where(members, labels, 0)], NOISE)


def centres_and_distances(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit centres (mean member vector, normalised) of clusters ``0..k-1`` and each row's cosine distance
    to its centre (NaN for noise)."""
    k = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    dist = np.full(len(x), np.nan, dtype=np.float32)
    if k == 0:
        return np.zeros((0, x.shape[1]), np.float32), dist
    members = np.flatnonzero(labels >= 0)
    # one sparse (k × n) membership matrix times the vectors: every cluster's sum in one product
    onehot = sparse.csr_matrix((np.ones(len(members), np.float32), (labels[members], members)),
                               shape=(k, len(x)))
    centres = _unit(np.asarray(onehot @ x))
    for s in range(0, len(members), 65536):
        rows = members[s:s + 65536]
        dist[rows] = 1.0 - np.einsum("ij,ij->i", x[rows], centres[labels[rows]])
    return centres, dist


# -- runs ------------------------------------------------------------------------------------------------


def find_run(session: Session, name: str) -> ClusterRun:
    run = session.execute(select(ClusterRun).where(ClusterRun.name == name)).scalar()
    if run is None:
        known = session.execute(select(ClusterRun.name).order_by(ClusterRun.id)).scalars().all()
        hint = f"known runs: {', '.join(known)}" if known else "no clustering runs yet; `samsearch cluster` makes one"
        raise NotFoundError(f"no clustering run named {name!r} ({hint})")
    return run


def current_run_name(home: Home) -> str | None:
    with home.db.session() as s:
        return s.execute(select(ClusterRun.name).where(ClusterRun.is_current.is_(True))).scalar()


def run_clustering(home: Home, options: ClusterOptions, progress: bool = True) -> ClusterSummary:
    """Library entry point of ``samsearch cluster``: cluster the selected segments under a named run."""
    options.validate()
    home.claim_writes()  # refused beside another process holding an embedded store, before any write
    name = options.run_name()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    coll = space_collection(options.space)
    if options.algorithm in FIT_LIMITS and home.vectors.has_collection(coll):  # refuse before reading anything
        options.check_fit_size(home.vectors.count(coll, options.store_filter()))
    with recorded_run(home.db, "cluster", {**options.identity(), "name": name}) as job:
        t0 = time.perf_counter()
        flt = options.store_filter()
        sel = read_vectors(home, flt, options.read_batch, progress, options.space)
        timings["read"] = time.perf_counter() - t0
        if not sel.ids:
            raise InputError(f"{home.root}: no segments{options.describe_filter()} to cluster")
        labels = renumber_by_size(fit_labels(sel.vectors, options, timings))
        t0 = time.perf_counter()
        _, dist = centres_and_distances(sel.vectors, labels)
        timings["centres"] = time.perf_counter() - t0
        sizes = np.bincount(labels[labels >= 0]).tolist() if (labels >= 0).any() else []
        noise = int((labels == NOISE).sum())
        cohesion = [round(float(1 - np.nanmean(dist[labels == c])), 4) for c in range(len(sizes))]
        stats = {"segments": len(sel.ids), "clusters": len(sizes), "noise": noise, "sizes": sizes,
                 "cohesion": cohesion}

        # An unfiltered read saw every vector; after a filtered one, the others holding a cluster (of an
        # older run) are looked up to be cleared.
        sql, updates = write_back(home, name, options.algorithm, options.identity(), options.make_current,
                                  sel.ids, labels, dist, sel.old_clusters,
                                  # only the sam space holds every segment: another one read all only if full
                                  flt is None and options.space == SAM_SPACE, stats, progress, timings)
        summary = ClusterSummary(
            run=name, run_id=sql.run_id, algorithm=options.algorithm, settings=options.identity(),
            segments=len(sel.ids), stored=sql.stored, clusters=len(sizes), noise=noise, sizes=sizes,
            current=options.make_current, replaced=sql.replaced, names_dropped=sql.names_dropped,
            payload_updates=updates,
            seconds=time.perf_counter() - started, stage_seconds={k: round(v, 4) for k, v in timings.items()},
        )
        job.counts = summary.as_dict
    return summary


def use_run(home: Home, name: str, progress: bool = True) -> int:
    """Make an existing run the current one (SQL, then payloads); returns how many payloads changed."""
    home.claim_writes()
    with home.db.session() as s:
        run = find_run(s, name)
        make_current_sql(s, run)
        rows = s.execute(select(SegmentCluster.segment_id, SegmentCluster.cluster)
                         .where(SegmentCluster.run_id == run.id).order_by(SegmentCluster.segment_id)).all()
    now = clustered_payloads(home)
    ids = [r[0] for r in rows]
    labels = np.asarray([r[1] for r in rows], dtype=np.int64)
    old = np.asarray([now.get(i, MISSING) for i in ids], dtype=np.int64)
    plan = plan_payload(ids, labels, old, now)
    plan.apply(home, progress)
    return len(plan)


def delete_run(home: Home, name: str) -> int:
    """Forget a run (its cluster ids and names; labels already written stay). When it was current, the
    segments' cluster fields and payloads are cleared. Returns how many segments it held."""
    home.claim_writes()
    with home.db.session() as s:
        run = find_run(s, name)
        run_id, was_current = run.id, bool(run.is_current)
    if was_current:  # payloads first: a crash here leaves the run in SQL, and `cluster use` repairs it
        plan_payload([], np.zeros(0, np.int64), np.zeros(0, np.int64), clustered_payloads(home)).apply(home)
    with home.db.session() as s:
        count = s.execute(delete(SegmentCluster).where(SegmentCluster.run_id == run_id)).rowcount
        if was_current:
            s.execute(text("UPDATE segments SET cluster = NULL, cluster_run = NULL WHERE cluster_run = :name"),
                      {"name": name})
        s.execute(delete(ClusterRun).where(ClusterRun.id == run_id))
    return int(count)

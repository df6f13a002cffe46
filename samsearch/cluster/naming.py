"""From a discovered cluster to a label: name a cluster, and hand named clusters to a memory bank.

Naming writes the label to the cluster's members only, as ``label_source = "cluster"`` (distinct from
``bank`` and ``manual`` labels), in SQL and in the vector payload (``label``, ``label_source``; the bank
fields ``label_score``/``bank`` are cleared). Segments a person labeled (``label_source = "manual"``) keep
their label unless ``overwrite_manual`` is given. Naming again (same or another label) is idempotent and
relabels the members that carry a cluster or bank label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import func, select, text, update

from samsearch.cluster.job import NOISE, find_run
from samsearch.db import ClusterName, Segment, SegmentCluster
from samsearch.errors import InputError
from samsearch.home import SAM_SPACE, Home, space_collection

LABEL_SOURCE = "cluster"
MAX_LABEL = 200
_RETRIEVE_CHUNK = 1024
_PAYLOAD_CHUNK = 50_000


@dataclass
class NameSummary:
    run: str
    cluster: int
    label: str
    members: int
    labeled: int  # members that now carry the label from this cluster
    kept_manual: int  # members whose manual label was kept

    def as_dict(self) -> dict:
        return asdict(self)


def _check_label(label: str) -> str:
    if not label or label.strip() != label or len(label) > MAX_LABEL:
        raise InputError(f"a label must be 1-{MAX_LABEL} characters without surrounding spaces, not {label!r}")
    return label


def name_cluster(
    home: Home, run: str, cluster: int, label: str, overwrite_manual: bool = False
) -> NameSummary:
    """Name ``cluster`` of ``run`` and write ``label`` to its members (see the module docstring)."""
    _check_label(label)
    if cluster == NOISE:
        raise InputError(f"cluster {NOISE} is noise, not a cluster; name one of the clusters 0..N")
    home.claim_writes()  # SQL and payloads change together or not at all
    with home.db.session() as s:
        r = find_run(s, run)
        in_cluster = select(SegmentCluster.segment_id).where(
            SegmentCluster.run_id == r.id, SegmentCluster.cluster == cluster)
        members = s.scalar(select(func.count()).select_from(in_cluster.subquery()))
        if not members:
            n = int((r.stats or {}).get("clusters", 0))
            raise InputError(f"run {run!r} has no cluster {cluster} (its clusters are 0..{n - 1})" if n else
                             f"run {run!r} has no clusters")
        existing = s.get(ClusterName, (r.id, cluster))
        if existing is None:
            s.add(ClusterName(run_id=r.id, cluster=cluster, label=label))
        else:
            existing.label = label
        writable = Segment.id.in_(in_cluster)
        if not overwrite_manual:
            writable &= (Segment.label_source.is_(None)) | (Segment.label_source != "manual")
        ids = s.execute(select(Segment.id).where(writable).order_by(Segment.id)).scalars().all()
        s.execute(update(Segment).where(writable).values(
            label=label, label_source=LABEL_SOURCE, label_score=None, label_bank=None),
            execution_options={"synchronize_session": False})
    # SQL first: a crash before the payloads are written is repaired by naming again (same members).
    payload = {"label": label, "label_source": LABEL_SOURCE, "label_score": None, "bank": None}
    chunks = range(0, len(ids), _PAYLOAD_CHUNK)
    home.set_segment_payloads((ids[i:i + _PAYLOAD_CHUNK], payload) for i in chunks)
    return NameSummary(run, cluster, label, int(members), len(ids), int(members) - len(ids))


def cluster_names(home: Home, run: str) -> dict[int, str]:
    with home.db.session() as s:
        r = find_run(s, run)
        rows = s.execute(select(ClusterName.cluster, ClusterName.label).where(ClusterName.run_id == r.id))
        return {int(c): lab for c, lab in rows}


def cluster_instance_ids(home: Home, run: str) -> dict[str, list[str]]:
    """Segment ids of the members of every named cluster of ``run``, grouped by the cluster's name (two
    clusters given one name pool their members). A member a person labeled otherwise (manual label
    different from the name) is left out: the manual label wins."""
    with home.db.session() as s:
        r = find_run(s, run)
        rows = s.execute(text(
            "SELECT cn.label, sc.segment_id FROM cluster_names cn "
            "JOIN segment_clusters sc ON sc.run_id = cn.run_id AND sc.cluster = cn.cluster "
            "JOIN segments sg ON sg.id = sc.segment_id "
            "WHERE cn.run_id = :rid AND NOT (sg.label_source IS NOT NULL AND sg.label_source = 'manual' "
            "AND sg.label IS NOT NULL AND sg.label <> cn.label) "
            "ORDER BY cn.label, sc.segment_id"
        ), {"rid": r.id}).all()
    out: dict[str, list[str]] = {}
    for label, sid in rows:
        out.setdefault(label, []).append(sid)
    return out


def cluster_run_space(home: Home, run: str) -> str:
    """The embedding space clustering run ``run`` read its vectors from (``sam`` unless ``--space``)."""
    with home.db.session() as s:
        return str((find_run(s, run).settings or {}).get("space") or SAM_SPACE)


def cluster_instances(home: Home, run: str) -> dict[str, np.ndarray]:
    """Vectors (float32, ``(n, dim)``) of the members of every named cluster of ``run``, by name: the
    input of a memory bank built from clusters (``samsearch bank build --from-clusters RUN``).

    Raises InputError when the run has no named cluster."""
    groups = cluster_instance_ids(home, run)
    if not groups:
        raise InputError(f"run {run!r} has no named clusters (name them with `samsearch cluster name {run} "
                         "CLUSTER LABEL`)")
    coll = space_collection(cluster_run_space(home, run))
    out: dict[str, np.ndarray] = {}
    for label, ids in groups.items():
        rows: list[np.ndarray] = []
        for start in range(0, len(ids), _RETRIEVE_CHUNK):
            chunk = ids[start:start + _RETRIEVE_CHUNK]
            rows.extend(rec.vector for rec in home.vectors.retrieve(coll, chunk, with_vectors=True)
                        if rec.vector is not None)
        if rows:
            out[label] = np.stack(rows).astype(np.float32, copy=False)
    return out

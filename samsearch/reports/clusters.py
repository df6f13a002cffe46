"""What a clustering run found: sizes, most typical members, cohesion, and a gallery to name clusters by.

* size: members of the cluster (noise, ``-1``, is reported on its own);
* cohesion: the mean cosine similarity of the members to their centre (``1 - mean distance``), in
  [-1, 1]; higher is tighter;
* typical members: the ``top`` members nearest the centre (ties by segment id).

Everything comes from SQL (``segment_clusters``); one windowed query gives every cluster's top members.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from samsearch.cluster.job import NOISE, find_run
from samsearch.db import ClusterName, ClusterRun, SegmentCluster
from samsearch.home import Home
from samsearch.reports.gallery import GalleryItem, GallerySection, write_gallery


@dataclass
class Member:
    segment_id: str
    image_id: int
    image_path: str
    distance: float | None
    rle: dict[str, Any]
    bbox_xywh: tuple[float, float, float, float]
    label: str | None = None


@dataclass
class ClusterInfo:
    cluster: int
    size: int
    name: str | None
    cohesion: float | None  # None for noise
    typical: list[Member] = field(default_factory=list)


@dataclass
class ClusterReport:
    run: str
    algorithm: str
    settings: dict[str, Any]
    is_current: bool
    created_at: str
    segments: int
    noise: int
    clusters: list[ClusterInfo]  # by cluster id; noise last

    def as_dict(self, with_masks: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_masks:
            for c in d["clusters"]:
                for m in c["typical"]:
                    m.pop("rle")
        return d


def list_runs(home: Home) -> list[dict[str, Any]]:
    with home.db.session() as s:
        runs = s.execute(select(ClusterRun).order_by(ClusterRun.id)).scalars().all()
        named = dict(s.execute(select(ClusterName.run_id, func.count()).group_by(ClusterName.run_id)).all())
        return [{
            "name": r.name, "algorithm": r.algorithm, "current": bool(r.is_current),
            "segments": (r.stats or {}).get("stored", (r.stats or {}).get("segments")),
            "clusters": (r.stats or {}).get("clusters"), "noise": (r.stats or {}).get("noise"),
            "named": int(named.get(r.id, 0)), "settings": r.settings, "created_at": r.created_at.isoformat(),
        } for r in runs]


def cluster_report(home: Home, run: str, top: int = 8) -> ClusterReport:
    """Sizes, cohesion and the ``top`` most typical members of every cluster of ``run``."""
    with home.db.session() as s:
        r = find_run(s, run)
        rows = s.execute(
            select(SegmentCluster.cluster, func.count(), func.avg(SegmentCluster.distance))
            .where(SegmentCluster.run_id == r.id).group_by(SegmentCluster.cluster)
        ).all()
        names = dict(s.execute(select(ClusterName.cluster, ClusterName.label)
                               .where(ClusterName.run_id == r.id)).all())
        # Members ranked by distance within their cluster (noise: by id), top N of each, in one query.
        typical = s.execute(text(
            "SELECT t.cluster, t.segment_id, t.distance, sg.image_id, im.path, sg.rle_counts, sg.height, "
            "sg.width, sg.bbox_x, sg.bbox_y, sg.bbox_w, sg.bbox_h, sg.label FROM ("
            "  SELECT sc.cluster, sc.segment_id, sc.distance, ROW_NUMBER() OVER ("
            "    PARTITION BY sc.cluster ORDER BY sc.distance, sc.segment_id) AS rank "
            "  FROM segment_clusters sc WHERE sc.run_id = :rid"
            ") t JOIN segments sg ON sg.id = t.segment_id JOIN images im ON im.id = sg.image_id "
            "WHERE t.rank <= :top ORDER BY t.cluster, t.rank"
        ), {"rid": r.id, "top": top}).all()
        info = (r.name, r.algorithm, dict(r.settings or {}), bool(r.is_current), r.created_at.isoformat())
    by_cluster: dict[int, list[Member]] = {}
    for c, sid, dist, image_id, path, counts, h, w, bx, by, bw, bh, label in typical:
        by_cluster.setdefault(int(c), []).append(Member(
            sid, int(image_id), path, None if dist is None else float(dist),
            {"size": [int(h), int(w)], "counts": counts}, (bx, by, bw, bh), label))
    clusters = [
        ClusterInfo(int(c), int(n), names.get(int(c)), None if c == NOISE or avg is None else 1.0 - float(avg),
                    by_cluster.get(int(c), []))
        for c, n, avg in rows
    ]
    clusters.sort(key=lambda ci: (ci.cluster == NOISE, ci.cluster))
    noise = sum(ci.size for ci in clusters if ci.cluster == NOISE)
    return ClusterReport(*info[:4], info[4], sum(ci.size for ci in clusters), noise, clusters)


def write_cluster_gallery(report: ClusterReport, out: Path | str, thumb_size: int = 160) -> Path:
    """One HTML page, one row per cluster with crops of its most typical members (noise last)."""
    sections = []
    for ci in report.clusters:
        head = "noise (-1)" if ci.cluster == NOISE else f"cluster {ci.cluster}"
        if ci.name:
            head += f" · {ci.name}"
        head += f" · {ci.size} segments"
        if ci.cohesion is not None:
            head += f" · cohesion {ci.cohesion:.3f}"
        items = [
            GalleryItem(m.image_path, m.rle, title=Path(m.image_path).name, caption=[
                *([f"distance {m.distance:.3f}"] if m.distance is not None else []),
                *([f"label {m.label}"] if m.label else []), m.segment_id[:8],
            ])
            for m in ci.typical
        ]
        note = "most typical members first (nearest the centre)" if ci.cluster != NOISE else \
            "segments no cluster took"
        sections.append(GallerySection(head, items, note))
    title = f"clustering run {report.run} ({report.algorithm}, {report.segments} segments)"
    return write_gallery(out, title, sections, thumb_size=thumb_size)

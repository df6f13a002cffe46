"""Clustering runs, naming clusters, reports, on synthetic shapes embedded once per module (tiny-random SAM,
annotation masks), copied into fresh homes on both backends (SQLite + Qdrant Edge, Postgres + qdrant-client)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sqlalchemy import func, insert, select, update
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.cluster.job import ClusterOptions, delete_run, run_clustering, use_run
from samsearch.cluster.naming import cluster_instances, name_cluster
from samsearch.db import ClusterName, ClusterRun, Image, ImageDataset, Run, Segment, SegmentCluster
from samsearch.errors import InputError, NotFoundError
from samsearch.home import SEGMENTS, Home
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.reports.clusters import cluster_report, list_runs, write_cluster_gallery
from samsearch.vectors import Filter, IsNull, Match

runner = CliRunner()
N_CLASSES = 6
DBSCAN_EPS = 0.1  # the eps README documents for these embeddings


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_model, shapes):
    """The shapes dataset ingested once (masks prompts): the embeddings every test clusters."""
    with Home(tmp_path_factory.mktemp("cluster-source") / "home") as home:
        summary = ingest(home, [shapes.root], tiny_model,
                         IngestOptions(prompts="masks", annotations=shapes.annotations_path, dataset="shapes"),
                         progress=False)
        assert summary.segments == len(shapes.objects)
        yield home


def _columns(obj) -> dict:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}


def copy_home(src: Home, dst: Home, dataset_of=lambda image_id: "shapes") -> None:
    """Fill ``dst`` with ``src``'s images, segments and vectors (payloads included): real rows, no SAM."""
    with src.db.session() as s:
        images = [_columns(i) for i in s.execute(select(Image).order_by(Image.id)).scalars()]
        segments = [_columns(x) for x in s.execute(select(Segment).order_by(Segment.id)).scalars()]
    for im in images:
        im.update(dataset=dataset_of(im["id"]), run_id=None)
    dst.claim_embedding_space(src.embedding_space())
    with dst.db.session() as s:
        s.execute(insert(Image), images)
        s.execute(insert(ImageDataset), [{"image_id": im["id"], "dataset": im["dataset"]} for im in images])
        s.execute(insert(Segment), segments)
    records = [r for b in src.vectors.scroll(SEGMENTS, with_vectors=True) for r in b]
    datasets = {im["id"]: im["dataset"] for im in images}
    payloads = [{**r.payload, "dataset": [datasets[r.payload["image_id"]]]} for r in records]
    dst.vectors.upsert(SEGMENTS, [r.id for r in records], np.stack([r.vector for r in records]), payloads)


@pytest.fixture
def filled(home, source):
    copy_home(source, home)
    return home


@pytest.fixture(scope="module")
def k6_home(tmp_path_factory, source):
    """One SQLite + Edge copy with run "k6" (kmeans, true k), shared by tests that only add non-current runs
    or only read."""
    with Home(tmp_path_factory.mktemp("cluster-k6") / "home") as home:
        copy_home(source, home)
        run_clustering(home, ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES, name="k6"), progress=False)
        yield home


def assignments(home: Home, run: str) -> dict[str, int]:
    with home.db.session() as s:
        run_id = s.execute(select(ClusterRun.id).where(ClusterRun.name == run)).scalar_one()
        return dict(s.execute(select(SegmentCluster.segment_id, SegmentCluster.cluster)
                              .where(SegmentCluster.run_id == run_id)).all())


def categories(home: Home) -> dict[str, str]:
    with home.db.session() as s:
        return dict(s.execute(select(Segment.id, Segment.annotation_category)).all())


def ari(home: Home, run: str) -> float:
    got, truth = assignments(home, run), categories(home)
    ids = sorted(truth)
    return adjusted_rand_score([truth[i] for i in ids], [got[i] for i in ids])


def payload_clusters(home: Home) -> dict[str, int | None]:
    return {r.id: r.payload.get("cluster") for b in home.vectors.scroll(SEGMENTS) for r in b}


def sql_clusters(home: Home) -> dict[str, tuple[int | None, str | None]]:
    with home.db.session() as s:
        return {i: (c, r) for i, c, r in s.execute(select(Segment.id, Segment.cluster, Segment.cluster_run))}


def assert_mirrors(home: Home, run: str | None) -> None:
    """SQL segments.cluster/cluster_run and the payload field cluster both reflect ``run`` (None: nothing)."""
    want = assignments(home, run) if run else {}
    sql = sql_clusters(home)
    assert {i: c for i, (c, _) in sql.items() if c is not None} == want
    assert {r for _, r in sql.values() if r is not None} == ({run} if want else set())
    assert {i: c for i, c in payload_clusters(home).items() if c is not None} == want


# -- algorithms on real embeddings ------------------------------------------------------------------------


def test_kmeans_with_true_k_recovers_classes(filled):
    summary = run_clustering(filled, ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES, name="k6"),
                             progress=False)
    assert (summary.segments, summary.stored, summary.clusters, summary.noise) == (
        len(categories(filled)), len(categories(filled)), N_CLASSES, 0)
    assert summary.sizes == sorted(summary.sizes, reverse=True) and sum(summary.sizes) == summary.segments
    assert ari(filled, "k6") >= 0.8
    assert_mirrors(filled, "k6")
    assert filled.vectors.count(SEGMENTS, Filter.of(Match("cluster", 0))) == summary.sizes[0]


@pytest.mark.parametrize("options, min_ari", [
    (ClusterOptions(algorithm="minibatch-kmeans", n_clusters=N_CLASSES), 0.8),
    (ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES, sample=40), 0.8),
    (ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES, pca=16), 0.8),
    (ClusterOptions(algorithm="dbscan", eps=DBSCAN_EPS, min_samples=4), 0.8),
    (ClusterOptions(algorithm="dbscan", eps=DBSCAN_EPS, min_samples=3, sample=50), 0.7),
    (ClusterOptions(algorithm="hdbscan", min_samples=4), 0.8),
])
def test_algorithms_find_the_classes(k6_home, options, min_ari):
    options = dataclasses.replace(options, make_current=False)  # the shared home's current run stays k6
    summary = run_clustering(k6_home, options, progress=False)
    assert ari(k6_home, summary.run) >= min_ari
    assert summary.clusters >= 1 and sum(summary.sizes) + summary.noise == summary.segments
    assert summary.payload_updates == 0 and not summary.current
    assert_mirrors(k6_home, "k6")


def test_dbscan_marks_noise_minus_one(filled):
    summary = run_clustering(filled, ClusterOptions(algorithm="dbscan", eps=DBSCAN_EPS, min_samples=4, name="db"),
                             progress=False)
    assert ari(filled, "db") >= 0.8
    got = assignments(filled, "db")
    assert summary.noise > 0 and sum(c == -1 for c in got.values()) == summary.noise
    assert set(got.values()) == {-1, *range(summary.clusters)}  # noise is -1, clusters 0..k-1: never 0 for noise
    assert_mirrors(filled, "db")
    assert filled.vectors.count(SEGMENTS, Filter.of(Match("cluster", -1))) == summary.noise
    with filled.db.session() as s:  # noise has no centre: no distance
        dists = s.execute(select(SegmentCluster.cluster, SegmentCluster.distance)).all()
    assert all((d is None) == (c == -1) for c, d in dists)


# -- runs: idempotence, filters, current run ------------------------------------------------------------


def test_rerun_is_idempotent(filled):
    opts = ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES)
    first = run_clustering(filled, opts, progress=False)
    before = assignments(filled, first.run)
    second = run_clustering(filled, ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES), progress=False)
    assert second.run == first.run and second.replaced and not first.replaced
    assert assignments(filled, second.run) == before
    assert second.payload_updates == 0  # nothing changed, nothing written
    with filled.db.session() as s:
        assert s.scalar(select(func.count()).select_from(ClusterRun)) == 1
        assert s.scalar(select(func.count()).select_from(SegmentCluster)) == len(before)
        assert [r.status for r in s.execute(select(Run).where(Run.kind == "cluster")).scalars()] == ["done"] * 2
    assert_mirrors(filled, first.run)


def test_filtered_runs_and_switching_current(home, source):
    copy_home(source, home, dataset_of=lambda image_id: "odd" if image_id % 2 else "even")
    everything = run_clustering(home, ClusterOptions(algorithm="kmeans", n_clusters=3, name="all"), progress=False)
    odd = run_clustering(home, ClusterOptions(algorithm="kmeans", n_clusters=3, dataset="odd", name="odd"),
                         progress=False)
    with home.db.session() as s:
        n_odd = s.scalar(select(func.count()).select_from(Segment).join(Image).where(Image.dataset == "odd"))
        odd_ids = set(s.execute(select(Segment.id).join(Image).where(Image.dataset == "odd")).scalars())
    assert odd.segments == n_odd < everything.segments
    assert set(assignments(home, "odd")) == odd_ids
    assert_mirrors(home, "odd")  # the even segments lost the cluster of run "all", in SQL and payload
    assert home.vectors.count(SEGMENTS, Filter.of(IsNull("cluster"))) == everything.segments - n_odd
    assert [r["name"] for r in list_runs(home) if r["current"]] == ["odd"]
    assert use_run(home, "all", progress=False) > 0
    assert_mirrors(home, "all")
    assert use_run(home, "all", progress=False) == 0
    run_clustering(home, ClusterOptions(algorithm="kmeans", n_clusters=2, name="later", make_current=False),
                   progress=False)
    assert_mirrors(home, "all")  # --no-current leaves the current run alone
    delete_run(home, "all")
    assert_mirrors(home, None)
    with pytest.raises(NotFoundError, match="no clustering run named 'all'"):
        use_run(home, "all")


@pytest.mark.parametrize("home", ["sqlite+edge"], indirect=True)
@pytest.mark.parametrize("fail", ["sql", "payload"])
def test_failed_write_changes_nothing(filled, monkeypatch, fail):
    """A failure in either half of the write-back leaves SQL and payloads as they were."""
    import samsearch.cluster.writeback as wb

    run_clustering(filled, ClusterOptions(algorithm="kmeans", n_clusters=3, name="before"), progress=False)
    before_sql, before_payload = sql_clusters(filled), payload_clusters(filled)
    if fail == "sql":
        def broken(s, run):
            raise RuntimeError("disk full")
        monkeypatch.setattr(wb, "make_current_sql", broken)
    else:
        real, calls = filled.vectors.set_payloads, []

        def flaky(name, groups):
            calls.append(1)
            if len(calls) == 1:  # the forward write dies after its first group; the undo goes through
                for ids, payload in groups:
                    filled.vectors.set_payload(name, ids, payload)
                    raise RuntimeError("store went away")
            real(name, groups)
        monkeypatch.setattr(filled.vectors, "set_payloads", flaky)
    with pytest.raises(RuntimeError, match="disk full|store went away"):
        run_clustering(filled, ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES, name="after"),
                       progress=False)
    assert [r["name"] for r in list_runs(filled)] == ["before"]
    assert sql_clusters(filled) == before_sql and payload_clusters(filled) == before_payload
    assert_mirrors(filled, "before")
    with filled.db.session() as s:
        assert s.execute(select(Run.status).where(Run.kind == "cluster").order_by(Run.id)).scalars().all() == [
            "done", "failed"]


@pytest.mark.parametrize("options, error", [
    (ClusterOptions(algorithm="kmeans"), "--algorithm kmeans needs --n-clusters N"),
    (ClusterOptions(algorithm="spectral", n_clusters=3), "--algorithm must be one of kmeans, minibatch-kmeans, "
                                                         "dbscan, hdbscan, not 'spectral'"),
    (ClusterOptions(algorithm="dbscan", eps=0), r"--eps is a cosine distance in \(0, 2\], not 0"),
    (ClusterOptions(algorithm="kmeans", n_clusters=0), "--n-clusters must be at least 1, not 0"),
    (ClusterOptions(algorithm="kmeans", n_clusters=2, label="x", unlabeled=True), "exclude each other"),
    (ClusterOptions(algorithm="kmeans", n_clusters=2, name=" x"), "--name must be 1-200 characters"),
    (ClusterOptions(algorithm="kmeans", n_clusters=2, dataset="nope"), "no segments matching --dataset nope to"),
    (ClusterOptions(algorithm="kmeans", n_clusters=2, label="car"), "no segments matching --label car to"),
])
def test_bad_options(k6_home, options, error):
    runs = list_runs(k6_home)
    with pytest.raises(InputError, match=error):
        run_clustering(k6_home, options, progress=False)
    assert list_runs(k6_home) == runs
    assert_mirrors(k6_home, "k6")


# -- naming clusters ------------------------------------------------------------------------------------


def test_naming_labels_members_only(filled):
    run_clustering(filled, ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES, name="k6"), progress=False)
    got = assignments(filled, "k6")
    members = sorted(i for i, c in got.items() if c == 1)
    others = sorted(i for i, c in got.items() if c != 1)
    manual, banked = members[0], others[0]
    with filled.db.session() as s:  # a person's label on a member, a bank label on a non-member
        s.execute(update(Segment).where(Segment.id == manual).values(label="mine", label_source="manual"))
        s.execute(update(Segment).where(Segment.id == banked).values(label="car", label_source="bank",
                                                                     label_score=0.9, label_bank="b"))
    filled.vectors.set_payload(SEGMENTS, [manual], {"label": "mine", "label_source": "manual"})
    filled.vectors.set_payload(SEGMENTS, [banked], {"label": "car", "label_source": "bank", "label_score": 0.9})

    summary = name_cluster(filled, "k6", 1, "thing")
    assert (summary.members, summary.labeled, summary.kept_manual) == (len(members), len(members) - 1, 1)

    def labels():
        with filled.db.session() as s:
            sql = {i: (lab, src) for i, lab, src in s.execute(select(Segment.id, Segment.label, Segment.label_source))}
        pay = {r.id: (r.payload.get("label"), r.payload.get("label_source"))
               for b in filled.vectors.scroll(SEGMENTS) for r in b}
        return sql, pay

    for state in labels():
        assert state[manual] == ("mine", "manual")
        assert state[banked] == ("car", "bank")
        assert all(state[i] == ("thing", "cluster") for i in members if i != manual)
        assert all(state[i] == (None, None) for i in others if i != banked)
    assert name_cluster(filled, "k6", 1, "thing") == summary  # naming again: same result
    assert name_cluster(filled, "k6", 1, "thing", overwrite_manual=True).labeled == len(members)
    for state in labels():
        assert state[manual] == ("thing", "cluster")
    with filled.db.session() as s:
        assert s.execute(select(ClusterName.cluster, ClusterName.label)).all() == [(1, "thing")]


@pytest.mark.parametrize("run, cluster, label, error", [
    ("k6", -1, "x", "cluster -1 is noise, not a cluster"),
    ("k6", 99, "x", r"run 'k6' has no cluster 99 \(its clusters are 0..5\)"),
    ("k6", 0, " x", "a label must be 1-200 characters"),
    ("k6", 0, "", "a label must be 1-200 characters"),
    ("k7", 0, "x", "no clustering run named 'k7'"),
])
def test_naming_errors(k6_home, run, cluster, label, error):
    with pytest.raises((InputError, NotFoundError), match=error):
        name_cluster(k6_home, run, cluster, label)
    with k6_home.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Segment).where(Segment.label.is_not(None))) == 0


@pytest.mark.parametrize("home", ["sqlite+edge"], indirect=True)
def test_cluster_instances_group_named_members(filled):
    run_clustering(filled, ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES, name="k6"), progress=False)
    with pytest.raises(InputError, match="run 'k6' has no named clusters"):
        cluster_instances(filled, "k6")
    got = assignments(filled, "k6")
    name_cluster(filled, "k6", 0, "a")
    name_cluster(filled, "k6", 2, "a")  # two clusters, one name: pooled
    name_cluster(filled, "k6", 3, "b")
    relabeled = sorted(i for i, c in got.items() if c == 3)[0]
    with filled.db.session() as s:  # a person said this member is something else: it leaves the bank's input
        s.execute(update(Segment).where(Segment.id == relabeled).values(label="other", label_source="manual"))
    inst = cluster_instances(filled, "k6")
    assert sorted(inst) == ["a", "b"]
    n = {c: sum(v == c for v in got.values()) for c in range(N_CLASSES)}
    assert inst["a"].shape == (n[0] + n[2], 256) and inst["b"].shape == (n[3] - 1, 256)
    stored = {r.id: r.vector for b in filled.vectors.scroll(SEGMENTS, with_vectors=True) for r in b}
    expect_b = np.stack([stored[i] for i in sorted(i for i, c in got.items() if c == 3 and i != relabeled)])
    np.testing.assert_allclose(inst["b"], expect_b, atol=1e-6)
    assert inst["a"].dtype == np.float32


# -- report ----------------------------------------------------------------------------------------------


def test_report_sizes_typical_cohesion_gallery(filled, tmp_path):
    summary = run_clustering(filled, ClusterOptions(algorithm="dbscan", eps=DBSCAN_EPS, min_samples=4, name="db"),
                             progress=False)
    name_cluster(filled, "db", 0, "zero")
    report = cluster_report(filled, "db", top=3)
    assert [c.cluster for c in report.clusters] == [*range(summary.clusters), -1]
    assert [c.size for c in report.clusters] == [*summary.sizes, summary.noise]
    assert report.segments == summary.segments and report.noise == summary.noise and report.is_current
    assert report.clusters[0].name == "zero" and report.clusters[-1].cohesion is None
    with filled.db.session() as s:
        rows = s.execute(select(SegmentCluster.cluster, SegmentCluster.segment_id, SegmentCluster.distance)).all()
    for info in report.clusters[:-1]:
        dists = sorted((d, sid) for c, sid, d in rows if c == info.cluster)
        assert [m.segment_id for m in info.typical] == [sid for _, sid in dists[:3]]
        assert info.cohesion == pytest.approx(1 - np.mean([d for d, _ in dists]), abs=1e-5)
        assert 0 < info.cohesion <= 1
    out = write_cluster_gallery(report, tmp_path / "g.html")
    page = out.read_text()
    assert page.count("<h2>") == len(report.clusters) and "cluster 0 · zero" in page and "noise (-1)" in page
    assert page.count("<figure") == sum(len(c.typical) for c in report.clusters)


# -- CLI -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory, source):
    root = tmp_path_factory.mktemp("cluster-cli") / "home"
    with Home(root) as home:
        copy_home(source, home)
    return root


def test_cli_cluster_show_name(cli_home, tmp_path, shapes):
    h, n = ["--home", str(cli_home)], len(shapes.objects)
    result = runner.invoke(app, [*h, "cluster", "--algorithm", "kmeans", "--n-clusters", "6", "--name", "k6",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"clustered {n} segments with kmeans into 6 clusters (0 noise) as run 'k6' "
                                    "(current), in ")
    result = runner.invoke(app, [*h, "cluster", "--algorithm", "dbscan", "--eps", "0.1", "--min-samples", "4",
                                 "--no-current", "--json", "--quiet"])
    data = json.loads(result.stdout)
    assert data["run"].startswith("dbscan-") and data["noise"] > 0 and data["current"] is False

    gallery = tmp_path / "k6.html"
    result = runner.invoke(app, [*h, "cluster", "show", "k6", "--gallery", str(gallery)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"run k6 (kmeans, current): {n} segments, 6 clusters, 0 noise"
    assert lines[1].split() == ["cluster", "size", "cohesion", "name", "most", "typical", "segments"]
    assert [int(ln.split()[0]) for ln in lines[2:8]] == list(range(6)) and lines[-1] == f"gallery: {gallery}"
    assert gallery.read_text().count("<h2>") == 6

    result = runner.invoke(app, [*h, "cluster", "name", "k6", "2", "blob"])
    assert result.exit_code == 0, result.output
    size = json.loads(runner.invoke(app, [*h, "cluster", "show", "k6", "--json"]).stdout)["clusters"][2]["size"]
    assert result.stdout == f"cluster 2 of run 'k6' is 'blob': labeled {size} of {size} members\n"
    listing = runner.invoke(app, [*h, "cluster", "list"]).stdout.splitlines()
    assert listing[1].split()[:2] == ["*", "k6"] and listing[1].split()[-1] == "1"

    for args, message in [
        (["cluster", "--algorithm", "kmeans"], "Error: --algorithm kmeans needs --n-clusters N\n"),
        (["cluster", "show", "nope"], "Error: no clustering run named 'nope' (known runs: k6, "
                                      f"{data['run']})\n"),
        (["cluster", "name", "k6", "99", "x"], "Error: run 'k6' has no cluster 99 (its clusters are 0..5)\n"),
        (["cluster", "use", "nope"], f"Error: no clustering run named 'nope' (known runs: k6, {data['run']})\n"),
    ]:
        result = runner.invoke(app, [*h, *args])
        assert (result.exit_code, result.stderr) == (1, message)


def test_cli_errors_on_empty_home(tmp_path):
    h = ["--home", str(tmp_path / "empty")]
    result = runner.invoke(app, [*h, "cluster", "--algorithm", "kmeans", "--n-clusters", "3"])
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {tmp_path / 'empty'}: no segments to cluster (run `samsearch ingest` first)\n")
    result = runner.invoke(app, [*h, "cluster", "show", "x"])
    assert result.stderr == ("Error: no clustering run named 'x' (no clustering runs yet; `samsearch cluster` "
                             "makes one)\n")
    result = runner.invoke(app, [*h, "cluster"])  # no options: the help, like every group
    assert result.exit_code in (0, 2) and "Usage:" in result.output and "QUADRATIC" in result.output


def test_help_says_density_methods_are_quadratic():
    out = runner.invoke(app, ["cluster", "--help"]).stdout
    assert "QUADRATIC" in out and "--sample" in out and "minibatch-kmeans" in out


def test_readme_documents_the_eps_used_here():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"--eps {DBSCAN_EPS}" in readme


def test_bank_from_named_clusters_labels_the_corpus(filled):
    """Discovery → naming → memory bank → classification: the loop between clustering and labeling."""
    from collections import Counter

    from samsearch.bank.build import create_bank_from_clusters
    from samsearch.bank.classify import Classifier
    from samsearch.bank.store import load_centroids
    from samsearch.cluster.naming import cluster_names

    run_clustering(filled, ClusterOptions(algorithm="kmeans", n_clusters=N_CLASSES, name="k6"), progress=False)
    got, cats = assignments(filled, "k6"), categories(filled)
    for c in range(N_CLASSES):  # a person names each cluster after what its members show
        majority = Counter(cats[i] for i, k in got.items() if k == c).most_common(1)[0][0]
        name_cluster(filled, "k6", c, majority)
    info = create_bank_from_clusters(filled, "k6", "from-k6", per_class=2)
    assert info.as_dict()["name"] == "from-k6"
    names = cluster_names(filled, "k6")
    assert info.as_dict()["source"] == {"kind": "clusters", "run": "k6",
                                        "cluster_names": {str(c): names[c] for c in range(N_CLASSES)}}
    cents = load_centroids(filled, "from-k6")
    clf = Classifier.from_labels(cents.labels, cents.vectors)
    stored = {r.id: r.vector for b in filled.vectors.scroll(SEGMENTS, with_vectors=True) for r in b}
    ids = sorted(stored)
    cls, _, _ = clf.classify(np.stack([stored[i] for i in ids]))
    accuracy = np.mean([clf.classes[c] == cats[i] for i, c in zip(ids, cls, strict=True)])
    assert accuracy >= 0.8, accuracy


def test_cli_bank_from_clusters_needs_named_clusters(cli_home):
    result = runner.invoke(app, ["--home", str(cli_home), "bank", "build", "--from-clusters", "nope", "--name", "b"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ")
    result = runner.invoke(app, ["--home", str(cli_home), "bank", "build", "--name", "b"])
    assert result.stderr == "Error: bank build needs --annotations FILE and --images DIR (or --from-clusters RUN)\n"


def test_cli_bank_show_says_which_clusters_a_bank_came_from(cli_home):
    h = ["--home", str(cli_home)]
    result = runner.invoke(app, [*h, "cluster", "--algorithm", "kmeans", "--n-clusters", "4", "--name", "k4",
                                 "--no-current", "--quiet"])
    assert result.exit_code == 0, result.output
    for cluster, label in ((1, "one"), (3, "three"), (0, "one")):  # two clusters may share a name
        assert runner.invoke(app, [*h, "cluster", "name", "k4", str(cluster), label]).exit_code == 0
    result = runner.invoke(app, [*h, "bank", "build", "--from-clusters", "k4", "--name", "from-k4", "--per-class", "2"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, [*h, "bank", "show", "from-k4"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[1] == ("built from the named clusters of clustering run k4: 0 -> one, 1 -> one, "
                                            "3 -> three")
    info = json.loads(runner.invoke(app, [*h, "bank", "show", "from-k4", "--json"]).stdout)
    assert info["source"] == {"kind": "clusters", "run": "k4", "cluster_names": {"0": "one", "1": "one", "3": "three"}}
    assert [c["label"] for c in info["classes"]] == ["one", "three"]


def test_dbscan_refuses_more_segments_than_its_memory_limit():
    from samsearch.cluster.job import FIT_LIMITS

    assert FIT_LIMITS["dbscan"] == 50_000
    with pytest.raises(InputError) as info:
        ClusterOptions(algorithm="dbscan").check_fit_size(200_000)
    assert str(info.value) == (
        "--algorithm dbscan on 200000 segments is above its limit of 50,000 (it keeps every neighbour pair in "
        "memory: ~4.4 GB at 50,000 segments in tight clusters, docs/BENCHMARKS.md); add --sample 50000 (fit on a "
        "sample, assign the rest to the nearest core sample within --eps), or --allow-large to run it anyway")
    with pytest.raises(InputError, match="^--algorithm dbscan on a sample of 60000 segments"):
        ClusterOptions(algorithm="dbscan", sample=60_000).check_fit_size(200_000)
    for ok in (ClusterOptions(algorithm="dbscan", sample=50_000), ClusterOptions(algorithm="dbscan", allow_large=True),
               ClusterOptions(algorithm="minibatch-kmeans", n_clusters=3)):
        ok.check_fit_size(200_000)
    ClusterOptions(algorithm="dbscan").check_fit_size(50_000)
    assert "allow_large" not in ClusterOptions(algorithm="dbscan", allow_large=True).identity()  # same run name


def test_cli_dbscan_over_the_limit_is_one_line_then_sample_or_allow_large(cli_home, monkeypatch):
    import samsearch.cluster.job as job

    monkeypatch.setitem(job.FIT_LIMITS, "dbscan", 20)  # the corpus here has 72 segments
    h = ["--home", str(cli_home)]
    base = [*h, "cluster", "--algorithm", "dbscan", "--eps", str(DBSCAN_EPS), "--min-samples", "2", "--no-current",
            "--quiet"]
    with Home(cli_home) as home:
        n, runs = home.vectors.count(SEGMENTS), len(list_runs(home))
    result = runner.invoke(app, [*base, "--name", "too-big"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: --algorithm dbscan on {n} segments is above its limit of 20 (")
    assert result.stderr.endswith("add --sample 20 (fit on a sample, assign the rest to the nearest core sample "
                                  "within --eps), or --allow-large to run it anyway\n")
    with Home(cli_home) as home:
        assert len(list_runs(home)) == runs  # refused before anything was read or recorded
    for extra in (["--sample", "20"], ["--allow-large"]):
        result = runner.invoke(app, [*base, *extra, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["segments"] == n

"""``samsearch cluster``: run a clustering (the group's own action), and its ``show``/``name``/``list``/
``use``/``delete`` subcommands.

Design: ``cluster`` is a Typer group with ``invoke_without_command=True``; its callback holds the run's
options and clusters when no subcommand follows. So ``samsearch cluster --algorithm kmeans ...`` runs a
clustering, ``samsearch cluster show RUN`` and ``samsearch cluster name RUN CLUSTER LABEL`` reach the
subcommands, and a bare ``samsearch cluster`` prints the help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from samsearch.cli.app import app, cli_home, echo_json, handle_errors

CLUSTER_HELP = """Discover classes nobody labeled: cluster the stored segments' embeddings.

With options and no subcommand, clusters the selected segments (--dataset, --label, --unlabeled; the
filters run inside the vector store) and writes every segment's cluster id to SQL and to the vector
payload field `cluster` under a named run (--name; default: the algorithm plus a hash of the settings,
so the same command names the same run). Re-running a named run replaces its result (same settings: the
same result, no duplicates). The newest run becomes current (what `--cluster` filters match) unless
--no-current. Noise (DBSCAN/HDBSCAN) is cluster -1; clusters are numbered 0.. by decreasing size.

Scale: kmeans and minibatch-kmeans are linear in the number of segments. dbscan and hdbscan compare every
pair of vectors: QUADRATIC time (hdbscan also quadratic memory) on 256-d vectors, fine up to tens of
thousands of segments. For a million segments use `--algorithm minibatch-kmeans --n-clusters K
--sample 100000`: fit on a random sample, assign every segment to its nearest centre (about a minute for
1M segments on 2 cores, reading and writing back included; docs/BENCHMARKS.md). --sample also works with
dbscan/hdbscan (the rest join the nearest core sample within eps / the nearest sampled segment's cluster).
dbscan refuses to fit on more than 50,000 segments (memory: docs/BENCHMARKS.md) unless --sample or
--allow-large.

\b
Examples:
  samsearch cluster --algorithm kmeans --n-clusters 12 --dataset photos --name photos-k12
  samsearch cluster --algorithm dbscan --eps 0.1 --min-samples 4
  samsearch cluster show photos-k12 --gallery clusters.html
  samsearch cluster name photos-k12 3 car
"""

cluster_app = typer.Typer(help=CLUSTER_HELP, invoke_without_command=True, no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.callback()
@handle_errors
def cluster(
    ctx: typer.Context,
    algorithm: Literal["kmeans", "minibatch-kmeans", "dbscan", "hdbscan"] = typer.Option(
        "minibatch-kmeans", "--algorithm",
                                  help="kmeans | minibatch-kmeans | dbscan | hdbscan (the last two are quadratic)."),
    n_clusters: int = typer.Option(None, "--n-clusters", help="Number of clusters (kmeans, minibatch-kmeans)."),
    eps: float = typer.Option(0.1, "--eps",
                              help="dbscan: neighbourhood radius as a cosine distance (1 - cosine similarity)."),
    min_samples: int = typer.Option(5, "--min-samples",
                                    help="dbscan/hdbscan: neighbours that make a core segment."),
    min_cluster_size: int = typer.Option(None, "--min-cluster-size",
                                         help="hdbscan: smallest cluster [default: --min-samples]."),
    dataset: str = typer.Option(None, "--dataset", help="Only segments of this dataset."),
    label: str = typer.Option(None, "--label", help="Only segments carrying this label."),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="Only segments without a label."),
    sample: int = typer.Option(None, "--sample",
                               help="Fit on a random sample of N segments, then assign all (large collections)."),
    pca: int = typer.Option(None, "--pca", help="Cluster a PCA-reduced copy with this many dimensions."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice (same seed, same result)."),
    name: str = typer.Option(None, "--name", help="Run name [default: <algorithm>-<settings hash>]."),
    current: bool = typer.Option(True, "--current/--no-current",
                                 help="Make this run the current one (segments' cluster field and payload)."),
    space: str = typer.Option("sam", "--space", help="Cluster the vectors of this embedding space (sam, or one "
                                                     "added with `samsearch embed`)."),
    allow_large: bool = typer.Option(False, "--allow-large",
                                     help="dbscan: fit on more than 50,000 segments anyway (it keeps every "
                                          "neighbour pair in memory; see --sample)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from samsearch.cluster.job import ClusterOptions, run_clustering

    options = ClusterOptions(
        algorithm=algorithm, n_clusters=n_clusters, eps=eps, min_samples=min_samples,
        min_cluster_size=min_cluster_size, dataset=dataset, label=label, unlabeled=unlabeled, sample=sample,
        pca=pca, seed=seed, name=name, make_current=current, space=space, allow_large=allow_large,
    )
    options.validate()  # before opening the home: bad options never touch it
    with cli_home(ctx) as home:
        summary = run_clustering(home, options, progress=not quiet)
    if as_json:
        echo_json(summary.as_dict())
        return
    state = "current" if summary.current else "not current"
    typer.echo(
        f"clustered {summary.segments} segments with {summary.algorithm} into {summary.clusters} clusters "
        f"({summary.noise} noise) as run '{summary.run}' ({state}), in {summary.seconds:.1f}s"
    )
    if summary.names_dropped:
        typer.echo(f"the settings changed: {summary.names_dropped} cluster names of '{summary.run}' were dropped")
    if summary.stored < summary.segments:
        typer.echo(f"{summary.segments - summary.stored} vectors have no segment row (an interrupted ingest; "
                   "re-run it)", err=True)


@cluster_app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    run: str = typer.Argument(..., metavar="RUN", help="Run name (see `samsearch cluster list`)."),
    gallery: Path = typer.Option(None, "--gallery", help="Write an HTML page with example crops per cluster."),
    top: int = typer.Option(8, "--top", min=1, help="Most typical members shown per cluster."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Sizes, cohesion (mean cosine similarity to the centre) and most typical members of every cluster."""
    from samsearch.reports.clusters import cluster_report, write_cluster_gallery

    with cli_home(ctx) as home:
        report = cluster_report(home, run, top=top)
    if gallery is not None:
        write_cluster_gallery(report, gallery)
    if as_json:
        echo_json({**report.as_dict(), "gallery": str(gallery) if gallery else None})
        return
    state = ", current" if report.is_current else ""
    typer.echo(f"run {report.run} ({report.algorithm}{state}): {report.segments} segments, "
               f"{sum(c.cluster >= 0 for c in report.clusters)} clusters, {report.noise} noise")
    typer.echo(f"{'cluster':>7} {'size':>8} {'cohesion':>8}  {'name':<20} most typical segments")
    for c in report.clusters:
        cohesion = f"{c.cohesion:.3f}" if c.cohesion is not None else "-"
        name = c.name or ("(noise)" if c.cluster < 0 else "")
        typical = " ".join(m.segment_id[:8] for m in c.typical[:4])
        typer.echo(f"{c.cluster:>7} {c.size:>8} {cohesion:>8}  {name:<20} {typical}")
    if gallery is not None:
        typer.echo(f"gallery: {gallery}")


@cluster_app.command("name")
@handle_errors
def name_cmd(
    ctx: typer.Context,
    run: str = typer.Argument(..., metavar="RUN", help="Run name."),
    cluster_id: int = typer.Argument(..., metavar="CLUSTER", help="Cluster id (0, 1, ...)."),
    label: str = typer.Argument(..., metavar="LABEL", help="Label written to every member."),
    overwrite_manual: bool = typer.Option(False, "--overwrite-manual",
                                          help="Also relabel members a person labeled (label_source manual)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Name a cluster: write LABEL to its members only (label_source "cluster"), in SQL and the payload.

    Manual labels are kept unless --overwrite-manual. Naming again relabels the same members.
    """
    from samsearch.cluster.naming import name_cluster

    with cli_home(ctx) as home:
        summary = name_cluster(home, run, cluster_id, label, overwrite_manual=overwrite_manual)
    if as_json:
        echo_json(summary.as_dict())
        return
    kept = f" ({summary.kept_manual} manual labels kept)" if summary.kept_manual else ""
    typer.echo(f"cluster {cluster_id} of run '{run}' is '{label}': labeled {summary.labeled} of "
               f"{summary.members} members{kept}")


@cluster_app.command("list")
@handle_errors
def list_cmd(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """Clustering runs, the current one marked with *."""
    from samsearch.reports.clusters import list_runs

    with cli_home(ctx) as home:
        runs = list_runs(home)
    if as_json:
        echo_json(runs)
        return
    if not runs:
        typer.echo("no clustering runs")
        return
    typer.echo(f"  {'run':<32} {'algorithm':<17} {'segments':>9} {'clusters':>8} {'noise':>7} {'named':>5}")
    for r in runs:
        mark = "*" if r["current"] else " "
        typer.echo(f"{mark} {r['name']:<32} {r['algorithm']:<17} {r['segments'] or 0:>9} {r['clusters'] or 0:>8} "
                   f"{r['noise'] or 0:>7} {r['named']:>5}")


@cluster_app.command("use")
@handle_errors
def use_cmd(
    ctx: typer.Context,
    run: str = typer.Argument(..., metavar="RUN", help="Run name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Make RUN the current run: segments' cluster field and the payload `cluster` follow it."""
    from samsearch.cluster.job import use_run

    with cli_home(ctx) as home:
        changed = use_run(home, run, progress=not quiet)
    typer.echo(f"run '{run}' is current ({changed} payloads updated)")


@cluster_app.command("delete")
@handle_errors
def delete_cmd(
    ctx: typer.Context,
    run: str = typer.Argument(..., metavar="RUN", help="Run name."),
) -> None:
    """Forget RUN (its cluster ids and names). Labels written by `cluster name` stay."""
    from samsearch.cluster.job import delete_run

    with cli_home(ctx) as home:
        n = delete_run(home, run)
    typer.echo(f"deleted run '{run}' ({n} segments)")

"""``samsearch label``: classify stored segments with a memory bank."""

from __future__ import annotations

import typer

from samsearch.cli.app import app, cli_home, echo_json, handle_errors


@app.command("label")
@handle_errors
def label(
    ctx: typer.Context,
    bank: str = typer.Option(..., "--bank", help="The memory bank to classify with (see `samsearch bank list`)."),
    dataset: str = typer.Option(None, "--dataset", help="Only segments of this dataset."),
    min_score: float = typer.Option(None, "--min-score",
                                    help="Below this cosine similarity to the nearest centroid: 'unknown'."),
    margin: float = typer.Option(None, "--margin",
                                 help="Below this gap between the best and the second-best class: 'unknown'."),
    k: int = typer.Option(1, "--k", min=1, help="1: nearest centroid; N: vote over the N nearest centroids."),
    relabel: bool = typer.Option(False, "--relabel",
                                 help="Also re-classify segments labeled before by a bank or a cluster."),
    overwrite_manual: bool = typer.Option(False, "--overwrite-manual",
                                          help="Also overwrite labels a person set by hand (never otherwise)."),
    batch_size: int = typer.Option(16384, "--batch-size", min=1,
                                   help="Vectors read and classified at a time (memory ~ N × dim × 4 bytes); "
                                        "payloads are written every 8 batches."),
    space: str = typer.Option(None, "--space", help="The embedding space to label in [default: the bank's]; "
                                                    "another than the bank's is an error."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Label stored segments by nearest-neighbour search against a memory bank.

    By default only segments without a label are classified, so an interrupted run is finished by running
    it again, and re-running a finished one changes nothing. Labels, scores and the bank name go to the
    vector payload and to SQL. Prints how many segments got each label.
    """
    from samsearch.bank.classify import LabelOptions, label_segments

    options = LabelOptions(bank=bank, dataset=dataset, min_score=min_score, margin=margin, k=k, relabel=relabel,
                           overwrite_manual=overwrite_manual, batch_size=batch_size, space=space)
    with cli_home(ctx) as home:
        summary = label_segments(home, options, progress=not quiet)
    if as_json:
        echo_json(summary.as_dict())
        return
    if summary.counts:
        typer.echo(f"{'label':<32} {'segments':>10}")
        for name, n in sorted(summary.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            typer.echo(f"{name:<32} {n:>10}")
        typer.echo("")
    typer.echo(f"labeled {summary.labeled} segments with bank {bank} in {summary.seconds:.1f}s")
    if summary.left_labeled:
        typer.echo(f"left {summary.left_labeled} already-labeled segments alone (--relabel re-classifies them)")
    if summary.kept_manual:
        typer.echo(f"kept {summary.kept_manual} manual labels")

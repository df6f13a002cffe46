from __future__ import annotations

import typer

from samsearch.cli.app import app, cli_home, echo_json, handle_errors


@app.command("stats")
@handle_errors
def stats(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
    max_labels: int = typer.Option(20, "--labels", min=0, help="Show at most this many labels (most frequent)."),
) -> None:
    """Counts per dataset, model, status and label, and the images that failed."""
    from samsearch.reports.stats import collect_stats

    with cli_home(ctx) as home:
        data = collect_stats(home)
    if as_json:
        echo_json(data)
        return
    space = data["embedding_space"]
    typer.echo(f"home:      {data['home']}")
    typer.echo(f"database:  {data['database']}")
    typer.echo(f"vectors:   {data['vector_store']} ({data['vectors']} stored)")
    typer.echo(f"model:     {space['model'] + ' / ' + space['recipe'] if space else '-'}")
    if len(data["spaces"]) > 1:
        for name, sp in data["spaces"].items():
            typer.echo(f"space:     {name}: {sp['vectors']} vectors ({sp['model']}, {sp['dim']}-d)")
    typer.echo(f"images:    {data['images']} ({data['failed_images']} failed)")
    typer.echo(f"segments:  {data['segments']}")
    if data["datasets"]:
        typer.echo("")
        typer.echo(f"{'dataset':<24} {'images':>8} {'done':>8} {'failed':>8} {'segments':>10}")
        for name, d in data["datasets"].items():
            st = d["by_status"]
            typer.echo(f"{name:<24} {d['images']:>8} {st.get('done', 0):>8} {st.get('failed', 0):>8} "
                       f"{d['segments']:>10}")
        if sum(d["images"] for d in data["datasets"].values()) > data["images"]:
            typer.echo("(an image that belongs to several datasets counts in each)")
    labeled = [e for e in data["labels"] if e["label"] is not None]
    if labeled:
        typer.echo("")
        typer.echo(f"{'label':<24} {'segments':>10}  by source")
        for e in labeled[:max_labels]:
            sources = ", ".join(f"{src} {n}" for src, n in sorted(e["by_source"].items()))
            typer.echo(f"{e['label']:<24} {e['count']:>10}  {sources}")
        if len(labeled) > max_labels:
            typer.echo(f"... and {len(labeled) - max_labels} more labels (--json lists them all)")
        unlabeled = sum(e["count"] for e in data["labels"] if e["label"] is None)
        typer.echo(f"{'(unlabeled)':<24} {unlabeled:>10}")
    if data["failures"]:
        typer.echo("")
        typer.echo("failed images:")
        for f in data["failures"]:
            typer.echo(f"  {f['path']}: {f['error']}")

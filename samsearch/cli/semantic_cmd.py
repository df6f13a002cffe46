"""``samsearch export semantic DIR``: per-image label maps and colour overlays (in its own module so that
other export formats can be added to ``export_app`` without touching this one)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from samsearch.cli.app import cli_home, echo_json, handle_errors
from samsearch.cli.export_cmd import export_app


@export_app.command("semantic")
@handle_errors
def semantic(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(..., metavar="DIR", help="Output folder (created if missing)."),
    by: Literal["cluster", "label"] = typer.Option(
        "cluster", "--by", help="cluster: the run's cluster ids; label: segment labels."),
    run: str = typer.Option(None, "--run", help="Clustering run for --by cluster [default: the current run]."),
    dataset: str = typer.Option(None, "--dataset", help="Only images of this dataset."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Semantic maps: per image, a PNG label map and a colour overlay, plus DIR/legend.json.

    Values: 0 = background (no segment); --by cluster: cluster id + 2 (1 = noise); --by label: labels
    sorted by name get 1, 2, ... Where segments overlap the smallest one wins (painted last). 8-bit PNGs
    when every value fits, else 16-bit. Files: DIR/labels/<image id>_<name>.png, DIR/overlays/...png.
    """
    from samsearch.reports.semantic_maps import export_semantic_maps

    with cli_home(ctx) as home:
        summary = export_semantic_maps(home, out_dir, by=by, run=run, dataset=dataset, progress=not quiet)
    if as_json:
        echo_json(summary.as_dict())
        return
    typer.echo(f"wrote {summary.images} label maps and {summary.overlays} overlays to {out_dir} "
               f"(legend: {summary.legend})")
    for f in summary.failures:
        typer.echo(f"no overlay: {f['path']}: {f['reason']}", err=True)

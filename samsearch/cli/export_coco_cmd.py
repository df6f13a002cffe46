"""``samsearch export coco``: segments and labels as a COCO instance-segmentation file."""

from __future__ import annotations

from pathlib import Path

import typer

from samsearch.cli.app import cli_home, echo_json, handle_errors
from samsearch.cli.export_cmd import export_app


@export_app.command("coco")
@handle_errors
def coco(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="The JSON file to write."),
    dataset: str = typer.Option(None, "--dataset", help="Only images of this dataset."),
    labeled_only: bool = typer.Option(False, "--labeled-only",
                                      help="Only segments with a label (not unlabeled, not 'unknown')."),
    min_score: float = typer.Option(None, "--min-score",
                                    help="Only labels scoring at least this (manual labels always pass)."),
    relative_to: Path = typer.Option(None, "--relative-to",
                                     help="Write image file names relative to this folder [default: as stored]."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write images, categories and one annotation per segment (RLE mask, bbox, area, score, category,
    source annotation id) that pycocotools, CVAT and Label Studio load."""
    from samsearch.reports.coco_export import export_coco

    with cli_home(ctx) as home:
        summary = export_coco(home, out, dataset=dataset, labeled_only=labeled_only, min_score=min_score,
                              relative_to=relative_to, progress=not quiet)
    if as_json:
        echo_json(summary.as_dict())
    else:
        typer.echo(f"wrote {summary.path}: {summary.images} images, {summary.annotations} annotations, "
                   f"{len(summary.categories)} categories")

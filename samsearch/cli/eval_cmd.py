"""``samsearch eval``: score stored segments and labels against COCO ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from samsearch.cli.app import app, cli_home, echo_json, handle_errors


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


@app.command("eval")
@handle_errors
def eval_(
    ctx: typer.Context,
    annotations: Path = typer.Option(..., "--annotations", help="Ground truth as COCO JSON."),
    dataset: str = typer.Option(None, "--dataset", help="Only images of this dataset."),
    iou: float = typer.Option(0.5, "--iou", help="Mask IoU needed to match a segment to an object."),
    source: Literal["auto", "box", "mask"] | None = typer.Option(None, "--source",
                               help="Only segments made this way: auto, box or mask (a home may hold several "
                                    "segmentations of the same images)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
) -> None:
    """Match segments to ground-truth objects by mask IoU and report label accuracy, per-class precision
    and recall, the confusion matrix, coverage, and COCO segm mAP when the segments came from SAM."""
    from samsearch.reports.evaluate import evaluate

    with cli_home(ctx) as home:
        report = evaluate(home, annotations, dataset=dataset, iou=iou, source=source)
    if as_json:
        echo_json(report.as_dict())
        return
    typer.echo(f"images: {report.images_matched} matched ({report.gt_images_missing} ground-truth images not stored)")
    typer.echo(f"coverage: {_pct(report.coverage)} ({report.matched} of {report.gt_objects} objects have a segment "
               f"with IoU >= {iou})")
    typer.echo(f"accuracy: {_pct(report.accuracy)} ({report.correct} of {report.matched} matched segments)")
    m = report.segm_map
    typer.echo(f"segm mAP: {m['map']:.3f} (AP50 {m['map50']:.3f})" if m.get("map") is not None
               else f"segm mAP: - ({m.get('reason')})")
    typer.echo("")
    typer.echo(f"{'class':<24} {'objects':>8} {'matched':>8} {'precision':>10} {'recall':>8}")
    for name, c in report.per_class.items():
        typer.echo(f"{name:<24} {c['gt']:>8} {c['matched']:>8} {_pct(c['precision']):>10} {_pct(c['recall']):>8}")
    conf = report.confusion
    typer.echo("")
    typer.echo("confusion (rows: ground truth, columns: predicted):")
    width = max([len(c) for c in conf["columns"]] + [6])
    typer.echo(" " * 24 + " ".join(f"{c[:width]:>{width}}" for c in conf["columns"]))
    for row, values in zip(conf["rows"], conf["matrix"], strict=True):
        typer.echo(f"{row[:24]:<24}" + " ".join(f"{v:>{width}}" for v in values))

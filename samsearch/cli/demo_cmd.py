"""``samsearch demo``: the whole chain on synthetic data, offline."""

from __future__ import annotations

from pathlib import Path

import typer

from samsearch.cli.app import app, echo_json, handle_errors


@app.command("demo")
@handle_errors
def demo(
    out: Path = typer.Option(Path("samsearch-demo"), "--out", help="Folder for the data, home and gallery."),
    n_train: int = typer.Option(16, "--train", min=1, help="Synthetic images for the bank."),
    n_test: int = typer.Option(16, "--test", min=1, help="Synthetic images to ingest and label."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Offline tour: synthetic labeled images → bank from one half (tiny-random) → ingest and label the
    other half → evaluation → a search gallery (OUT/gallery/index.html) and a COCO export. A few minutes on
    a laptop CPU; needs no download. tiny-random has no learned semantics: the shapes differ in colour and
    texture, which its features still separate."""
    from samsearch.demo import run_demo

    summary = run_demo(out, n_train=n_train, n_test=n_test, progress=not quiet)
    if as_json:
        echo_json(summary.as_dict())
        return
    ev = summary.evaluation
    typer.echo(f"bank: {summary.bank['n_classes']} classes, {summary.bank['n_instances']} instances from "
               f"{summary.train_images} train images")
    typer.echo(f"labeled {sum(summary.labeled.values())} segments of {summary.test_images} test images")
    typer.echo(f"accuracy {100 * ev['accuracy']:.1f}% over {ev['matched']} segments, coverage "
               f"{100 * ev['coverage']:.1f}%")
    for name, c in ev["per_class"].items():
        p = "-" if c["precision"] is None else f"{100 * c['precision']:.0f}%"
        r = "-" if c["recall"] is None else f"{100 * c['recall']:.0f}%"
        typer.echo(f"  {name:<20} precision {p:>5}  recall {r:>5}")
    typer.echo(f"gallery: {summary.gallery}")
    typer.echo(f"export:  {summary.export}")
    typer.echo(f"done in {summary.seconds:.0f}s")

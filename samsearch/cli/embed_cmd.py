"""``samsearch embed``: add an embedding space to the segments a home already holds (no SAM)."""

from __future__ import annotations

from pathlib import Path

import typer

from samsearch.cli.app import EXIT_PARTIAL, app, cli_home, echo_json, handle_errors


@app.command("embed")
@handle_errors
def embed(
    ctx: typer.Context,
    space: str = typer.Option(..., "--space",
                              help="The space to add: dinov2-s, dinov2-b, dinov2-l, dinov2-g, dinov2-tiny-random."),
    dataset: str = typer.Option(None, "--dataset", help="Only images of this dataset."),
    weights: Path = typer.Option(None, "--weights", help="Local copy of the space's weights (a Hugging Face "
                                                         "folder: config.json + model.safetensors)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... [default: CUDA when present]."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per backbone batch and per write."),
    limit: int = typer.Option(None, "--limit", min=0, help="Embed at most N images this run (the rest stay "
                                                          "pending for the next)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write every stored segment's vector in another embedding space.

    Reads each segment's mask from the database and its image from disk, pools the space's backbone
    features inside the mask, and stores the vector under the segment's id (collection segments.SPACE,
    same payload as segments). Resumable: images already embedded are skipped, an interrupted run is
    finished by running it again, and no segment ever gets two vectors. Images that fail (file missing or
    changed) are listed (exit code 3).
    """
    from samsearch.ingest.embed import EmbedOptions, embed_space

    options = EmbedOptions(space=space, dataset=dataset, weights=weights, device=device, batch_images=batch,
                           limit=limit)
    with cli_home(ctx) as home:
        summary = embed_space(home, options, progress=not quiet)
    if as_json:
        echo_json(summary.as_dict())
    else:
        typer.echo(f"embedded {summary.segments_embedded} segments of {summary.images_embedded} images in space "
                   f"{space} in {summary.seconds:.1f}s ({summary.images_pending} images were pending; "
                   f"{summary.images_failed} failed)")
        for f in summary.failures:
            typer.echo(f"failed: {f.path}: {f.reason}", err=True)
    if summary.images_failed:
        raise typer.Exit(EXIT_PARTIAL)

"""``samsearch embed``: add an embedding space to the segments a home already holds (no SAM)."""

from __future__ import annotations

from pathlib import Path

import typer

from samsearch.cli.app import EXIT_PARTIAL, app, cli_home, echo_json, handle_errors
from samsearch.errors import InputError


@app.command("embed")
@handle_errors
def embed(
    ctx: typer.Context,
    space: str = typer.Option(..., "--space",
                              help="The space to add: dinov2-s, dinov2-b, dinov2-l, dinov2-g, clip-b32, clip-b16, "
                                   "clip-l14, or a -tiny-random one (dinov2-tiny-random, clip-tiny-random)."),
    dataset: str = typer.Option(None, "--dataset", help="Only images of this dataset."),
    weights: Path = typer.Option(None, "--weights", help="Local copy of the space's weights (a Hugging Face "
                                                         "folder: config.json + model.safetensors; for CLIP "
                                                         "also vocab.json + merges.txt)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... [default: CUDA when present]."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per backbone batch and per write."),
    limit: int = typer.Option(None, "--limit", min=0, help="Embed at most N images this run (the rest stay "
                                                          "pending for the next)."),
    enqueue: bool = typer.Option(False, "--enqueue", help="Queue the job for `samsearch worker` instead of running "
                                                          "it here (workers run it once no image is pending)."),
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

    if enqueue:
        from samsearch.jobs.embed_jobs import enqueue_embed

        if batch != 8 or limit is not None or device is not None:
            raise InputError("--batch, --limit and --device are the worker's; --enqueue takes --space, --dataset "
                             "and --weights")
        with cli_home(ctx) as home:
            job = enqueue_embed(home, space, dataset, weights)
        if as_json:
            echo_json(job)
        else:
            how = "already queued as" if job["already_queued"] else "queued"
            typer.echo(f"embed --space {space}: {how} job {job['run_id']}; `samsearch worker` runs it")
        return
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

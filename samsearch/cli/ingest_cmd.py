from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from samsearch.cli.app import EXIT_PARTIAL, app, cli_home, echo_json, handle_errors, home_model
from samsearch.errors import InputError


@app.command("ingest")
@handle_errors
def ingest(
    ctx: typer.Context,
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive) or glob patterns."),
    dataset: str = typer.Option("default", "--dataset", help="Dataset name stored with every image."),
    prompts: Literal["auto", "boxes", "masks"] = typer.Option("auto", "--prompts",
                                help="auto: segment everything over a point grid; boxes: prompt SAM with the "
                                     "boxes of --annotations; masks: embed the annotation masks as given."),
    annotations: Path = typer.Option(None, "--annotations", help="COCO JSON for --prompts boxes|masks."),
    model: str = typer.Option(None, "--model", help="vit_b, vit_l, vit_h, or tiny-random (no semantics; for tests "
                                                    "and offline smoke runs) [default: the model of the home's "
                                                    "vectors; vit_b for a new home]."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Local checkpoint file (skips the download)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ..."),
    points_per_side: int = typer.Option(32, "--points-per-side", min=1),
    points_per_batch: int = typer.Option(64, "--points-per-batch", min=1),
    pred_iou_thresh: float = typer.Option(0.88, "--pred-iou-thresh"),
    stability_score_thresh: float = typer.Option(0.95, "--stability-score-thresh"),
    box_nms_thresh: float = typer.Option(0.7, "--box-nms-thresh"),
    min_mask_region_area: int = typer.Option(0, "--min-mask-region-area", min=0),
    max_pixels: int = typer.Option(200_000_000, "--max-pixels",
                                   help="Larger images are recorded as failed (decompression-bomb guard)."),
    decoder: Literal["fast", "exact"] = typer.Option("fast", "--decoder",
                                help="fast: samsearch's mask decoder (same masks up to float rounding, several "
                                     "times faster); exact: segment_anything's own, bit-identical."),
    precision: Literal["fp32", "bf16", "fp16"] = typer.Option("fp32", "--precision",
                                  help="fp32, bf16 or fp16 autocast for the encoder and decoder (fp16: CUDA "
                                       "only). Stored vectors are fp32 either way."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the image encoder (CUDA only)."),
    fused_attention: bool = typer.Option(True, "--fused-attention/--no-fused-attention",
                                         help="Fused scaled-dot-product attention in the image encoder."),
    encoder_batch: int = typer.Option(None, "--encoder-batch", min=1,
                                      help="Images per encoder call [default: 1 on CPU; on CUDA what memory "
                                           "allows, up to 8]."),
    decoder_group: int = typer.Option(None, "--decoder-group", min=1,
                                      help="Prompts per fast-decoder step [default: 4 on CPU, 64 on CUDA]."),
    box_batch: int = typer.Option(64, "--box-batch", min=1, help="Boxes per decoder call (--prompts boxes)."),
    loaders: int = typer.Option(None, "--loaders", min=1,
                                help="Threads reading and decoding images [default: the machine's cores, "
                                     "at least 2, at most 8]."),
    sequential: bool = typer.Option(False, "--sequential",
                                    help="One image at a time in one thread (no overlapped pipeline)."),
    enqueue: bool = typer.Option(False, "--enqueue",
                                 help="Only record the images as pending work (hashed, not decoded; no model "
                                      "is loaded) for `samsearch worker` processes to take."),
    spaces: str = typer.Option("sam", "--spaces", metavar="sam[,SPACE...]",
                               help="Embedding spaces to write, comma-separated: sam (always) plus e.g. dinov2-b "
                                    "(one backbone pass per image, same masks); see `samsearch embed`."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Segment images with SAM, embed every segment, and store masks + metadata + vectors.

    Re-running the same command is safe: finished images are skipped, interrupted ones redone.
    With --enqueue the images are queued instead, for `samsearch worker` (see `samsearch queue status`).
    Exit code 3 when some images failed (they are listed; see also `samsearch stats`).
    """
    from samsearch.ingest.ingestor import Ingestor
    from samsearch.ingest.options import IngestOptions
    from samsearch.sam.accel import ExecutionOptions
    from samsearch.sam.amg import AmgSettings
    from samsearch.sam.models import load_model, select_device

    options = IngestOptions(
        dataset=dataset, prompts=prompts, annotations=annotations, max_pixels=max_pixels,  # type: ignore[arg-type]
        amg=AmgSettings(points_per_side=points_per_side, points_per_batch=points_per_batch,
                        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                        box_nms_thresh=box_nms_thresh, min_mask_region_area=min_mask_region_area),
        box_batch=box_batch,
        execution=ExecutionOptions(decoder=decoder, precision=precision, compile=compile_,
                                   fused_attention=fused_attention, encoder_batch=encoder_batch,
                                   decoder_group=decoder_group, loaders=loaders, pipeline=not sequential),
    )
    extra = [n.strip() for n in spaces.split(",") if n.strip() and n.strip() != "sam"]
    if "sam" not in [n.strip() for n in spaces.split(",")]:
        raise InputError("--spaces must include sam (ingest always writes SAM's vectors); e.g. sam,dinov2-b")
    if not enqueue:  # enqueue is SQL only: no device, no model load
        options.execution.validate(select_device(device))  # before any download
    from samsearch.spaces.models import load_space

    with cli_home(ctx) as home:
        model = home_model(home, model, checkpoint)  # a model other than the home's: refused before loading
        if enqueue:
            _enqueue(home, paths, model, options, checkpoint, as_json, quiet, extra)
            return
        home.claim_writes()  # another process holding the embedded store: refused now, before the model load
        loaded = load_model(model, checkpoint=checkpoint, device=device, progress=not quiet)
        space_models = [load_space(name, device=str(loaded.device)) for name in extra]
        summary = Ingestor(home, loaded, options, space_models).run(paths, progress=not quiet)
        if space_models:  # images stored before without a space (skipped above) get it now
            from samsearch.ingest.embed import EmbedOptions, embed_space

            for sm in space_models:
                embed_space(home, EmbedOptions(space=sm.spec.name, dataset=dataset), progress=not quiet,
                            space_model=sm)
    if as_json:
        echo_json(summary.as_dict())
    else:
        typer.echo(
            f"ingested {summary.images_ingested} images ({summary.segments} segments), "
            f"skipped {summary.images_skipped} already stored, failed {summary.images_failed}, "
            f"in {summary.seconds:.1f}s"
        )
        if summary.images_without_annotations:
            typer.echo(f"{summary.images_without_annotations} images had no entry in {annotations}")
        if summary.annotations_skipped:
            kinds = ", ".join(f"{k}: {v}" for k, v in summary.annotations_skipped.items())
            typer.echo(f"left out {sum(summary.annotations_skipped.values())} annotations of {annotations} "
                       f"({kinds})")
        if summary.empty_masks_dropped:
            typer.echo(f"dropped {summary.empty_masks_dropped} empty masks")
        for note in summary.notes:
            typer.echo(note)
        for f in summary.failures:
            typer.echo(f"failed: {f.path}: {f.reason}", err=True)
    if summary.images_failed:
        raise typer.Exit(EXIT_PARTIAL)


def _enqueue(home, paths: list[str], model: str, options, checkpoint: Path | None, as_json: bool,
             quiet: bool, spaces: list[str]) -> None:
    from samsearch.jobs.embed_jobs import enqueue_embed
    from samsearch.jobs.work_queue import enqueue
    from samsearch.spaces.registry import get_space

    for name in spaces:
        get_space(name)  # an unknown space fails before anything is queued
    summary = enqueue(home, paths, model, options, checkpoint=checkpoint, progress=not quiet)
    # the other spaces: embed jobs, which workers run once the images are done
    jobs = [enqueue_embed(home, name, options.dataset) for name in spaces]
    if as_json:
        echo_json({**summary.as_dict(), **({"embed_jobs": jobs} if jobs else {})})
    else:
        typer.echo(
            f"enqueued {summary.enqueued} images (run {summary.run_id}); {summary.already_done} already stored, "
            f"{summary.already_queued} already queued, {summary.in_progress} in progress, "
            f"{summary.duplicates} duplicates, {summary.unreadable} unreadable"
        )
        for job in jobs:
            typer.echo(f"space {job['space']}: embed job {job['run_id']} (runs once the images are done)")
        if summary.enqueued or jobs:
            typer.echo("start workers with `samsearch worker`; follow them with `samsearch queue status`")
        for f in summary.failures:
            typer.echo(f"failed: {f['path']}: {f['reason']}", err=True)
    if summary.unreadable:
        raise typer.Exit(EXIT_PARTIAL)

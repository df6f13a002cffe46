"""``samsearch bank``: build, rebuild, list, show and delete memory banks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from samsearch.cli.app import EXIT_PARTIAL, app, cli_home, echo_json, handle_errors, home_model
from samsearch.errors import InputError

bank_app = typer.Typer(help="Memory banks: per-class centroids of labeled instances, for `samsearch label`.",
                       no_args_is_help=True)
app.add_typer(bank_app, name="bank")


def _print_bank(info) -> None:
    typer.echo(f"bank {info.name}: {len(info.classes)} classes, {info.n_instances} instances -> "
               f"{info.n_centroids} centroids (per class {info.settings.get('per_class')}), model {info.model_key}")


@bank_app.command("build")
@handle_errors
def build(
    ctx: typer.Context,
    annotations: Path = typer.Option(None, "--annotations",
                                     help="COCO JSON, YOLO data.yaml/classes.txt, or BDD100K JSON."),
    images: Path = typer.Option(None, "--images", help="Folder holding the dataset's images (searched recursively)."),
    from_clusters: str = typer.Option(None, "--from-clusters", metavar="RUN",
                                      help="Build from the named clusters of a clustering run (`samsearch cluster "
                                           "name`) instead of a dataset: no SAM, the members' stored vectors."),
    name: str = typer.Option(..., "--name", help="Bank name: letters, digits, '_', '-', '.' (≤ 100)."),
    fmt: Literal["coco", "yolo", "bdd100k"] | None = typer.Option(
        None, "--format", help="coco, yolo or bdd100k [default: detected from the file]."),
    per_class: int = typer.Option(8, "--per-class", min=1, help="KMeans centroids per class."),
    prompts: Literal["boxes", "masks"] = typer.Option("boxes", "--prompts",
                                help="boxes: prompt SAM with each labeled box; masks: embed each annotation's "
                                     "own mask (polygon/RLE) as given."),
    max_per_class: int = typer.Option(None, "--max-per-class", min=1,
                                      help="Embed at most N instances per class (a seeded random choice)."),
    classes: str = typer.Option(None, "--classes", help="Only these classes, comma-separated."),
    model: str = typer.Option(None, "--model", help="vit_b, vit_l, vit_h or tiny-random; must be the model of the "
                                                    "home's vectors [default: that model; vit_b for a new home]."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Local checkpoint file (skips the download)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, ..."),
    seed: int = typer.Option(0, "--seed", help="Seed of KMeans and of --max-per-class sampling."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing bank of that name."),
    space: str = typer.Option("sam", "--space", help="The embedding space the bank lives in: sam, or one added "
                                                     "with `samsearch embed` (e.g. dinov2-b); `label` then uses it."),
    weights: Path = typer.Option(None, "--weights", help="Local copy of the --space weights (not for sam)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Build a memory bank from a labeled detection dataset.

    Every selected instance is embedded exactly as ingest embeds a segment; KMeans (seeded) reduces each
    class to --per-class centroids (a class with fewer instances keeps them all). Centroids go to the
    vector collection bank.NAME, the bank, its classes, counts, settings and every instance embedding to
    SQL. Images that fail are listed (exit code 3); the rest still make the bank.
    With --from-clusters RUN the instances are the stored vectors of the members of RUN's named clusters.
    """
    if from_clusters is not None:
        if annotations is not None or images is not None:
            raise InputError("--from-clusters takes no --annotations/--images (the clusters are the dataset)")
        _build_from_clusters(ctx, from_clusters, name, per_class, seed, replace, as_json)
        return
    if annotations is None or images is None:
        raise InputError("bank build needs --annotations FILE and --images DIR (or --from-clusters RUN)")
    from samsearch.bank.build import BankBuildOptions, build_bank
    from samsearch.data.datasets import read_dataset
    from samsearch.sam.models import load_model

    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    dataset = read_dataset(annotations, images, fmt)
    # Another space with the annotations' own masks needs no SAM at all.
    needs_sam = space == "sam" or prompts == "boxes"
    options = BankBuildOptions(name=name, per_class=per_class, prompts=prompts, max_per_class=max_per_class,
                               classes=wanted, seed=seed, replace=replace, space=space, weights=weights)
    with cli_home(ctx) as home:
        loaded = None
        if needs_sam:  # a model other than the home's is refused before any weights are loaded
            loaded = load_model(home_model(home, model, checkpoint), checkpoint=checkpoint, device=device,
                                progress=not quiet)
        summary = build_bank(home, loaded, dataset, options, progress=not quiet)
    if as_json:
        echo_json(summary.as_dict())
    else:
        _print_bank(summary.bank)
        typer.echo(f"embedded {summary.instances_embedded} of {summary.instances_selected} selected instances "
                   f"from {summary.images} images in {summary.seconds:.1f}s; {summary.images_failed} images failed")
        if summary.dataset_skipped:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.skip_reasons.items()))
            typer.echo(f"skipped {summary.dataset_skipped} entries of {annotations} ({reasons})")
        if summary.without_mask:
            typer.echo(f"left out {summary.without_mask} annotations without a mask (--prompts masks)")
        for f in summary.failures:
            typer.echo(f"failed: {f.path}: {f.reason}", err=True)
    for w in summary.warnings:  # also with --json (there in "warnings"), on stderr
        typer.echo(f"warning: {w}", err=True)
    if summary.images_failed:
        raise typer.Exit(EXIT_PARTIAL)


@bank_app.command("rebuild")
@handle_errors
def rebuild(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The bank to rebuild."),
    per_class: int = typer.Option(..., "--per-class", min=1, help="New number of centroids per class."),
    new_name: str = typer.Option(None, "--as", help="Write a new bank of this name instead of replacing."),
    seed: int = typer.Option(None, "--seed", help="KMeans seed [default: the bank's]."),
    as_json: bool = typer.Option(False, "--json", help="Print the bank as JSON."),
) -> None:
    """Re-run KMeans on a bank's stored instance embeddings with another --per-class (no SAM)."""
    from samsearch.bank.store import rebuild_bank

    with cli_home(ctx) as home:
        info = rebuild_bank(home, name, per_class, new_name=new_name, seed=seed)
    echo_json(info.as_dict()) if as_json else _print_bank(info)


@bank_app.command("list")
@handle_errors
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The banks of this home."""
    from samsearch.bank.store import list_banks

    with cli_home(ctx) as home:
        banks = list_banks(home)
    if as_json:
        echo_json([b.as_dict() for b in banks])
        return
    if not banks:
        typer.echo("no banks (build one with `samsearch bank build`)")
        return
    typer.echo(f"{'name':<24} {'classes':>8} {'instances':>10} {'centroids':>10}  model")
    for b in banks:
        typer.echo(f"{b.name:<24} {len(b.classes):>8} {b.n_instances:>10} {b.n_centroids:>10}  {b.model_key}")


@bank_app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The bank to show."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """A bank's classes with instance and centroid counts, and how it was built."""
    from samsearch.bank.store import get_bank

    with cli_home(ctx) as home:
        info = get_bank(home, name)
    if as_json:
        echo_json(info.as_dict())
        return
    _print_bank(info)
    typer.echo(_describe_source(info.source))
    typer.echo(f"created {info.created_at:%Y-%m-%d %H:%M:%S}, collection {info.collection}")
    typer.echo("")
    typer.echo(f"{'class':<32} {'instances':>10} {'centroids':>10}")
    for c in info.classes:
        typer.echo(f"{c.label:<32} {c.n_instances:>10} {c.n_centroids:>10}")


def _describe_source(src: dict) -> str:
    if src["kind"] == "clusters":
        names = src.get("cluster_names")
        named = (": " + ", ".join(f"{c} -> {label}" for c, label in names.items())) if names else ""
        line = f"built from the named clusters of clustering run {src['run']}{named}"
    elif src["kind"] == "dataset":
        line = (f"built from {src['annotations']} ({src['format']}), images {src['images']}, "
                f"prompts {src['prompts']}")
    else:
        line = "built from given instance vectors (samsearch.create_bank)"
    return line + (f" (rebuilt from bank {src['rebuilt_from']})" if src.get("rebuilt_from") else "")


@bank_app.command("delete")
@handle_errors
def delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The bank to delete."),
    as_json: bool = typer.Option(False, "--json", help="Print the deleted bank as JSON."),
) -> None:
    """Delete a bank (its SQL rows and its centroid collection). Labels it wrote stay on the segments."""
    from samsearch.bank.store import delete_bank

    with cli_home(ctx) as home:
        info = delete_bank(home, name)
    if as_json:
        echo_json(info.as_dict())
    else:
        typer.echo(f"deleted bank {info.name} ({len(info.classes)} classes, {info.n_centroids} centroids)")


def _build_from_clusters(ctx: typer.Context, run: str, name: str, per_class: int, seed: int, replace: bool,
                         as_json: bool) -> None:
    from samsearch.bank.build import create_bank_from_clusters

    with cli_home(ctx) as home:
        info = create_bank_from_clusters(home, run, name, per_class=per_class, seed=seed, replace=replace)
    if as_json:
        echo_json(info.as_dict())
    else:
        _print_bank(info)

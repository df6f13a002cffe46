"""``samsearch search`` (find segments like a query) and ``samsearch show`` (one segment as a PNG)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from samsearch.cli.app import app, cli_home, echo_json, handle_errors
from samsearch.errors import InputError, SamsearchError

F = TypeVar("F", bound=Callable[..., Any])


def store_errors(fn: F) -> F:
    """Vector-store failures and unwritable output files become domain errors (one line, exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from samsearch.vectors import VectorStoreError

        try:
            return fn(*args, **kwargs)
        except VectorStoreError as exc:
            raise SamsearchError(str(exc)) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise SamsearchError(f"{where}{exc.strerror or exc}") from None

    return wrapper  # type: ignore[return-value]


def _query_kind(segment: str | None, image: Path | None, bank: str | None, label: str | None,
                prompt_options: list[str], text: str | None = None) -> str:
    """Which query the options ask for; InputError for none, several, or stray prompt options."""
    given = [name for name, value in (("--segment", segment), ("--image", image), ("--bank", bank),
                                      ("--text", text)) if value is not None and value != []]
    if len(given) > 1:
        raise InputError(f"{' and '.join(given)} cannot be combined (one query at a time)")
    if image is None and prompt_options:
        raise InputError(f"{prompt_options[0]} needs --image FILE")
    if not given:
        raise InputError("give one query: --segment ID, --image FILE with --box/--point/--mask, "
                         "--label NAME --bank BANK, or --text \"a red car\"")
    if bank and not label:
        raise InputError("--bank needs --label NAME (the class to find)")
    return {"--segment": "segment", "--image": "image", "--bank": "label", "--text": "text"}[given[0]]


def _table(results: Any) -> str:
    if not results.hits:
        return "no matching segments"
    rows = [("rank", "score", "segment", "bbox (x,y,w,h)", "label", "image")]
    for h in results.hits:
        bbox = ",".join(f"{v:g}" for v in h.bbox_xywh)
        rows.append((str(h.rank), f"{h.score:.4f}", h.segment_id, bbox, h.label or h.annotation_category or "-",
                     h.image_path))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for r in rows:
        cells = [r[0].rjust(widths[0]), r[1].rjust(widths[1])] + [r[i].ljust(widths[i]) for i in (2, 3, 4)]
        lines.append("  ".join([*cells, r[5]]))
    return "\n".join(lines)


def _gallery(results: Any, out: Path) -> Path:
    from samsearch.reports.gallery import GalleryItem, GallerySection, write_gallery

    q = results.query
    query_item = None
    if q.image_path and q.rle:
        lines = [f"segment {q.segment_id}"] if q.kind == "segment" else [
            f"prompt {', '.join(f'{k} {v}' for k, v in (q.prompt or {}).items())}"]
        if q.predicted_iou is not None:
            lines.append(f"SAM predicted IoU {q.predicted_iou:.3f}")
        query_item = GalleryItem(q.image_path, q.rle, [*lines, Path(q.image_path).name], title="query")
    note = None
    if q.kind == "label":
        note = f"queries: the {len(q.vectors)} centroid(s) of class {q.label!r} in memory bank {q.bank!r}"
    items = []
    for h in results.hits:
        x, y, w, hh = h.bbox_xywh
        items.append(GalleryItem(h.image_path, h.rle, [
            f"{h.label or h.annotation_category or 'unlabeled'} · {', '.join(h.datasets) or h.dataset}",
            f"bbox {x:g},{y:g},{w:g},{hh:g} · area {h.area}",
            Path(h.image_path).name,
            h.segment_id,
        ], title=f"#{h.rank}  score {h.score:.3f}"))
    title = {"segment": f"segments like {q.segment_id}", "image": f"segments like the prompt on {q.image_path}",
             "label": f"every {q.label} (bank {q.bank})", "vector": "segments like a vector",
             "text": f"segments matching the text {q.text!r} (space {q.space})"}[q.kind]
    section = GallerySection(f"top {results.k} hits ({len(items)} shown)", items, note)
    return write_gallery(out, title, [section], query=query_item)


@app.command("search")
@handle_errors
@store_errors
def search(
    ctx: typer.Context,
    segment: str = typer.Option(None, "--segment", metavar="ID",
                                 help="Query: a stored segment's id, or a unique prefix of it (≥ 4 hex digits)."),
    image: Path = typer.Option(
        None, "--image", metavar="FILE",
        help="Query: an image file (need not be ingested) with a prompt: --box, --point/--negative-point, "
             "or --mask."),
    box: str = typer.Option(None, "--box", metavar="X0,Y0,X1,Y1",
                            help="A box in image pixels: SAM segments inside it."),
    point: list[str] = typer.Option(None, "--point", metavar="X,Y",
                                    help="A foreground click (repeatable; may refine --box)."),
    negative_point: list[str] = typer.Option(None, "--negative-point", metavar="X,Y",
                                             help="A background click (repeatable)."),
    mask: Path = typer.Option(None, "--mask", metavar="FILE.png",
                              help="A mask image the size of --image (non-zero = segment), embedded as given."),
    bank: str = typer.Option(None, "--bank", metavar="BANK",
                             help="Query: the memory bank whose centroids for --label are the queries "
                                  "(\"find every car\")."),
    text: str = typer.Option(None, "--text", metavar="TEXT",
                             help="Query: a text (\"a red car\"), in a text-image space such as clip-b32 "
                                  "[default space: the home's one text-image space]."),
    label: str = typer.Option(None, "--label", metavar="NAME",
                              help="With --bank: the class to find. Without: a filter, only segments labeled NAME."),
    k: int = typer.Option(10, "-k", "--limit", metavar="K", help="How many hits (at most 10000)."),
    min_score: float = typer.Option(None, "--min-score", metavar="S",
                                    help="Only hits with cosine similarity >= S."),
    dataset: list[str] = typer.Option(None, "--dataset", metavar="NAME",
                                      help="Filter: only these datasets (repeatable)."),
    cluster: int = typer.Option(None, "--cluster", metavar="N", help="Filter: only this cluster id."),
    image_id: int = typer.Option(None, "--image-id", metavar="N",
                                 help="Filter: only segments of this stored image id."),
    min_area: int = typer.Option(None, "--min-area", min=0, metavar="PX", help="Filter: mask area >= PX pixels."),
    max_area: int = typer.Option(None, "--max-area", min=0, metavar="PX", help="Filter: mask area <= PX pixels."),
    exclude_same_image: bool = typer.Option(False, "--exclude-same-image",
                                            help="Filter: drop segments of the query's own image."),
    checkpoint: Path = typer.Option(None, "--checkpoint", metavar="FILE",
                                    help="Image queries: the checkpoint file ingest used (default: the cached "
                                         "official weights)."),
    device: str = typer.Option("auto", "--device", help="Image and text queries: auto, cpu, cuda, ..."),
    gallery: Path = typer.Option(None, "--gallery", metavar="OUT.html",
                                 help="Also write OUT.html: the query and each hit as a picture "
                                      "(self-contained, opens from disk)."),
    space_weights: Path = typer.Option(None, "--space-weights", metavar="DIR",
                                       help="Image queries in a --space other than sam, and text queries: a "
                                            "local copy of the space's weights (for CLIP the hub repo's folder, "
                                            "tokenizer included) [default: the cached official ones]."),
    space: str = typer.Option(None, "--space", metavar="NAME",
                              help="Embedding space to compare in: sam, or one added with `samsearch embed` "
                                   "(e.g. dinov2-b, clip-b32) [default: sam; a --bank query: the bank's; a "
                                   "--text query: the home's text-image space]."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print the results as JSON (schema samsearch.search/v1, see README)."),
) -> None:
    """Find stored segments like a query: a stored segment, an image + prompt, a memory-bank class, or a text.

    Prints rank, score (cosine similarity), segment id, bbox, label and image path. Filters run inside
    the vector store. `samsearch show SEGMENT_ID --out FILE.png` draws one hit.
    """
    from samsearch.search.prompt import parse_box, parse_point
    from samsearch.search.query import (
        SearchFilters,
        search_by_image,
        search_by_label,
        search_by_segment,
        search_text,
    )

    prompt_options = [name for name, value in (("--box", box), ("--point", point),
                                               ("--negative-point", negative_point), ("--mask", mask)) if value]
    kind = _query_kind(segment, image, bank, label, prompt_options, text)
    filters = SearchFilters(
        dataset=list(dataset) if dataset else None, label=None if kind == "label" else label, cluster=cluster,
        image_id=image_id, min_area=min_area, max_area=max_area, exclude_same_image=exclude_same_image,
    )
    common: dict[str, Any] = {"k": k, "filters": filters, "min_score": min_score}
    if kind == "image":  # parse every prompt before opening anything
        prompt: dict[str, Any] = {
            "box": parse_box(box) if box else None,
            "points": [parse_point(p) for p in point or []],
            "negative_points": [parse_point(p, "--negative-point") for p in negative_point or []],
            "mask": mask,
        }
    with cli_home(ctx) as home:
        if kind == "segment":
            results = search_by_segment(home, segment, **common, space=space or "sam")
        elif kind == "image":
            results = search_by_image(home, image, **prompt, checkpoint=checkpoint, device=device, **common,
                                      space=space or "sam", space_weights=space_weights)
        elif kind == "text":
            results = search_text(home, text, **common, space=space, weights=space_weights, device=device)
        else:
            results = search_by_label(home, label, bank, **common, space=space)
    if gallery is not None:
        _gallery(results, gallery)
    if as_json:
        echo_json(results.as_dict())
    else:
        typer.echo(_table(results))
    if gallery is not None:
        typer.echo(f"gallery: {gallery}", err=True)


@app.command("show")
@handle_errors
@store_errors
def show(
    ctx: typer.Context,
    segment_id: str = typer.Argument(..., help="The segment's id (as `samsearch search` prints it), or a unique "
                                                   "prefix of it (≥ 4 hex digits, e.g. from `cluster show`)."),
    out: Path = typer.Option(..., "--out", metavar="FILE.png", help="The PNG file to write."),
    max_side: int = typer.Option(None, "--max-side", min=16, metavar="N",
                                 help="Shrink so the longer side is at most N pixels."),
) -> None:
    """Draw one stored segment over its image (outlined) into a PNG."""
    from PIL import Image

    from samsearch.reports.gallery import render_segment

    with cli_home(ctx) as home:
        path = render_segment(home, segment_id, out, max_side=max_side)
    with Image.open(path) as pic:
        typer.echo(f"wrote {path} ({pic.width}x{pic.height})")

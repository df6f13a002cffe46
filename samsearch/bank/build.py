"""Building memory banks: from a labeled detection dataset (SAM prompted with each box, or each
annotation's own mask, embedded exactly as ingest embeds a segment) or from a clustering run's named
clusters. Both end in :func:`samsearch.bank.store.create_bank`."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from samsearch.bank.store import BankInfo, class_similarity, create_bank, validate_bank_name
from samsearch.db import Bank
from samsearch.db.runs import recorded_run
from samsearch.errors import InputError
from samsearch.home import SAM_SPACE, Home

if TYPE_CHECKING:
    from samsearch.data.datasets import LabeledDataset
    from samsearch.sam.models import LoadedModel

# -- building from a labeled dataset ---------------------------------------------------------------------------


@dataclass
class BankBuildOptions:
    name: str
    per_class: int = 8
    prompts: str = "boxes"  # boxes: SAM prompted with each box; masks: the annotation's own mask
    max_per_class: int | None = None
    classes: Sequence[str] | None = None
    seed: int = 0
    replace: bool = False
    box_batch: int = 64
    max_pixels: int = 200_000_000
    space: str = SAM_SPACE  # the embedding space the bank lives in (another than sam: samsearch.spaces)
    weights: Path | None = None  # local weights of ``space`` (``--weights DIR``)


@dataclass
class BuildFailure:
    path: str
    reason: str


@dataclass
class BankBuildSummary:
    run_id: int
    bank: BankInfo | None = None
    images: int = 0
    images_failed: int = 0
    instances_selected: int = 0
    instances_embedded: int = 0
    empty_masks_dropped: int = 0
    without_mask: int = 0  # --prompts masks: annotations that only have a box
    dataset_skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    failures: list[BuildFailure] = field(default_factory=list)
    seconds: float = 0.0
    class_similarity: dict[str, Any] | None = None  # bank.store.class_similarity of the embedded instances
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("bank", "failures")}
        d["failures"] = [f.__dict__ for f in self.failures]
        d["bank"] = self.bank.as_dict() if self.bank else None
        return d


def build_bank(home: Home, model: LoadedModel | None, dataset: LabeledDataset, options: BankBuildOptions,
               progress: bool = True) -> BankBuildSummary:
    """Embed every selected labeled instance of ``dataset`` as ingest embeds a segment (one encoder pass
    per image; SAM prompted with the box, or the annotation's mask as given), then :func:`create_bank`.
    With ``options.space`` other than ``sam`` the masks (SAM's from the boxes, or the annotations' own, which
    need no SAM: ``model`` may then be None) are pooled in that space's backbone instead.
    Images that fail (unreadable, size differs from the annotations, malformed geometry) are counted with
    the reason; the build goes on."""
    import torch
    from tqdm import tqdm

    from samsearch.data.imageio import ImageLoadError, decode_image, read_bytes_and_hash
    from samsearch.sam.encoder import encode_image
    from samsearch.sam.pooling import embedding_space
    from samsearch.sam.segment import Segments, segment

    validate_bank_name(options.name)
    if options.prompts not in ("boxes", "masks"):
        raise InputError(f"--prompts must be boxes or masks, not {options.prompts!r}")
    if options.max_per_class is not None and options.max_per_class < 1:
        raise InputError(f"--max-per-class must be at least 1, got {options.max_per_class}")
    if options.per_class < 1:
        raise InputError(f"--per-class must be at least 1, got {options.per_class}")
    home.claim_writes()  # refused beside another process holding an embedded store, before any write
    if not options.replace:
        with home.db.session() as s:
            if s.execute(select(Bank.id).where(Bank.name == options.name)).first():
                raise InputError(f"bank {options.name!r} already exists (delete it with "
                                 f"`samsearch bank delete {options.name}`, or pass --replace)")
    if options.prompts == "masks" and not dataset.has_masks:
        raise InputError(f"{dataset.source}: no annotation carries a mask ({dataset.format} boxes only); "
                         "--prompts masks needs polygons or RLE: use --prompts boxes")
    space_model = None
    if model is None and (options.space == SAM_SPACE or options.prompts == "boxes"):
        raise InputError("a SAM model is needed for --prompts boxes or the sam space (--model)")
    if options.space == SAM_SPACE:
        home.claim_embedding_space(embedding_space(model.ref))  # refuses a model other than the home's
    else:
        from samsearch.spaces.models import load_space

        space_model = load_space(options.space, options.weights,
                                 None if model is None else str(model.device))
        home.claim_space(options.space, space_model.space)  # refuses other weights than the space's

    selected, summary_without_mask = _select(dataset, options)
    with recorded_run(home.db, "bank", _run_settings(dataset, options, model)) as run:
        summary = BankBuildSummary(run_id=run.id, dataset_skipped=len(dataset.skipped),
                                   skip_reasons=dataset.skip_reasons(), without_mask=summary_without_mask,
                                   instances_selected=sum(len(a) for _, a in selected))
        started = time.perf_counter()

        def counts() -> dict[str, Any]:
            summary.seconds = time.perf_counter() - started
            return {k: v for k, v in summary.as_dict().items() if k != "bank"}

        run.counts = counts
        instances: dict[str, list[np.ndarray]] = defaultdict(list)
        sources: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for image, anns in tqdm(selected, desc="bank build", unit="img", disable=not progress):
            summary.images += 1
            entry = image.entry
            try:
                data, _ = read_bytes_and_hash(image.path)
                rgb = decode_image(data, image.path, options.max_pixels)
                if rgb.shape[:2] != (entry.height, entry.width):
                    raise ValueError(f"size {rgb.shape[1]}x{rgb.shape[0]} differs from the annotations' "
                                     f"{entry.width}x{entry.height} in {dataset.source}")
                if options.prompts == "masks" and space_model is not None:
                    seg = Segments.from_annotation_masks(sorted(anns, key=lambda a: a.id), *rgb.shape[:2])
                    enc = None
                else:
                    enc = encode_image(model.sam, rgb)
                    seg = segment(model.sam, enc, options.prompts, anns, box_batch=options.box_batch)
                if space_model is not None:
                    from samsearch.spaces.models import embed_segments

                    vectors, valid = embed_segments(space_model, rgb, seg.masks)
                else:
                    vectors, valid = seg.pool(enc)
            except ImageLoadError as exc:
                summary.images_failed += 1
                summary.failures.append(BuildFailure(str(image.path), exc.reason))
                continue
            except ValueError as exc:  # size mismatch, malformed polygon/RLE
                summary.images_failed += 1
                summary.failures.append(BuildFailure(str(image.path), " ".join(str(exc).split())))
                continue
            vecs = vectors.to(torch.float32).cpu().numpy()
            ok = valid.cpu().numpy()
            summary.empty_masks_dropped += int((~ok).sum())
            for i in np.flatnonzero(ok):
                label = seg.categories[i]
                instances[label].append(vecs[i])
                sources[label].append({"image": str(image.path), "file_name": entry.file_name,
                                       "annotation_id": seg.annotation_ids[i]})
        summary.instances_embedded = sum(len(v) for v in instances.values())
        if not instances:
            raise InputError(f"{dataset.source}: no instance could be embedded "
                             f"({summary.images_failed} images failed, {summary.empty_masks_dropped} empty masks)")
        stacked = {k: np.stack(v) for k, v in instances.items()}
        summary.class_similarity = class_similarity(stacked)
        if summary.class_similarity and summary.class_similarity["near_identical"]:
            summary.warnings.append(_near_identical_warning(summary.class_similarity, options, model))
        settings = {
            "built_from": {"format": dataset.format, "annotations": str(dataset.source),
                           "images": str(dataset.images_dir)},
            "prompts": options.prompts, "max_per_class": options.max_per_class,
            "classes": list(options.classes) if options.classes else None,
            "model": model.name if model is not None else None, "run_id": run.id,
        }
        summary.bank = create_bank(home, options.name, stacked,
                                   per_class=options.per_class, settings=settings, sources=sources,
                                   seed=options.seed, replace=options.replace, space_name=options.space)
    return summary


def _near_identical_warning(sim: dict[str, Any], options: BankBuildOptions, model: LoadedModel | None) -> str:
    if options.prompts == "boxes":
        random = model is not None and model.name == "tiny-random"
        cause = ("the masks may cover much more than the objects ("
                 + ("tiny-random's masks do not follow the box" if random else "boxes") + "); try --prompts masks")
    else:
        cause = "the classes look alike in this embedding space; try another --space (e.g. dinov2-b)"
    return (f"instances of different classes are near-identical (mean cosine {sim['mean_cosine']:.2f} between "
            f"class centroids, above {sim['threshold']}; closest: {sim['closest'][0]} and {sim['closest'][1]} at "
            f"{sim['max_cosine']:.2f}): labels from this bank will be close to chance; {cause}")


def _select(dataset: LabeledDataset, options: BankBuildOptions):
    """The (image, annotations) pairs to embed, honouring --classes and --max-per-class (a seeded random
    choice per class), and how many annotations --prompts masks leaves out for having no mask."""
    if options.classes:
        unknown = [c for c in options.classes if c not in dataset.categories]
        if unknown:
            raise InputError(f"--classes: {', '.join(unknown)} not in {dataset.source} "
                             f"(classes there: {', '.join(dataset.categories)})")
    wanted = set(options.classes) if options.classes else None
    by_class: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    without_mask = 0
    for i, image in enumerate(dataset.images):
        for ann in image.entry.annotations:
            if wanted is not None and ann.category not in wanted:
                continue
            if options.prompts == "masks" and ann.segmentation is None:
                without_mask += 1
                continue
            by_class[ann.category].append((i, ann))
    if options.max_per_class is not None:
        rng = np.random.default_rng(options.seed)
        for label, items in by_class.items():
            if len(items) > options.max_per_class:
                keep = np.sort(rng.choice(len(items), options.max_per_class, replace=False))
                by_class[label] = [items[k] for k in keep]
    per_image: dict[int, list[Any]] = defaultdict(list)
    for items in by_class.values():
        for i, ann in items:
            per_image[i].append(ann)
    selected = [(dataset.images[i], sorted(per_image[i], key=lambda a: a.id)) for i in sorted(per_image)]
    return selected, without_mask


def _run_settings(dataset: LabeledDataset, options: BankBuildOptions,
                  model: LoadedModel | None) -> dict[str, Any]:
    return {
        "name": options.name, "format": dataset.format, "annotations": str(dataset.source),
        "images": str(Path(dataset.images_dir)), "per_class": options.per_class, "prompts": options.prompts,
        "max_per_class": options.max_per_class, "classes": list(options.classes or []) or None,
        "seed": options.seed, "model": model.name if model is not None else None,
        "model_key": model.key if model is not None else None, "space": options.space,
    }


def create_bank_from_clusters(home: Home, run: str, name: str, per_class: int = 8, seed: int = 0,
                              replace: bool = False) -> BankInfo:
    """A bank whose classes are the named clusters of clustering run ``run`` (``samsearch cluster name``):
    each class's instances are its members' stored vectors, so no SAM runs. Closes the loop between
    discovering classes by clustering and labeling the corpus with them."""
    from samsearch.cluster.naming import cluster_instances, cluster_names, cluster_run_space

    instances = cluster_instances(home, run)
    names = {str(c): label for c, label in sorted(cluster_names(home, run).items()) if label in instances}
    built = {"clusters": run, "cluster_names": names}
    return create_bank(home, name, instances, per_class=per_class, seed=seed, replace=replace,
                       settings={"from_clusters": run, "built_from": built, "per_class": per_class, "seed": seed},
                       space_name=cluster_run_space(home, run))

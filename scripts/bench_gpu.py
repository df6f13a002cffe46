"""Ingest throughput on an accelerator: images/s for automatic mode and boxes/masks modes, per model and
precision, against segment_anything's SamAutomaticMaskGenerator in the same run; parity of bf16/fp16
against fp32 and of samsearch's generator against the official one.

    .venv/bin/python scripts/bench_gpu.py --device cuda --models vit_b,vit_h --precisions fp32,bf16 \\
        --images 64 --size 1024x768 --points-per-side 32 --official-images 8 --out bench_gpu.json

Weights are random (seeded ``build_sam``; no download, so it runs on an offline machine): speed does not
depend on them, but which masks survive SAM's thresholds does. Random decoders predict low IoU and
stability, so at SAM's defaults almost nothing survives (the least work); ``--thresholds lowered`` keeps
every mask up to NMS (the most work a real model could cause). Both are measured by default.

Everything runs through the real ingest (``Ingestor.run``: pipeline, stores on a temporary home);
images/s = images / wall seconds after a warm-up run (which also absorbs ``--compile``). Prints JSON
(and writes it to ``--out``), plus a Markdown table on stderr. Smoke test on a CPU:
``--device cpu --models tiny-random --images 2 --points-per-side 4 --official-images 1 --precisions fp32``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from samsearch.data.imageio import load_image
from samsearch.data.synthetic import make_dataset
from samsearch.home import Home
from samsearch.ingest.ingestor import Ingestor
from samsearch.ingest.options import IngestOptions
from samsearch.sam.accel import ExecutionOptions, autocast, fused_attention
from samsearch.sam.amg import AmgSettings, generate_masks
from samsearch.sam.encoder import encode_image
from samsearch.sam.models import MODELS, LoadedModel, build_sam, select_device
from samsearch.sam.parity import embedding_cosine, mask_parity
from samsearch.sam.pooling import pool_mask_embeddings

THRESHOLDS = {"sam": {}, "lowered": dict(pred_iou_thresh=-1.0, stability_score_thresh=0.0)}


def random_model(name: str, device: torch.device) -> LoadedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = build_sam(MODELS[name])
    return LoadedModel(name, sam.to(device), device, "seed:0", None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ingest_rate(model: LoadedModel, data, paths: list[Path], prompts: str, amg: AmgSettings,
                execution: ExecutionOptions, tmp: Path, tag: str) -> dict:
    opts = IngestOptions(prompts=prompts, annotations=data.annotations_path, amg=amg, execution=execution)
    with Home(tmp / f"warm-{tag}") as home:  # warm-up: kernels, allocator, compile
        Ingestor(home, model, opts).run(paths[:2], progress=False)
    with Home(tmp / f"run-{tag}") as home:
        _sync(model.device)
        t0 = time.perf_counter()
        summary = Ingestor(home, model, opts).run(paths, progress=False)
        _sync(model.device)
        wall = time.perf_counter() - t0
    return {"images_per_s": round(len(paths) / wall, 3), "wall_s": round(wall, 2),
            "segments_per_image": round(summary.segments / len(paths), 1), "stage_seconds": summary.stage_seconds}


def official_rate(model: LoadedModel, paths: list[Path], amg: AmgSettings) -> dict:
    kw = {k: v for k, v in amg.as_dict().items()}
    gen = SamAutomaticMaskGenerator(model.sam, **kw)
    gen.generate(load_image(paths[0]).rgb)  # warm-up
    _sync(model.device)
    t0 = time.perf_counter()
    n_masks = 0
    for p in paths:
        n_masks += len(gen.generate(load_image(p).rgb))
    _sync(model.device)
    wall = time.perf_counter() - t0
    return {"images_per_s": round(len(paths) / wall, 3), "wall_s": round(wall, 2),
            "masks_per_image": round(n_masks / len(paths), 1)}


@torch.no_grad()
def precision_parity(model: LoadedModel, paths: list[Path], amg: AmgSettings, precision: str) -> dict:
    """Masks (IoU matching) and embeddings (cosine, same masks) of ``precision`` against fp32."""
    sam, dev = model.sam, model.device
    matched, best, cos = [], [], []
    for p in paths:
        rgb = load_image(p).rgb
        with fused_attention(sam):
            e32 = encode_image(sam, rgb)
            g32 = generate_masks(sam, e32, amg)
            with autocast(dev, precision):
                elo = encode_image(sam, rgb)
                glo = generate_masks(sam, elo, amg)
        par = mask_parity(g32.masks, glo.masks)
        matched.append(par.matched())
        best.append(float(par.best_iou.mean()) if par.n_reference else 1.0)
        v32, ok = pool_mask_embeddings(g32.masks, e32)
        vlo, _ = pool_mask_embeddings(g32.masks, elo)
        cos.extend(embedding_cosine(v32[ok], vlo[ok]).tolist())
    return {"matched_iou_0.9": round(float(np.mean(matched)), 4), "mean_best_iou": round(float(np.mean(best)), 4),
            "embedding_cosine_min": round(float(np.min(cos)), 5) if cos else None,
            "embedding_cosine_mean": round(float(np.mean(cos)), 5) if cos else None}


@torch.no_grad()
def official_parity(model: LoadedModel, paths: list[Path], amg: AmgSettings) -> dict:
    out = []
    for p in paths:
        rgb = load_image(p).rgb
        ref = SamAutomaticMaskGenerator(model.sam, **amg.as_dict()).generate(rgb)
        ours = generate_masks(model.sam, encode_image(model.sam, rgb), amg)
        ref_masks = np.stack([r["segmentation"] for r in ref]) if ref else np.zeros((0, *rgb.shape[:2]), bool)
        out.append(mask_parity(ref_masks, ours.masks).as_dict())
    return {"images": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="vit_b,vit_h")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--thresholds", default="sam,lowered")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--official-images", type=int, default=8)
    ap.add_argument("--parity-images", type=int, default=2)
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--encoder-batch", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = select_device(args.device)
    w, h = (int(v) for v in args.size.split("x"))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "command": " ".join(sys.argv), "results": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = make_dataset(tmp / "data", n_images=args.images, seed=0, size=(w, h))
        paths = [im.path for im in data.images]
        for name in args.models.split(","):
            model = random_model(name, device)
            for thresholds in args.thresholds.split(","):
                amg = AmgSettings(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                                  **THRESHOLDS[thresholds])
                row: dict = {"model": name, "thresholds": thresholds,
                             "official_fp32": official_rate(model, paths[:args.official_images], amg),
                             "official_parity_fp32": official_parity(model, paths[:1], amg)}
                encoder = model.sam.image_encoder
                for precision in args.precisions.split(","):
                    ex = ExecutionOptions(precision=precision, compile=args.compile,
                                          encoder_batch=args.encoder_batch)
                    tag = f"{name}-{thresholds}-{precision}"
                    row[f"auto_{precision}"] = ingest_rate(model, data, paths, "auto", amg, ex, tmp, tag + "-auto")
                    if thresholds == args.thresholds.split(",")[0]:  # box/mask modes do not use thresholds
                        for mode in ("boxes", "masks"):
                            row[f"{mode}_{precision}"] = ingest_rate(model, data, paths, mode, amg, ex, tmp,
                                                                     f"{tag}-{mode}")
                    model.sam.image_encoder = encoder  # undo --compile: the next runs start from the original
                    if precision != "fp32":
                        row[f"parity_{precision}_vs_fp32"] = precision_parity(
                            model, paths[:args.parity_images], amg, precision)
                info["results"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    text = json.dumps(info, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    _table(info, args.precisions.split(","))


def _table(info: dict, precisions: list[str]) -> None:
    cols = ["official_fp32"] + [f"auto_{p}" for p in precisions] + [f"{m}_{p}" for m in ("boxes", "masks")
                                                                    for p in precisions]
    print("| model | thresholds | " + " | ".join(cols) + " |", file=sys.stderr)
    print("|---|---|" + "---:|" * len(cols), file=sys.stderr)
    for row in info["results"]:
        cells = [str(row[c]["images_per_s"]) if c in row else "" for c in cols]
        print(f"| {row['model']} | {row['thresholds']} | " + " | ".join(cells) + " |", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Automatic mask generation, side by side in one process: samsearch's generator (fast decoder, and the
exact one) against segment_anything's SamAutomaticMaskGenerator, same weights, image and settings.

    .venv/bin/python scripts/bench_amg.py --repeats 3 --points-per-side 8 [--threads 1] [--size 256x192]

Repeats are interleaved (reference, fast, exact, reference, ...) so machine noise hits all alike; medians
are reported. Each generator's time is split into stages: for the reference, the encoder (``set_image``),
the decoder (``predict_torch``) and everything else (its Python post-processing: RLE of every mask,
``MaskData`` copies, NMS, records); for samsearch, the encoder, the decoder's two-way transformer and
output upscaling (plus the prompt encoder), stability + boxes, NMS, the final masks and their one RLE
encoding. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from samsearch.data.imageio import load_image
from samsearch.data.masks import masks_to_rles
from samsearch.data.synthetic import make_dataset
from samsearch.sam.amg import AmgSettings, generate_masks
from samsearch.sam.encoder import encode_image
from samsearch.sam.models import load_model
from samsearch.sam.parity import mask_parity

SETTINGS = {
    # thresholds lowered and NMS off, so every mask of the random decoder survives to the end
    "many": dict(pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    # SAM's defaults (the random decoder's masks fail its thresholds: little is upscaled or encoded)
    "defaults": dict(),
}


def _timed(fn, bucket: dict[str, float], key: str):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[key] += time.perf_counter() - t0
    return wrapper


def run_reference(sam, rgb, kw):
    stages = {"encoder": 0.0, "decoder": 0.0}
    gen = SamAutomaticMaskGenerator(sam, **kw)
    # Instrument the instance (not the library): encoder and decoder calls are timed where they happen.
    gen.predictor.set_image = _timed(gen.predictor.set_image, stages, "encoder")
    gen.predictor.predict_torch = _timed(gen.predictor.predict_torch, stages, "decoder")
    t0 = time.perf_counter()
    records = gen.generate(rgb)
    total = time.perf_counter() - t0
    stages["postprocessing"] = total - stages["encoder"] - stages["decoder"]
    masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *rgb.shape[:2]), bool)
    return total, stages, masks


def run_ours(sam, rgb, kw, exact: bool):
    t0 = time.perf_counter()
    enc = encode_image(sam, rgb)
    t1 = time.perf_counter()
    gen = generate_masks(sam, enc, AmgSettings(**kw), exact=exact)
    t2 = time.perf_counter()
    rles = masks_to_rles(gen.masks.cpu().numpy())
    t3 = time.perf_counter()
    stages = {"encoder": t1 - t0}
    tm = gen.timings
    if exact:
        stages["decoder"] = tm["decoder"]
    else:
        stages["decoder_transformer"] = tm["decoder_transformer"]
        stages["decoder_upscale"] = tm["decoder_upscale"]
        stages["decoder_other"] = tm["decoder"] - tm["decoder_transformer"] - tm["decoder_upscale"]
    stages.update({"stability_boxes": tm["filter"], "nms": tm["nms"], "final_masks": tm["final_masks"],
                   "rle": t3 - t2})
    stages["unaccounted"] = (t3 - t0) - sum(stages.values())
    assert len(rles) == len(gen)
    return t3 - t0, stages, gen.masks.cpu().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--points-per-side", type=int, default=8)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--size", default="256x192")
    ap.add_argument("--settings", default="many,defaults")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    model = load_model(args.model, device=args.device)
    sam = model.sam
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp), n_images=1, seed=0, size=(w, h))
        rgb = load_image(data.images[0].path).rgb
    out: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "model": args.model, "device": args.device, "image_size": args.size,
        "points_per_side": args.points_per_side, "repeats": args.repeats, "cases": {},
    }
    runners = {"reference": lambda kw: run_reference(sam, rgb, kw),
               "samsearch_fast": lambda kw: run_ours(sam, rgb, kw, exact=False),
               "samsearch_exact": lambda kw: run_ours(sam, rgb, kw, exact=True)}
    with torch.no_grad():
        for case in args.settings.split(","):
            kw = dict(SETTINGS[case], points_per_side=args.points_per_side, points_per_batch=args.points_per_batch)
            runs: dict[str, list] = {name: [] for name in runners}
            masks: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):
                for name, fn in runners.items():
                    total, stages, m = fn(kw)
                    runs[name].append((total, stages))
                    masks[name] = m
            result: dict = {"settings": kw}
            for name, rs in runs.items():
                med = statistics.median(t for t, _ in rs)
                stage_med = {k: statistics.median(s[k] for _, s in rs) for k in rs[0][1]}
                result[name] = {"median_s": round(med, 3), "n_masks": int(len(masks[name])),
                                "stages_s": {k: round(v, 3) for k, v in stage_med.items()},
                                "stage_share": {k: round(v / med, 3) for k, v in stage_med.items()}}
                if name != "reference":
                    result[name]["speedup_vs_reference"] = round(result["reference"]["median_s"] / med, 2)
                    result[name]["parity"] = mask_parity(masks["reference"], masks[name]).as_dict()
            fast = result["samsearch_fast"]["stage_share"]
            result["samsearch_fast"]["network_share"] = round(
                fast["encoder"] + fast["decoder_transformer"] + fast["decoder_upscale"] + fast["decoder_other"], 3)
            result["samsearch_exact"]["identical_to_reference"] = bool(
                masks["samsearch_exact"].shape == masks["reference"].shape
                and np.array_equal(masks["samsearch_exact"], masks["reference"]))
            out["cases"][case] = result
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Per-stage timing of one ingest run (decode, encode, masks, pooling, rle, vectors, sql).

    .venv/bin/python scripts/bench_ingest.py --images 12 --repeats 3 [--prompts masks|auto|boxes]

Uses synthetic images and tiny-random on the CPU by default, so it runs anywhere; pass --model and
--device to measure a real model on a GPU. Prints one JSON object with per-stage medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from samsearch.amg import AmgSettings
from samsearch.home import Home
from samsearch.ingest import IngestOptions, ingest
from samsearch.models import load_model
from samsearch.synthetic import make_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", default="masks", choices=["auto", "boxes", "masks"])
    ap.add_argument("--points-per-side", type=int, default=4)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="256x192")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    model = load_model(args.model, device=args.device)
    amg = AmgSettings(points_per_side=args.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                      box_nms_thresh=0.99)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", n_images=args.images, seed=0, size=(w, h))
        for r in range(args.repeats):
            with Home(Path(tmp) / f"home{r}") as home:
                opts = IngestOptions(prompts=args.prompts, annotations=data.annotations_path, amg=amg)
                t0 = time.perf_counter()
                summary = ingest(home, [data.root], model, opts, progress=False)
                wall = time.perf_counter() - t0
            runs.append({"wall": wall, "segments": summary.segments, **summary.stage_seconds})
    stages = [k for k in runs[0] if k not in ("wall", "segments")]
    med = {k: statistics.median(run[k] for run in runs) for k in ["wall", *stages]}
    accounted = sum(med[k] for k in stages)
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "model": args.model, "device": args.device, "prompts": args.prompts,
        "images": args.images, "image_size": args.size, "segments": runs[0]["segments"],
        "repeats": args.repeats,
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "ms_per_image": {k: round(1000 * med[k] / args.images, 1) for k in ["wall", *stages]},
        "share_of_wall": {k: round(med[k] / med["wall"], 3) for k in stages},
        "unaccounted_share": round(1 - accounted / med["wall"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()

"""Per-stage timing of ingest runs (decode, encode, masks, pooling, transfer, rle, vectors, sql, waits).

    .venv/bin/python scripts/bench_ingest.py --images 12 --repeats 3 [--prompts masks|auto|boxes]
    .venv/bin/python scripts/bench_ingest.py --images 8 --repeats 3 --prompts auto --baseline 5838575

Uses synthetic images and tiny-random on the CPU by default, so it runs anywhere; pass --model and
--device to measure a real model on a GPU. Prints one JSON object with per-stage medians.

``--baseline REF`` measures the code of git revision REF side by side: REF is exported to a temporary
folder (``git archive``), and each repeat runs REF's own ``scripts/bench_ingest.py`` and this one, one
repeat each in a fresh process, alternately; the medians of both and their ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(args: argparse.Namespace) -> dict:
    import torch

    from samsearch.data.synthetic import make_dataset
    from samsearch.home import Home
    from samsearch.ingest.ingestor import ingest
    from samsearch.ingest.options import IngestOptions
    from samsearch.sam.accel import ExecutionOptions
    from samsearch.sam.amg import AmgSettings
    from samsearch.sam.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    model = load_model(args.model, device=args.device)
    amg = AmgSettings(points_per_side=args.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                      box_nms_thresh=0.99)
    execution = ExecutionOptions(decoder=args.decoder, pipeline=not args.sequential,
                                 encoder_batch=args.encoder_batch, precision=args.precision)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", n_images=args.images, seed=0, size=(w, h))
        for r in range(args.repeats):
            with Home(Path(tmp) / f"home{r}") as home:
                opts = IngestOptions(prompts=args.prompts, annotations=data.annotations_path, amg=amg,
                                     execution=execution)
                t0 = time.perf_counter()
                summary = ingest(home, [data.root], model, opts, progress=False)
                wall = time.perf_counter() - t0
            runs.append({"wall": wall, "segments": summary.segments, **summary.stage_seconds})
    stages = [k for k in runs[0] if k not in ("wall", "segments")]
    med = {k: statistics.median(run[k] for run in runs) for k in ["wall", *stages]}
    busy = [k for k in stages if k not in ("wait_input", "wait_output", "drain")]
    return {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "model": args.model, "device": args.device, "prompts": args.prompts,
        "images": args.images, "image_size": args.size, "segments": runs[0]["segments"],
        "repeats": args.repeats, "execution": execution.as_dict(),
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "ms_per_image": {k: round(1000 * med[k] / args.images, 1) for k in ["wall", *stages]},
        "share_of_wall": {k: round(med[k] / med["wall"], 3) for k in stages},
        # busy time of all stages / wall: above 1 when stages overlap (threads)
        "overlap": round(sum(med[k] for k in busy) / med["wall"], 3),
    }


def _one_run(script: Path, pythonpath: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, str(script), "--images", str(args.images), "--repeats", "1", "--prompts", args.prompts,
           "--points-per-side", str(args.points_per_side), "--model", args.model, "--device", args.device,
           "--size", args.size, *extra]
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=pythonpath, check=True)
    return json.loads(done.stdout)


def compare(args: argparse.Namespace) -> dict:
    """Alternate one-repeat runs of the baseline revision's script and this one; medians and ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        ours_extra = ["--decoder", args.decoder, "--precision", args.precision]
        if args.sequential:
            ours_extra.append("--sequential")
        if args.encoder_batch:
            ours_extra += ["--encoder-batch", str(args.encoder_batch)]
        runs: dict[str, list[dict]] = {"baseline": [], "current": []}
        for _ in range(args.repeats):
            runs["baseline"].append(_one_run(base / "scripts" / "bench_ingest.py", base, args, []))
            runs["current"].append(_one_run(ROOT / "scripts" / "bench_ingest.py", ROOT, args, ours_extra))
    out: dict = {"baseline_revision": args.baseline, "repeats": args.repeats}
    for name, rs in runs.items():
        keys = list(rs[0]["median_seconds"])
        med = {k: statistics.median(r["median_seconds"][k] for r in rs) for k in keys}
        out[name] = {
            "machine": rs[0]["machine"], "segments": rs[0]["segments"],
            "median_seconds": {k: round(v, 3) for k, v in med.items()},
            "ms_per_image": {k: round(1000 * v / args.images, 1) for k, v in med.items()},
            "share_of_wall": {k: round(v / med["wall"], 3) for k, v in med.items() if k != "wall"},
        }
        if "execution" in rs[0]:
            out[name]["execution"] = rs[0]["execution"]
    b, c = out["baseline"]["median_seconds"], out["current"]["median_seconds"]
    out["speedup"] = {k: round(b[k] / c[k], 2) for k in b if k in c and c[k] > 0}
    out["settings"] = {"prompts": args.prompts, "images": args.images, "image_size": args.size,
                       "points_per_side": args.points_per_side, "model": args.model, "device": args.device,
                       "threads": args.threads}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", default="masks", choices=["auto", "boxes", "masks"])
    ap.add_argument("--points-per-side", type=int, default=4)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="256x192")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--decoder", default="fast", choices=["fast", "exact"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--encoder-batch", type=int, default=None)
    ap.add_argument("--sequential", action="store_true", help="no overlapped pipeline")
    ap.add_argument("--baseline", metavar="REF", help="also measure git revision REF, alternating runs")
    args = ap.parse_args()
    print(json.dumps(compare(args) if args.baseline else measure(args), indent=2))


if __name__ == "__main__":
    main()

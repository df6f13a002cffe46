"""The fast automatic mask generator alone (no encoder, no reference), this checkout against a baseline
checkout, alternating processes so machine noise hits both alike.

    .venv/bin/python scripts/bench_amg_ab.py --baseline /path/to/other/checkout --rounds 2 --repeats 3 \
        [--points-per-side 8] [--threads 1]

Each round runs one process per checkout (baseline first, then this one); each process encodes one synthetic
256×192 image with ``tiny-random`` once, then times ``generate_masks`` (fast decoder) ``--repeats`` times per
settings case, wall and process CPU time. Prints one JSON object with the medians over all rounds, and the
ratios baseline / current (above 1: the current checkout is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CASES = {
    # thresholds lowered and NMS off: every mask of the random decoder survives to the end
    "many": dict(pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    # SAM's defaults: the IoU filter rejects the random decoder's masks (the IoU-selection path, no upscaling)
    "defaults": dict(),
    # a positive IoU threshold some masks pass (selection + upscaling of the selected prompts)
    "some": dict(pred_iou_thresh=0.03, stability_score_thresh=0.0, box_nms_thresh=1.0),
}

_CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import torch
from samsearch.data.imageio import load_image
from samsearch.data.synthetic import make_dataset
from samsearch.sam.amg import AmgSettings, generate_masks
from samsearch.sam.encoder import encode_image
from samsearch.sam.models import load_model
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
sam = load_model("tiny-random", device="cpu").sam
with tempfile.TemporaryDirectory() as tmp:
    rgb = load_image(make_dataset(Path(tmp), n_images=1, seed=0).images[0].path).rgb
out = {}
with torch.no_grad():
    enc = encode_image(sam, rgb)
    for case, kw in args["cases"].items():
        runs = []
        for _ in range(args["repeats"]):
            w0, c0 = time.perf_counter(), time.process_time()
            n = len(generate_masks(sam, enc, AmgSettings(points_per_side=args["pps"], **kw)))
            runs.append((time.perf_counter() - w0, time.process_time() - c0, n))
        out[case] = runs
print(json.dumps(out))
"""


def _run(checkout: Path, args: argparse.Namespace) -> dict:
    payload = json.dumps({"threads": args.threads, "repeats": args.repeats, "pps": args.points_per_side,
                          "cases": {c: CASES[c] for c in args.cases.split(",")}})
    env = dict(os.environ, PYTHONPATH=str(checkout))
    res = subprocess.run([sys.executable, "-c", _CHILD, payload], cwd=checkout, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="another checkout of samsearch")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--points-per-side", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", default="many,defaults,some")
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    runs: dict[str, dict[str, list]] = {"baseline": {}, "current": {}}
    for _ in range(args.rounds):
        for name, checkout in (("baseline", args.baseline.resolve()), ("current", here)):
            for case, rs in _run(checkout, args).items():
                runs[name].setdefault(case, []).extend(rs)
    out: dict = {"baseline": str(args.baseline), "threads": args.threads, "points_per_side": args.points_per_side,
                 "load_average": os.getloadavg(), "cases": {}}
    for case in runs["current"]:
        row = {}
        for name in ("baseline", "current"):
            rs = runs[name][case]
            row[name] = {"wall_s": round(statistics.median(r[0] for r in rs), 3),
                         "cpu_s": round(statistics.median(r[1] for r in rs), 3), "n_masks": rs[0][2]}
        row["wall_ratio"] = round(row["baseline"]["wall_s"] / row["current"]["wall_s"], 2)
        row["cpu_ratio"] = round(row["baseline"]["cpu_s"] / row["current"]["cpu_s"], 2)
        out["cases"][case] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

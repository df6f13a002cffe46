"""Full-size reliability runs of the ingest queue (results go in docs/RELIABILITY.md).

    .venv/bin/python scripts/reliability.py --images 200 --trials 10 --trial-images 24 [--json out.json]

Needs PostgreSQL on 127.0.0.1:5432 (SAMSEARCH_TEST_PG to change). Vectors go to the Qdrant REST
stand-in (samsearch.testing.qdrant_standin) served from this process; workers are real
``samsearch worker`` processes (tiny-random on the CPU, --prompts masks, synthetic images).

1. clean run: 2 workers drain a queue of --images images; every image stored exactly once, SQL and
   vectors agree, segment ids are the expected ones. Its store is the reference for the rest.
2. 4 workers drain a fresh queue of the same images: the same checks, and equal to the reference.
3. --trials SIGKILL trials (seeds --seed, --seed+1, ...): on a fresh queue of --trial-images images a
   victim worker is SIGKILLed a random time (0..--max-delay s) after its first claim; a second worker
   process finishes everything after the 2 s leases expire; the store must equal the reference's.
4. --fault-trials crash-point trials: like 3., but the victim dies by os._exit at an exact point of its
   work, between its vector upsert and its SQL commit (SAMSEARCH_FAULT=after_vectors:<1..3>).
5. --failures injected vector-store failures: the stand-in applies half of the n-th upsert request
   (random n) and answers HTTP 500; the worker must exit 1 with one clear line and leave the image not
   done; a second worker drains the queue; the store must equal the reference's.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

from samsearch.data.synthetic import make_dataset
from samsearch.reports.doctor import diagnose
from samsearch.testing.reliability import (
    cluster,
    differences,
    enqueue_images,
    expected_ids,
    finish,
    kill_trial,
    run_workers,
    snapshot,
)


def clean_runs(images, annotations, tmp: Path, workers: list[int]) -> tuple[list[dict], object]:
    results, reference = [], None
    for n in workers:
        t0 = time.perf_counter()
        with cluster(tmp / f"workers{n}") as c:
            settings_hash = enqueue_images(c, images, annotations)
            summaries = run_workers(c, n, timeout=4 * 3600)
            with c.open_home() as home:
                snap = snapshot(home)
                doctor = diagnose(home)
        problems = differences(snap, expected_ids(images, settings_hash), reference)
        claimed = sum(s["images_claimed"] for s in summaries)
        ingested = sum(s["images_ingested"] for s in summaries)
        if claimed != len(images) or ingested != len(images):
            problems.append(f"{claimed} claims and {ingested} stores for {len(images)} images")
        if doctor.problems:
            problems.append(f"doctor found {doctor.problems} problems")
        reference = reference or snap
        results.append({"workers": n, "images": len(images), "segments": len(snap.segments),
                        "vectors": len(snap.vectors), "claimed": claimed, "ingested": ingested,
                        "per_worker": [s["images_ingested"] for s in summaries], "problems": problems,
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(results[-1]), flush=True)
    return results, reference


def failure_runs(images, annotations, tmp: Path, reference, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for k in range(count):
        subset = rng.sample(images, min(6, len(images)))
        n_requests = sum((len(im.objects) + 1) // 2 for im in subset)  # 2 points per request
        fail_at = rng.randint(1, n_requests)
        with cluster(tmp / f"fail{k}") as c:
            settings_hash = enqueue_images(c, subset, annotations)
            c.standin.state.fail_upsert = fail_at
            proc = c.start_worker("--batch", "3", env={"SAMSEARCH_QDRANT_UPSERT_BATCH": "2"})
            out_text, err = proc.communicate(timeout=600)
            c.standin.state.fail_upsert = None
            with c.open_home() as home:
                with home.db.session() as s:
                    from sqlalchemy import func, select

                    from samsearch.db import Image

                    done_before = s.scalar(select(func.count()).select_from(Image).where(Image.status == "done"))
                summary = finish(c.start_worker())
                snap = snapshot(home)
        problems = differences(snap, expected_ids(subset, settings_hash), reference)
        lines = err.strip().splitlines()
        if proc.returncode != 1 or len(lines) != 1 or not lines[0].startswith("Error: Qdrant at "):
            problems.append(f"the failing worker exited {proc.returncode} with {err.strip()[-300:]!r}")
        out.append({"trial": k, "images": len(subset), "fail_at_request": fail_at, "error": lines[-1] if lines else "",
                    "done_before_retry": done_before, "retried": summary["images_ingested"], "problems": problems})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", default="2,4", help="clean runs with these numbers of workers")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--trial-images", type=int, default=24)
    ap.add_argument("--max-delay", type=float, default=8.0)
    ap.add_argument("--fault-trials", type=int, default=5)
    ap.add_argument("--failures", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = make_dataset(tmp / "data", n_images=args.images, seed=args.seed)
        images = data.images
        clean, reference = clean_runs(images, data.annotations_path, tmp, [int(w) for w in args.workers.split(",")])
        trials = []
        for t in range(args.trials):
            seed = args.seed + t
            subset = random.Random(seed).sample(images, min(args.trial_images, len(images)))
            with cluster(tmp / f"trial{t}", lease=2.0) as c:
                trial = kill_trial(c, subset, data.annotations_path, seed, reference, max_delay=args.max_delay)
            trials.append({"seed": seed, "images": trial.images, "kill_after_s": trial.kill_after_s,
                           "leases_held_at_kill": trial.leases_held_at_kill,
                           "max_attempts": trial.max_attempts_seen,
                           "survivor_ingested": trial.survivor["images_ingested"],
                           "problems": trial.problems, "seconds": trial.seconds})
            print(json.dumps(trials[-1]), flush=True)
        for t in range(args.fault_trials):
            seed = args.seed + 1000 + t
            rng = random.Random(seed)
            subset = rng.sample(images, min(args.trial_images, len(images)))
            fault = f"after_vectors:{rng.randint(1, 3)}"
            with cluster(tmp / f"fault{t}", lease=2.0) as c:
                trial = kill_trial(c, subset, data.annotations_path, seed, reference, fault=fault)
            trials.append({"seed": seed, "images": trial.images, "crash_at": fault,
                           "leases_at_first_claim": trial.leases_held_at_kill,
                           "max_attempts": trial.max_attempts_seen,
                           "survivor_ingested": trial.survivor["images_ingested"],
                           "problems": trial.problems, "seconds": trial.seconds})
            print(json.dumps(trials[-1]), flush=True)
        failures = failure_runs(images, data.annotations_path, tmp, reference, args.failures, args.seed)
    result = {
        "command": "scripts/reliability.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
        "machine": f"{platform.machine()} {platform.processor() or ''} ({platform.node()})".strip(),
        "clean": clean, "trials": trials, "failures": failures,
        "problems": sum(len(r["problems"]) for r in (*clean, *trials, *failures)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps({k: result[k] for k in ("command", "problems", "seconds")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

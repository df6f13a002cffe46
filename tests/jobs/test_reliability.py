"""Reliability with real processes and real Postgres: several `samsearch worker` processes on one queue,
workers killed with SIGKILL, a vector store failing mid-batch, a worker stopped with SIGTERM.

Vectors live on the Qdrant REST stand-in (a real HTTP server; no Qdrant server can run here). Runs
are small here (16 images, short leases: the CPU encoder costs ~1.3 s an image); ``scripts/reliability.py``
runs the full-size version (hundreds of images, 10+ kill trials), see docs/RELIABILITY.md.
"""

import math
import signal
import time

import pytest
from sqlalchemy import select

from samsearch.db import Image
from samsearch.home import SEGMENTS
from samsearch.jobs.worker import WorkerOptions, run_worker
from samsearch.reports.doctor import diagnose
from samsearch.testing.reliability import (
    cluster,
    differences,
    enqueue_images,
    expected_ids,
    finish,
    kill_trial,
    leases_held,
    run_workers,
    snapshot,
)
from samsearch.vectors import Filter, Match, VectorStoreError
from samsearch.vectors.server import QdrantSettings

pytestmark = pytest.mark.slow


N_IMAGES = 16


@pytest.fixture(scope="module")
def clean_run(shapes, tmp_path_factory):
    """Two worker processes drain a queue of 16 images: the reference every other run must equal."""
    with cluster(tmp_path_factory.mktemp("clean"), lease=30.0) as c:  # no kills: leases never run out
        settings_hash = enqueue_images(c, shapes.images[:N_IMAGES], shapes.annotations_path)
        summaries = run_workers(c, 2)
        with c.open_home() as home:
            snap = snapshot(home)
            report = diagnose(home)
        upserts = c.standin.requests("PUT", "/points")
    return {"summaries": summaries, "snapshot": snap, "report": report, "settings_hash": settings_hash,
            "upserts": upserts}


def test_two_workers_store_every_image_exactly_once(clean_run, shapes):
    summaries, snap = clean_run["summaries"], clean_run["snapshot"]
    images = shapes.images[:N_IMAGES]
    n = len(images)
    assert sum(s["images_claimed"] for s in summaries) == n  # no image was handed out twice
    assert sum(s["images_ingested"] for s in summaries) == n
    assert all(s["images_ingested"] > 0 and s["leases_lost"] == 0 and s["stopped_by"] == "drained"
               for s in summaries)
    assert differences(snap, expected_ids(images, clean_run["settings_hash"])) == []
    assert len(snap.segments) == sum(len(im.objects) for im in images)
    assert {a for _, a in snap.images.values()} == {1}
    assert clean_run["report"].problems == 0
    assert all(r.query == {"wait": "true", "ordering": "medium"} for r in clean_run["upserts"])


def test_four_workers_store_every_image_exactly_once(clean_run, shapes, tmp_path):
    images = shapes.images[:8]
    with cluster(tmp_path, lease=30.0) as c:
        settings_hash = enqueue_images(c, images, shapes.annotations_path)
        summaries = run_workers(c, 4, "--batch", "1")
        with c.open_home() as home:
            snap = snapshot(home)
            assert diagnose(home).problems == 0
    assert sum(s["images_claimed"] for s in summaries) == sum(s["images_ingested"] for s in summaries) == 8
    assert sum(s["images_ingested"] > 0 for s in summaries) >= 2  # the work was shared
    expected = expected_ids(images, settings_hash)
    assert differences(snap, expected, clean_run["snapshot"]) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_lease_expiry_leaves_the_clean_store(clean_run, shapes, tmp_path, tiny_model, seed):
    """A worker process is SIGKILLed at a seeded random point while it holds leases; a second worker
    (here in the test process, with the loaded model) finishes the queue, taking the dead worker's
    images once their 2 s leases expire. The store equals the clean run's."""
    import random

    images = random.Random(seed).sample(shapes.images[:N_IMAGES], 4)

    def survivor(home):
        return run_worker(home, WorkerOptions(drain=True, lease_seconds=2.0, poll_seconds=0.1),
                          model=tiny_model).as_dict()

    with cluster(tmp_path, lease=2.0) as c:
        trial = kill_trial(c, images, shapes.annotations_path, seed, clean_run["snapshot"], max_delay=2.5,
                           survivor=survivor)
    assert trial.problems == []
    if trial.leases_held_at_kill:  # the dead worker's images were taken again after their leases expired
        assert trial.max_attempts_seen >= 2


def test_vector_store_failing_mid_batch(clean_run, shapes, tmp_path, tiny_model):
    """The stand-in server applies half of one upsert request and answers HTTP 500, in the middle of a
    worker's batch of three images: the error is clear, the image is not done, the rest of the batch
    goes back to the queue, and the next run leaves exactly the clean store."""
    images = [im for im in shapes.images if len(im.objects) >= 3][:3]
    first_requests = math.ceil(len(images[0].objects) / 2)
    with cluster(tmp_path) as c:
        settings_hash = enqueue_images(c, images, shapes.annotations_path)
        c.standin.state.fail_upsert = first_requests + 2  # the second request of the second image
        small = QdrantSettings(upsert_batch=2)  # several requests per image
        with c.open_home(qdrant_settings=small) as home:
            options = WorkerOptions(batch=3, drain=True, lease_seconds=30, poll_seconds=0.1)
            with pytest.raises(VectorStoreError) as err:
                run_worker(home, options, model=tiny_model)
            assert str(err.value) == (
                f"Qdrant at {c.qdrant_url}: upsert on collection 'segments' failed: HTTP 500: Service internal "
                f"error: injected fault in upsert #{first_requests + 2}")
            with home.db.session() as s:
                rows = {i.content_hash: i for i in s.scalars(select(Image))}
            h = [r for r in expected_ids(images, settings_hash)]
            assert [rows[k].status for k in h] == ["done", "pending", "pending"]
            assert rows[h[1]].error.startswith("an attempt failed: Qdrant at ")
            assert rows[h[2]].error == rows[h[1]].error  # given back with the batch, untouched
            half = home.vectors.count(SEGMENTS, Filter.of(Match("image_hash", h[1])))
            assert half == 3  # the first request (2 points) and half of the second (1) were written
            assert diagnose(home).orphan_vectors == 3  # doctor sees them; the redo replaces them

            c.standin.state.fail_upsert = None
            summary = run_worker(home, options, model=tiny_model)
            assert (summary.images_ingested, summary.stopped_by) == (2, "drained")
            snap = snapshot(home)
            assert diagnose(home).problems == 0
    assert differences(snap, expected_ids(images, settings_hash), clean_run["snapshot"]) == []


def test_sigterm_finishes_the_image_in_hand_and_gives_the_rest_back(clean_run, shapes, tmp_path, tiny_model):
    images = shapes.images[:2]
    with cluster(tmp_path, lease=60.0) as c:  # a long lease: only an explicit release frees the images
        settings_hash = enqueue_images(c, images, shapes.annotations_path)
        proc = c.start_worker("--batch", "2")
        with c.open_home() as home:
            while leases_held(home, proc.pid) == 0:
                assert proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            summary = finish(proc, timeout=60)
            assert summary["stopped_by"] == "stop"
            assert summary["images_ingested"] + summary["images_released"] == 2
            assert summary["images_released"] >= 1
            with home.db.session() as s:
                assert "running" not in set(s.scalars(select(Image.status)))
            rest = run_worker(home, WorkerOptions(drain=True, poll_seconds=0.1), model=tiny_model)
            assert rest.images_ingested == summary["images_released"]
            snap = snapshot(home)
    assert differences(snap, expected_ids(images, settings_hash), clean_run["snapshot"]) == []

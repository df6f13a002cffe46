"""Queue workers: end to end on the embedded stores (SQLite + Qdrant Edge) through the CLI, with an
injected vector-store failure; and the lease fences that keep a worker whose lease moved on from
writing or marking anything."""

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from samsearch import faults
from samsearch.cli import app
from samsearch.db import Image, Ingestion, Run, Segment
from samsearch.home import SEGMENTS, Home
from samsearch.ingest.containers import ClaimedImage, IngestSummary, LeaseLost
from samsearch.ingest.ingestor import Ingestor
from samsearch.jobs.work_queue import claim, enqueue, options_from_settings
from samsearch.jobs.worker import STAGES
from samsearch.sam.models import model_ref
from samsearch.testing.reliability import expected_ids, ingest_options

runner = CliRunner()


def test_enqueue_then_workers_with_an_injected_store_failure(tmp_path, shapes, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    images = shapes.images[:3]
    for im in images:
        (folder / im.path.name).write_bytes(im.path.read_bytes())
    home = ["--home", str(tmp_path / "h")]
    result = runner.invoke(app, [*home, "ingest", str(folder), "--enqueue", "--model", "tiny-random", "--prompts",
                                 "masks", "--annotations", str(shapes.annotations_path), "--dataset", "reliability",
                                 "--quiet"])
    assert result.exit_code == 0, result.output

    faults.reset()
    monkeypatch.setenv("SAMSEARCH_FAULT", "vector_upsert:2:raise")  # the 2nd image's upsert fails
    worker = [*home, "worker", "--drain", "--batch", "3", "--poll", "0.1", "--device", "cpu", "--quiet"]
    result = runner.invoke(app, worker)
    assert result.exit_code == 1
    assert result.stderr == "Error: injected fault at vector_upsert #2 (SAMSEARCH_FAULT)\n"
    result = runner.invoke(app, [*home, "queue", "status"])
    assert result.stdout == "pending 2, running 0, done 1, failed 0\n"  # the rest of the batch went back

    monkeypatch.delenv("SAMSEARCH_FAULT")
    result = runner.invoke(app, [*worker, "--json", "--batch", "1", "--concurrency", "2"])  # two claim loops
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["images_ingested"], summary["images_failed"], summary["stopped_by"]) == (2, 0, "drained")

    settings_hash = ingest_options(shapes.annotations_path).settings_hash(model_ref("tiny-random"))
    expected = expected_ids([*images], settings_hash)
    with Home(tmp_path / "h") as h:
        with h.db.session() as s:
            rows = {i.content_hash: (i.status, i.error) for i in s.scalars(select(Image))}
        vector_ids = {r.id for b in h.vectors.scroll(SEGMENTS) for r in b}
    assert rows == {k: ("done", None) for k in expected}
    assert vector_ids == set().union(*expected.values())
    result = runner.invoke(app, [*home, "doctor", "--quiet"])
    assert result.exit_code == 0 and "missing vectors:   0 segments (0 images)" in result.stdout


@pytest.mark.parametrize("home", ["postgres+server"], indirect=True)
def test_a_worker_whose_lease_moved_on_never_marks_the_image(home, tiny_model, shapes, monkeypatch):
    """The two lease fences of a claimed image: before the vector write, and in the commit that marks
    it done (the image row is locked and its owner checked)."""
    im = shapes.images[0]
    enqueue(home, [im.path], "tiny-random", ingest_options(shapes.annotations_path))
    (a,) = claim(home, "A", 1, lease_seconds=0.2)
    time.sleep(0.3)
    (b,) = claim(home, "B", 1, lease_seconds=60)  # A's lease expired: B takes the image over
    assert (b.image_id, b.attempts) == (a.image_id, 2)
    with home.db.session() as s:
        settings = s.get(Run, a.run_id).settings
    ing = Ingestor(home, tiny_model, options_from_settings(settings))
    data = Path(a.path).read_bytes()
    late = ClaimedImage(a.image_id, Path(a.path), a.content_hash, data, a.run_id, cleanup=True, lease_owner="A")
    timings = dict.fromkeys(STAGES, 0.0)
    with pytest.raises(LeaseLost, match=r"the lease of A expired and moved on \(now running, held by B\)"):
        ing.process_claimed(late, IngestSummary(0), timings)
    assert home.vectors.count(SEGMENTS) == 0  # the first fence: nothing written

    # B's lease moves on (to C) after B wrote its vectors: B's commit is refused, nothing is marked.
    original = ing.writer._delete_stale_vectors  # runs right after the upsert of a redone image

    def write_then_lose_the_lease(*args):
        original(*args)
        with home.db.session() as s:
            s.execute(update(Image).where(Image.id == b.image_id).values(lease_owner="C"))

    monkeypatch.setattr(ing.writer, "_delete_stale_vectors", write_then_lose_the_lease)
    with pytest.raises(LeaseLost, match=r"held by C"):
        ing.process_claimed(replace(late, lease_owner="B"), IngestSummary(0), timings)
    with home.db.session() as s:
        img = s.get(Image, b.image_id)
        assert (img.status, img.lease_owner) == ("running", "C")
        assert s.scalar(select(func.count()).select_from(Segment)) == 0
        assert s.scalar(select(func.count()).select_from(Ingestion)) == 0
    monkeypatch.undo()

    # C, the holder, stores it; the points B left are the same ids, overwritten, none extra.
    summary = IngestSummary(0)
    assert ing.process_claimed(replace(late, lease_owner="C"), summary, timings)
    expected = expected_ids([im], settings["settings_hash"])[a.content_hash]
    assert {r.id for bt in home.vectors.scroll(SEGMENTS) for r in bt} == expected
    with home.db.session() as s:
        assert set(s.scalars(select(Segment.id))) == expected
        assert s.get(Image, b.image_id).status == "done"


def test_a_poison_image_is_failed_at_max_attempts_not_crash_looped(home, tiny_model, shapes, monkeypatch):
    """An image whose processing raises every time: each worker run dies with the error, but its attempts
    stop at --max-attempts and it ends failed (not pending), so the next worker drains instead of dying."""
    from samsearch.jobs.worker import WorkerOptions, run_worker

    enqueue(home, [shapes.images[0].path], "tiny-random", ingest_options(shapes.annotations_path))
    options = WorkerOptions(drain=True, lease_seconds=30, poll_seconds=0.1, max_attempts=2)
    monkeypatch.setenv("SAMSEARCH_FAULT", "vector_upsert:1:raise")

    def image():
        with home.db.session() as s:
            (img,) = s.scalars(select(Image))
            return img.status, img.attempts, img.error

    for attempt, status in ((1, "pending"), (2, "failed")):
        faults.reset()
        with pytest.raises(Exception, match="injected fault at vector_upsert #1"):
            run_worker(home, options, model=tiny_model)
        got = image()
        assert got[:2] == (status, attempt)
    assert got[2].startswith("failed 2 attempts, the last: an attempt failed: injected fault at vector_upsert #1")
    faults.reset()
    summary = run_worker(home, options, model=tiny_model)  # nothing left to claim: drains, does not die
    assert (summary.images_claimed, summary.stopped_by) == (0, "drained")
    assert image()[:2] == ("failed", 2)


def test_claim_fails_a_pending_image_already_tried_max_attempts_times(home, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    enqueue(home, [folder], "tiny-random")
    with home.db.session() as s:
        s.execute(update(Image).values(attempts=7))  # left pending by older code after 7 crashed attempts
    assert claim(home, "A", 1, max_attempts=3) == []
    with home.db.session() as s:
        (img,) = s.scalars(select(Image))
        assert (img.status, img.attempts) == ("failed", 7) and img.error.startswith("abandoned after 3 attempts")


def test_a_waiting_worker_builds_the_index_when_the_queue_runs_dry(tmp_path, tiny_model, shapes, monkeypatch):
    """A worker without --drain writes with no index builds, and builds once when its queue is empty (not
    again while it stays empty): while it waits, every vector is indexed."""
    from samsearch.jobs.worker import Worker, WorkerOptions

    monkeypatch.setenv("SAMSEARCH_INDEX_THRESHOLD", "8")
    home = Home(tmp_path / "h")
    images = shapes.images[:8]
    enqueue(home, [im.path for im in images], "tiny-random", ingest_options(shapes.annotations_path))
    n = sum(len(im.objects) for im in images)
    worker = Worker(home, WorkerOptions(batch=4, poll_seconds=0.05, lease_seconds=30), model=tiny_model)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while worker.summary.index_builds == 0 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.summary.index_builds == 1
        assert home.vectors.index_status(SEGMENTS) == (n, n)
        time.sleep(0.5)  # ~10 more empty polls: nothing new was written, so no more builds
        assert worker.summary.index_builds == 1
    finally:
        worker.stop()
        thread.join(60)
    assert worker.summary.images_ingested == len(images) and worker.summary.stopped_by == "stop"
    home.close()

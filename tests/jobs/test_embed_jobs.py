"""Queued embed jobs (``embed --space NAME --enqueue``) run by workers, on both backends: a worker runs a job
once no image is pending, writes every segment's vector exactly once, records the job done (or failed, with
why, when its weights cannot load); an identical job is queued once; on Postgres a job another worker holds
(its row locked) is skipped. Through the CLI: ``embed --enqueue``, ``ingest --enqueue --spaces``, ``queue
status`` and ``worker --drain``."""

from __future__ import annotations

import json

from sqlalchemy import func, select
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.db import Run, Segment, SpaceEmbedding
from samsearch.home import Home, space_collection
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.jobs.embed_jobs import EMBED_JOB, embed_jobs_status, enqueue_embed, run_next_embed_job
from samsearch.jobs.work_queue import enqueue
from samsearch.jobs.worker import WorkerOptions, run_worker

runner = CliRunner()
SPACE = "clip-tiny-random"


def _state(h: Home, space: str = SPACE) -> tuple[int, int, int]:
    """(segments in SQL, vectors in the space, images marked as embedded in it)."""
    coll = space_collection(space)
    with h.db.session() as s:
        n_seg = s.scalar(select(func.count()).select_from(Segment))
        marked = s.scalar(select(func.count()).select_from(SpaceEmbedding).where(SpaceEmbedding.space == space))
    return n_seg, (h.vectors.count(coll) if h.vectors.has_collection(coll) else 0), marked


def test_a_worker_runs_queued_embed_jobs_after_the_images(home, shapes, tiny_model, tmp_path):
    files = [im.path for im in shapes.images[:4]]
    opts = IngestOptions(dataset="d", prompts="masks", annotations=shapes.annotations_path)
    ingest(home, files[:2], tiny_model, opts, progress=False)
    enqueue(home, files[2:], "tiny-random", opts)  # two images still pending for the worker
    job = enqueue_embed(home, SPACE)
    assert not job["already_queued"] and enqueue_embed(home, SPACE)["run_id"] == job["run_id"]
    bad = enqueue_embed(home, "clip-b32", weights=tmp_path / "no-such-copy")
    assert embed_jobs_status(home) == {"queued": 2, "done": 0, "failed": 0}

    summary = run_worker(home, WorkerOptions(drain=True, poll_seconds=0.1, device="cpu"), model=tiny_model)
    assert summary.images_ingested == 2 and summary.embed_jobs == 2 and summary.stopped_by == "drained"
    n_seg, n_vec, marked = _state(home)
    assert n_seg == n_vec == summary.segments_embedded > 0 and marked == 4  # the queued images included
    assert embed_jobs_status(home) == {"queued": 0, "done": 1, "failed": 1}
    with home.db.session() as s:
        done, failed = s.get(Run, job["run_id"]), s.get(Run, bad["run_id"])
        assert done.counts["segments_embedded"] == n_seg and done.finished_at is not None
        assert "must be a directory holding config.json" in failed.error and "\n" not in failed.error
    with home.db.session() as s:  # every vector's id is a segment's
        ids = sorted(s.scalars(select(Segment.id)))
    assert sorted(r.id for b in home.vectors.scroll(space_collection(SPACE)) for r in b) == ids

    again = enqueue_embed(home, SPACE)  # a new job after the first is done: nothing left to embed
    assert not again["already_queued"]
    assert run_next_embed_job(home, "cpu")[1].segments_embedded == 0
    assert run_next_embed_job(home, "cpu") is None and _state(home)[1] == n_seg


def test_a_job_locked_by_another_worker_is_skipped_on_postgres(tmp_path, pg_url):
    """Postgres only: several workers share a queue there (SQLite + Qdrant Edge take one at a time)."""
    from samsearch.home import Home

    with Home(tmp_path / "home", database_url=pg_url, qdrant_url=":memory:") as home:
        job = enqueue_embed(home, "dinov2-tiny-random")
        with home.db.session() as other:  # another worker holds the job
            other.execute(select(Run).where(Run.id == job["run_id"]).with_for_update())
            assert run_next_embed_job(home, "cpu") is None
        assert run_next_embed_job(home, "cpu")[0] == job["run_id"]  # released: taken now
        assert embed_jobs_status(home)["done"] == 1


def test_embed_enqueue_and_worker_through_the_cli(tmp_path, shapes):
    folder = tmp_path / "in"
    folder.mkdir()
    for im in shapes.images[:3]:
        (folder / im.path.name).write_bytes(im.path.read_bytes())
    root = ["--home", str(tmp_path / "h")]
    r = runner.invoke(app, [*root, "ingest", str(folder), "--enqueue", "--model", "tiny-random", "--prompts", "masks",
                            "--annotations", str(shapes.annotations_path), "--spaces", f"sam,{SPACE}", "--json",
                            "--quiet"])
    assert r.exit_code == 0, r.output
    queued = json.loads(r.stdout)
    assert queued["enqueued"] == 3 and [j["space"] for j in queued["embed_jobs"]] == [SPACE]
    r = runner.invoke(app, [*root, "embed", "--space", "dinov2-tiny-random", "--enqueue"])
    assert r.exit_code == 0 and "queued job" in r.stdout and "samsearch worker" in r.stdout
    r = runner.invoke(app, [*root, "embed", "--space", "dinov2-tiny-random", "--enqueue", "--json"])
    assert json.loads(r.stdout)["already_queued"] is True
    status = runner.invoke(app, [*root, "queue", "status"]).stdout
    assert "pending 3" in status and "embed jobs: queued 2, done 0, failed 0" in status

    r = runner.invoke(app, [*root, "worker", "--drain", "--poll", "0.1", "--device", "cpu", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["images_ingested"], summary["embed_jobs"]) == (3, 2)
    with Home(tmp_path / "h") as h:
        for space in (SPACE, "dinov2-tiny-random"):
            n_seg, n_vec, marked = _state(h, space)
            assert n_seg == n_vec > 0 and marked == 3
        with h.db.session() as s:
            assert s.scalar(select(func.count()).select_from(Run).where(Run.kind == EMBED_JOB,
                                                                         Run.status == "done")) == 2
    status = json.loads(runner.invoke(app, [*root, "queue", "status", "--json"]).stdout)
    assert status["embed_jobs"] == {"queued": 0, "done": 2, "failed": 0}
    assert json.loads(runner.invoke(app, [*root, "doctor", "--json", "--quiet"]).stdout)["healthy"]

    for args, expected in ((("embed", "--space", "dinov2-xl", "--enqueue"), "dinov2-xl"),
                           (("embed", "--space", "sam", "--enqueue"), "written by `samsearch ingest`"),
                           (("embed", "--space", SPACE, "--enqueue", "--limit", "3"), "--enqueue takes"),
                           (("embed", "--space", SPACE, "--enqueue", "--weights", str(tmp_path)), "takes no --weights"),
                           (("ingest", str(folder), "--enqueue", "--spaces", "sam,nope"), "nope")):
        r = runner.invoke(app, [*root, *args])
        assert r.exit_code == 1 and expected in r.output and len(r.output.strip().splitlines()) == 1, r.output

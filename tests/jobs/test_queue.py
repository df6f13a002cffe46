"""The work queue on real databases (SQLite and Postgres): enqueue, claims, leases, poison pills,
release, retry, status, the one-worker rule on single-writer stores. No model is needed here."""

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.db import Image, Ingestion, Run
from samsearch.errors import InputError
from samsearch.ingest.options import IngestOptions
from samsearch.jobs.work_queue import (
    QueueBusy,
    SingleWorkerLock,
    claim,
    enqueue,
    is_drained,
    lock_path,
    queue_status,
    release,
    release_expired,
    renew,
    retry_failed,
)
from samsearch.sam.amg import AmgSettings

runner = CliRunner()


def _files(folder, n, prefix="f"):
    """``n`` distinct small files (never decoded by enqueue, so they need not be images)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:04d}.png"
        p.write_bytes(f"{prefix}-{i}".encode())
        paths.append(p)
    return paths


def _statuses(home):
    with home.db.session() as s:
        return Counter(s.scalars(select(Image.status)))


def test_enqueue_counts_duplicates_done_and_unreadable(home, tmp_path):
    files = _files(tmp_path / "in", 5)
    (tmp_path / "in" / "copy.png").write_bytes(files[0].read_bytes())  # same content, other name
    first = enqueue(home, [tmp_path / "in"], "tiny-random")
    assert (first.images_seen, first.enqueued, first.duplicates) == (6, 5, 1)
    again = enqueue(home, [tmp_path / "in"], "tiny-random")
    assert (again.enqueued, again.already_queued, again.duplicates) == (0, 5, 1)
    # Another settings hash takes the pending images over; one marked stored with it is skipped.
    opts = IngestOptions(prompts="auto", dataset="x", amg=AmgSettings(points_per_side=4))
    from samsearch.sam.models import model_ref

    sh = opts.settings_hash(model_ref("tiny-random"))
    with home.db.session() as s:
        img = s.scalar(select(Image).where(Image.path == str(files[1])))
        s.add(Ingestion(image_id=img.id, settings_hash=sh, n_segments=0))
        img.status = "done"
    other = enqueue(home, files, "tiny-random", opts)
    assert (other.enqueued, other.already_done) == (4, 1)
    with home.db.session() as s:
        runs = {r.id: r for r in s.scalars(select(Run))}
        assert runs[other.run_id].status == "queued" and runs[other.run_id].settings["settings_hash"] == sh
        assert runs[other.run_id].settings["queued"] is True
    assert _statuses(home) == {"pending": 4, "done": 1}


def test_enqueue_records_unreadable_files_as_failed(home, tmp_path):
    _files(tmp_path / "in", 2)
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # listed, but cannot be read
    summary = enqueue(home, [tmp_path / "in"], "tiny-random")
    assert (summary.enqueued, summary.unreadable) == (2, 1)
    # listed under the link's own name (the file the user gave), not its missing target
    assert summary.failures == [{"path": str(tmp_path / "in" / "gone.png"), "reason": "unreadable: no such file"}]
    assert _statuses(home) == {"pending": 2, "failed": 1}
    assert retry_failed(home) == {"requeued": 0, "unreadable_left": 1}


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"options": IngestOptions(prompts="boxes")}, "--prompts boxes needs --annotations FILE (COCO JSON)"),
        ({"options": IngestOptions(prompts="nope")}, "--prompts must be one of auto, boxes, masks"),  # type: ignore
        ({"model": "vit_zz"}, "unknown model 'vit_zz'"),
    ],
)
def test_enqueue_rejects_bad_settings_before_touching_the_queue(home, tmp_path, kwargs, error):
    _files(tmp_path / "in", 1)
    args = {"model": "tiny-random", **kwargs}
    with pytest.raises(Exception, match=error.replace("(", r"\(").replace(")", r"\)")):
        enqueue(home, [tmp_path / "in"], args.pop("model"), **args)
    assert _statuses(home) == {}


def test_enqueue_missing_path_is_an_input_error(home, tmp_path):
    with pytest.raises(InputError, match="no such file, folder or matching glob"):
        enqueue(home, [tmp_path / "nope"], "tiny-random")


def test_claims_leases_release_and_poison_pills(home, tmp_path):
    enqueue(home, _files(tmp_path / "in", 6), "tiny-random")
    a = claim(home, "A", 4, lease_seconds=60)
    b = claim(home, "B", 4, lease_seconds=60)
    assert len(a) == 4 and len(b) == 2 and not {i.image_id for i in a} & {i.image_id for i in b}
    assert claim(home, "C", 4) == []  # nothing pending, nothing expired
    assert queue_status(home)["workers"] == {"A": 4, "B": 2}

    def expire(owner):  # as if the lease ran out (no sleeping: loaded CI machines are slow)
        with home.db.session() as s:
            s.execute(update(Image).where(Image.lease_owner == owner).values(lease_expires_at=Image.created_at))

    expire("A")
    assert queue_status(home)["expired_leases"] == 4
    assert renew(home, ["A"], lease_seconds=60) == 4  # a live owner renews: still its own
    assert queue_status(home)["expired_leases"] == 0
    expire("A")  # A died: its images go to the next claimer, with attempts counted
    c = claim(home, "C", 10, lease_seconds=60)
    assert sorted(i.image_id for i in c) == sorted(i.image_id for i in a)
    assert {i.attempts for i in c} == {2}
    assert queue_status(home)["expired_leases"] == 0

    # Release gives images back at once, only for their owner.
    assert release(home, "B", [c[0].image_id], "not mine") == 0
    assert release(home, "C", [c[0].image_id, c[1].image_id], "stopping") == 2
    assert _statuses(home) == {"pending": 2, "running": 4}

    # Poison pill: once its lease expired max_attempts times, an image is failed, not handed out.
    with home.db.session() as s:
        s.execute(update(Image).where(Image.id == b[0].image_id)
                  .values(attempts=3, lease_expires_at=Image.created_at))  # long expired
    got = claim(home, "D", 10, lease_seconds=60, max_attempts=3)
    assert b[0].image_id not in {i.image_id for i in got}
    with home.db.session() as s:
        img = s.get(Image, b[0].image_id)
        assert img.status == "failed" and img.error.startswith("abandoned after 3 attempts")
    assert retry_failed(home) == {"requeued": 1, "unreadable_left": 0}
    with home.db.session() as s:
        img = s.get(Image, b[0].image_id)
        assert (img.status, img.attempts, img.error) == ("pending", 0, None)


def test_expired_leases_are_released_and_drain_waits_for_them(home, tmp_path):
    enqueue(home, _files(tmp_path / "in", 2), "tiny-random")
    claim(home, "dead", 2, lease_seconds=0.3)
    assert not is_drained(home)  # leased work is not finished work
    time.sleep(0.5)
    assert queue_status(home)["expired_leases"] == 2
    assert not is_drained(home)
    assert release_expired(home) == 2
    assert _statuses(home) == {"pending": 2}


def test_concurrent_claims_never_share_an_image(home, tmp_path):
    enqueue(home, _files(tmp_path / "in", 120), "tiny-random")
    got: list[int] = []
    lock = threading.Lock()

    def worker(name):
        while items := claim(home, name, 3, lease_seconds=60):
            with lock:
                got.extend(i.image_id for i in items)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 120 and len(set(got)) == 120
    assert _statuses(home) == {"running": 120}


def test_single_worker_lock_on_embedded_stores(tmp_path):
    from samsearch.home import Home

    with Home(tmp_path / "h") as home:
        first = SingleWorkerLock(lock_path(home)).acquire()
        with pytest.raises(QueueBusy) as err:
            SingleWorkerLock(lock_path(home)).acquire()
        assert str(err.value).startswith("another worker (pid ")
        assert "SQLite and the embedded vector store take one worker at a time" in str(err.value)
        # The CLI says the same in one line, exit code 1.
        result = runner.invoke(app, ["--home", str(tmp_path / "h"), "worker", "--drain", "--quiet"])
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: another worker (pid ") and result.stderr.count("\n") == 1
        first.release()
        SingleWorkerLock(lock_path(home)).acquire().release()  # free again


def test_queue_cli_status_and_retry(tmp_path, shapes):
    h = str(tmp_path / "h")
    folder = tmp_path / "in"
    _files(folder, 3)
    result = runner.invoke(app, ["--home", h, "ingest", str(folder), "--enqueue", "--model", "tiny-random",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("enqueued 3 images (run 1); 0 already stored, 0 already queued, 0 in progress, "
                                    "0 duplicates, 0 unreadable\n")
    result = runner.invoke(app, ["--home", h, "queue", "status"])
    assert result.stdout == "pending 3, running 0, done 0, failed 0\n"
    result = runner.invoke(app, ["--home", h, "queue", "status", "--json"])
    assert '"pending": 3' in result.stdout
    result = runner.invoke(app, ["--home", h, "queue", "retry-failed"])
    assert result.stdout == "re-queued 0 failed images\n"


def test_worker_database_failure_is_one_line(pg_url, tmp_path):
    import os

    import psycopg

    from samsearch.db.engine import DatabaseError
    from samsearch.home import Home
    from samsearch.jobs.worker import WorkerOptions, run_worker

    with Home(tmp_path / "h", database_url=pg_url, qdrant_url=":memory:") as home:
        schema = pg_url.rsplit("%3D", 1)[1]
        admin = os.environ.get("SAMSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")  # the database loses its tables under the worker
        with pytest.raises(DatabaseError) as err:
            run_worker(home, WorkerOptions(drain=True))
    msg = str(err.value)
    assert msg.startswith(f"database {home.db.safe_url} failed: ") and "\n" not in msg
    assert 'relation "images" does not exist' in msg

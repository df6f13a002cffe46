"""Commands beside a writer on an embedded home (SQLite + Qdrant Edge), with real processes (issue 12).

Qdrant Edge opens a shard in one process, and a second process's ``EdgeShard.load`` used to damage the
writer's open shard before Edge refused it ("tracker journal is shorter than expected"). Now the
process holding the store's root answers the others' reads, and their writes are refused in one line
before anything is written. The writers here are real ``ingest`` and ``worker`` processes on tiny-random,
held by the ``after_vectors`` wait fault (after their first image) until the other commands are done.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from samsearch.data.synthetic import make_dataset
from samsearch.db import Run, Segment
from samsearch.home import SEGMENTS, Home
from samsearch.vectors import Filter, Match, VectorStoreBusy, open_vector_store
from samsearch.vectors.sharing import HomeLock

REPO = Path(__file__).resolve().parents[2]
BUSY = "is in use by"


def _start(home: Path, *args: str, hold: Path | None = None) -> subprocess.Popen:
    """``samsearch --home home args``; with ``hold``, it stops before storing its second image until that
    file exists."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("SAMSEARCH_FAULT", None)
    if hold:
        env["SAMSEARCH_FAULT"] = f"after_vectors:2:wait={hold}"
    return subprocess.Popen([sys.executable, "-m", "samsearch", "--home", str(home), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _wait_for_writer(home: Path, writer: subprocess.Popen, timeout: float = 90) -> str:
    """Once ``writer`` holds the vector store for writing and has stored a segment: that segment's id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert writer.poll() is None, writer.communicate()
        owner = HomeLock.read_owner(home / "vectors")
        if owner.get("pid") == writer.pid and owner.get("mode") == "write" and (home / "samsearch.db").exists():
            with sqlite3.connect(home / "samsearch.db", timeout=30) as conn:
                try:
                    row = conn.execute("SELECT id FROM segments LIMIT 1").fetchone()
                except sqlite3.OperationalError:  # tables not made yet
                    row = None
            if row:
                return str(row[0])
        time.sleep(0.2)
    raise AssertionError("the writer stored nothing in time")


def _one_line_refusal(result: tuple[int, str, str], writer: subprocess.Popen, command: str) -> None:
    rc, _out, err = result
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert BUSY in lines[0] and f"pid {writer.pid}" in lines[0] and command in lines[0], err


def _ingest_args(data) -> list[str]:
    return ["ingest", str(data.root / "images"), "--prompts", "masks", "--annotations", str(data.annotations_path),
            "--model", "tiny-random", "--device", "cpu", "-q"]


def _all_stored(home: Path, n_images: int) -> None:
    with Home(home) as h:
        from samsearch.reports.doctor import diagnose

        with h.db.session() as s:
            segments = s.scalar(select(func.count()).select_from(Segment))
            labeled = s.scalar(select(func.count()).select_from(Segment).where(Segment.label.is_not(None)))
            label_runs = s.scalar(select(func.count()).select_from(Run).where(Run.kind == "label"))
        assert h.vectors.count(SEGMENTS) == segments > 0
        assert labeled == 0 and label_runs == 0  # the refused label wrote nothing, in SQL or payloads
        assert h.vectors.count(SEGMENTS, Filter(must_not=(Match("label", ["x", "a", "b"]),))) == segments
        report = diagnose(h)
        assert report.images == n_images and report.healthy_after_repair, report.as_dict()


@pytest.fixture
def bank_home(tmp_path, tiny_model):
    """A home that holds tiny-random's embedding space and a bank ``b``, nothing else yet."""
    from samsearch.bank.store import create_bank
    from samsearch.sam.pooling import embedding_space

    root = tmp_path / "home"
    space = embedding_space(tiny_model.ref)
    rng = np.random.default_rng(0)
    with Home(root) as h:
        h.claim_embedding_space(space)
        create_bank(h, "b", {"a": rng.standard_normal((3, space.dim)), "b": rng.standard_normal((3, space.dim))})
    return root


def test_stats_search_doctor_beside_a_running_ingest_and_writes_refused(tmp_path, bank_home):
    data = make_dataset(tmp_path / "shapes", n_images=4, size=(96, 64), seed=1)
    go = tmp_path / "go"
    writer = _start(bank_home, *_ingest_args(data), hold=go)
    try:
        sid = _wait_for_writer(bank_home, writer)
        others = {
            "stats": _start(bank_home, "stats", "--json"),
            "search": _start(bank_home, "search", "--segment", sid, "-k", "3", "--json"),
            "doctor": _start(bank_home, "doctor", "--json", "-q"),
            "ingest": _start(bank_home, *_ingest_args(data)),
            "label": _start(bank_home, "label", "--bank", "b", "-q"),
        }
        done = {name: _finish(p) for name, p in others.items()}
        assert writer.poll() is None
    finally:
        go.touch()
        rc, out, err = _finish(writer)
    assert rc == 0, err
    assert "ingested 4 images" in out

    rc, out, err = done["stats"]
    assert rc == 0, err
    stats = json.loads(out)
    assert stats["vectors"] >= 1 and stats["segments"] >= 1 and stats["images"] >= 1
    rc, out, err = done["search"]
    assert rc == 0, err
    hits = json.loads(out)["hits"]
    assert 1 <= len(hits) <= 3
    rc, out, err = done["doctor"]
    assert rc in (0, 3), err  # images in flight may show as missing/orphan vectors
    assert json.loads(out)["segments"] >= 1
    _one_line_refusal(done["ingest"], writer, "ingest")
    _one_line_refusal(done["label"], writer, "ingest")
    _all_stored(bank_home, 4)


def test_serve_and_enqueue_beside_a_worker_writes_refused(tmp_path, bank_home):
    from starlette.testclient import TestClient

    from samsearch.ingest.options import IngestOptions
    from samsearch.jobs.work_queue import enqueue
    from samsearch.serve.app import create_app

    data = make_dataset(tmp_path / "shapes", n_images=4, size=(96, 64), seed=2)
    more = make_dataset(tmp_path / "more", n_images=2, size=(96, 64), seed=3)
    options = IngestOptions(prompts="masks", annotations=data.annotations_path)
    with Home(bank_home) as h:
        assert enqueue(h, [data.root / "images"], "tiny-random", options).enqueued == 4
    go = tmp_path / "go"
    writer = _start(bank_home, "worker", "--drain", "--device", "cpu", "-q", hold=go)
    try:
        sid = _wait_for_writer(bank_home, writer)
        others = {  # (stats beside a writer: the test above, and /api/stats below)
            "enqueue": _start(bank_home, "ingest", "--enqueue", str(more.root / "images"), "--prompts", "masks",
                              "--annotations", str(more.annotations_path), "--model", "tiny-random", "-q"),
            "label": _start(bank_home, "label", "--bank", "b", "-q"),
            "repair": _start(bank_home, "doctor", "--repair", "-q"),
        }
        with Home(bank_home) as h:  # serve, in this process, beside the worker
            client = TestClient(create_app(h))
            r = client.get("/api/stats")
            assert r.status_code == 200 and r.json()["segments"] >= 1
            r = client.post("/api/search", json={"segment_id": sid, "k": 3})
            assert r.status_code == 200 and len(r.json()["hits"]) >= 1
            r = client.post("/api/labels", json={"segment_ids": [sid], "label": "x"})
            assert r.status_code == 409, r.text
            assert BUSY in r.json()["error"] and "worker" in r.json()["error"]
            assert client.get(f"/api/segments/{sid}").json()["label"] is None
        done = {name: _finish(p) for name, p in others.items()}
        assert writer.poll() is None
    finally:
        go.touch()
        rc, out, err = _finish(writer)
    assert rc == 0, err
    rc, out, err = done["enqueue"]
    assert rc == 0 and "enqueued 2 images" in out, err  # SQL only: queueing work beside a worker is fine
    _one_line_refusal(done["label"], writer, "worker")
    _one_line_refusal(done["repair"], writer, "worker")
    # the worker drained what it found; the 2 queued beside it are pending or done
    with Home(bank_home) as h, h.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Segment)) == h.vectors.count(SEGMENTS) > 0


# -- the store itself, in one process and across two ----------------------------------------------------

def _points(n: int, dim: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    return ([str(uuid.UUID(int=i + 1)) for i in range(n)], rng.standard_normal((n, dim)).astype(np.float32),
            [{"image_id": i, "dataset": "d"} for i in range(n)])


def test_a_second_store_reads_through_the_holder_and_takes_over_when_it_closes(tmp_path):
    holder, reader = open_vector_store(tmp_path / "v"), open_vector_store(tmp_path / "v")
    ids, x, payloads = _points(40)
    holder.claim_writes()
    holder.ensure_collection("c", 8)
    holder.upsert("c", ids, x, payloads)

    assert reader.count("c") == 40 and reader.count("c", Filter.of(Match("image_id", [1, 2]))) == 2
    assert [len(b) for b in reader.scroll("c", batch_size=16)] == [16, 16, 8]
    batches = list(reader.scroll_vectors("c", batch_size=32, payload_fields=("image_id",)))
    assert [b.vectors.shape for b in batches] == [(32, 8), (8, 8)] and batches[1].payloads[0] == {"image_id": 32}
    assert [h.id for h in reader.search("c", x[5], k=2)] == [h.id for h in holder.search("c", x[5], k=2)]
    assert reader.search_batch("c", x[:2], k=1)[1][0].id == ids[1]
    assert len(reader.recommend("c", [ids[0]], k=3)) == 3
    (r,) = reader.retrieve("c", [ids[7]], with_vectors=True)
    np.testing.assert_allclose(r.vector, holder.retrieve("c", [ids[7]], with_vectors=True)[0].vector)
    assert reader.index_status("c") == (40, 0)
    reader.ensure_collection("c", 8)  # exists with this dimension: nothing to write
    for write in (lambda: reader.upsert("c", ids[:1], x[:1], payloads[:1]), lambda: reader.ensure_collection("d", 8),
                  lambda: reader.set_payload("c", ids[:1], {"label": "x"}), lambda: reader.drop_collection("c"),
                  lambda: reader.claim_writes(wait_s=0.1)):
        with pytest.raises(VectorStoreBusy, match=BUSY) as err:
            write()
        assert "\n" not in str(err.value)
    assert holder.count("c", Filter.of(Match("label", "x"))) == 0 and not (tmp_path / "v" / "d").exists()

    holder.close()  # the reader's next call takes the store
    reader.upsert("c", ids[:1], x[:1], [{"label": "x"}])
    assert reader.count("c", Filter.of(Match("label", "x"))) == 1
    with pytest.raises(VectorStoreBusy):
        holder.set_payload("c", ids, {"label": "y"})
    assert holder.count("c") == 40  # now through the reader
    reader.close()
    holder.close()


def test_a_writer_waits_for_a_reader_that_holds_the_store(tmp_path):
    """A ``stats`` that opened the store first (it holds it, reading) delays an ``ingest``, not refuses it."""
    import threading

    reader, writer = open_vector_store(tmp_path / "v"), open_vector_store(tmp_path / "v")
    reader.ensure_collection("c", 8)
    assert reader.count("c") == 0  # holds the store, reading
    threading.Timer(0.5, reader.close).start()
    t0 = time.monotonic()
    writer.claim_writes()
    assert 0.3 < time.monotonic() - t0 < 10
    writer.upsert("c", *_points(3))
    assert reader.count("c") == 3  # through the writer now
    with pytest.raises(VectorStoreBusy, match="writes must wait"):
        reader.claim_writes(wait_s=0.1)  # a holder that writes is not waited for
    writer.close()
    reader.close()


HOLDER = """
import sys, time, uuid
import numpy as np
from samsearch.vectors import open_vector_store
s = open_vector_store(sys.argv[1])
s.claim_writes()
s.ensure_collection("c", 8)
print("ready", flush=True)
for i in range(20):  # a write (with flush) every 50 ms while the other process works
    ids = [str(uuid.uuid4()) for _ in range(10)]
    s.upsert("c", ids, np.random.rand(10, 8), [{"image_id": i, "dataset": "d"}] * 10)
    time.sleep(0.05)
s.close()
print("done", s.__class__.__name__, flush=True)
"""


def test_another_process_never_damages_the_holders_shard(tmp_path):
    """The original failure: a second process opening the shard made the writer's next flush fail."""
    root = tmp_path / "v"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    store = open_vector_store(root)
    seen = [store.count("c") for _ in range(5)]
    assert seen == sorted(seen)
    with pytest.raises(VectorStoreBusy, match=f"pid {holder.pid}"):
        store.upsert("c", [str(uuid.uuid4())], np.ones((1, 8)), [{}])
    out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0 and "done" in out, err
    assert store.count("c") == 200  # the holder ended: this store opened the shard itself
    store.close()

"""Reliability harness: real ``samsearch worker`` processes on one Postgres queue and one Qdrant
(REST stand-in) server, worker kills, and store comparisons.

Used by ``tests/test_reliability.py`` (small runs, in every test run) and ``scripts/reliability.py``
(full-size runs whose results are in ``docs/RELIABILITY.md``).

A :class:`Cluster` is one fresh Postgres schema plus one stand-in Qdrant server; workers reach both
through ``SAMSEARCH_DATABASE_URL`` / ``SAMSEARCH_QDRANT_URL``, as in ``docker-compose.yml``. Images are
synthetic (``samsearch.data.synthetic``) and ingested with ``--prompts masks``, so the expected segment ids
of every image are known in advance; :func:`differences` lists everything in which a store differs
from that expectation and from a reference snapshot (a clean run's).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from samsearch.data.synthetic import SyntheticImage
from samsearch.db import Image, Ingestion, Segment
from samsearch.home import SEGMENTS, Home
from samsearch.ingest.options import IngestOptions, segment_id
from samsearch.jobs.work_queue import enqueue
from samsearch.sam.models import model_ref
from samsearch.testing.qdrant_standin import QdrantStandin

PG_ADMIN = os.environ.get("SAMSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DATASET = "reliability"


@contextmanager
def pg_schema(admin_url: str = PG_ADMIN) -> Iterator[str]:
    """A fresh schema on the Postgres server (dropped afterwards), as a SQLAlchemy URL."""
    import psycopg

    schema = "rel_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    base = admin_url.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@dataclass
class Cluster:
    database_url: str
    standin: QdrantStandin
    home_dir: Path
    lease: float = 2.0

    @property
    def qdrant_url(self) -> str:
        return self.standin.url

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAMSEARCH_")}
        env.update({
            "SAMSEARCH_DATABASE_URL": self.database_url, "SAMSEARCH_QDRANT_URL": self.qdrant_url,
            "SAMSEARCH_HOME": str(self.home_dir), "SAMSEARCH_CACHE": str(self.home_dir / "cache"),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        })
        env.update(extra or {})
        return env

    def open_home(self, **kwargs: Any) -> Home:
        return Home(self.home_dir, database_url=self.database_url, qdrant_url=self.qdrant_url, **kwargs)

    def start_worker(self, *args: str, env: dict[str, str] | None = None, drain: bool = True) -> subprocess.Popen:
        """A ``samsearch worker`` process; ``drain=False``: it waits for work until it is killed."""
        cmd = [sys.executable, "-m", "samsearch", "worker", *(["--drain"] if drain else []), "--lease",
               str(self.lease), "--poll", "0.2", "--batch", "2", "--device", "cpu", "--json", "--quiet", *args]
        return subprocess.Popen(cmd, env=self.env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[2])


@contextmanager
def cluster(tmp: Path, lease: float = 2.0) -> Iterator[Cluster]:
    with pg_schema() as url, QdrantStandin() as standin:
        yield Cluster(url, standin, Path(tmp), lease)


def ingest_options(annotations: Path) -> IngestOptions:
    return IngestOptions(dataset=DATASET, prompts="masks", annotations=annotations)


def enqueue_images(c: Cluster, images: Sequence[SyntheticImage], annotations: Path) -> str:
    """Queue ``images`` (masks mode, tiny-random); returns the settings hash."""
    with c.open_home() as home:
        enqueue(home, [im.path for im in images], "tiny-random", ingest_options(annotations))
    return ingest_options(annotations).settings_hash(model_ref("tiny-random"))  # type: ignore[arg-type]


def content_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def expected_ids(images: Sequence[SyntheticImage], settings_hash: str) -> dict[str, set[str]]:
    """Content hash → the segment ids a correct ingest stores (masks mode: one per annotation, in id order)."""
    out = {}
    for im in images:
        h = content_hash(im.path)
        out[h] = {segment_id(h, settings_hash, i) for i in range(len(im.objects))}
    return out


@dataclass
class Snapshot:
    images: dict[str, tuple[str, int]]  # content hash → (status, attempts)
    segments: dict[str, tuple[str, int, int, str]]  # id → (content hash, index, area, rle)
    vectors: dict[str, np.ndarray]
    payloads: dict[str, dict[str, Any]]  # without image_id (a database's own row id)
    ingestions: int
    vector_count: int

    def for_images(self, hashes: set[str]) -> Snapshot:
        segs = {k: v for k, v in self.segments.items() if v[0] in hashes}
        return Snapshot({h: v for h, v in self.images.items() if h in hashes}, segs,
                        {k: v for k, v in self.vectors.items() if k in segs},
                        {k: v for k, v in self.payloads.items() if k in segs}, len(hashes), len(segs))


def snapshot(home: Home) -> Snapshot:
    with home.db.session() as s:
        hashes = dict(s.execute(select(Image.id, Image.content_hash)).all())
        images = {h: (st, n) for h, st, n in s.execute(select(Image.content_hash, Image.status, Image.attempts))}
        segments = {sid: (hashes[iid], idx, area, rle) for sid, iid, idx, area, rle in s.execute(
            select(Segment.id, Segment.image_id, Segment.segment_index, Segment.area, Segment.rle_counts))}
        ingestions = int(s.scalar(select(func.count()).select_from(Ingestion)) or 0)
    vectors, payloads = {}, {}
    if home.vectors.has_collection(SEGMENTS):
        for batch in home.vectors.scroll(SEGMENTS, with_vectors=True):
            for r in batch:
                vectors[r.id] = r.vector
                payloads[r.id] = {k: v for k, v in r.payload.items() if k != "image_id"}
    return Snapshot(images, segments, vectors, payloads, ingestions, len(vectors))


def differences(snap: Snapshot, expected: dict[str, set[str]], reference: Snapshot | None = None) -> list[str]:
    """Everything in which ``snap`` differs from a correct store of the ``expected`` images (and from
    ``reference``, a clean run's snapshot, where given). Empty means: nothing lost, nothing duplicated."""
    out: list[str] = []
    not_done = sorted(h[:12] for h, (st, _) in snap.images.items() if st != "done")
    if not_done:
        out.append(f"{len(not_done)} images not done: {not_done[:5]}")
    if set(snap.images) != set(expected):
        out.append(f"images differ: {len(set(expected) - set(snap.images))} missing, "
                   f"{len(set(snap.images) - set(expected))} unexpected")
    want = set().union(*expected.values()) if expected else set()
    have = set(snap.segments)
    if have != want:
        out.append(f"segment rows: {len(want - have)} missing, {len(have - want)} unexpected")
    if set(snap.vectors) != have:
        out.append(f"vectors vs rows: {len(have - set(snap.vectors))} rows without a vector, "
                   f"{len(set(snap.vectors) - have)} vectors without a row")
    if snap.vector_count != len(snap.vectors):
        out.append(f"vector count {snap.vector_count} != {len(snap.vectors)} listed")
    if snap.ingestions != len(expected):
        out.append(f"{snap.ingestions} ingestion markers for {len(expected)} images")
    if reference is not None:
        for sid, row in snap.segments.items():
            ref = reference.segments.get(sid)
            if ref is not None and ref != row:
                out.append(f"segment {sid} differs from the clean run's")
                break
        for sid, vec in snap.vectors.items():
            ref_vec = reference.vectors.get(sid)
            if ref_vec is not None and not np.allclose(vec, ref_vec, atol=1e-5):
                out.append(f"vector {sid} differs from the clean run's")
                break
            if sid in reference.payloads and reference.payloads[sid] != snap.payloads.get(sid):
                out.append(f"payload of {sid} differs from the clean run's")
                break
    return out


def finish(proc: subprocess.Popen, timeout: float = 600) -> dict[str, Any]:
    """Wait for a worker; its JSON summary (RuntimeError with its stderr when it failed)."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}: {err.strip()[-2000:]}")
    return json.loads(out)


def run_workers(c: Cluster, n: int, *args: str, timeout: float = 600) -> list[dict[str, Any]]:
    procs = [c.start_worker(*args) for _ in range(n)]
    try:
        return [finish(p, timeout) for p in procs]
    finally:
        for p in procs:  # never leave a worker behind (a timeout, or another one failing)
            if p.poll() is None:
                p.kill()
                p.wait()


def leases_held(home: Home, pid: int) -> int:
    with home.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Image).where(
            Image.status == "running", Image.lease_owner.like(f"%:{pid}:%"))) or 0)


@dataclass
class KillTrial:
    seed: int
    images: int
    kill_after_s: float  # after the victim's first claim
    leases_held_at_kill: int
    survivor: dict[str, Any] = field(default_factory=dict)
    max_attempts_seen: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def kill_trial(c: Cluster, images: Sequence[SyntheticImage], annotations: Path, seed: int,
               reference: Snapshot | None = None, max_delay: float = 3.0,
               survivor: Callable[[Home], dict[str, Any]] | None = None, fault: str | None = None) -> KillTrial:
    """A victim worker process takes images from a fresh queue; once it holds a lease, a survivor starts
    (another worker process, or ``survivor(home)`` in this process) and the victim is SIGKILLed a
    seeded random time later. The survivor finishes everything, the victim's images once their leases
    expired; the store must then equal the expected one (and ``reference``).

    With ``fault`` (a ``SAMSEARCH_FAULT`` spec such as ``after_vectors:2``) the victim is not signalled:
    it dies by ``os._exit(77)`` at exactly that point of its own work."""
    started = time.perf_counter()
    rng = random.Random(seed)
    settings_hash = enqueue_images(c, images, annotations)
    # A victim to be SIGKILLed never drains: on a fast machine it could otherwise finish the queue and exit
    # before the kill, and the trial would test nothing.
    victim = c.start_worker(env={"SAMSEARCH_FAULT": fault} if fault else None, drain=fault is not None)
    delay = rng.uniform(0.0, max_delay) if fault is None else 0.0
    held: list[int] = []
    with c.open_home() as home:
        deadline = time.monotonic() + 300
        while leases_held(home, victim.pid) == 0:
            if victim.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the victim worker never claimed an image: {victim.communicate()[1][-2000:]}")
            time.sleep(0.05)

        def kill() -> None:
            held.append(leases_held(home, victim.pid))
            victim.kill()  # SIGKILL: no cleanup, no release, no exception handler

        killer = threading.Timer(delay, kill if fault is None else lambda: held.append(leases_held(home, victim.pid)))
        killer.start()
        summary = finish(c.start_worker()) if survivor is None else survivor(home)
        killer.join()
        victim.wait()
        snap = snapshot(home)
    trial = KillTrial(seed, len(images), round(delay, 3), held[0], summary,
                      max(n for _, n in snap.images.values()))
    trial.problems = differences(snap, expected_ids(images, settings_hash), reference)
    if victim.returncode != (77 if fault else -9):
        trial.problems.append(f"the victim exited {victim.returncode}, not by {'its fault' if fault else 'SIGKILL'}")
    trial.seconds = round(time.perf_counter() - started, 1)
    return trial

"""``samsearch doctor`` on real stores: it finds what was damaged, repairs it without losing labels,
and a worker then restores exactly what a clean ingest stored."""

import time
import uuid

import numpy as np
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.db import Image, Segment
from samsearch.home import SEGMENTS
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.jobs.work_queue import claim, enqueue
from samsearch.jobs.worker import WorkerOptions, run_worker
from samsearch.reports.doctor import diagnose


def _state(home):
    with home.db.session() as s:
        segs = {x.id: (x.image_id, x.area, x.rle_counts, x.label) for x in s.scalars(select(Segment))}
    vecs = {r.id: r for b in home.vectors.scroll(SEGMENTS, with_vectors=True) for r in b}
    return segs, vecs


@pytest.mark.parametrize("home", ["postgres+server"], indirect=True)  # the scale-out setup; Edge: test_worker
def test_doctor_repairs_and_a_worker_restores_the_store(home, tiny_model, shapes):
    opts = IngestOptions(prompts="masks", annotations=shapes.annotations_path, dataset="d")
    ingest(home, [shapes.images[0].path, shapes.images[1].path], tiny_model, opts, progress=False)
    clean = diagnose(home)
    assert (clean.problems, clean.segments, clean.vectors) == (0, clean.vectors, clean.segments)
    segs, vecs = _state(home)
    with home.db.session() as s:
        a, b = sorted(s.scalars(select(Image)), key=lambda i: i.id)
    seg_a = sorted(k for k, v in segs.items() if v[0] == a.id)

    # Damage: a labelled segment of A and one more lose their vectors; a stray vector points at A;
    # B is stuck under an expired lease (its worker died).
    with home.db.session() as s:
        s.execute(update(Segment).where(Segment.id == seg_a[0]).values(label="circle", label_source="manual",
                                                                        label_score=1.0))
        s.execute(update(Image).where(Image.id == b.id).values(status="running", lease_owner="dead:1:x",
                                                               lease_expires_at=Image.created_at))
    home.vectors.delete(SEGMENTS, seg_a[:2])
    stray = str(uuid.uuid4())
    home.vectors.upsert(SEGMENTS, [stray], np.ones((1, 256), np.float32), [{"image_id": a.id}])

    found = diagnose(home)
    assert (found.missing_vectors, found.images_missing_vectors, found.orphan_vectors, found.expired_leases) == (
        2, 1, 1, 1)
    assert found.model_problems == [] and not found.healthy_after_repair

    fixed = diagnose(home, repair=True)
    assert fixed.repaired == {"leases_released": 1, "images_requeued": 1, "orphan_vectors_deleted": 1}
    assert fixed.healthy_after_repair
    with home.db.session() as s:
        assert {i.id: i.status for i in s.scalars(select(Image))} == {a.id: "pending", b.id: "pending"}
    assert home.vectors.retrieve(SEGMENTS, [stray]) == []

    summary = run_worker(home, WorkerOptions(drain=True, lease_seconds=30, poll_seconds=0.1), model=tiny_model)
    assert (summary.images_ingested, summary.images_failed, summary.stopped_by) == (2, 0, "drained")
    after = diagnose(home)
    assert after.problems == 0 and after.segments == after.vectors == len(segs)
    segs2, vecs2 = _state(home)
    assert set(segs2) == set(segs) == set(vecs2)
    assert segs2[seg_a[0]][3] == "circle"  # the label survived the redo, in SQL and in the payload
    assert vecs2[seg_a[0]].payload["label"] == "circle" and vecs2[seg_a[0]].payload["label_source"] == "manual"
    for sid in segs:
        np.testing.assert_allclose(vecs2[sid].vector, vecs[sid].vector, atol=1e-5)

    # A model mismatch is reported, never "repaired".
    with home.db.session() as s:
        s.execute(update(Segment).where(Segment.id == seg_a[1]).values(model_key="vit_b:ec2df62732614e57"))
    report = diagnose(home, repair=True)
    assert report.model_problems == [
        f"1 segments were made by vit_b:ec2df62732614e57, not by the home's {tiny_model.key}"]
    assert not report.healthy_after_repair


def test_doctor_cli_reports_and_releases_expired_leases(tmp_path):
    from samsearch.home import Home

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(b"x" * (i + 1))
    with Home(tmp_path / "h") as home:
        enqueue(home, [folder], "tiny-random")
        claim(home, "dead-worker", 2, lease_seconds=0.2)
    time.sleep(0.4)
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), "doctor", "--quiet"])
    assert result.exit_code == 3
    lines = result.stdout.splitlines()
    assert lines[1:] == [
        "vectors:           0 in qdrant-edge",
        "missing vectors:   0 segments (0 images)",
        "orphan vectors:    0",
        "expired leases:    2",
        "model:             consistent",
        "run `samsearch doctor --repair` to fix what can be fixed",
    ]
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), "doctor", "--repair", "--quiet"])
    assert result.exit_code == 0 and "expired leases:    2; released 2" in result.stdout
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), "doctor", "--json", "--quiet"])
    assert result.exit_code == 0 and '"healthy": true' in result.stdout
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), "queue", "status"])
    assert result.stdout == "pending 2, running 0, done 0, failed 0\n"


def _ingest_two(home, tiny_model, shapes):
    opts = IngestOptions(prompts="masks", annotations=shapes.annotations_path, dataset="d")
    ingest(home, [shapes.images[0].path, shapes.images[1].path], tiny_model, opts, progress=False)
    return home.vectors.count(SEGMENTS)


def test_repair_refuses_to_delete_most_vectors(home, tiny_model, shapes):
    n = _ingest_two(home, tiny_model, shapes)
    assert n > 2
    with home.db.session() as s:  # every segment row gone, the images stay: all vectors look orphaned
        s.execute(Segment.__table__.delete())
    report = diagnose(home, repair=True)
    assert report.orphan_vectors == n and "orphan_vectors_deleted" not in report.repaired
    assert report.refused_delete == f"{n} of {n} vectors would be deleted (more than 50%)"
    assert not report.healthy_after_repair and "--allow-mass-delete" in report.not_repaired[0]
    assert home.vectors.count(SEGMENTS) == n  # nothing deleted

    forced = diagnose(home, repair=True, allow_mass_delete=True)
    assert forced.repaired["orphan_vectors_deleted"] == n and forced.healthy_after_repair
    assert home.vectors.count(SEGMENTS) == 0


def test_repair_against_an_empty_database_deletes_nothing(tmp_path, tiny_model, shapes, monkeypatch):
    from samsearch.home import Home

    with Home(tmp_path / "h") as home:
        n = _ingest_two(home, tiny_model, shapes)
    runner = CliRunner()
    monkeypatch.setenv("SAMSEARCH_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")  # the wrong database
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), "doctor", "--repair", "--quiet"])
    assert result.exit_code == 3
    assert f"orphan vectors:    {n}\n" in result.stdout
    assert "has no images or segments but the vector store holds" in result.stderr
    assert "--allow-mass-delete" in result.stderr
    monkeypatch.delenv("SAMSEARCH_DATABASE_URL")
    with Home(tmp_path / "h") as home:
        assert home.vectors.count(SEGMENTS) == n
        assert diagnose(home).problems == 0  # the right database still agrees with every vector

"""The queue end to end on the embedded stores (SQLite + Qdrant Edge), through the CLI: enqueue, a
worker whose vector store fails mid-batch (injected), and a second worker that finishes the queue."""

import json

from sqlalchemy import select
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.db import Image
from samsearch.home import SEGMENTS, Home
from samsearch.ingest import _fault
from samsearch.queue import model_ref
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

    _fault.counts.clear()
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

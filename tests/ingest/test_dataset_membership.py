"""A dataset is a named set of images, and one file may belong to several: SQL (``image_datasets``), the
vector payloads (``dataset`` = the sorted list of the image's datasets) and every command agree."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from samsearch.cluster.job import ClusterOptions, run_clustering
from samsearch.db import Image, ImageDataset, Segment
from samsearch.home import SEGMENTS
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.jobs.work_queue import enqueue, queue_status
from samsearch.reports.coco_export import export_coco
from samsearch.reports.evaluate import evaluate
from samsearch.reports.stats import collect_stats
from samsearch.search.query import SearchFilters, search_by_segment


def _memberships(home) -> dict[int, set[str]]:
    with home.db.session() as s:
        out: dict[int, set[str]] = {}
        for image_id, name in s.execute(select(ImageDataset.image_id, ImageDataset.dataset)):
            out.setdefault(image_id, set()).add(name)
        return out


def _payload_datasets(home) -> dict[str, tuple[int, list[str]]]:
    return {r.id: (r.payload["image_id"], r.payload["dataset"])
            for batch in home.vectors.scroll(SEGMENTS) for r in batch}


def _agree(home) -> None:
    """Every payload's dataset list is its image's SQL membership, sorted."""
    members = _memberships(home)
    payloads = _payload_datasets(home)
    with home.db.session() as s:
        assert set(payloads) == set(s.scalars(select(Segment.id)))
    for sid, (image_id, names) in payloads.items():
        assert names == sorted(members[image_id]), sid


def test_a_second_dataset_name_is_applied_to_sql_payloads_and_every_command(home, tiny_model, shapes, tmp_path):
    files = [im.path for im in shapes.images[:3]]
    first = ingest(home, files, tiny_model, IngestOptions(dataset="first", prompts="masks",
                                                         annotations=shapes.annotations_path), progress=False)
    second = ingest(home, files, tiny_model, IngestOptions(dataset="second", prompts="boxes",
                                                          annotations=shapes.annotations_path), progress=False)
    assert first.images_ingested == second.images_ingested == 3
    members = _memberships(home)
    assert len(members) == 3 and all(m == {"first", "second"} for m in members.values())
    with home.db.session() as s:
        assert set(s.scalars(select(Image.dataset))) == {"first"}  # the first name, kept for compatibility
    _agree(home)
    n_segments = first.segments + second.segments

    # stats: an image counts in each dataset it belongs to
    stats = collect_stats(home)
    assert set(stats["datasets"]) == {"first", "second"}
    for name in ("first", "second"):
        assert stats["datasets"][name]["images"] == 3 and stats["datasets"][name]["segments"] == n_segments
    assert set(queue_status(home)["datasets"]) == {"first", "second"}

    # search: hits of a search by "second" say so
    with home.db.session() as s:
        some = s.scalar(select(Segment.id).order_by(Segment.id).limit(1))
    res = search_by_segment(home, some, k=50, filters=SearchFilters(dataset="second"))
    assert len(res.hits) == n_segments - 1
    assert all(h.dataset == "second" and h.datasets == ("first", "second") for h in res.hits)
    assert all(h.as_dict()["datasets"] == ["first", "second"] for h in res.hits)

    # export coco and eval by the second name
    out = tmp_path / "second.json"
    export_coco(home, out, dataset="second", progress=False)
    doc = json.loads(out.read_text())
    assert len(doc["images"]) == 3 and len(doc["annotations"]) == n_segments
    report = evaluate(home, shapes.annotations_path, dataset="second")
    assert report.images_matched == 3

    # cluster by membership
    summary = run_clustering(home, ClusterOptions(algorithm="kmeans", n_clusters=2, dataset="second",
                                                  name="second-k2"), progress=False)
    assert summary.segments == n_segments

    # Already done with these settings, a third name: membership added in SQL and payloads, no SAM.
    third = ingest(home, files, tiny_model, IngestOptions(dataset="third", prompts="masks",
                                                         annotations=shapes.annotations_path), progress=False)
    assert (third.images_ingested, third.images_skipped, third.segments) == (0, 3, 0)
    assert all(m == {"first", "second", "third"} for m in _memberships(home).values())
    _agree(home)
    res = search_by_segment(home, some, k=50, filters=SearchFilters(dataset="third"))
    assert len(res.hits) == n_segments - 1
    assert collect_stats(home)["datasets"]["third"]["segments"] == n_segments


def test_enqueue_adds_a_dataset_to_stored_images_without_queueing_them(home, tiny_model, shapes):
    files = [im.path for im in shapes.images[:2]]
    opts = IngestOptions(dataset="first", prompts="masks", annotations=shapes.annotations_path)
    ingest(home, files, tiny_model, opts, progress=False)
    queued = enqueue(home, files, "tiny-random", IngestOptions(dataset="queued", prompts="masks",
                                                               annotations=shapes.annotations_path))
    assert (queued.enqueued, queued.already_done) == (0, 2)
    assert all(m == {"first", "queued"} for m in _memberships(home).values())
    _agree(home)


def test_a_failed_image_joins_the_dataset_it_failed_in(home, tiny_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for name in ("a", "b"):
        summary = ingest(home, [bad], tiny_model, IngestOptions(dataset=name), progress=False)
        assert summary.images_failed == 1
    assert list(_memberships(home).values()) == [{"a", "b"}]
    assert collect_stats(home)["datasets"]["b"]["by_status"] == {"failed": 1}


@pytest.mark.parametrize("dataset", ["nope"])
def test_unknown_dataset_is_still_a_clear_error(home, tiny_model, shapes, tmp_path, dataset):
    from samsearch.errors import InputError

    ingest(home, [shapes.images[0].path], tiny_model,
           IngestOptions(dataset="first", prompts="masks", annotations=shapes.annotations_path), progress=False)
    with pytest.raises(InputError, match="no dataset 'nope'.*first"):
        export_coco(home, tmp_path / "x.json", dataset=dataset, progress=False)


def test_stats_cli_lists_every_dataset_of_an_image(tmp_path, tiny_model, shapes):
    from typer.testing import CliRunner

    from samsearch.cli import app
    from samsearch.home import Home

    with Home(tmp_path / "h") as home:
        for name in ("first", "second"):
            ingest(home, [shapes.images[0].path], tiny_model, IngestOptions(
                dataset=name, prompts="masks", annotations=shapes.annotations_path), progress=False)
        with home.db.session() as s:
            n = len(list(s.scalars(select(Segment.id))))
    out = CliRunner().invoke(app, ["--home", str(tmp_path / "h"), "stats"]).stdout
    lines = [line.split() for line in out.splitlines()]
    assert ["first", "1", "1", "0", str(n)] in lines and ["second", "1", "1", "0", str(n)] in lines
    assert "(an image that belongs to several datasets counts in each)" in out

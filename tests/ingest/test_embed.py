"""Embedding spaces end to end through the CLI (SQLite + Qdrant Edge, tiny-random SAM and DINOv2): a home
ingested with SAM only gets the ``dinov2-tiny-random`` space with ``samsearch embed`` (resumable,
exactly-once, also across a crash), a bank built in that space from the held-out training half labels the
test half, and ``search --space`` finds segments of the same class. Mixing spaces is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.db import Segment, SpaceEmbedding
from samsearch.faults import CRASH_EXIT_CODE
from samsearch.home import Home, space_collection

runner = CliRunner()
SPACE = "dinov2-tiny-random"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from samsearch.data.synthetic import make_splits

    return make_splits(tmp_path_factory.mktemp("splits"), n_train=20, n_test=14, seed=3)


def cli(home, *args):
    return runner.invoke(app, ["--home", str(home), *args])


def ingest_test_half(home, splits):
    test = splits["test"]
    r = cli(home, "ingest", str(test.root), "--prompts", "masks", "--annotations", str(test.annotations_path),
            "--model", "tiny-random", "--device", "cpu", "--dataset", "test", "--quiet")
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def home(tmp_path_factory, splits):
    """The test half ingested with SAM (tiny-random) and its annotation masks, then embedded in SPACE."""
    root = tmp_path_factory.mktemp("spaces") / "home"
    ingest_test_half(root, splits)
    r = cli(root, "embed", "--space", SPACE, "--quiet", "--json")
    assert r.exit_code == 0, r.output
    return root


def _counts(root: Path) -> tuple[int, int, int, int]:
    """(segments in SQL, vectors in sam, vectors in SPACE, images marked as embedded in SPACE)."""
    with Home(root) as h:
        with h.db.session() as s:
            n_seg = s.scalar(select(func.count()).select_from(Segment))
            n_marked = s.scalar(select(func.count()).select_from(SpaceEmbedding).where(SpaceEmbedding.space == SPACE))
        coll = space_collection(SPACE)
        n_space = h.vectors.count(coll) if h.vectors.has_collection(coll) else 0
        return n_seg, h.vectors.count("segments"), n_space, n_marked


def test_embed_writes_one_vector_per_segment_with_the_same_payloads(home):
    n_seg, n_sam, n_space, n_marked = _counts(home)
    assert n_seg > 20 and n_sam == n_seg == n_space and n_marked == 14
    with Home(home) as h:
        assert set(h.spaces()) == {"sam", SPACE} and h.space(SPACE).dim == 64
        sam = {r.id: r.payload for b in h.vectors.scroll("segments") for r in b}
        dino = {r.id: r.payload for b in h.vectors.scroll(space_collection(SPACE)) for r in b}
    assert sam == dino  # same ids, same payload on every filterable field
    again = cli(home, "embed", "--space", SPACE, "--quiet", "--json")  # nothing left to do
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert summary["images_pending"] == 0 and summary["segments_embedded"] == 0
    assert _counts(home) == (n_seg, n_sam, n_space, n_marked)
    stats = json.loads(cli(home, "stats", "--json").output)
    assert {k: v["vectors"] for k, v in stats["spaces"].items()} == {"sam": n_seg, SPACE: n_seg}


def test_bank_in_the_dinov2_space_labels_the_held_out_half(home, splits):
    train, test = splits["train"], splits["test"]
    built = cli(home, "bank", "build", "--space", SPACE, "--prompts", "masks", "--annotations",
                str(train.annotations_path), "--images", str(train.root), "--name", "dino", "--quiet", "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.output)["bank"]["settings"]["space"] == SPACE
    labeled = cli(home, "label", "--bank", "dino", "--dataset", "test", "--quiet", "--json")
    assert labeled.exit_code == 0, labeled.output
    n_seg = _counts(home)[0]
    assert json.loads(labeled.output)["labeled"] == n_seg
    report = json.loads(cli(home, "eval", "--annotations", str(test.annotations_path), "--dataset", "test",
                            "--json").output)
    assert report["matched"] == n_seg and report["accuracy"] >= 0.9, report["accuracy"]
    with Home(home) as h:  # labels reached SQL and every space's payloads alike
        with h.db.session() as s:
            sql = dict(s.execute(select(Segment.id, Segment.label)).all())
        for coll in ("segments", space_collection(SPACE)):
            assert {r.id: r.payload["label"] for b in h.vectors.scroll(coll) for r in b} == sql

    # A bank lives in one space: labeling or searching another one is a one-line error.
    for args in (("label", "--bank", "dino", "--space", "sam"),
                 ("search", "--bank", "dino", "--label", "red_disc", "--space", "sam")):
        r = cli(home, *args)
        assert r.exit_code == 1 and "lives in space 'dinov2-tiny-random'" in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
    r = cli(home, "search", "--bank", "dino", "--label", "red_disc", "-k", "3", "--json")  # the bank's space
    assert r.exit_code == 0, r.output
    assert [h["annotation_category"] for h in json.loads(r.output)["hits"]] == ["red_disc"] * 3


def test_search_in_the_dinov2_space_finds_the_same_class(home, same_class_precision):
    mean, chance = same_class_precision(home, SPACE, n=12)
    assert mean >= 0.75 and mean >= 3 * chance, (mean, chance)
    with Home(home) as h, h.db.session() as s:
        sid = s.scalars(select(Segment.id).order_by(Segment.id).limit(1)).one()
    missing = cli(home, "search", "--space", "dinov2-b", "--segment", sid)
    assert missing.exit_code == 1 and "no vectors in space 'dinov2-b'" in missing.output


def test_embed_killed_midway_and_rerun_leaves_exactly_one_vector_per_segment(tmp_path, splits):
    root = tmp_path / "home"
    ingest_test_half(root, splits)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SAMSEARCH_FAULT": "embed_after_vectors:2"}
    cmd = [sys.executable, "-m", "samsearch", "--home", str(root), "embed", "--space", SPACE, "--batch", "3",
           "--quiet"]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    n_seg, _, n_space, n_marked = _counts(root)
    assert n_marked == 3 and n_space > 0  # the second batch's vectors landed, its rows did not
    env.pop("SAMSEARCH_FAULT")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    n_seg, n_sam, n_space, n_marked = _counts(root)
    assert n_space == n_sam == n_seg and n_marked == 14
    with Home(root) as h:
        ids = [r.id for b in h.vectors.scroll(space_collection(SPACE)) for r in b]
        with h.db.session() as s:
            assert sorted(ids) == sorted(s.scalars(select(Segment.id)))
    report = json.loads(cli(root, "doctor", "--json", "--quiet").output)
    assert report["healthy"] and report["spaces"][SPACE]["missing"] == 0 == report["spaces"][SPACE]["orphans"]

    # doctor finds vectors lost from a space; --repair unmarks their images and embed writes them again
    with Home(root) as h:
        h.vectors.delete(space_collection(SPACE), sorted(ids)[:3])
    sick = cli(root, "doctor", "--json", "--quiet")
    assert sick.exit_code == 3 and json.loads(sick.output)["spaces"][SPACE]["missing"] == 3
    fixed = json.loads(cli(root, "doctor", "--repair", "--json", "--quiet").output)
    assert fixed["healthy"] and fixed["spaces"][SPACE]["repaired"]["images_unmarked"] >= 1
    assert cli(root, "embed", "--space", SPACE, "--quiet").exit_code == 0
    assert _counts(root)[2] == n_seg and json.loads(cli(root, "doctor", "--json", "--quiet").output)["healthy"]


def test_embed_refuses_the_sam_space_and_unknown_spaces(tmp_path):
    r = cli(tmp_path / "h", "embed", "--space", "sam")
    assert r.exit_code == 1 and "written by `samsearch ingest`" in r.output
    r = cli(tmp_path / "h", "embed", "--space", "dinov2-xl")
    assert r.exit_code == 1 and "dinov2-xl" in r.output and len(r.output.strip().splitlines()) == 1


def test_ingest_with_two_spaces_writes_what_embed_writes(tmp_path, splits, home):
    """``ingest --spaces sam,SPACE`` (one pass) stores the same vectors and payloads as ingest then embed."""
    import numpy as np

    root = tmp_path / "both"
    test = splits["test"]
    r = cli(root, "ingest", str(test.root), "--prompts", "masks", "--annotations", str(test.annotations_path),
            "--model", "tiny-random", "--device", "cpu", "--dataset", "test", "--spaces", f"sam,{SPACE}", "--quiet")
    assert r.exit_code == 0, r.output
    n_seg, n_sam, n_space, n_marked = _counts(root)
    assert n_seg == n_sam == n_space and n_marked == 14
    coll = space_collection(SPACE)

    def vectors(where: Path) -> dict[str, np.ndarray]:
        with Home(where) as h:
            return {r.id: r.vector for b in h.vectors.scroll(coll, with_vectors=True) for r in b}

    one_pass, two_steps = vectors(root), vectors(home)
    assert one_pass.keys() == two_steps.keys()
    assert min(float(np.dot(one_pass[i], two_steps[i])) for i in one_pass) > 0.9999
    bad = cli(root, "ingest", str(test.root), "--spaces", SPACE)
    assert bad.exit_code == 1 and "--spaces must include sam" in bad.output


def test_cluster_in_the_dinov2_space_writes_clusters_to_every_space(home):
    r = cli(home, "cluster", "--space", SPACE, "--algorithm", "kmeans", "--n-clusters", "6", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["settings"]["space"] == SPACE and summary["segments"] == _counts(home)[0]
    with Home(home) as h:
        with h.db.session() as s:
            sql = dict(s.execute(select(Segment.id, Segment.cluster)).all())
        for coll in ("segments", space_collection(SPACE)):
            assert {r.id: r.payload["cluster"] for b in h.vectors.scroll(coll) for r in b} == sql
    r = cli(home, "cluster", "--space", "dinov2-s", "--algorithm", "kmeans", "--n-clusters", "6")
    assert r.exit_code == 1 and "no vectors in space 'dinov2-s'" in r.output


def test_image_query_in_the_dinov2_space_pools_the_prompted_mask(home, splits, tmp_path):
    """``search --space SPACE --image I --mask M``: SAM's segment for the prompt, pooled in SPACE's backbone;
    the query is a stored object's own mask, so its stored segment comes back first with score ~1."""
    import numpy as np
    from PIL import Image as PILImage

    from samsearch.data.masks import rle_to_mask

    with Home(home) as h, h.db.session() as s:
        from samsearch.db import Image as ImageRow

        row = s.execute(select(Segment, ImageRow.path).join(ImageRow, ImageRow.id == Segment.image_id)
                        .order_by(Segment.id)).first()
        seg, path, rle, cls = row[0].id, row[1], row[0].rle, row[0].annotation_category
    mask_png = tmp_path / "mask.png"
    PILImage.fromarray((rle_to_mask(rle) * 255).astype(np.uint8)).save(mask_png)
    r = cli(home, "search", "--space", SPACE, "--image", str(path), "--mask", str(mask_png), "-k", "3",
            "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)["hits"]
    assert hits[0]["segment_id"] == seg and hits[0]["score"] > 0.999
    assert sum(h["annotation_category"] == cls for h in hits) >= 2

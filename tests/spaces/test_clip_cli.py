"""The CLIP space end to end through the CLI (SQLite + Qdrant Edge, tiny-random SAM and CLIP): synthetic
shapes ingested with their annotation masks into ``sam`` and ``clip-tiny-random`` in one pass; ``search
--text`` answers from the CLIP space with the usual JSON; ``search --space clip-tiny-random --segment``
finds same-class segments above chance; mixing text with a space that has no text tower is a one-line
error; ``embed --space clip-tiny-random`` on a sam-only home writes the same vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.db import Segment
from samsearch.home import Home, space_collection
from samsearch.spaces.registry import tiny_random_identity

runner = CliRunner()
SPACE = "clip-tiny-random"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from samsearch.data.synthetic import make_splits

    return make_splits(tmp_path_factory.mktemp("splits"), n_train=2, n_test=14, seed=3)["test"]


def cli(home, *args):
    return runner.invoke(app, ["--home", str(home), *args])


def ingest(home, shapes, spaces: str):
    r = cli(home, "ingest", str(shapes.root), "--prompts", "masks", "--annotations", str(shapes.annotations_path),
            "--model", "tiny-random", "--device", "cpu", "--dataset", "test", "--spaces", spaces, "--quiet")
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def home(tmp_path_factory, shapes):
    root = tmp_path_factory.mktemp("clip") / "home"
    ingest(root, shapes, f"sam,{SPACE}")
    return root


def _classes(home) -> dict[str, str]:
    with Home(home) as h, h.db.session() as s:
        return dict(s.execute(select(Segment.id, Segment.annotation_category)).all())


def test_ingest_writes_the_clip_space(home):
    classes = _classes(home)
    with Home(home) as h:
        assert set(h.spaces()) == {"sam", SPACE} and h.space(SPACE).recipe == "maskcrop-v1@64"
        assert h.vectors.count(space_collection(SPACE)) == len(classes) > 20


def test_search_text_returns_hits_from_the_clip_space(home):
    r = cli(home, "search", "--text", "a red disc", "-k", "5", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["schema"] == "samsearch.search/v1" and out["k"] == 5
    assert out["query"]["kind"] == "text" and out["query"]["text"] == "a red disc" and out["query"]["space"] == SPACE
    hits = out["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(-1 <= h["score"] <= 1 and h["mask"]["size"] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # the scores are the cosines with the stored CLIP vectors
    from samsearch.spaces.models import embed_texts, load_space

    q = embed_texts(load_space(SPACE, device="cpu"), ["a red disc"]).numpy()[0]
    with Home(home) as h:
        stored = {r.id: r.vector for b in h.vectors.scroll(space_collection(SPACE), with_vectors=True) for r in b}
    best = sorted(stored, key=lambda i: -float(np.dot(stored[i], q)))[:5]
    assert [h["segment_id"] for h in hits] == best
    assert abs(hits[0]["score"] - float(np.dot(stored[best[0]], q))) < 1e-4

    same = cli(home, "search", "--text", "a red disc", "--space", SPACE, "-k", "5", "--json")
    assert [h["segment_id"] for h in json.loads(same.output)["hits"]] == best
    filtered = json.loads(cli(home, "search", "--text", "a shape", "--dataset", "test", "--min-area", "50",
                              "-k", "50", "--json").output)["hits"]
    assert filtered and all(h["area"] >= 50 and h["dataset"] == "test" for h in filtered)
    table = cli(home, "search", "--text", "a shape", "-k", "2")
    assert table.exit_code == 0 and "rank" in table.output


def test_text_search_errors_are_one_line(home, tmp_path):
    cases = [
        (("search", "--text", "a car", "--space", "sam"), "has no text tower"),
        (("search", "--text", "a car", "--space", "dinov2-tiny-random"), "has no text tower"),
        (("search", "--text", "a car", "--space", "clip-b32"), "no vectors in space 'clip-b32'"),
        (("search", "--text", "  "), "empty"),
        (("search", "--text", "a car", "--segment", "x"), "cannot be combined"),
        (("search", "--text", "a car", "--exclude-same-image"), "--exclude-same-image needs"),
    ]
    for args, expected in cases:
        r = cli(home, *args)
        assert r.exit_code == 1 and expected in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output
    sam_only = tmp_path / "sam-only"
    with Home(sam_only) as h:
        h.claim_space("dinov2-tiny-random", tiny_random_identity("dinov2-tiny-random"))
    r = cli(sam_only, "search", "--text", "a car")
    assert r.exit_code == 1 and "no text-image space" in r.output and "dinov2-tiny-random" in r.output


def test_clip_space_finds_the_same_class_above_chance(home, same_class_precision):
    mean, chance = same_class_precision(home, SPACE, n=16)
    print(f"clip-tiny-random precision@3: {mean:.3f} (chance {chance:.3f})")
    assert mean >= 0.75 and mean >= 3 * chance, (mean, chance)  # measured: 1.0 at chance 0.22


def test_embed_on_a_sam_only_home_writes_the_same_vectors(tmp_path, shapes, home):
    root = tmp_path / "two-steps"
    ingest(root, shapes, "sam")
    r = cli(root, "embed", "--space", SPACE, "--quiet", "--json")
    assert r.exit_code == 0, r.output
    coll = space_collection(SPACE)

    def vectors(where):
        with Home(where) as h:
            return {r.id: r.vector for b in h.vectors.scroll(coll, with_vectors=True) for r in b}

    one_pass, two_steps = vectors(home), vectors(root)
    assert one_pass.keys() == two_steps.keys()
    assert min(float(np.dot(one_pass[i], two_steps[i])) for i in one_pass) > 0.9999


def test_image_query_in_the_clip_space_crops_the_prompted_mask(home, tmp_path):
    """``search --space clip-tiny-random --image I --mask M``: the mask's crop through CLIP's image tower,
    as ingest embeds one; a stored object's own mask finds its stored segment first with score ~1."""
    from PIL import Image as PILImage

    from samsearch.data.masks import rle_to_mask
    from samsearch.db import Image as ImageRow

    with Home(home) as h, h.db.session() as s:
        seg, path = s.execute(select(Segment, ImageRow.path).join(ImageRow, ImageRow.id == Segment.image_id)
                              .order_by(Segment.id)).first()
        sid, rle = seg.id, seg.rle
    mask_png = tmp_path / "mask.png"
    PILImage.fromarray((rle_to_mask(rle) * 255).astype(np.uint8)).save(mask_png)
    r = cli(home, "search", "--space", SPACE, "--image", str(path), "--mask", str(mask_png), "-k", "3",
            "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)["hits"]
    assert hits[0]["segment_id"] == sid and hits[0]["score"] > 0.999

"""Search on real stores (SQLite + Qdrant Edge, Postgres + qdrant-client), library and CLI.

One corpus per backend per module: 12 synthetic-shape images ingested with ``--prompts masks``
(images 1-8 as dataset "a", 9-12 as "b"). Dataset "a" gets labels and every segment a cluster id, as a
labeling / clustering run would write them (SQL and vector payload), and a memory bank "shapes" holds
two centroids per class (bank rows written with the ORM, in the storage contract of the bank issue).

"An image+box query on an unseen image finds the boxed shape's class" is tested in two parts, because
``tiny-random``'s mask decoder has random weights: the mask it draws for a box does not follow the object
(box queries against a box-prompted corpus found the class at chance, precision@5 0.17 with 5 classes).
So one test proves a box (or points) query embeds exactly what ingest stores for that box, and another
that the query segment of an unseen image finds its class when the mask follows the object (``--mask``).
With a trained checkpoint the box's mask does, and the two parts compose.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from samsearch.bank.store import bank_collection, create_bank
from samsearch.cli import app
from samsearch.data.synthetic import make_dataset
from samsearch.db import Base, Meta, Segment
from samsearch.errors import EmbeddingSpaceMismatch, InputError, NotFoundError
from samsearch.home import SEGMENTS, Home
from samsearch.identity import EmbeddingSpace
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.sam.models import MODELS, LoadedModel, ModelError, build_tiny_random
from samsearch.search.query import (
    SearchFilters,
    search_by_image,
    search_by_label,
    search_by_segment,
    search_by_vector,
)
from samsearch.search.segments import get_segment
from samsearch.vectors import Filter, Match, Range

runner = CliRunner()
N_IMAGES = 12
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Corpus:
    home: Home
    root: Path
    name: str
    category: dict[str, str] = field(default_factory=dict)  # segment id -> annotation category
    image_of: dict[str, int] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    payload: dict[str, dict] = field(default_factory=dict)

    def of_class(self, name: str) -> list[str]:
        return sorted(i for i, c in self.category.items() if c == name)


def _build(home: Home, model, shapes) -> None:
    opts = dict(prompts="masks", annotations=shapes.annotations_path)
    files = [im.path for im in shapes.images[:N_IMAGES]]
    ingest(home, files[:8], model, IngestOptions(dataset="a", **opts), progress=False)
    ingest(home, files[8:], model, IngestOptions(dataset="b", **opts), progress=False)
    with home.db.session() as s:
        category = dict(s.execute(select(Segment.id, Segment.annotation_category)).all())
    classes = sorted(set(category.values()))
    # Labels (dataset "a" only) and clusters, written where labeling/clustering write them.
    for cls in classes:
        ids = sorted(i for i, c in category.items() if c == cls)
        labeled = [r.id for r in home.vectors.retrieve(SEGMENTS, ids) if r.payload["dataset"] == ["a"]]
        home.vectors.set_payload(SEGMENTS, labeled, {"label": cls})
        home.vectors.set_payload(SEGMENTS, ids, {"cluster": classes.index(cls)})
        with home.db.session() as s:
            s.execute(update(Segment).where(Segment.id.in_(labeled)).values(label=cls, label_score=0.9))
            s.execute(update(Segment).where(Segment.id.in_(ids)).values(cluster=classes.index(cls)))
    vectors = {r.id: r.vector for b in home.vectors.scroll(SEGMENTS, with_vectors=True) for r in b}
    # A memory bank: two centroids per class (means of two halves of the class's vectors), stored through the
    # library (a class with no more distinct instances than per_class keeps them as its centroids).
    halves = {cls: np.stack([np.mean([vectors[i] for i in half], axis=0)
                             for half in (ids[::2], ids[1::2])])
              for cls in classes for ids in [sorted(i for i, c in category.items() if c == cls)]}
    create_bank(home, "shapes", halves, per_class=2)


def _copy(src: Home, dst: Home) -> None:
    """Every SQL row and every vector (with its payload) of ``src`` into the empty ``dst``: the same corpus
    on the other backends without running SAM twice (ingest itself is tested on both in test_ingest)."""
    dst.claim_embedding_space(src.embedding_space())
    with src.db.session() as s:
        tables = [(t, [dict(r._mapping) for r in s.execute(t.select())]) for t in Base.metadata.sorted_tables]
    with dst.db.session() as s:
        s.execute(delete(Meta))  # claim_embedding_space wrote the one row the copy brings again
        for table, rows in tables:
            if rows:
                s.execute(table.insert(), rows)
    for collection in (SEGMENTS, bank_collection("shapes")):
        dst.vectors.ensure_collection(collection, src.embedding_space().dim)
        for batch in src.vectors.scroll(collection, with_vectors=True):
            dst.vectors.upsert(collection, [r.id for r in batch], np.stack([r.vector for r in batch]),
                               [r.payload for r in batch])


def _snapshot(home: Home, root: Path, name: str) -> Corpus:
    corpus = Corpus(home, root, name)
    with home.db.session() as s:
        for sid, cat, image_id in s.execute(select(Segment.id, Segment.annotation_category, Segment.image_id)):
            corpus.category[sid], corpus.image_of[sid] = cat, image_id
    for batch in home.vectors.scroll(SEGMENTS, with_vectors=True):
        for r in batch:
            corpus.vectors[r.id], corpus.payload[r.id] = r.vector, r.payload
    return corpus


@pytest.fixture(scope="module")
def edge_corpus(tmp_path_factory, tiny_model, shapes):
    root = tmp_path_factory.mktemp("search") / "home"
    with Home(root) as home:  # closed again: CLI tests open the same folder
        _build(home, tiny_model, shapes)
    corpus = _snapshot(Home(root), root, "sqlite+edge")
    yield corpus
    corpus.home.close()


@pytest.fixture(scope="module")
def pg_corpus(tmp_path_factory, edge_corpus):
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    root = tmp_path_factory.mktemp("search_pg") / "home"
    home = Home(root, database_url=url, qdrant_url=":memory:")
    try:
        _copy(edge_corpus.home, home)
        yield _snapshot(home, root, "postgres+server")
    finally:
        home.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="module", params=["sqlite+edge", "postgres+server"])
def corpus(request):
    return request.getfixturevalue("edge_corpus" if request.param == "sqlite+edge" else "pg_corpus")


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    """Query images never ingested: another seed, so other positions, sizes and colours jitter."""
    return make_dataset(tmp_path_factory.mktemp("unseen"), n_images=2, seed=123)


def _ranked(res):
    assert [h.rank for h in res] == list(range(1, len(res) + 1))
    scores = [h.score for h in res]
    assert scores == sorted(scores, reverse=True)


# -- queries ---------------------------------------------------------------------------------------


def test_segment_query_returns_same_class_first(corpus):
    same = total = 0
    for sid, cls in corpus.category.items():
        res = search_by_segment(corpus.home, sid, k=3)
        _ranked(res)
        assert len(res) == 3 and sid not in {h.segment_id for h in res}  # never the query itself
        assert res.query.segment_id == sid and res.query.rle is not None
        same += sum(h.annotation_category == cls for h in res)
        total += len(res)
    counts = Counter(corpus.category.values())
    chance = sum((c / len(corpus.category)) ** 2 for c in counts.values())
    assert same / total >= 0.85 and same / total > 3 * chance, (same / total, chance)


def test_hits_carry_metadata_and_decodable_masks(corpus):
    sid = next(iter(corpus.category))
    res = search_by_segment(corpus.home, sid, k=5)
    for h in res:
        mask = h.mask()
        assert mask.dtype == bool and mask.shape == (192, 256) and mask.sum() == h.area
        ys, xs = np.nonzero(mask)
        assert h.bbox_xywh == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)
        assert Path(h.image_path).is_file() and h.image_id == corpus.image_of[h.segment_id]
        assert [h.dataset] == list(h.datasets) == corpus.payload[h.segment_id]["dataset"]
        assert h.annotation_category == corpus.category[h.segment_id]
        assert h.cluster is not None and (h.label is None) == (h.dataset == "b")
        # the score is the cosine similarity of the stored vectors
        assert h.score == pytest.approx(float(corpus.vectors[h.segment_id] @ corpus.vectors[sid]), abs=1e-4)


def test_vector_query_matches_exact_brute_force(corpus):
    ids = list(corpus.vectors)
    matrix = np.stack([corpus.vectors[i] for i in ids])
    q = matrix[:3].mean(axis=0)
    res = search_by_vector(corpus.home, q, k=7)
    exact = np.argsort(-(matrix @ (q / np.linalg.norm(q))))[:7]
    assert [h.segment_id for h in res] == [ids[i] for i in exact]


def test_mask_query_on_unseen_image_finds_the_class(corpus, unseen, tiny_model):
    im = unseen.images[0]
    obj = im.objects[0 if corpus.name == "sqlite+edge" else 1]
    res = search_by_image(corpus.home, im.path, mask=obj.mask, model=tiny_model, k=5)
    _ranked(res)
    same = sum(h.annotation_category == obj.category for h in res)
    assert same >= 4, (obj.category, [h.annotation_category for h in res])
    assert res.query.kind == "image" and res.query.predicted_iou is None


def test_box_and_points_queries_embed_exactly_as_ingest(tmp_path, unseen, tiny_model):
    """A box (or mask) query on an unseen image gives the very vector and mask that ingest stores for
    that box (``--prompts boxes``) or mask (``--prompts masks``) on that image."""
    im = unseen.images[1]
    obj = im.objects[0]
    x, y, w, h = obj.bbox_xywh
    with Home(tmp_path / "scratch") as home:
        for mode in ("boxes", "masks"):
            ingest(home, [im.path], tiny_model, IngestOptions(prompts=mode, annotations=unseen.annotations_path),
                   progress=False)
        with home.db.session() as s:
            rows = {r.source: r for r in s.execute(select(Segment).where(Segment.annotation_id == obj.id))
                    .scalars()}
        stored = {src: home.vectors.retrieve(SEGMENTS, [r.id], with_vectors=True)[0].vector
                  for src, r in rows.items()}
        by_box = search_by_image(home, im.path, box=(x, y, x + w, y + h), model=tiny_model, k=3)
        by_mask = search_by_image(home, im.path, mask=obj.mask, model=tiny_model, k=3)
        by_points = search_by_image(home, im.path, points=[(x + w / 2, y + h / 2)], negative_points=[(1, 1)],
                                    box=(x, y, x + w, y + h), model=tiny_model, k=3)
    np.testing.assert_allclose(by_box.query.vectors[0], stored["box"], atol=1e-5)
    np.testing.assert_allclose(by_mask.query.vectors[0], stored["mask"], atol=1e-5)
    assert by_box.query.rle == {"size": [rows["box"].height, rows["box"].width], "counts": rows["box"].rle_counts}
    assert by_box[0].segment_id == rows["box"].id and by_box[0].score == pytest.approx(1.0, abs=1e-5)
    assert by_mask[0].segment_id == rows["mask"].id and by_mask[0].score == pytest.approx(1.0, abs=1e-5)
    assert by_box.query.prompt == {"box": [x, y, x + w, y + h]} and by_box.query.predicted_iou is not None
    assert by_points.query.prompt == {"box": [x, y, x + w, y + h], "points": [[x + w / 2, y + h / 2]],
                                      "negative_points": [[1.0, 1.0]]}
    assert len(by_points) == 3


def test_label_query_merges_the_bank_centroids(corpus):
    for cls in ("red_disc", "cyan_checker"):
        n = len(corpus.of_class(cls))
        res = search_by_label(corpus.home, cls, "shapes", k=n)
        _ranked(res)
        assert len({h.segment_id for h in res}) == len(res) == n  # merged, no duplicates
        precision = sum(h.annotation_category == cls for h in res) / n
        assert precision >= 0.85, (cls, [h.annotation_category for h in res])
        assert res.query.kind == "label" and len(res.query.vectors) == 2


# -- filters, k, min-score -------------------------------------------------------------------------


FILTER_CASES = [
    ("dataset", SearchFilters(dataset="b"), lambda h, own: h.dataset == "b"),
    ("datasets", SearchFilters(dataset=["a", "b"]), lambda h, own: h.dataset in ("a", "b")),
    ("label", SearchFilters(label="blue_square"), lambda h, own: h.label == "blue_square"),
    ("cluster", SearchFilters(cluster=2), lambda h, own: h.cluster == 2),
    ("image", SearchFilters(image_id=3), lambda h, own: h.image_id == 3),
    ("area", SearchFilters(min_area=1500, max_area=3000), lambda h, own: 1500 <= h.area <= 3000),
    ("not-own-image", SearchFilters(exclude_same_image=True), lambda h, own: h.image_id != own),
    ("combined", SearchFilters(dataset="a", min_area=1000, exclude_same_image=True),
     lambda h, own: h.dataset == "a" and h.area >= 1000 and h.image_id != own),
]


@pytest.mark.parametrize("name, filters, holds", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filters_hold_for_every_hit_and_run_in_the_store(corpus, name, filters, holds):
    query = corpus.of_class("red_disc")[0]
    k = 4
    res = search_by_segment(corpus.home, query, k=k, filters=filters)
    assert all(holds(h, corpus.image_of[query]) for h in res)
    # Filtering happens before the top-k cut: the hits are exactly the k best of the matching
    # segments (what a brute-force scan of the matching set gives), however far from the query.
    flt = filters.to_filter(corpus.payload[query]["image_hash"])
    matching = {r.id for b in corpus.home.vectors.scroll(SEGMENTS, flt) for r in b} - {query}
    expected = sorted(matching, key=lambda i: -float(corpus.vectors[i] @ corpus.vectors[query]))[:k]
    assert matching and [h.segment_id for h in res] == expected


def test_far_away_filtered_segments_are_still_found(corpus):
    """The query's class excluded by the filter: every hit comes from far down the unfiltered ranking."""
    query = corpus.of_class("red_disc")[0]
    other_image = next(i for s, i in corpus.image_of.items() if corpus.category[s] != "red_disc"
                       and all(corpus.category[t] != "red_disc" for t, j in corpus.image_of.items() if j == i))
    in_image = sorted(s for s, i in corpus.image_of.items() if i == other_image)
    res = search_by_segment(corpus.home, query, k=10, filters=SearchFilters(image_id=other_image))
    assert sorted(h.segment_id for h in res) == in_image
    unfiltered = [h.segment_id for h in search_by_segment(corpus.home, query, k=3)]
    assert not set(unfiltered) & set(in_image)


@pytest.mark.parametrize("k, min_score", [(1, None), (6, None), (50, None), (50, 0.8), (2, 0.95)])
def test_k_and_min_score_are_honoured(corpus, k, min_score):
    query = corpus.of_class("blue_square")[0]
    res = search_by_segment(corpus.home, query, k=k, min_score=min_score)
    q = corpus.vectors[query]
    scores = sorted((float(v @ q) for i, v in corpus.vectors.items() if i != query), reverse=True)
    expected = [s for s in scores if min_score is None or s >= min_score - 1e-6][:k]
    assert len(res) == len(expected) and len(res) <= k
    assert [h.score for h in res] == pytest.approx(expected, abs=1e-4)
    assert all(min_score is None or h.score >= min_score - 1e-6 for h in res)


@pytest.mark.parametrize(
    "filters, expected",
    [
        (SearchFilters(), None),
        (SearchFilters(dataset="a", label="car"), Filter((Match("dataset", "a"), Match("label", "car")))),
        (SearchFilters(dataset=("a", "b"), cluster=3), Filter((Match("dataset", ["a", "b"]), Match("cluster", 3)))),
        (SearchFilters(image_id=7, min_area=10), Filter((Match("image_id", 7), Range("area", 10, None)))),
        (SearchFilters(max_area=99, exclude_same_image=True),
         Filter((Range("area", None, 99),), (Match("image_hash", "abc"),))),
        (SearchFilters(min_area=5, max_area=4), InputError("--min-area 5 exceeds --max-area 4")),
    ],
)
def test_filters_translate_to_one_store_filter(filters, expected):
    if isinstance(expected, Exception):
        with pytest.raises(type(expected), match=re.escape(str(expected))):
            filters.to_filter("abc")
    else:
        assert filters.to_filter("abc") == expected


# -- library errors --------------------------------------------------------------------------------


def _mask_of(size):
    return np.ones(size, dtype=bool)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda c, im: search_by_segment(c.home, "00000000-0000-0000-0000-000000000000"), NotFoundError,
         "no segment '00000000-0000-0000-0000-000000000000' in {root}"),
        (lambda c, im: search_by_segment(c.home, "not-an-id"), NotFoundError, "no segment 'not-an-id' in {root}"),
        (lambda c, im: search_by_segment(c.home, next(iter(c.category)), k=0), InputError,
         "-k must be at least 1, got 0"),
        (lambda c, im: search_by_segment(c.home, next(iter(c.category)), k=10**9), InputError,
         "-k must be at most 10000, got 1000000000 (narrow the search with filters instead)"),
        (lambda c, im: search_by_vector(c.home, np.ones(3)), InputError,
         "the query vector has 3 dimensions; this home's vectors have 256"),
        (lambda c, im: search_by_vector(c.home, np.ones(256), filters=SearchFilters(exclude_same_image=True)),
         InputError, "--exclude-same-image needs a --segment or --image query"),
        (lambda c, im: search_by_image(c.home, im, box=(0, 0, 300, 50)), InputError,
         "--box 0,0,300,50 lies outside the image {image} (256x192)"),
        (lambda c, im: search_by_image(c.home, im, box=(5, 5, 5, 50)), InputError,
         "box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got (5.0, 5.0, 5.0, 50.0)"),
        (lambda c, im: search_by_image(c.home, im, points=[(10, -1)]), InputError,
         "--point 10,-1 lies outside the image {image} (256x192)"),
        (lambda c, im: search_by_image(c.home, im, negative_points=[(10, 10)]), InputError,
         "--negative-point needs a --box or a --point to refine"),
        (lambda c, im: search_by_image(c.home, im), InputError,
         "an --image query needs a prompt: --box, --point or --mask"),
        (lambda c, im: search_by_image(c.home, im, mask=_mask_of((10, 10))), InputError,
         "mask: the mask is 10x10, the image {image} is 256x192"),
        (lambda c, im: search_by_image(c.home, im, mask=~_mask_of((192, 256))), InputError,
         "mask: the mask is empty (no non-zero pixel)"),
        (lambda c, im: search_by_image(c.home, im, mask=_mask_of((192, 256)), box=(1, 1, 9, 9)), InputError,
         "--mask cannot be combined with --box, --point or --negative-point"),
        (lambda c, im: search_by_image(c.home, "/nonexistent.png", box=(1, 1, 9, 9)), InputError,
         "/nonexistent.png: unreadable: no such file"),
        (lambda c, im: search_by_label(c.home, "red_disc", "nope"), NotFoundError,
         "no bank named 'nope'; banks here: shapes"),
        (lambda c, im: search_by_label(c.home, "car", "shapes"), NotFoundError,
         "memory bank 'shapes' has no class 'car' (classes: blue_square, cyan_checker, green_triangle, "
         "purple_ring, red_disc, yellow_stripes)"),
    ],
)
def test_bad_queries_are_clear_errors(corpus, unseen, call, error, message):
    image = unseen.images[0].path
    with pytest.raises(error) as info:
        call(corpus, image)
    assert str(info.value) == message.format(root=corpus.root, image=image)


def test_query_model_must_be_the_corpus_model(edge_corpus, unseen):
    other = LoadedModel("tiny-random", build_tiny_random(seed=1), torch.device("cpu"), f"seed{1:016d}", None)
    with pytest.raises(EmbeddingSpaceMismatch) as info:
        search_by_image(edge_corpus.home, unseen.images[0].path, box=(1, 1, 50, 50), model=other)
    assert str(info.value) == (
        f"{edge_corpus.root} holds vectors from tiny-random (weights seed00000000, maskpool-v1, 256-d); the query "
        "would be embedded by tiny-random (weights seed0000000000000001, maskpool-v1); a query must use the model "
        "that produced the corpus (same --model/--checkpoint as ingest)"
    )


def test_missing_checkpoint_is_a_clear_error(tmp_path, unseen):
    spec = MODELS["vit_b"]
    with Home(tmp_path / "h") as home:
        home.claim_embedding_space(EmbeddingSpace("vit_b", spec.sha256, "maskpool-v1", 256))
        with pytest.raises(ModelError) as info:
            search_by_image(home, unseen.images[0].path, box=(1, 1, 50, 50))
    assert str(info.value) == (
        f"{tmp_path / 'h'} holds vectors from vit_b (weights ec2df6273261, maskpool-v1, 256-d); to embed the "
        f"query: {tmp_path / 'cache' / spec.filename}: no cached checkpoint for vit_b (pass --checkpoint FILE, "
        "or run `samsearch ingest --model vit_b` once to download it)"
    )


def test_empty_corpus_is_a_clear_error(home, unseen):
    message = f"{home.root}: no segments stored yet (run `samsearch ingest` first)"
    calls = [
        lambda: search_by_segment(home, "00000000-0000-0000-0000-000000000000"),
        lambda: search_by_vector(home, np.ones(256)),
        lambda: search_by_image(home, unseen.images[0].path, box=(1, 1, 50, 50)),
        lambda: search_by_label(home, "car", "bank"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError, match=re.escape(message)):
            call()
    # a home whose collection exists but holds nothing (e.g. everything deleted) says the same
    home.claim_embedding_space(EmbeddingSpace("tiny-random", "seed", "maskpool-v1", 256))
    for call in calls[:2]:
        with pytest.raises(NotFoundError, match=re.escape(message)):
            call()


# -- CLI -------------------------------------------------------------------------------------------


def _cli(corpus, *args):
    corpus.home.close()  # the embedded store has one user at a time; the library reopens lazily
    return runner.invoke(app, ["--home", str(corpus.root), *args])


def test_cli_table(edge_corpus):
    sid = edge_corpus.of_class("purple_ring")[0]
    result = _cli(edge_corpus, "search", "--segment", sid, "-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"rank {3}score {2}segment {31}bbox \(x,y,w,h\) +label +image", lines[0])
    expected = search_by_segment(edge_corpus.home, sid, k=3)
    assert len(lines) == 4
    for line, hit in zip(lines[1:], expected, strict=True):
        x, y, w, h = (f"{v:g}" for v in hit.bbox_xywh)
        cells = line.split()
        assert cells == [str(hit.rank), f"{hit.score:.4f}", hit.segment_id, f"{x},{y},{w},{h}",
                         hit.label or hit.annotation_category, hit.image_path]


def test_cli_json_schema(edge_corpus):
    sid = edge_corpus.of_class("green_triangle")[0]
    result = _cli(edge_corpus, "search", "--segment", sid, "-k", "4", "--dataset", "a", "--min-score", "0.1",
                  "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc) == ["schema", "query", "k", "min_score", "filters", "hits", "elapsed_ms"]
    assert doc["schema"] == "samsearch.search/v1" and doc["k"] == 4 and doc["min_score"] == 0.1
    assert doc["filters"] == {"dataset": ["a"], "label": None, "cluster": None, "image_id": None, "min_area": None,
                              "max_area": None, "exclude_same_image": False}
    assert doc["query"]["kind"] == "segment" and doc["query"]["segment_id"] == sid and doc["query"]["vectors"] == 1
    assert len(doc["hits"]) == 4
    hit = doc["hits"][0]
    assert list(hit) == ["rank", "score", "segment_id", "image_id", "image_path", "dataset", "datasets", "bbox_xywh",
                         "area", "source", "annotation_category", "label", "label_score", "cluster", "mask"]
    assert all(h["dataset"] == "a" and h["score"] >= 0.1 for h in doc["hits"])
    assert hit["rank"] == 1 and hit["source"] == "mask" and set(hit["mask"]) == {"size", "counts"}


def test_cli_image_query_loads_the_home_model(edge_corpus, unseen):
    im = unseen.images[0]
    obj = im.objects[0]
    mask_file = edge_corpus.root.parent / "query_mask.png"
    PILImage.fromarray(obj.mask.astype(np.uint8) * 255).save(mask_file)
    result = _cli(edge_corpus, "search", "--image", str(im.path), "--mask", str(mask_file), "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["query"]["kind"] == "image" and doc["query"]["prompt"] == {"mask": str(mask_file)}
    assert sum(h["annotation_category"] == obj.category for h in doc["hits"]) >= 4


def test_cli_gallery_shows_the_query_and_k_hits(edge_corpus, tmp_path):
    sid = edge_corpus.of_class("yellow_stripes")[0]
    out = tmp_path / "g" / "hits.html"
    result = _cli(edge_corpus, "search", "--segment", sid, "-k", "4", "--gallery", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    figures = re.findall(r"<figure class=\"([^\"]*)\"><img [^>]*src=\"([^\"]+)\"", page)
    assert [cls for cls, _ in figures] == ["query"] + [""] * 4
    assert all(src.startswith("data:image/jpeg;base64,") for _, src in figures)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing refers to a file outside the page
    hits = search_by_segment(edge_corpus.home, sid, k=4)
    for h in hits:
        assert f"#{h.rank}  score {h.score:.3f}" in page and h.segment_id in page
    assert page.index("query") < page.index(hits[0].segment_id)


def test_cli_label_query_with_gallery(edge_corpus, tmp_path):
    result = _cli(edge_corpus, "search", "--label", "red_disc", "--bank", "shapes", "-k", "3", "--gallery",
                  str(tmp_path / "g.html"))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 4 and result.stdout.count("red_disc") >= 2
    assert (tmp_path / "g.html").read_text().count("<figure") == 3


@pytest.mark.parametrize("max_side, size", [(None, (256, 192)), (64, (64, 48))])
def test_cli_show_writes_a_png_of_the_image(edge_corpus, tmp_path, max_side, size):
    sid = edge_corpus.of_class("red_disc")[0]
    out = tmp_path / "seg.png"
    args = ["show", sid, "--out", str(out)] + (["--max-side", str(max_side)] if max_side else [])
    result = _cli(edge_corpus, *args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out} ({size[0]}x{size[1]})\n"
    with PILImage.open(out) as pic:
        assert pic.format == "PNG" and pic.size == size
        if max_side is None:  # the segment is drawn (outlined) and nothing else changed
            seg = get_segment(edge_corpus.home, sid)
            mask = seg.mask()
            original = np.asarray(PILImage.open(seg.image_path).convert("RGB"))
            drawn = np.asarray(pic.convert("RGB"))
            assert np.array_equal(drawn[~mask], original[~mask]) and (drawn[mask] != original[mask]).any()


CLI_ERRORS = [
    (["search", "--segment", "00000000-0000-0000-0000-000000000000"],
     "Error: no segment '00000000-0000-0000-0000-000000000000' in {root}\n"),
    (["search", "--image", "{image}", "--box", "1,2,3"], "Error: --box must be x0,y0,x1,y1 (4 numbers), got '1,2,3'\n"),
    (["search", "--image", "{image}", "--box", "a,b,c,d"],
     "Error: --box must be x0,y0,x1,y1 (4 numbers), got 'a,b,c,d'\n"),
    (["search", "--image", "{image}", "--box", "10,10,5,50"],
     "Error: --box 10,10,5,50: x1 must exceed x0 and y1 must exceed y0\n"),
    (["search", "--image", "{image}", "--box", "0,0,300,100"],
     "Error: --box 0,0,300,100 lies outside the image {image} (256x192)\n"),
    (["search", "--image", "{image}", "--point", "10,500"],
     "Error: --point 10,500 lies outside the image {image} (256x192)\n"),
    (["search", "--image", "{image}", "--point", "10"], "Error: --point must be x,y (2 numbers), got '10'\n"),
    (["search", "--image", "{image}", "--mask", "{small_mask}"],
     "Error: {small_mask}: the mask is 10x8, the image {image} is 256x192\n"),
    (["search", "--image", "{image}", "--mask", "{root}/missing.png"],
     "Error: {root}/missing.png: mask file not found\n"),
    (["search", "--image", "{image}", "--mask", "{small_mask}", "--point", "1,1"],
     "Error: --mask cannot be combined with --box, --point or --negative-point\n"),
    (["search", "--segment", "x", "--image", "{image}"],
     "Error: --segment and --image cannot be combined (one query at a time)\n"),
    (["search", "--segment", "x", "--label", "car", "--bank", "b"],
     "Error: --segment and --bank cannot be combined (one query at a time)\n"),
    (["search", "--box", "1,2,3,4"], "Error: --box needs --image FILE\n"),
    (["search", "--bank", "shapes"], "Error: --bank needs --label NAME (the class to find)\n"),
    (["search"], "Error: give one query: --segment ID, --image FILE with --box/--point/--mask, --label NAME "
                 "--bank BANK, or --text \"a red car\"\n"),
    (["search", "--text", "a red car"], "Error: {root} has no text-image space (it has sam); add one with "
                                        "`samsearch embed --space clip-b32` (or ingest --spaces sam,clip-b32)\n"),
    (["search", "--label", "car", "--bank", "shapes"],
     "Error: memory bank 'shapes' has no class 'car' (classes: blue_square, cyan_checker, green_triangle, "
     "purple_ring, red_disc, yellow_stripes)\n"),
    (["search", "--label", "car", "--bank", "cars"], "Error: no bank named 'cars'; banks here: shapes\n"),
    (["search", "--label", "red_disc", "--bank", "shapes", "--exclude-same-image"],
     "Error: --exclude-same-image needs a --segment or --image query\n"),
    (["search", "--segment", "{segment}", "-k", "0"], "Error: -k must be at least 1, got 0\n"),
    (["search", "--segment", "{segment}", "-k", "10001"],
     "Error: -k must be at most 10000, got 10001 (narrow the search with filters instead)\n"),
    (["search", "--segment", "{segment}", "--min-area", "9", "--max-area", "3"],
     "Error: --min-area 9 exceeds --max-area 3\n"),
    (["search", "--segment", "{segment}", "--min-score", "2"],
     "Error: --min-score must lie in [-1, 1] (cosine similarity), got 2.0\n"),
    (["show", "00000000-0000-0000-0000-000000000000", "--out", "{root}/x.png"],
     "Error: no segment '00000000-0000-0000-0000-000000000000' in {root}\n"),
    (["show", "{segment}", "--out", "{root}/x.jpg"], "Error: {root}/x.jpg: --out must name a .png file\n"),
]


@pytest.mark.parametrize("args, message", CLI_ERRORS, ids=[" ".join(a[:4]) for a, _ in CLI_ERRORS])
def test_cli_errors_are_one_line(edge_corpus, unseen, args, message):
    small_mask = edge_corpus.root.parent / "small_mask.png"
    PILImage.new("L", (10, 8), 255).save(small_mask)
    values = {"root": edge_corpus.root, "image": unseen.images[0].path, "small_mask": small_mask,
              "segment": edge_corpus.of_class("red_disc")[0]}
    result = _cli(edge_corpus, *[a.format(**values) for a in args])
    assert result.exit_code == 1
    assert result.stderr == message.format(**values) and result.stdout == ""


def test_cli_empty_corpus(tmp_path):
    result = runner.invoke(app, ["--home", str(tmp_path / "empty"), "search", "--segment", "x"])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {tmp_path / 'empty'}: no segments stored yet (run `samsearch ingest` first)\n"


# -- relevance feedback (positive / negative examples, MMR) -----------------------------------------


def _feedback_scores(corpus, pos, neg, strategy="best_score"):
    """Qdrant's recommend order from numpy, over every stored segment but the examples."""
    ids = [i for i in corpus.vectors if i not in pos + neg]
    x = np.stack([corpus.vectors[i] for i in ids])
    sp = x @ np.stack([corpus.vectors[i] for i in pos]).T
    sn = x @ np.stack([corpus.vectors[i] for i in neg]).T if neg else np.zeros((len(ids), 0))
    if strategy == "sum_scores":
        return dict(zip(ids, sp.sum(1) - sn.sum(1), strict=True))
    bp, bn = sp.max(1), (sn.max(1) if neg else np.full(len(ids), -np.inf))
    return dict(zip(ids, np.where(bp > bn, 2 + bp, -bn), strict=True))


def _is_top(hits, want, k):
    """The hits are a best-first top-k of ``want`` (ties within 1e-5 may swap)."""
    got = [want[h.segment_id] for h in hits]
    assert len(hits) == k and all(a >= b - 1e-5 for a, b in zip(got, got[1:], strict=False))
    rest = sorted((v for i, v in want.items() if i not in {h.segment_id for h in hits}), reverse=True)
    assert not rest or min(got) >= rest[0] - 1e-5


@pytest.mark.parametrize("strategy", ["best_score", "sum_scores"])
def test_examples_query_ranks_like_brute_force(corpus, strategy):
    from samsearch.search.query import search_by_examples

    a, b = corpus.of_class("red_disc")[:2], corpus.of_class("blue_square")[:1]
    res = search_by_examples(corpus.home, a, b, k=8, strategy=strategy)
    assert res.query.kind == "examples" and res.as_dict()["query"]["examples"] == {
        "positive": a, "negative": b, "strategy": strategy, "diversity": 0.0}
    _is_top(res.hits, _feedback_scores(corpus, a, b, strategy), 8)
    _ranked(res)
    assert not {h.segment_id for h in res} & set(a + b)
    # the negative example pushes its class down: fewer squares than with the positives alone
    alone = search_by_examples(corpus.home, a, k=8, strategy=strategy)
    squares = [sum(corpus.category[h.segment_id] == "blue_square" for h in r) for r in (res, alone)]
    assert squares[0] <= squares[1]


def test_examples_query_filters(corpus):
    from samsearch.search.query import search_by_examples

    pos = [corpus.of_class("red_disc")[0], corpus.of_class("green_triangle")[0]]
    images = {corpus.image_of[i] for i in pos}
    res = search_by_examples(corpus.home, pos, k=30, filters=SearchFilters(dataset="a", exclude_same_image=True))
    assert res.hits and all(h.dataset == "a" and h.image_id not in images for h in res)
    want = {i: v for i, v in _feedback_scores(corpus, pos, []).items()
            if "a" in corpus.payload[i]["dataset"] and corpus.image_of[i] not in images}  # a list of datasets
    _is_top(res.hits, want, min(30, len(want)))


def test_mmr_order_trades_relevance_for_spread():
    from samsearch.search.query import mmr_order

    rng = np.random.default_rng(0)
    centres = np.eye(16)[:3]  # orthogonal groups
    # 4 near-copies of centre 0 (the most relevant), then 2 of centre 1, 2 of centre 2
    x = np.concatenate([centres[0] + 0.01 * rng.standard_normal((4, 16)),
                        centres[1] + 0.01 * rng.standard_normal((2, 16)),
                        centres[2] + 0.01 * rng.standard_normal((2, 16))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rel = np.array([0.9, 0.89, 0.88, 0.87, 0.6, 0.59, 0.5, 0.49])
    assert mmr_order(rel, x, 3, 0.0) == [0, 1, 2]
    spread = mmr_order(rel, x, 3, 0.5)
    assert spread == [0, 4, 6]  # one of each group, best of each first
    assert mmr_order(rel, x, 20, 0.5)[:3] == spread and sorted(mmr_order(rel, x, 20, 0.5)) == list(range(8))
    assert mmr_order(rel[:0], x[:0], 3, 0.5) == []


def test_examples_query_with_diversity_spreads_the_hits(corpus):
    from samsearch.search.query import search_by_examples

    pos = corpus.of_class("red_disc")[:1]
    plain = search_by_examples(corpus.home, pos, k=6)
    diverse = search_by_examples(corpus.home, pos, k=6, diversity=0.8)
    assert len(diverse) == 6 and diverse[0].segment_id == plain[0].segment_id  # the best stays first
    assert [h.rank for h in diverse] == list(range(1, 7))

    def spread(res):
        v = np.stack([corpus.vectors[h.segment_id] for h in res])
        return float((v @ v.T)[np.triu_indices(len(v), 1)].mean())

    assert spread(diverse) < spread(plain)
    assert len({corpus.category[h.segment_id] for h in diverse}) >= len({corpus.category[h.segment_id] for h in plain})


def test_examples_query_errors(corpus):
    from samsearch.search.query import search_by_examples

    sid = corpus.of_class("red_disc")[0]
    with pytest.raises(NotFoundError):
        search_by_examples(corpus.home, [sid, str(uuid.uuid4())])
    with pytest.raises(NotFoundError):
        search_by_examples(corpus.home, [sid], ["../../etc/passwd"])
    for kwargs, message in (({"positive": []}, "positive"), ({"positive": [sid], "negative": [sid]}, "both"),
                            ({"positive": [sid], "diversity": 1.5}, "diversity"),
                            ({"positive": [sid], "strategy": "avg"}, "strategy"),
                            ({"positive": [sid], "k": 0}, "-k")):
        with pytest.raises(InputError, match=message):
            search_by_examples(corpus.home, **kwargs)


# -- segment id prefixes (issue 12: `cluster show` prints 8 characters) ---------------------------------


def _unique_prefix(corpus, sid, n=8):
    prefix = sid[:n]
    assert [i for i in corpus.category if i.startswith(prefix)] == [sid]
    return prefix


def test_a_unique_prefix_names_the_segment_in_every_query(corpus):
    from samsearch.search.query import search_by_examples

    sid, other = corpus.of_class("red_disc")[0], corpus.of_class("blue_square")[0]
    prefix = _unique_prefix(corpus, sid)
    full = search_by_segment(corpus.home, sid, k=5)
    short = search_by_segment(corpus.home, prefix.upper(), k=5)
    assert short.query.segment_id == sid and [h.segment_id for h in short] == [h.segment_id for h in full]
    assert get_segment(corpus.home, prefix).segment_id == sid
    fed = search_by_examples(corpus.home, [prefix], [_unique_prefix(corpus, other)], k=5)
    assert fed.query.examples["positive"] == [sid] and fed.query.examples["negative"] == [other]
    assert [h.segment_id for h in fed] == [h.segment_id for h in search_by_examples(corpus.home, [sid], [other], k=5)]


def _missing_prefix(corpus) -> str:
    return next(p for p in (f"{n:08x}" for n in range(0xFFFF0000, 0xFFFFFFFF))
                if not any(i.startswith(p) for i in corpus.category))


def test_unknown_ambiguous_and_short_prefixes_are_clear_errors(corpus):
    from samsearch.search.query import search_by_examples

    sid = corpus.of_class("red_disc")[0]
    missing = _missing_prefix(corpus)
    root = corpus.home.root
    with pytest.raises(NotFoundError, match=rf"^no segment '{missing}' in {re.escape(str(root))} \(no stored id"):
        search_by_segment(corpus.home, missing)
    with pytest.raises(NotFoundError, match=f"no segment '{missing}'"):
        search_by_examples(corpus.home, [sid], [missing])
    with pytest.raises(InputError, match="'abc' is too short: give at least 4 hex digits"):
        get_segment(corpus.home, "abc")
    twin = sid[:8] + "-ffff-4fff-bfff-ffffffffffff"  # a second segment row sharing the first 8 characters
    with _extra_segment_row(corpus.home, sid, twin):
        with pytest.raises(InputError) as info:
            search_by_segment(corpus.home, sid[:8])
        first, second = sorted([sid, twin])
        assert str(info.value) == (f"segment id prefix '{sid[:8]}' is ambiguous in {root}: 2 segments match "
                                   f"({first}, {second}); give more characters")
        assert search_by_segment(corpus.home, sid[:9] + sid[9:13], k=1).query.segment_id == sid  # longer: unique


class _extra_segment_row:
    """A copy of segment ``sid``'s SQL row under id ``new`` for the duration of a ``with`` block."""

    def __init__(self, home, sid, new):
        self.home, self.sid, self.new = home, sid, new

    def __enter__(self):
        with self.home.db.session() as s:
            row = s.get(Segment, self.sid)
            cols = {c.key: getattr(row, c.key) for c in Segment.__table__.columns}
            s.add(Segment(**{**cols, "id": self.new, "segment_index": 10_000}))

    def __exit__(self, *exc):
        with self.home.db.session() as s:
            s.execute(delete(Segment).where(Segment.id == self.new))


def test_cli_takes_the_prefixes_cluster_show_prints(edge_corpus, tmp_path):
    sid = edge_corpus.of_class("purple_ring")[0]
    prefix = _unique_prefix(edge_corpus, sid)
    result = _cli(edge_corpus, "search", "--segment", prefix, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["query"]["segment_id"] == sid
    out = tmp_path / "seg.png"
    result = _cli(edge_corpus, "show", prefix, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file()
    missing = _missing_prefix(edge_corpus)
    result = _cli(edge_corpus, "show", missing, "--out", str(out))
    assert result.exit_code == 1
    assert result.stderr == f"Error: no segment '{missing}' in {edge_corpus.root} (no stored id starts with it)\n"
    twin = sid[:8] + "-ffff-4fff-bfff-ffffffffffff"
    with _extra_segment_row(edge_corpus.home, sid, twin):
        edge_corpus.home.close()
        result = _cli(edge_corpus, "search", "--segment", prefix)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: segment id prefix '{prefix}' is ambiguous in {edge_corpus.root}: "
                                    "2 segments match (") and result.stderr.count("\n") == 1

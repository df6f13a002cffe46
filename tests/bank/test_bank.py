"""Memory banks on real stores: KMeans per class, the SQL + vector storage contract, rebuild without SAM,
list/show/delete, and the refusals (bad names, other models, incomplete banks)."""

from __future__ import annotations

import numpy as np
import pytest
from label_fixtures import DIM, SPACE, bank_instances
from sqlalchemy import select, update

from samsearch.bank.build import BankBuildOptions, _select, build_bank
from samsearch.bank.store import (
    BankIncompleteError,
    bank_collection,
    create_bank,
    delete_bank,
    get_bank,
    list_banks,
    load_bank_vectors,
    load_centroids,
    rebuild_bank,
)
from samsearch.data.datasets import read_dataset
from samsearch.db import Bank, BankClass, BankVector
from samsearch.errors import EmbeddingSpaceMismatch, InputError, NotFoundError
from samsearch.home import Home
from samsearch.sam.models import LoadedModel
from samsearch.sam.pooling import embedding_space


def _instances():
    inst = bank_instances(seed=4, per_class=30, classes=("a", "b"))
    inst["b"] = inst["b"][:5]  # fewer than --per-class: keeps its instances
    inst["c"] = np.repeat(bank_instances(seed=5, per_class=1, classes=("c",))["c"], 3, axis=0)  # 3 identical
    return inst


def test_storage_contract_rebuild_list_delete(home):
    home.claim_embedding_space(SPACE)
    inst = _instances()
    sources = {k: [{"image": f"{k}{i}.png", "annotation_id": i} for i in range(len(v))] for k, v in inst.items()}
    info = create_bank(home, "cars.v1", inst, per_class=8, settings={"note": "t"}, sources=sources, seed=3)
    assert [(c.label, c.n_instances, c.n_centroids) for c in info.classes] == [("a", 30, 8), ("b", 5, 5), ("c", 3, 1)]
    assert info.settings["per_class"] == 8 and info.settings["seed"] == 3 and info.settings["note"] == "t"
    assert info.settings["embedding_space"] == SPACE.__dict__ and info.model_key == "tiny-random:seed:0"
    assert info.collection == "bank.cars.v1"

    with home.db.session() as s:
        rows = s.execute(select(BankVector).where(BankVector.bank_id == info.id)
                         .order_by(BankVector.id)).scalars().all()
    inst_rows = [r for r in rows if r.kind == "instance"]
    cent_rows = [r for r in rows if r.kind == "centroid"]
    assert len(inst_rows) == 38 and len(cent_rows) == 14
    a = np.stack([np.frombuffer(r.vector, "<f4") for r in inst_rows if r.label == "a"])
    assert np.allclose(a, inst["a"] / np.linalg.norm(inst["a"], axis=1, keepdims=True), atol=1e-6)
    assert inst_rows[0].source == {"image": "a0.png", "annotation_id": 0} and inst_rows[0].point_id is None
    members = {lab: sum(r.source["members"] for r in cent_rows if r.label == lab) for lab in "abc"}
    assert members == {"a": 30, "b": 5, "c": 3}

    # every centroid is in bank.<NAME> under its point_id, same vector, payload {label, bank}
    stored = {r.id: r for r in home.vectors.retrieve(info.collection, [r.point_id for r in cent_rows],
                                                      with_vectors=True)}
    assert len(stored) == 14 and home.vectors.count(info.collection) == 14
    for r in cent_rows:
        v = np.frombuffer(r.vector, "<f4")
        assert abs(np.linalg.norm(v) - 1) < 1e-5
        assert stored[r.point_id].payload == {"label": r.label, "bank": "cars.v1"}
        assert np.allclose(stored[r.point_id].vector, v, atol=1e-5)

    # deterministic: the same seed gives the same centroids
    again = rebuild_bank(home, "cars.v1", per_class=8, new_name="b")
    assert np.allclose(load_bank_vectors(home, "b", "centroid").vectors,
                       load_bank_vectors(home, "cars.v1", "centroid").vectors)
    assert again.settings["rebuilt_from"] == "cars.v1"

    # another K, from the stored instances (no SAM), replacing the bank
    rebuilt = rebuild_bank(home, "b", per_class=2)
    assert [(c.label, c.n_instances, c.n_centroids) for c in rebuilt.classes] == [
        ("a", 30, 2), ("b", 5, 2), ("c", 3, 1)]
    assert home.vectors.count(bank_collection("b")) == 5 and len(load_centroids(home, "b").labels) == 5
    assert len(load_bank_vectors(home, "b", "instance").labels) == 38
    assert [b.name for b in list_banks(home)] == ["b", "cars.v1"]
    assert get_bank(home, "cars.v1").n_centroids == 14

    deleted = delete_bank(home, "b")
    assert deleted.name == "b" and not home.vectors.has_collection(bank_collection("b"))
    with home.db.session() as s:
        assert s.execute(select(BankClass).where(BankClass.bank_id == deleted.id)).first() is None
        assert s.execute(select(BankVector).where(BankVector.bank_id == deleted.id)).first() is None
    with pytest.raises(NotFoundError, match="^no bank named 'b'; banks here: cars.v1$"):
        get_bank(home, "b")


@pytest.fixture(scope="module")
def bank_home(tmp_path_factory):
    with Home(tmp_path_factory.mktemp("bank")) as h:
        h.claim_embedding_space(SPACE)
        create_bank(h, "taken", bank_instances(seed=1, per_class=2), per_class=1)
        yield h


OK = bank_instances(seed=2, per_class=3, classes=("a",))


@pytest.mark.parametrize(
    "name, instances, kwargs, message",
    [
        ("bad/name", OK, {}, r"invalid bank name 'bad/name'"),
        ("", OK, {}, "invalid bank name ''"),
        (".hidden", OK, {}, "invalid bank name '.hidden'"),
        ("x" * 101, OK, {}, "invalid bank name"),
        ("ok", {}, {}, "a bank needs at least one class"),
        ("ok", {"unknown": OK["a"]}, {}, "class name 'unknown' is reserved"),
        ("ok", {"a": np.ones((3, DIM + 1))}, {}, rf"class 'a': expected an \(n ≥ 1, {DIM}\) array"),
        ("ok", {"a": np.full((2, DIM), np.nan)}, {}, "class 'a': vectors contain NaN"),
        ("ok", {"a": np.zeros((2, DIM))}, {}, "class 'a': a vector is all zeros"),
        ("ok", OK, {"sources": {"a": [{}]}}, "class 'a': 3 vectors but 1 sources"),
        ("ok", OK, {"per_class": 0}, "--per-class must be at least 1"),
        ("taken", OK, {}, r"bank 'taken' already exists \(delete it with `samsearch bank delete taken`, or pass"),
    ],
)
def test_create_bank_refuses(bank_home, name, instances, kwargs, message):
    with pytest.raises(InputError, match=message):
        create_bank(bank_home, name, instances, **kwargs)
    assert [b.name for b in list_banks(bank_home)] == ["taken"]  # nothing half-written


def test_replace_and_incomplete_bank(bank_home):
    info = create_bank(bank_home, "taken", bank_instances(seed=1, per_class=4), per_class=2, replace=True)
    assert info.n_centroids == 8
    with bank_home.db.session() as s:
        point = s.execute(select(BankVector.point_id).where(BankVector.bank_id == info.id,
                                                            BankVector.kind == "centroid")).scalars().first()
    bank_home.vectors.delete(bank_collection("taken"), [point])
    with pytest.raises(BankIncompleteError, match="bank 'taken' is incomplete: SQL lists 8 centroids, collection "
                                                  "'bank.taken' holds 7"):
        load_centroids(bank_home, "taken")


def test_bank_from_another_model_is_refused(home, tiny_model, shapes):
    home.claim_embedding_space(embedding_space(tiny_model.ref))
    other = LoadedModel("tiny-random", tiny_model.sam, tiny_model.device, "seed:1", None)
    dataset = read_dataset(shapes.annotations_path, shapes.root)
    with pytest.raises(EmbeddingSpaceMismatch, match="cannot be mixed"):
        build_bank(home, other, dataset, BankBuildOptions(name="x", prompts="masks"), progress=False)
    assert list_banks(home) == []
    # a bank whose recorded space is not the home's is refused when used
    create_bank(home, "mine", {"a": np.ones((2, 256), np.float32)})
    with home.db.session() as s:
        s.execute(update(Bank).where(Bank.name == "mine").values(settings={"embedding_space": {
            "model": "vit_b", "checkpoint_sha256": "ec2d" + "0" * 60, "recipe": "maskpool-v1", "dim": 256}}))
    with pytest.raises(InputError, match="bank 'mine' was made with vit_b .* but this home holds tiny-random"):
        load_centroids(home, "mine")


def test_selection_by_class_and_max_per_class(shapes):
    dataset = read_dataset(shapes.annotations_path, shapes.root)
    counts = dataset.class_counts()
    opts = BankBuildOptions(name="x", classes=["red_disc", "blue_square"], max_per_class=3, seed=1)
    selected, without_mask = _select(dataset, opts)
    picked = [a for _, anns in selected for a in anns]
    assert without_mask == 0
    assert {c: sum(a.category == c for a in picked) for c in ("red_disc", "blue_square")} == {
        "red_disc": min(3, counts["red_disc"]), "blue_square": min(3, counts["blue_square"])}
    assert all(anns for _, anns in selected)  # images without a selected instance are not encoded
    assert _select(dataset, opts)[0] == selected  # seeded: the same choice again
    everything, _ = _select(dataset, BankBuildOptions(name="x"))
    assert sum(len(a) for _, a in everything) == dataset.num_instances == len(shapes.objects)
    with pytest.raises(InputError, match="--classes: horse not in .*annotations.json \\(classes there: red_disc,"):
        _select(dataset, BankBuildOptions(name="x", classes=["horse"]))

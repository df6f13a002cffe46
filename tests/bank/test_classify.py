"""Bulk labeling on real stores (SQLite + Qdrant Edge, Postgres + qdrant-client) with clustered vectors:
no SAM here (the end-to-end accuracy on SAM embeddings lives in test_label_e2e.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from label_fixtures import CLASSES, DIM, bank_instances, fill_segments, snapshot

from samsearch.bank.classify import (
    Classifier,
    LabelOptions,
    clear_manual_labels,
    label_segments,
    selection,
    set_manual_labels,
)
from samsearch.bank.store import bank_collection, create_bank, load_centroids
from samsearch.errors import InputError, NotFoundError
from samsearch.home import SEGMENTS, Home
from samsearch.vectors import Filter, IsNull, Match


def _label(home, **kw):
    return label_segments(home, LabelOptions(**{"bank": "b1", **kw}), progress=False)


def test_labels_every_selected_segment_in_sql_and_payload(home):
    truth = fill_segments(home, 400, dataset="d1")
    other = fill_segments(home, 60, dataset="d2", seed=5, image_base=100)
    create_bank(home, "b1", bank_instances(seed=9), per_class=3)
    summary = _label(home, dataset="d1", batch_size=64)
    assert summary.selected == summary.labeled == 400
    assert summary.counts == dict(sorted(Counter(truth.values()).items()))
    snap = snapshot(home)
    for sid, want in truth.items():
        (label, score, source, bank), payload = snap[sid]
        assert (label, source, bank) == (want, "bank", "b1")
        assert 0.5 < score <= 1.0
        assert payload == (label, round(score, 2), "bank", "b1")  # payload score: 2 decimals
    assert all(snap[sid] == ((None,) * 4, (None,) * 4) for sid in other)  # --dataset d1 only
    # the store's indexed filters see the labels
    assert home.vectors.count(SEGMENTS, Filter.of(Match("label", "a"), Match("bank", "b1"))) == summary.counts["a"]


def test_rerun_relabel_manual_labels_and_another_bank(home):
    truth = fill_segments(home, 150)
    create_bank(home, "b1", bank_instances(seed=9), per_class=3)
    create_bank(home, "b2", bank_instances(seed=3, classes=("a", "b")), per_class=2)
    hand = list(truth)[:7]
    assert set_manual_labels(home, hand, "person-said") == 7
    first = _label(home)
    assert (first.labeled, first.kept_manual) == (143, 7)
    before = snapshot(home)
    assert all(before[s] == (("person-said", None, "manual", None),) * 2 for s in hand)

    # re-running changes nothing; --relabel rewrites the very same values and still keeps manual labels
    again = _label(home)
    assert (again.selected, again.labeled, again.left_labeled, again.kept_manual) == (0, 0, 143, 7)
    assert snapshot(home) == before
    relabel = _label(home, relabel=True)
    assert (relabel.labeled, relabel.kept_manual) == (143, 7) and snapshot(home) == before

    # another bank: nothing without --relabel; with it, bank labels change and manual ones stay
    assert _label(home, bank="b2").labeled == 0
    assert _label(home, bank="b2", relabel=True, margin=0.05, min_score=0.8).labeled == 143
    snap = snapshot(home)
    for sid, t in truth.items():
        label, _, source, bank = snap[sid][0]
        if sid in hand:
            assert (label, source, bank) == ("person-said", "manual", None)
        else:
            assert (label, source, bank) == (t if t in ("a", "b") else "unknown", "bank", "b2")

    # asked explicitly: manual labels are overwritten too
    overwrite = _label(home, relabel=True, overwrite_manual=True)
    assert (overwrite.labeled, overwrite.kept_manual) == (150, 0)
    snap = snapshot(home)
    assert all(snap[s][0][0] == truth[s] and snap[s][0][2] == "bank" for s in hand)


def test_clear_manual_labels_only_clears_manual_ones(home):
    truth = fill_segments(home, 60)
    create_bank(home, "b1", bank_instances(seed=9), per_class=3)
    ids = list(truth)
    hand, banked = ids[:5], ids[5:8]
    set_manual_labels(home, hand, "person-said")
    _label(home)
    before = snapshot(home)
    # the bank-labeled ones in the request and an unknown id are left alone
    assert clear_manual_labels(home, hand + banked + ["nope", hand[0]]) == 5
    after = snapshot(home)
    assert all(after[s] == ((None,) * 4, (None,) * 4) for s in hand)  # SQL and payload agree
    assert all(after[s] == before[s] for s in ids[5:])
    assert home.vectors.count(SEGMENTS, Filter.of(IsNull("label"))) == 5
    assert clear_manual_labels(home, hand) == 0 and clear_manual_labels(home, []) == 0
    # unlabeled again: the next labeling run labels them
    assert _label(home).labeled == 5
    assert all(snapshot(home)[s][0][2] == "bank" for s in hand)


def test_unknown_when_a_class_is_missing_from_the_bank(home):
    truth = fill_segments(home, 300)
    create_bank(home, "b1", bank_instances(seed=9, classes=("a", "b", "c")), per_class=3)
    summary = _label(home, min_score=0.75)
    snap = snapshot(home)
    got = {sid: snap[sid][0][0] for sid in truth}
    missing = [sid for sid, t in truth.items() if t == "d"]
    assert missing and all(got[s] == "unknown" for s in missing)
    known = [sid for sid, t in truth.items() if t != "d"]
    assert np.mean([got[s] == truth[s] for s in known]) >= 0.97
    assert summary.counts["unknown"] >= len(missing)
    assert snapshot(home)[missing[0]][0][2] == "bank"  # unknown is a result: not selected again
    assert _label(home, min_score=0.75).labeled == 0


def test_matrix_nn_is_the_exact_search_over_the_bank_collection(home):
    fill_segments(home, 50)
    create_bank(home, "b1", bank_instances(seed=9), per_class=4)
    cents = load_centroids(home, "b1")
    clf = Classifier.from_labels(cents.labels, cents.vectors)
    x = next(home.vectors.scroll_vectors(SEGMENTS, batch_size=50)).vectors
    cls, score, _ = clf.classify(x)
    for row, c, sc in zip(x, cls, score, strict=True):
        hit = home.vectors.search(bank_collection("b1"), row, k=1, exact=True)[0]
        assert hit.payload["label"] == clf.classes[c]
        assert hit.score == pytest.approx(float(sc), abs=1e-4)


# -- the classifier alone -------------------------------------------------------------------------------------

E = np.eye(4, dtype=np.float32)


def _unit(*rows):
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "x, k, min_score, margin, expected",
    [
        # nearest centroid wins
        ([[1, 0.1, 0, 0]], 1, None, None, ["p"]),
        ([[0.1, 0, 1, 0]], 1, None, None, ["q"]),
        # below --min-score: unknown
        ([[1, 1, 1, 1]], 1, 0.9, None, ["unknown"]),
        ([[1, 0.1, 0, 0]], 1, 0.9, None, ["p"]),
        # two classes almost tied: --margin makes it unknown
        ([[1, 0, 0.95, 0]], 1, None, 0.1, ["unknown"]),
        ([[1, 0, 0.5, 0]], 1, None, 0.1, ["p"]),
        # vote over 3: q has two near centroids (rows 2, 3), p has the single nearest one
        ([[0.9, 0, 0.8, 0.8]], 1, None, None, ["p"]),
        ([[0.9, 0, 0.8, 0.8]], 3, None, None, ["q"]),
    ],
)
def test_classifier_table(x, k, min_score, margin, expected):
    # centroids: p = e0, e1; q = e2, e3
    clf = Classifier.from_labels(["q", "p", "q", "p"], np.stack([E[2], E[0], E[3], E[1]]))
    cls, _, _ = clf.classify(_unit(*x), k, min_score, margin)
    names = [*clf.classes, "unknown"]
    assert [names[c] for c in cls] == expected


def test_classifier_scores_and_margin():
    clf = Classifier.from_labels(["p", "q"], np.stack([E[0], E[1]]))
    x = _unit([3, 1, 0, 0])
    cls, score, gap = clf.classify(x)
    assert clf.classes[cls[0]] == "p"
    assert score[0] == pytest.approx(3 / np.sqrt(10)) and gap[0] == pytest.approx(2 / np.sqrt(10))


# -- selection, errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, expected",
    [
        (LabelOptions("b"), Filter.of(IsNull("label"))),
        (LabelOptions("b", dataset="d"), Filter.of(Match("dataset", "d"), IsNull("label"))),
        (LabelOptions("b", relabel=True), Filter.of(must_not=[Match("label_source", "manual")])),
        (LabelOptions("b", dataset="d", relabel=True, overwrite_manual=True), Filter.of(Match("dataset", "d"))),
    ],
)
def test_selection_filter(options, expected):
    assert selection(options) == expected


@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"bank": "nope"}, NotFoundError, "no bank named 'nope'; banks here: b1"),
        ({"k": 0}, InputError, "--k must be at least 1"),
        ({"min_score": 1.5}, InputError, r"--min-score is a cosine similarity in \[-1, 1\]"),
        ({"margin": -0.1}, InputError, r"--margin is a similarity difference in \[0, 2\]"),
    ],
)
def test_label_errors(error_home, kw, error, message):
    with pytest.raises(error, match=message):
        _label(error_home, **kw)


@pytest.fixture(scope="module")
def error_home(tmp_path_factory):
    with Home(tmp_path_factory.mktemp("errors")) as h:
        fill_segments(h, 10)
        create_bank(h, "b1", bank_instances(seed=9), per_class=2)
        yield h


def test_scroll_vectors_and_deferred_flush_on_both_backends(home):
    truth = fill_segments(home, 70)
    recs = {r.id: r.vector for b in home.vectors.scroll(SEGMENTS, with_vectors=True) for r in b}
    got = [(b.ids, b.vectors) for b in home.vectors.scroll_vectors(SEGMENTS, Filter.of(Match("dataset", "d1")), 32)]
    assert [len(ids) for ids, _ in got] == [32, 32, 6]
    all_ids = [i for ids, _ in got for i in ids]
    assert len(all_ids) == len(set(all_ids)) and set(all_ids) == set(truth)
    for ids, x in got:
        assert x.dtype == np.float32 and x.shape == (len(ids), DIM)
        assert np.allclose(x, np.stack([recs[i] for i in ids]))
    with home.vectors.deferred_flush():
        home.vectors.set_payload(SEGMENTS, all_ids[:5], {"label": "z"})
        assert home.vectors.count(SEGMENTS, Filter.of(Match("label", "z"))) == 5
    assert home.vectors.count(SEGMENTS, Filter.of(Match("label", "z"))) == 5


# -- crash and resume (a real process crash between the SQL write and the payload write) ----------------------


def test_crash_mid_run_then_rerun_finishes_the_job(tmp_path):
    root = tmp_path / "home"
    with Home(root) as home:
        truth = fill_segments(home, 600)
        create_bank(home, "b1", bank_instances(seed=9), per_class=3)
    cmd = [sys.executable, "-m", "samsearch", "--home", str(root), "label", "--bank", "b1", "--batch-size", "50",
           "--quiet", "--json"]
    env = {**os.environ, "SAMSEARCH_FAULT": "label_after_sql:10"}
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.getcwd())
    assert crashed.returncode == 77, crashed.stderr
    with Home(root) as home:
        snap = snapshot(home)
        in_sql = sum(v[0][0] is not None for v in snap.values())
        in_payload = sum(v[1][0] is not None for v in snap.values())
        # 10 batches reached SQL; payloads are written every 8 batches (400 segments)
        assert (in_sql, in_payload) == (500, 400)
    env.pop("SAMSEARCH_FAULT")
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.getcwd())
    assert rerun.returncode == 0, rerun.stderr
    assert '"selected": 200' in rerun.stdout  # resumed: only what the crash left unfinished
    with Home(root) as home:
        snap = snapshot(home)
        cents = load_centroids(home, "b1")
    assert all(v[0][0] is not None and v[0][0] == v[1][0] and v[0][2:] == v[1][2:] for v in snap.values())
    assert np.mean([snap[s][0][0] == t for s, t in truth.items()]) >= 0.97
    assert len(cents.labels) == 3 * len(CLASSES)


@pytest.mark.parametrize("home", ["sqlite+edge"], indirect=True)
def test_progress_bar_counts_whole_segments(home, capsys):
    fill_segments(home, 46, dataset="d1")
    create_bank(home, "b1", bank_instances(seed=9), per_class=3)
    label_segments(home, LabelOptions(bank="b1", batch_size=16), progress=True)
    err = capsys.readouterr().err
    assert "46/46" in err  # not "46.0/46.0" (unit_scale turned the counts into floats)
    assert ".0/" not in err

"""Bulk labeling: every selected stored segment gets the class of its nearest memory-bank centroid(s).

Selection runs inside the vector store, on indexed payload fields (never by fetching everything):

* default: segments without a label yet (``label`` missing or null), optionally of one ``dataset``;
* ``relabel``: also segments labeled before by a bank or a named cluster (``label_source != "manual"``);
* ``overwrite_manual``: also labels a person set by hand (``label_source = "manual"``); they are never
  touched otherwise.

Classification is an exact nearest-neighbour search over the bank: one matrix product of a batch of
segment vectors (unit rows) against all of the bank's centroids (unit rows; 20 classes × 8 = 160 is a
64 KB matrix), i.e. the cosine similarity of every segment to every centroid, which is exactly what an
exact search of the bank's collection returns, without a store round-trip per segment. ``k = 1`` takes the
class of the nearest centroid; ``k > 1`` takes a vote over the ``k`` nearest centroids (ties go to the class
with the nearer centroid). ``score`` is the similarity to the winning class's nearest centroid, ``margin``
is ``score`` minus the best similarity of any other class. Below ``min_score`` or ``margin`` the label is
``unknown`` (stored with its score, so re-running without ``relabel`` leaves it alone).

Write-back per batch: SQL first (the batch's rows into a temporary table, then one ``UPDATE segments ...
FROM`` that table; on Postgres the temporary table is filled with ``COPY``; it runs on a worker thread,
overlapping the store's reads and writes), then the vector payload:
``label``, ``label_score``, ``label_source = "bank"``, ``bank``, written with one ``set_payload`` call per
distinct (label, score rounded to 0.01) over up to ``8 × batch_size`` segments; Qdrant Edge flushes once per
run (its WAL protects every write against a process crash meanwhile). SQL keeps the exact score; the
payload's ``label_score`` is rounded to 2 decimals so a batch has few distinct payloads.

Resumable and idempotent: selection is by the payload, which is written *after* SQL. A crash leaves some
segments labeled in SQL but not in the payload; the next run selects them again and writes the same
values (same bank, same vectors, same thresholds → same labels). Re-running a finished command selects
nothing (default mode) or rewrites identical values (``relabel``). An interrupted ``relabel`` run is
finished by running it again (it redoes the work).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Column, Connection, Float, MetaData, String, Table, select, text, update

from samsearch.bank.store import UNKNOWN, bank_space, get_bank, load_centroids
from samsearch.db import Segment
from samsearch.db.runs import recorded_run
from samsearch.db.segment_ids import resolve_segment_ids
from samsearch.errors import InputError
from samsearch.faults import fault_point
from samsearch.home import Home, space_collection
from samsearch.vectors import Filter, IsNull, Match

PAYLOAD_SCORE_DECIMALS = 2
MANUAL = "manual"


# -- classification --------------------------------------------------------------------------------------------


@dataclass
class Classifier:
    """Nearest-centroid classification against one bank (centroids grouped by class)."""

    classes: list[str]
    centroids: np.ndarray  # (m, dim) unit rows, grouped by class
    centroid_class: np.ndarray  # (m,) class index of each centroid
    starts: np.ndarray  # first centroid of each class

    @staticmethod
    def from_labels(labels: Sequence[str], centroids: np.ndarray) -> Classifier:
        order = np.argsort(np.asarray(labels, dtype=object), kind="stable")
        labels_sorted = [labels[i] for i in order]
        classes = sorted(set(labels_sorted))
        index = {c: i for i, c in enumerate(classes)}
        cls = np.array([index[lab] for lab in labels_sorted], dtype=np.int64)
        starts = np.searchsorted(cls, np.arange(len(classes)))
        return Classifier(classes, np.ascontiguousarray(centroids[order], dtype=np.float32), cls, starts)

    def classify(self, x: np.ndarray, k: int = 1, min_score: float | None = None,
                 margin: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class index per row, -1 for unknown; score; margin) for unit rows ``x``."""
        n = len(x)
        sims = x @ self.centroids.T  # (n, m) cosine similarities: the exact NN over the bank
        class_best = np.maximum.reduceat(sims, self.starts, axis=1)  # (n, classes)
        rows = np.arange(n)
        if k <= 1:
            winner = class_best.argmax(axis=1)
        else:
            k = min(k, sims.shape[1])
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            votes = np.zeros_like(class_best)
            for j in range(k):
                votes[rows, self.centroid_class[top[:, j]]] += 1.0
            winner = (votes + 0.25 * class_best).argmax(axis=1)  # a vote outweighs any similarity gap
        score = class_best[rows, winner]
        if class_best.shape[1] > 1:
            class_best[rows, winner] = -np.inf
            second = class_best.max(axis=1)
            gap = score - second
        else:
            gap = np.full(n, np.inf, dtype=np.float32)
        unknown = np.zeros(n, dtype=bool)
        if min_score is not None:
            unknown |= score < min_score
        if margin is not None:
            unknown |= gap < margin
        return np.where(unknown, -1, winner), score.astype(np.float32), gap.astype(np.float32)


# -- the job ----------------------------------------------------------------------------------------------------


@dataclass
class LabelOptions:
    bank: str
    dataset: str | None = None
    min_score: float | None = None
    margin: float | None = None
    k: int = 1
    relabel: bool = False
    overwrite_manual: bool = False
    batch_size: int = 16384  # vectors per scroll page (memory: batch_size × dim × 4 bytes, plus scores)
    write_every: int | None = None  # payload writes are grouped over this many segments [8 × batch_size]
    space: str | None = None  # None: the bank's space; another one is refused (a bank labels its own space)

    @property
    def payload_group(self) -> int:
        return self.write_every or 8 * self.batch_size


@dataclass
class LabelSummary:
    run_id: int
    bank: str
    selected: int = 0  # segments matching the selection when the run started
    labeled: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # label -> segments labeled in this run
    left_labeled: int = 0  # already labeled (by a bank or cluster), left alone without --relabel
    kept_manual: int = 0  # manual labels in the selection's scope, left alone
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.labeled / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["segments_per_second"] = round(self.per_second, 1)
        return d


def selection(options: LabelOptions) -> Filter | None:
    """The store filter choosing the segments a run labels."""
    base = [Match("dataset", options.dataset)] if options.dataset else []
    if options.overwrite_manual:
        return Filter.of(*base)
    if options.relabel:
        return Filter.of(*base, must_not=[Match("label_source", MANUAL)])
    return Filter.of(*base, IsNull("label"))


def label_segments(home: Home, options: LabelOptions, progress: bool = True,
                   on_batch: Callable[[int], None] | None = None) -> LabelSummary:
    """Label every selected segment with the bank ``options.bank`` (see the module docstring)."""
    from tqdm import tqdm

    _validate(options)
    space = bank_space(get_bank(home, options.bank))  # NotFoundError with the list of banks
    if options.space is not None and options.space != space:
        raise InputError(f"bank {options.bank!r} lives in space {space!r}, not {options.space!r}: a bank labels "
                         "segments of its own space only (build a bank with `bank build --space "
                         f"{options.space}`)")
    coll = space_collection(space)
    if not home.vectors.has_collection(coll):
        raise InputError(f"{home.root}: no segments stored in space {space!r} yet (run `samsearch ingest`"
                         f"{'' if coll == space_collection('sam') else f', then `samsearch embed --space {space}`'})")
    home.claim_writes()  # refused beside another process holding an embedded store, before any write
    cents = load_centroids(home, options.bank)
    clf = Classifier.from_labels(cents.labels, cents.vectors)
    names = np.array([*clf.classes, UNKNOWN], dtype=object)  # index -1 → unknown

    flt = selection(options)
    with recorded_run(home.db, "label", _run_settings(options)) as run:
        summary = LabelSummary(run_id=run.id, bank=options.bank)
        run.counts = summary.as_dict
        summary.selected = home.vectors.count(coll, flt)
        base = [Match("dataset", options.dataset)] if options.dataset else []
        if not options.relabel and not options.overwrite_manual:
            summary.left_labeled = home.vectors.count(coll, Filter.of(
                *base, must_not=[IsNull("label"), Match("label_source", MANUAL)]))
        if not options.overwrite_manual:
            summary.kept_manual = home.vectors.count(coll, Filter.of(*base, Match("label_source", MANUAL)))

        stage = dict.fromkeys(("read", "classify", "sql_wait", "payload"), 0.0)
        counts: Counter[str] = Counter()
        pending = _PendingPayloads(options.bank, space)
        started = time.perf_counter()
        # SQL runs on one worker thread, overlapping the store reads and payload writes (SQLite and psycopg
        # release the GIL while a statement runs); a batch's payload is written only after its SQL committed.
        writer = _SqlWriter(home, options.bank)
        sql = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-sql")
        waiting: list[Future[None]] = []

        def settle(keep: int = 0) -> None:
            t = time.perf_counter()
            while len(waiting) > keep:
                waiting.pop(0).result()
            stage["sql_wait"] += time.perf_counter() - t

        try:
            with home.vectors.deferred_flush(), tqdm(total=summary.selected, desc="label", unit="seg",
                                                     disable=not progress) as bar:
                t0 = time.perf_counter()
                for batch in home.vectors.scroll_vectors(coll, flt, options.batch_size):
                    ids, x = batch.ids, batch.vectors
                    t1 = time.perf_counter()
                    stage["read"] += t1 - t0
                    cls, score, _ = clf.classify(x, options.k, options.min_score, options.margin)
                    labels = names[cls]
                    stage["classify"] += time.perf_counter() - t1
                    waiting.append(sql.submit(writer.write, ids, labels, score))
                    settle(keep=2)  # bounded queue: at most two batches ahead of SQL
                    pending.add(ids, cls, score)
                    if len(pending) >= options.payload_group:
                        settle()  # SQL before the payload: see "Resumable" above
                        t3 = time.perf_counter()
                        pending.flush(home, names)
                        stage["payload"] += time.perf_counter() - t3
                    counts.update(labels.tolist())
                    summary.labeled += len(ids)
                    bar.update(len(ids))
                    if on_batch is not None:
                        on_batch(summary.labeled)
                    t0 = time.perf_counter()
                settle()
                t3 = time.perf_counter()
                pending.flush(home, names)
                stage["payload"] += time.perf_counter() - t3
        finally:
            for f in waiting:
                f.cancel()  # not started: neither SQL nor payload written; a re-run picks them up
            sql.submit(writer.close).result()  # after the write in flight, on the thread that owns the connection
            sql.shutdown()
            summary.seconds = time.perf_counter() - started
            summary.counts = {k: int(v) for k, v in sorted(counts.items())}
            stage["sql"] = writer.seconds  # worker time, mostly hidden behind the store work
            summary.stage_seconds = {k: round(v, 4) for k, v in stage.items()}
    return summary


def _validate(options: LabelOptions) -> None:
    if options.k < 1:
        raise InputError(f"--k must be at least 1, got {options.k}")
    if options.min_score is not None and not -1.0 <= options.min_score <= 1.0:
        raise InputError(f"--min-score is a cosine similarity in [-1, 1], got {options.min_score}")
    if options.margin is not None and not 0.0 <= options.margin <= 2.0:
        raise InputError(f"--margin is a similarity difference in [0, 2], got {options.margin}")
    if options.batch_size < 1 or options.payload_group < 1:
        raise InputError("batch sizes must be positive")


class _PendingPayloads:
    """Segment ids waiting for their payload, written grouped by (label, rounded score)."""

    def __init__(self, bank: str, space: str) -> None:
        self.bank = bank
        self.space = space  # its collection is written last: a crash before leaves the batch selected
        self.ids: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, ids: list[str], cls: np.ndarray, score: np.ndarray) -> None:
        scale = 10**PAYLOAD_SCORE_DECIMALS
        q = np.rint(score.astype(np.float64) * scale).astype(np.int64) + scale  # 0 .. 2*scale
        self.ids.append(np.asarray(ids, dtype=object))
        self.keys.append((cls.astype(np.int64) + 1) * (2 * scale + 1) + q)
        self.n += len(ids)

    def flush(self, home: Home, names: np.ndarray) -> None:
        if not self.n:
            return
        scale = 10**PAYLOAD_SCORE_DECIMALS
        ids, keys = np.concatenate(self.ids), np.concatenate(self.keys)
        order = np.argsort(keys, kind="stable")
        uniq, first = np.unique(keys[order], return_index=True)
        for key, chunk in zip(uniq, np.split(ids[order], first[1:]), strict=True):
            cls, q = divmod(int(key), 2 * scale + 1)
            payload = {"label": str(names[cls - 1]), "label_score": round((q - scale) / scale, PAYLOAD_SCORE_DECIMALS),
                       "label_source": "bank", "bank": self.bank}
            home.set_segment_payload(chunk.tolist(), payload, last=self.space)
        self.ids, self.keys, self.n = [], [], 0


class _SqlWriter:
    """Bulk label updates: a batch goes into a temporary table, then one UPDATE ... FROM joins it.

    SQLite (≥ 3.33) and Postgres both run ``UPDATE segments SET ... FROM t WHERE segments.id = t.id``; the
    temporary table is filled with executemany on SQLite and COPY on Postgres. One connection, opened by
    the first write on the calling thread, is held for the run (temporary tables belong to a connection);
    every batch commits on its own."""

    TABLE = "samsearch_label_batch"

    def __init__(self, home: Home, bank: str) -> None:
        self.home = home
        self.bank = bank
        self.dialect = home.db.dialect
        self.conn: Connection | None = None
        self.seconds = 0.0
        self.table = Table(self.TABLE, MetaData(), Column("id", String(36), primary_key=True),
                           Column("label", String(200)), Column("score", Float), prefixes=["TEMPORARY"])

    def write(self, ids: Sequence[str], labels: np.ndarray, scores: np.ndarray) -> None:
        t0 = time.perf_counter()
        if self.conn is None:
            self.conn = self.home.db.engine.connect()
            with self.conn.begin():
                self.table.create(self.conn)
        rows = list(zip(ids, labels.tolist(), scores.astype(np.float64).tolist(), strict=True))
        with self.conn.begin():
            self.conn.exec_driver_sql(f"DELETE FROM {self.TABLE}")
            if self.dialect == "postgresql":
                cursor = self.conn.connection.driver_connection.cursor()
                with cursor.copy(f"COPY {self.TABLE} (id, label, score) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                self.conn.exec_driver_sql(f"INSERT INTO {self.TABLE} (id, label, score) VALUES (?, ?, ?)", rows)
            self.conn.execute(
                text(f"UPDATE segments SET label = b.label, label_score = b.score, label_source = 'bank', "
                     f"label_bank = :bank FROM {self.TABLE} AS b WHERE segments.id = b.id"),
                {"bank": self.bank},
            )
        self.seconds += time.perf_counter() - t0
        fault_point("label_after_sql")

    def close(self) -> None:
        if self.conn is None:
            return
        try:
            with self.conn.begin():
                self.table.drop(self.conn, checkfirst=True)
        finally:
            self.conn.close()
            self.conn = None


def _run_settings(options: LabelOptions) -> dict[str, Any]:
    return {
        "bank": options.bank, "dataset": options.dataset, "min_score": options.min_score,
        "margin": options.margin, "k": options.k, "relabel": options.relabel,
        "overwrite_manual": options.overwrite_manual, "space": options.space,
    }


# -- manual labels ------------------------------------------------------------------------------------------------


def set_manual_labels(home: Home, segment_ids: Sequence[str], label: str) -> int:
    """A person's label for segments: SQL and payload get ``label_source = "manual"`` (no score, no bank).
    Bulk labeling never overwrites these unless ``overwrite_manual``. Returns how many segments exist.
    Each id may be a unique prefix (at least 4 hex digits)."""
    if not isinstance(label, str) or not label.strip() or len(label) > 200:
        raise InputError(f"a label must be a non-empty string of at most 200 characters, got {label!r}")
    ids = list(dict.fromkeys(resolve_segment_ids(home.db, segment_ids, f" in {home.root}")))
    home.claim_writes()  # SQL and payloads change together or not at all
    with home.db.session() as s:
        n = s.execute(update(Segment).where(Segment.id.in_(ids)).values(
            label=label, label_score=None, label_source=MANUAL, label_bank=None)).rowcount
    home.set_segment_payload(ids, {"label": label, "label_score": None, "label_source": MANUAL, "bank": None})
    return int(n)


def clear_manual_labels(home: Home, segment_ids: Sequence[str]) -> int:
    """Undo a person's labels: of ``segment_ids``, those labeled by hand (``label_source = "manual"``) become
    unlabeled again in SQL and payload (so the next ``label`` run may label them); labels written by a
    bank or a named cluster are left alone. Returns how many were cleared."""
    ids = list(dict.fromkeys(resolve_segment_ids(home.db, segment_ids, f" in {home.root}")))
    if not ids:
        return 0
    home.claim_writes()
    with home.db.session() as s:
        # the ids actually cleared, so that exactly those payloads change (SQL is the source of truth)
        cleared = list(s.execute(select(Segment.id).where(Segment.id.in_(ids), Segment.label_source == MANUAL))
                       .scalars())
        if cleared:
            s.execute(update(Segment).where(Segment.id.in_(cleared)).values(
                label=None, label_score=None, label_source=None, label_bank=None))
    home.set_segment_payload(cleared, {"label": None, "label_score": None, "label_source": None, "bank": None})
    return len(cleared)

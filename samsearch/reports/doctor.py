"""``samsearch doctor``: check that SQL and the vector store agree, and repair what can be repaired
without losing data.

Checks (each streamed in batches, so it scales with the store, not with memory):

* **missing vectors**: segment rows whose id has no point in the vector store (paged over SQL by id,
  looked up with one ``retrieve`` per page). Repair: the image is queued again with the settings of
  the run that stored it (its ingestion marker is removed, its segment rows stay, so labels and
  clusters survive: the redo updates the rows in place and copies their labels into the payloads).
* **orphan vectors**: points whose id has no segment row (one ``scroll`` over the collection, two SQL
  lookups per page: the images' status first, then the segment ids, so an image committed in between
  is seen as in flight, never as orphaned). Points of an image being processed now (``running``) are
  in flight: counted, not touched. The rest (leftovers of an interrupted attempt, points of deleted
  segments or images) are deleted on repair; a queued image's redo writes its points again. Orphans
  are counted first and deleted in a second pass, and only when the evidence cannot mean "this is the
  wrong database" (see :func:`mass_delete_reason`); otherwise nothing is deleted unless the caller
  passes ``allow_mass_delete``.
* **expired leases**: images ``running`` under a lease that ran out (a dead worker). Repair: back to
  ``pending``. Images ``running`` without a lease come from a plain ``ingest`` that is running or was
  interrupted: they are reported (re-run that ingest), not changed.
* **payload contents**: every payload field a filter reads (``dataset``, ``image_id``, ``image_hash``,
  ``settings_hash``, ``source``, ``area``, ``label``, ``label_score``, ``label_source``, ``bank``,
  ``cluster``) against what SQL says (``image_datasets``, ``images``, ``segments``); on a sample of
  :data:`SAMPLE` segments by default (runs of consecutive ids from random starting points; every segment
  when there are no more than that), every segment with ``full``. Segments of images being processed now
  are skipped. Repair: the payloads are rewritten from SQL, the source of truth (this also clears the
  cluster ids a killed ``cluster`` run left in payloads that SQL does not have).
* **model mismatch**: segment rows, queued runs or the vector collection that disagree with the home's
  embedding space. Not repairable automatically (it needs a decision: another home, or a re-ingest).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from samsearch.bank.classify import PAYLOAD_SCORE_DECIMALS
from samsearch.db import Image, ImageStatus, Ingestion, Run, Segment
from samsearch.db.memberships import datasets_of
from samsearch.home import SEGMENTS, Home
from samsearch.ingest.options import LABEL_PAYLOAD_KEYS
from samsearch.jobs.work_queue import release_expired
from samsearch.vectors import VectorStoreError
from samsearch.vectors.server import safe_url

PAGE = 1000
# Above either bound, orphan vectors look less like leftovers and more like a SQL side that is not this
# store's (SAMSEARCH_DATABASE_URL pointing elsewhere, a restored backup): repair refuses to delete them.
MASS_DELETE_FRACTION = 0.5
MASS_DELETE_COUNT = 1000
SAMPLE = 2000  # segments whose payloads a default (not --full) run compares
SAMPLE_RUN = 100  # consecutive ids read from each random starting point of the sample
# Payload fields filters read, and the SQL value each must equal (a missing key equals None).
SCORE_TOLERANCE = 0.5 * 10 ** -PAYLOAD_SCORE_DECIMALS + 1e-6
CONTENT_FIELDS = ("image_id", "image_hash", "dataset", "settings_hash", "source", "area",
                  *LABEL_PAYLOAD_KEYS.values())


@dataclass
class DoctorReport:
    database: str
    vector_store: str
    segments: int = 0
    vectors: int = 0
    missing_vectors: int = 0  # segment rows without a vector
    images_missing_vectors: int = 0
    orphan_vectors: int = 0  # vectors without a segment row, of images not being processed
    in_flight_vectors: int = 0  # vectors of images being processed now (their rows come with the commit)
    expired_leases: int = 0
    running_without_lease: int = 0
    model_problems: list[str] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)
    not_repaired: list[str] = field(default_factory=list)
    images: int = 0
    refused_delete: str | None = None  # why --repair kept the orphan vectors
    full: bool = False  # payload contents compared for every segment (else a sample)
    payloads_checked: int = 0
    payload_mismatches: int = 0  # segments whose payload disagrees with SQL on a filtered field
    mismatched_fields: dict[str, int] = field(default_factory=dict)  # field -> segments
    mismatch_examples: list[str] = field(default_factory=list)
    spaces: dict[str, Any] = field(default_factory=dict)  # extra embedding spaces (reports.space_check)
    space_problems: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return (self.missing_vectors + self.orphan_vectors + self.expired_leases + len(self.model_problems)
               + self.payload_mismatches + len(self.space_problems))

    @property
    def healthy_after_repair(self) -> bool:
        """Everything found was repaired (or nothing was found)."""
        if self.problems == 0:
            return True
        if not self.repaired:
            return False
        fixed = (self.repaired.get("images_requeued", 0) >= self.images_missing_vectors
                 and self.repaired.get("orphan_vectors_deleted", 0) >= self.orphan_vectors
                 and self.repaired.get("leases_released", 0) >= self.expired_leases
                 and self.repaired.get("payloads_rewritten", 0) >= self.payload_mismatches)
        return fixed and not self.model_problems and not self.not_repaired and not self.space_problems

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["problems"] = self.problems
        d["healthy"] = self.healthy_after_repair
        return d


def diagnose(home: Home, repair: bool = False, progress: bool = False,
             allow_mass_delete: bool = False, full: bool = False) -> DoctorReport:
    """Compare SQL and the vector store of ``home``; with ``repair``, fix what can be fixed safely.
    Payload contents are compared on a sample, or for every segment with ``full``.

    Orphan vectors are deleted only when :func:`mass_delete_reason` finds nothing suspicious, or when
    ``allow_mass_delete`` says the caller has checked that this SQL database belongs to this store.
    """
    from tqdm import tqdm

    if repair:
        home.claim_writes()  # repairs write both stores: refused beside another process holding an embedded one
    report = DoctorReport(home.db.safe_url, safe_url(home.qdrant_url) if home.qdrant_url else "qdrant-edge",
                          full=full)
    _check_model(home, report)
    _check_leases(home, report, repair)
    has_vectors = home.vectors.has_collection(SEGMENTS)
    with home.db.session() as s:
        report.segments = int(s.scalar(select(func.count()).select_from(Segment)) or 0)
        report.images = int(s.scalar(select(func.count()).select_from(Image)) or 0)
    report.vectors = home.vectors.count(SEGMENTS) if has_vectors else 0
    bar = tqdm(total=report.segments + report.vectors, desc="doctor", unit="id", disable=not progress)
    try:
        _check_missing(home, report, repair, has_vectors, bar)
        if has_vectors:
            _check_orphans(home, report, False, bar)  # count only; delete below if it is safe
            _check_contents(home, report, repair, full)
    finally:
        bar.close()
    if repair and report.orphan_vectors:
        reason = mass_delete_reason(report)
        if reason is not None and not allow_mass_delete:
            report.refused_delete = reason
            report.not_repaired.append(
                f"kept {report.orphan_vectors} orphan vectors: {reason}; check SAMSEARCH_DATABASE_URL and "
                "--home, and re-run with --allow-mass-delete only if this database really is this store's")
        else:
            report.orphan_vectors = report.in_flight_vectors = 0  # the deleting pass counts again
            _check_orphans(home, report, True, _NoBar())
    from samsearch.reports.space_check import check_spaces

    for name, health in check_spaces(home, repair).items():
        report.spaces[name] = health.as_dict()
        report.space_problems.extend(health.problems)
    return report


def mass_delete_reason(report: DoctorReport) -> str | None:
    """Why deleting ``report``'s orphan vectors could mean wiping a store against the wrong database."""
    if report.segments == 0 and report.images == 0:
        return (f"the SQL database {report.database} has no images or segments but the vector store holds "
                f"{report.vectors} vectors (is it the wrong database?)")
    if report.model_problems:
        return "SQL and the vector store disagree on the embedding model"
    if report.orphan_vectors > MASS_DELETE_COUNT:
        return f"{report.orphan_vectors} orphans is more than {MASS_DELETE_COUNT}"
    if report.orphan_vectors > MASS_DELETE_FRACTION * report.vectors:
        return (f"{report.orphan_vectors} of {report.vectors} vectors would be deleted "
                f"(more than {MASS_DELETE_FRACTION:.0%})")
    return None


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _check_model(home: Home, report: DoctorReport) -> None:
    space = home.embedding_space()
    with home.db.session() as s:
        keys = dict(s.execute(select(Segment.model_key, func.count()).group_by(Segment.model_key)).all())
        queued_runs = set(s.scalars(select(Image.run_id).where(
            Image.status.in_([ImageStatus.pending.value, ImageStatus.running.value])).distinct()))
        run_keys = dict(s.execute(select(Run.id, Run.settings).where(Run.id.in_(queued_runs))).all())
    if space is None:
        if keys:
            report.model_problems.append(f"{sum(keys.values())} segments but no embedding space is recorded")
        return
    expected = space.model_key
    for key, n in sorted(keys.items()):
        if key != expected:
            report.model_problems.append(f"{n} segments were made by {key}, not by the home's {expected}")
    for run_id, settings in sorted(run_keys.items()):
        key = (settings or {}).get("model_key")
        if key is not None and key != expected:
            report.model_problems.append(f"queued run {run_id} uses {key}, not the home's {expected}")
    try:
        if home.vectors.has_collection(SEGMENTS):
            home.vectors.ensure_collection(SEGMENTS, space.dim)
    except VectorStoreError as exc:
        report.model_problems.append(str(exc))


def _check_leases(home: Home, report: DoctorReport, repair: bool) -> None:
    from samsearch.jobs.work_queue import queue_status

    status = queue_status(home)
    report.expired_leases = status["expired_leases"]
    report.running_without_lease = status["running_without_lease"]
    if repair and report.expired_leases:
        report.repaired["leases_released"] = release_expired(home)


def _check_missing(home: Home, report: DoctorReport, repair: bool, has_vectors: bool, bar: Any) -> None:
    affected: dict[tuple[int, str], int] = {}
    last = ""
    while True:
        with home.db.session() as s:
            page = s.execute(select(Segment.id, Segment.image_id, Segment.settings_hash)
                             .where(Segment.id > last).order_by(Segment.id).limit(PAGE)).all()
        if not page:
            break
        last = page[-1][0]
        found = {r.id for r in home.vectors.retrieve(SEGMENTS, [p[0] for p in page])} if has_vectors else set()
        for sid, image_id, settings_hash in page:
            if sid not in found:
                report.missing_vectors += 1
                affected[(image_id, settings_hash)] = affected.get((image_id, settings_hash), 0) + 1
        bar.update(len(page))
    report.images_missing_vectors = len({image_id for image_id, _ in affected})
    if repair and affected:
        report.repaired["images_requeued"] = _requeue(home, affected, report)


def _requeue(home: Home, affected: dict[tuple[int, str], int], report: DoctorReport) -> int:
    """Queue each image again with the run that stored it; segment rows stay (labels survive)."""
    requeued: set[int] = set()
    with home.db.session() as s:
        for (image_id, settings_hash), n in sorted(affected.items()):
            if image_id in requeued:
                continue  # one settings at a time; the next doctor run catches the other
            img = s.get(Image, image_id, with_for_update=True)
            if img is None or img.status == ImageStatus.running.value:
                continue  # gone, or being processed right now
            marker = s.execute(select(Ingestion).where(Ingestion.image_id == image_id,
                                                       Ingestion.settings_hash == settings_hash)).scalar()
            run_id = marker.run_id if marker is not None else img.run_id
            settings = s.scalar(select(Run.settings).where(Run.id == run_id)) if run_id is not None else None
            if not settings or settings.get("settings_hash") != settings_hash:
                report.not_repaired.append(f"{img.path}: {n} segments have no vector and the settings that made "
                                           "them are gone; ingest the file again")
                continue
            if marker is not None:
                s.delete(marker)
            img.status, img.run_id, img.attempts = ImageStatus.pending.value, run_id, 0
            img.lease_owner = img.lease_expires_at = None
            img.error = f"re-queued by samsearch doctor: {n} segments had no vector"
            requeued.add(image_id)
    return len(requeued)


def _check_orphans(home: Home, report: DoctorReport, repair: bool, bar: Any) -> None:
    deleted = 0
    for batch in home.vectors.scroll(SEGMENTS, batch_size=PAGE):
        image_ids = {int(r.payload["image_id"]) for r in batch if r.payload.get("image_id") is not None}
        with home.db.session() as s:  # status first: a commit after this read shows up as known rows below
            status = dict(s.execute(select(Image.id, Image.status).where(Image.id.in_(image_ids))).all())
        with home.db.session() as s:
            known = set(s.scalars(select(Segment.id).where(Segment.id.in_([r.id for r in batch]))))
        doomed = []
        for r in batch:
            if r.id in known:
                continue
            if status.get(r.payload.get("image_id")) == ImageStatus.running.value:
                report.in_flight_vectors += 1
            else:
                report.orphan_vectors += 1
                doomed.append(r.id)
        if doomed and repair:
            home.vectors.delete(SEGMENTS, doomed)
            deleted += len(doomed)
        bar.update(len(batch))
    if repair and report.orphan_vectors:
        report.repaired["orphan_vectors_deleted"] = deleted



# -- payload contents ------------------------------------------------------------------------------


@dataclass
class PayloadMismatch:
    segment_id: str
    fields: list[str]  # the fields that disagree
    expected: dict[str, Any]  # what SQL says, every field of CONTENT_FIELDS
    payload: dict[str, Any]  # what the store holds


def _same(field_name: str, want: Any, got: Any) -> bool:
    if field_name == "dataset" and isinstance(got, str):
        got = [got]  # payloads written before datasets became lists
    if field_name == "label_score" and isinstance(want, float) and isinstance(got, (int, float)):
        return abs(want - got) <= SCORE_TOLERANCE  # labeling writes it rounded (PAYLOAD_SCORE_DECIMALS)
    if isinstance(want, float) and isinstance(got, (int, float)):
        return math.isclose(want, got, rel_tol=1e-6, abs_tol=1e-9)
    return want == got


def _segment_pages(home: Home, full: bool, sample: int) -> Iterator[list[Any]]:
    """Pages of (segment columns, image hash, image status, image dataset) rows: all of them by id, or
    a sample (every row when there are no more than ``sample``)."""
    cols = (Segment.id, Segment.image_id, Segment.settings_hash, Segment.source, Segment.area,
            *(getattr(Segment, c) for c in LABEL_PAYLOAD_KEYS), Image.content_hash, Image.status, Image.dataset)
    base = select(*cols).join(Image, Image.id == Segment.image_id)
    if not full:
        with home.db.session() as s:
            total = int(s.scalar(select(func.count()).select_from(Segment)) or 0)
        if total > sample:
            seen: set[str] = set()
            for _ in range(math.ceil(sample / SAMPLE_RUN)):
                start = str(uuid.uuid4())  # segment ids are UUIDs: a uniform random point among them
                with home.db.session() as s:
                    rows = s.execute(base.where(Segment.id >= start).order_by(Segment.id).limit(SAMPLE_RUN)).all()
                    if len(rows) < SAMPLE_RUN:  # past the last id: wrap around to the first ones
                        rows += s.execute(base.where(Segment.id < start).order_by(Segment.id)
                                          .limit(SAMPLE_RUN - len(rows))).all()
                rows = [r for r in rows if r.id not in seen]
                seen.update(r.id for r in rows)
                if rows:
                    yield rows
            return
    last = ""
    while True:
        with home.db.session() as s:
            rows = s.execute(base.where(Segment.id > last).order_by(Segment.id).limit(PAGE)).all()
        if not rows:
            return
        last = rows[-1].id
        yield rows


def compare_payloads(home: Home, full: bool = True, sample: int = SAMPLE) -> tuple[int, list[PayloadMismatch]]:
    """(segments compared, those whose payload disagrees with SQL on a field a filter reads). Segments of
    images being processed now and segments without a vector (see the missing-vectors check) are skipped."""
    checked, found = 0, []
    for rows in _segment_pages(home, full, sample):
        rows = [r for r in rows if r.status != ImageStatus.running.value]
        with home.db.session() as s:
            names = datasets_of(s, {r.image_id for r in rows})
        payloads = {r.id: r.payload for r in home.vectors.retrieve(SEGMENTS, [r.id for r in rows])}
        for r in rows:
            if r.id not in payloads:
                continue
            checked += 1
            expected = {"image_id": r.image_id, "image_hash": r.content_hash, "settings_hash": r.settings_hash,
                        "source": r.source, "area": r.area, "dataset": names.get(r.image_id) or [r.dataset],
                        **{key: getattr(r, col) for col, key in LABEL_PAYLOAD_KEYS.items()}}
            got = payloads[r.id]
            bad = [f for f in CONTENT_FIELDS if not _same(f, expected[f], got.get(f))]
            if bad:
                found.append(PayloadMismatch(r.id, bad, expected, got))
    return checked, found


def _check_contents(home: Home, report: DoctorReport, repair: bool, full: bool) -> None:
    report.payloads_checked, found = compare_payloads(home, full)
    report.payload_mismatches = len(found)
    for m in found:
        for f in m.fields:
            report.mismatched_fields[f] = report.mismatched_fields.get(f, 0) + 1
    report.mismatch_examples = [
        f"{m.segment_id}: " + ", ".join(f"{f} is {m.payload.get(f)!r}, SQL says {m.expected[f]!r}" for f in m.fields)
        for m in found[:5]]
    if repair and found:
        report.repaired["payloads_rewritten"] = rewrite_payloads(home, found)


def rewrite_payloads(home: Home, mismatches: list[PayloadMismatch]) -> int:
    """Write SQL's values of every filtered field into the payloads (one set_payload per distinct value
    set); a field SQL has no value for is written as null, which no Match filter selects."""
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for m in mismatches:
        payload = dict(m.expected)
        if isinstance(payload.get("label_score"), float):  # as labeling writes it: few distinct payloads
            payload["label_score"] = round(payload["label_score"], PAYLOAD_SCORE_DECIMALS)
        key = repr(sorted(payload.items()))
        groups.setdefault(key, ([], payload))[0].append(m.segment_id)
    home.set_segment_payloads([(ids, payload) for ids, payload in groups.values()])
    return len(mismatches)

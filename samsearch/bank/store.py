"""Memory banks: per-class KMeans centroids of instance embeddings (the seeds' training-free classifier).

A bank is built from a labeled detection dataset (:func:`build_bank`: SAM prompted with each box, or the
given mask, embedded exactly as ingest embeds a segment), or from any precomputed instance vectors
(:func:`create_bank`, which ``bank build --from-clusters`` also uses). Each class's instances are reduced to
at most ``per_class`` centroids by KMeans (seeded); a class with ``per_class`` or fewer distinct
instances keeps its instances as centroids. Centroids are L2-normalised, so cosine similarity is a dot
product, as everywhere else.

Storage contract (``search --label NAME --bank BANK`` and ``bank build --from-clusters`` rely on it):

* SQL: a ``banks`` row (``name``, ``model_key``, ``settings`` with ``embedding_space``, ``per_class``,
  ``seed`` and how it was built), one ``bank_classes`` row per class (``n_instances``, ``n_centroids``),
  and ``bank_vectors`` rows: ``kind="instance"`` for every instance embedding (``source`` says where it
  came from) and ``kind="centroid"`` for every centroid (``source = {"members": n}``, ``point_id`` = its
  id in the vector store). ``vector`` is float32 little-endian bytes, ``np.asarray(v, "<f4").tobytes()``.
* Vectors: the centroids also live in their own collection ``bank.<NAME>`` with payload
  ``{"label": ..., "bank": NAME}``. Bank names are 1-100 characters from letters, digits, ``_``, ``-``
  and ``.``, starting with a letter or digit, so ``bank.<NAME>`` is a valid Qdrant server collection
  name (those forbid ``/ \\ : * ? " < > |``, NUL and control characters) and a valid Qdrant Edge shard
  folder (``[A-Za-z0-9_][A-Za-z0-9_.-]*``).

Writes go vectors first, SQL second (one transaction): a crash in between leaves a collection without a
``banks`` row, which the next build of that name replaces; SQL is the truth, and readers check that the
collection holds exactly the centroids SQL lists (:func:`load_centroids`).

The bank's embedding space is the home's: :func:`build_bank` claims the model's space for the home (a
model other than the one that made the home's vectors is refused), and :func:`create_bank` requires the
vectors to have the home's dimension and records the space in ``settings``.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, insert, select

from samsearch.db import Bank, BankClass, BankVector
from samsearch.errors import InputError, NotFoundError, SamsearchError
from samsearch.home import SAM_SPACE, Home
from samsearch.identity import EmbeddingSpace
from samsearch.vectors import Filter, Match

if TYPE_CHECKING:
    pass

BANK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
COLLECTION_PREFIX = "bank."
UNKNOWN = "unknown"  # what labeling writes below the thresholds: no class may be called that
BANK_NAMESPACE = uuid.UUID("0d7c43a4-9a6e-4b8e-8f53-1c7f4a4f2b60")
KMEANS_N_INIT = 4


class BankIncompleteError(SamsearchError):
    """A bank's vectors and its SQL rows disagree (an interrupted build)."""


def bank_collection(name: str) -> str:
    """The vector-store collection holding bank ``name``'s centroids."""
    return COLLECTION_PREFIX + name


def validate_bank_name(name: str) -> str:
    if not isinstance(name, str) or not BANK_NAME_RE.match(name):
        raise InputError(
            f"invalid bank name {name!r}: use 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


def bank_space(info: BankInfo) -> str:
    """The embedding space a bank lives in (``sam`` for banks made before spaces existed)."""
    return str(info.settings.get("space") or SAM_SPACE)


def to_bytes(v: np.ndarray) -> bytes:
    return np.asarray(v, "<f4").tobytes()


def from_bytes(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


# -- summaries -------------------------------------------------------------------------------------------


@dataclass
class BankClassInfo:
    label: str
    n_instances: int
    n_centroids: int


@dataclass
class BankInfo:
    id: int
    name: str
    model_key: str
    settings: dict[str, Any]
    created_at: datetime | None
    classes: list[BankClassInfo] = field(default_factory=list)

    @property
    def collection(self) -> str:
        return bank_collection(self.name)

    @property
    def n_instances(self) -> int:
        return sum(c.n_instances for c in self.classes)

    @property
    def n_centroids(self) -> int:
        return sum(c.n_centroids for c in self.classes)

    @property
    def source(self) -> dict[str, Any]:
        """Where the instances came from: ``{"kind": "dataset", "format", "annotations", "images", "prompts"}``,
        ``{"kind": "clusters", "run", "cluster_names": {cluster id: class}}`` (``bank build --from-clusters``;
        ``cluster_names`` is None for banks made before it was recorded), or ``{"kind": "vectors"}``
        (:func:`create_bank` with given vectors); ``rebuilt_from`` names the bank a rebuild started from."""
        built = self.settings.get("built_from") or {}
        run = built.get("clusters") or self.settings.get("from_clusters")
        if run:
            out: dict[str, Any] = {"kind": "clusters", "run": run, "cluster_names": built.get("cluster_names")}
        elif built:
            out = {"kind": "dataset", "format": built.get("format"), "annotations": built.get("annotations"),
                   "images": built.get("images"), "prompts": self.settings.get("prompts")}
        else:
            out = {"kind": "vectors"}
        if self.settings.get("rebuilt_from"):
            out["rebuilt_from"] = self.settings["rebuilt_from"]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model_key": self.model_key, "collection": self.collection,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "per_class": self.settings.get("per_class"), "n_classes": len(self.classes),
            "n_instances": self.n_instances, "n_centroids": self.n_centroids, "source": self.source,
            "classes": [c.__dict__ for c in self.classes], "settings": self.settings,
        }


def _info(bank: Bank, classes: Sequence[BankClass]) -> BankInfo:
    infos = [BankClassInfo(c.label, c.n_instances, c.n_centroids) for c in sorted(classes, key=lambda c: c.label)]
    return BankInfo(bank.id, bank.name, bank.model_key, dict(bank.settings or {}), bank.created_at, infos)


# -- centroids from instances --------------------------------------------------------------------------------


def class_centroids(x: np.ndarray, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, member counts) for one class's unit instance rows: KMeans with ``per_class`` clusters
    (seeded, :data:`KMEANS_N_INIT` restarts), or the distinct instances themselves when there are no more
    than ``per_class`` of them. Centroids come back L2-normalised."""
    distinct, counts = np.unique(x, axis=0, return_counts=True)
    if len(distinct) <= per_class:
        return distinct.astype(np.float32), counts
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=per_class, n_init=KMEANS_N_INIT, random_state=seed).fit(x)
    centres = km.cluster_centers_.astype(np.float32)
    members = np.bincount(km.labels_, minlength=per_class)
    keep = members > 0
    centres, members = centres[keep], members[keep]
    norms = np.linalg.norm(centres, axis=1, keepdims=True)
    return centres / np.where(norms > 0, norms, 1), members


# Above this mean cosine between the class centroids of a new bank, its classes look alike (``bank build``
# warns). Measured on the synthetic shapes with tiny-random (docs/BENCHMARKS.md): --prompts masks 0.06-0.11
# (labels 100 % right), --prompts boxes 0.82-0.97 (8 % right: the box masks cover 20-50 % of the image).
NEAR_IDENTICAL_COSINE = 0.7


def class_similarity(instances: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """How alike a bank's classes are: the mean and the largest cosine between the centroids (the normalised
    mean of each class's unit instances) of two different classes, the closest pair, and whether the mean is
    above :data:`NEAR_IDENTICAL_COSINE`. None with fewer than two classes."""
    labels = sorted(instances)
    if len(labels) < 2:
        return None
    means = []
    for label in labels:
        x = np.asarray(instances[label], dtype=np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        m = x.mean(axis=0)
        means.append(m / max(float(np.linalg.norm(m)), 1e-12))
    c = np.stack(means)
    sims = c @ c.T
    off = ~np.eye(len(labels), dtype=bool)
    i, j = np.unravel_index(np.where(off, sims, -np.inf).argmax(), sims.shape)
    mean = float(sims[off].mean())
    return {"mean_cosine": round(mean, 4), "max_cosine": round(float(sims[i, j]), 4),
            "closest": [labels[i], labels[j]], "threshold": NEAR_IDENTICAL_COSINE,
            "near_identical": mean > NEAR_IDENTICAL_COSINE}


def create_bank(
    home: Home,
    name: str,
    instances: Mapping[str, np.ndarray],
    per_class: int = 8,
    settings: dict[str, Any] | None = None,
    sources: Mapping[str, list[dict[str, Any]]] | None = None,
    seed: int = 0,
    replace: bool = False,
    space_name: str = SAM_SPACE,
) -> BankInfo:
    """Store a bank made from precomputed instance vectors: ``instances[label]`` is an ``(n, dim)`` array in
    the home's embedding space ``space_name`` (rows are L2-normalised here). ``sources[label]`` (optional)
    gives one JSON dict per row, saying where the instance came from. ``replace`` overwrites a bank of the same name
    (otherwise that is an error). Returns the stored bank's summary."""
    validate_bank_name(name)
    if per_class < 1:
        raise InputError(f"--per-class must be at least 1, got {per_class}")
    space = home.spaces().get(space_name)
    if space is None:
        raise InputError(f"{home.root}: the home holds no vectors in space {space_name!r} yet, so it has no "
                         "embedding space for a bank (ingest images or build the bank from a dataset first)")
    rows = _checked_instances(instances, sources, space.dim)
    home.claim_writes()

    with home.db.session() as s:
        existing = s.execute(select(Bank).where(Bank.name == name)).scalar()
    if existing is not None and not replace:
        raise InputError(f"bank {name!r} already exists (delete it with `samsearch bank delete {name}`, "
                         "or pass --replace)")

    # KMeans per class, then the centroid points with deterministic ids.
    centroid_rows: list[tuple[str, np.ndarray, int, str]] = []
    for label in sorted(rows):
        centres, members = class_centroids(rows[label][0], per_class, seed)
        for j, (c, m) in enumerate(zip(centres, members, strict=True)):
            pid = str(uuid.uuid5(BANK_NAMESPACE, f"{name}/{label}/{j}"))
            centroid_rows.append((label, c, int(m), pid))

    # Vectors first (a fresh collection), then every SQL row in one transaction.
    coll = bank_collection(name)
    home.vectors.drop_collection(coll)
    home.vectors.ensure_collection(coll, space.dim)
    home.vectors.upsert(coll, [r[3] for r in centroid_rows], np.stack([r[1] for r in centroid_rows]),
                        [{"label": r[0], "bank": name} for r in centroid_rows])

    settings = {**(settings or {}), "per_class": per_class, "seed": seed, "embedding_space": space.as_dict()}
    if space_name != SAM_SPACE:
        settings["space"] = space_name  # banks without it live in ``sam`` (bank_space)
    with home.db.session() as s:
        if replace:
            s.execute(delete(Bank).where(Bank.name == name))
            s.flush()
        bank = Bank(name=name, model_key=space.model_key, settings=settings)
        s.add(bank)
        s.flush()
        n_centroids: dict[str, int] = defaultdict(int)
        for label, *_ in centroid_rows:
            n_centroids[label] += 1
        s.execute(insert(BankClass), [
            {"bank_id": bank.id, "label": label, "n_instances": len(rows[label][0]), "n_centroids": n_centroids[label]}
            for label in sorted(rows)
        ])
        vector_rows = [
            {"bank_id": bank.id, "kind": "centroid", "label": label, "vector": to_bytes(c), "point_id": pid,
             "source": {"members": m}}
            for label, c, m, pid in centroid_rows
        ]
        for label in sorted(rows):
            x, src = rows[label]
            vector_rows.extend(
                {"bank_id": bank.id, "kind": "instance", "label": label, "vector": to_bytes(v), "point_id": None,
                 "source": src[i] if src is not None else None}
                for i, v in enumerate(x)
            )
        for start in range(0, len(vector_rows), 5000):
            s.execute(insert(BankVector), vector_rows[start:start + 5000])
    return get_bank(home, name)


def _checked_instances(
    instances: Mapping[str, np.ndarray], sources: Mapping[str, list[dict[str, Any]]] | None, dim: int
) -> dict[str, tuple[np.ndarray, list[dict[str, Any]] | None]]:
    if not instances:
        raise InputError("a bank needs at least one class with at least one instance")
    out: dict[str, tuple[np.ndarray, list[dict[str, Any]] | None]] = {}
    for label, vectors in instances.items():
        if not isinstance(label, str) or not label.strip() or len(label) > 200:
            raise InputError(f"class names must be non-empty strings of at most 200 characters, got {label!r}")
        if label == UNKNOWN:
            raise InputError(f"class name {UNKNOWN!r} is reserved for segments labeling cannot place")
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != dim:
            raise InputError(f"class {label!r}: expected an (n ≥ 1, {dim}) array of vectors in the home's "
                             f"embedding space, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise InputError(f"class {label!r}: vectors contain NaN or infinite values")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError(f"class {label!r}: a vector is all zeros")
        src = None
        if sources is not None and label in sources:
            src = list(sources[label])
            if len(src) != len(x):
                raise InputError(f"class {label!r}: {len(x)} vectors but {len(src)} sources")
        out[label] = (x / norms, src)
    return out


# -- reading, listing, deleting ------------------------------------------------------------------------------


def list_banks(home: Home) -> list[BankInfo]:
    with home.db.session() as s:
        banks = s.execute(select(Bank).order_by(Bank.name)).scalars().all()
        classes = s.execute(select(BankClass)).scalars().all()
    by_bank: dict[int, list[BankClass]] = defaultdict(list)
    for c in classes:
        by_bank[c.bank_id].append(c)
    return [_info(b, by_bank[b.id]) for b in banks]


def get_bank(home: Home, name: str) -> BankInfo:
    with home.db.session() as s:
        bank = s.execute(select(Bank).where(Bank.name == name)).scalar()
        if bank is None:
            known = s.execute(select(Bank.name).order_by(Bank.name)).scalars().all()
            hint = (f"; banks here: {', '.join(known)}" if known
                    else "; this home has no banks (see `samsearch bank build`)")
            raise NotFoundError(f"no bank named {name!r}{hint}")
        classes = s.execute(select(BankClass).where(BankClass.bank_id == bank.id)).scalars().all()
        return _info(bank, classes)


def delete_bank(home: Home, name: str) -> BankInfo:
    """Remove the bank's SQL rows (one transaction), then its collection."""
    info = get_bank(home, name)
    home.claim_writes()
    with home.db.session() as s:
        s.execute(delete(Bank).where(Bank.id == info.id))
    home.vectors.drop_collection(bank_collection(name))
    return info


@dataclass
class BankVectors:
    labels: list[str]  # one per row
    vectors: np.ndarray  # (n, dim) float32, unit rows
    point_ids: list[str | None]
    sources: list[dict[str, Any] | None]


def load_bank_vectors(home: Home, name: str, kind: str) -> BankVectors:
    """The bank's ``kind`` ("instance" or "centroid") rows, ordered by label then insertion."""
    info = get_bank(home, name)
    with home.db.session() as s:
        rows = s.execute(
            select(BankVector.label, BankVector.vector, BankVector.point_id, BankVector.source)
            .where(BankVector.bank_id == info.id, BankVector.kind == kind)
            .order_by(BankVector.label, BankVector.id)
        ).all()
    dim = (info.settings.get("embedding_space") or {}).get("dim")
    x = np.stack([from_bytes(r.vector) for r in rows]) if rows else np.zeros((0, dim or 0), np.float32)
    return BankVectors([r.label for r in rows], x, [r.point_id for r in rows], [r.source for r in rows])


def load_centroids(home: Home, name: str, label: str | None = None) -> BankVectors:
    """The bank's centroids from SQL (only ``label``'s when given), after checking the bank was made in this
    home's embedding space and that its collection holds exactly the centroids SQL lists (else
    :class:`BankIncompleteError`). Labeling and ``search --label --bank`` both read a bank through here."""
    info = get_bank(home, name)
    space_name = bank_space(info)
    space = home.spaces().get(space_name)
    recorded = info.settings.get("embedding_space")
    if space is None or recorded != space.as_dict():
        made = EmbeddingSpace.from_dict(recorded).describe() if recorded else "an unknown model"
        here = space.describe() if space else "no vectors"
        where = "this home" if space_name == SAM_SPACE else f"this home's space {space_name!r}"
        raise InputError(f"bank {name!r} was made with {made}, but {where} holds {here}; "
                         "rebuild the bank with the home's model")
    cents = load_bank_vectors(home, name, "centroid")
    coll = bank_collection(name)
    stored = home.vectors.count(coll) if home.vectors.has_collection(coll) else 0
    if stored != len(cents.labels) or (stored and home.vectors.count(
            coll, Filter.of(Match("bank", name))) != stored):
        raise BankIncompleteError(
            f"bank {name!r} is incomplete: SQL lists {len(cents.labels)} centroids, collection {coll!r} holds "
            f"{stored} (an interrupted build?); rebuild it with `samsearch bank rebuild {name}`")
    if label is None:
        return cents
    rows = [i for i, lab in enumerate(cents.labels) if lab == label]
    if not rows:
        raise NotFoundError(f"memory bank {name!r} has no class {label!r} "
                            f"(classes: {', '.join(sorted(set(cents.labels)))})")
    return BankVectors([label] * len(rows), cents.vectors[rows], [cents.point_ids[i] for i in rows],
                       [cents.sources[i] for i in rows])


def rebuild_bank(home: Home, name: str, per_class: int, new_name: str | None = None,
                 seed: int | None = None) -> BankInfo:
    """Re-run KMeans with another ``per_class`` on the stored instance embeddings (no SAM), replacing the
    bank, or writing a new bank ``new_name`` next to it."""
    info = get_bank(home, name)
    inst = load_bank_vectors(home, name, "instance")
    if not inst.labels:
        raise InputError(f"bank {name!r} stores no instance embeddings to rebuild from")
    instances: dict[str, list[np.ndarray]] = defaultdict(list)
    sources: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for label, v, src in zip(inst.labels, inst.vectors, inst.sources, strict=True):
        instances[label].append(v)
        sources[label].append(src or {})
    settings = {k: v for k, v in info.settings.items()
                if k not in ("per_class", "seed", "embedding_space", "space")}
    settings["rebuilt_from"] = name
    return create_bank(
        home, new_name or name, {k: np.stack(v) for k, v in instances.items()}, per_class=per_class,
        settings=settings, sources=sources, seed=info.settings.get("seed", 0) if seed is None else seed,
        replace=new_name is None, space_name=bank_space(info),
    )

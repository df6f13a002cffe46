"""Find stored segments like a query: a stored segment, a vector, an image + prompt, a memory bank's
centroids for one class, or a text (in a text-image space such as ``clip-b32``). One library call per query
kind; all return :class:`SearchResults`.

```python
from samsearch.home import Home
from samsearch.search.query import SearchFilters, search_by_image, search_by_segment

with Home("~/my-home") as home:
    res = search_by_segment(home, "0b6f…", k=20, filters=SearchFilters(dataset="street"))
    res = search_by_image(home, "query.jpg", box=(10, 20, 200, 180))
    res = search_text(home, "a red car")  # the home's text-image space (e.g. clip-b32)
    for hit in res:
        print(hit.rank, hit.score, hit.image_path, hit.bbox_xywh, hit.label)
        mask = hit.mask()  # H×W bool numpy array
```

Filters (:class:`SearchFilters`) become one vector-store filter on indexed payload fields, so they run
inside Qdrant; metadata for the hits comes from SQL in one query for all of them. A stored-segment query
never returns the query segment itself. A hit whose SQL row is missing (a vector written by an ingest
that has not committed that image yet) is left out.

JSON schema (``SearchResults.as_dict()``, what ``samsearch search --json`` prints), version
``samsearch.search/v1``::

    {
      "schema": "samsearch.search/v1",
      "query": {"kind": "segment" | "image" | "vector" | "label" | "examples" | "text",
                "text": str | null,                # kind=text
                "space": str | null,               # kind=text: the text-image space searched
                "segment_id": str | null,          # kind=segment
                "image_path": str | null,          # kind=segment (its image) or image
                "prompt": {"box": [x0, y0, x1, y1], "points": [[x, y], ...],
                           "negative_points": [[x, y], ...], "mask": "file.png"} | null,  # kind=image
                "predicted_iou": float | null,     # SAM's estimate for a prompted query mask
                "mask": {"size": [h, w], "counts": str} | null,   # COCO RLE of the query segment
                "label": str | null, "bank": str | null,          # kind=label
                "vectors": int,                    # how many query vectors (centroids) were searched
                "examples": {"positive": [str], "negative": [str], "strategy": str,
                             "diversity": float} | null},  # kind=examples (relevance feedback)
      "k": int, "min_score": float | null,
      "filters": {"dataset": str | [str] | null, "label": str | null, "cluster": int | null,
                  "image_id": int | null, "min_area": int | null, "max_area": int | null,
                  "exclude_same_image": bool},
      "hits": [{"rank": int (1-based), "score": float (cosine similarity; for kind=examples Qdrant's
                                                        recommend score; with diversity > 0 hits are in
                                                        MMR order, so scores need not decrease),
                "segment_id": str, "image_id": int, "image_path": str,
                "dataset": str (the one the filter matched, else the image's first), "datasets": [str],
                "bbox_xywh": [x, y, w, h], "area": int, "source": "auto" | "box" | "mask",
                "annotation_category": str | null, "label": str | null, "label_score": float | null,
                "cluster": int | null, "mask": {"size": [h, w], "counts": str}}, ...],
      "elapsed_ms": float
    }
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from samsearch.bank.store import bank_space, get_bank, load_centroids
from samsearch.data.imageio import LoadedImage
from samsearch.db.segment_ids import resolve_segment_id, resolve_segment_ids
from samsearch.errors import EmbeddingSpaceMismatch, InputError, NotFoundError
from samsearch.home import SAM_SPACE, SEGMENTS, Home, space_collection
from samsearch.identity import EmbeddingSpace
from samsearch.sam.pooling import RECIPE
from samsearch.search.segments import SegmentInfo, fetch_segments
from samsearch.vectors import Filter, Hit, Match, Range
from samsearch.vectors.base import RECOMMEND_STRATEGIES

SCHEMA = "samsearch.search/v1"


@dataclass(frozen=True)
class SearchFilters:
    """Conditions every hit satisfies; all of them run inside the vector store on indexed payloads.

    ``dataset`` may be one name or several (any of them); ``label``/``cluster`` match the payload that
    labeling and clustering write; ``exclude_same_image`` drops segments of the query's own image
    (by content hash, so it also works for an ``--image`` query whose file was ingested).
    """

    dataset: str | Sequence[str] | None = None
    label: str | None = None
    cluster: int | None = None
    image_id: int | None = None
    min_area: int | None = None
    max_area: int | None = None
    exclude_same_image: bool = False

    def to_filter(self, query_image_hash: str | None = None) -> Filter | None:
        if self.min_area is not None and self.max_area is not None and self.min_area > self.max_area:
            raise InputError(f"--min-area {self.min_area} exceeds --max-area {self.max_area}")
        must: list[Match | Range] = []
        if self.dataset is not None:
            names = [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)
            must.append(Match("dataset", names[0] if len(names) == 1 else names))
        if self.label is not None:
            must.append(Match("label", self.label))
        if self.cluster is not None:
            must.append(Match("cluster", int(self.cluster)))
        if self.image_id is not None:
            must.append(Match("image_id", int(self.image_id)))
        if self.min_area is not None or self.max_area is not None:
            must.append(Range("area", gte=self.min_area, lte=self.max_area))
        must_not: list[Match] = []
        if self.exclude_same_image:
            if query_image_hash is None:
                raise InputError("--exclude-same-image needs a --segment or --image query")
            must_not.append(Match("image_hash", query_image_hash))
        return Filter.of(*must, must_not=must_not)

    def dataset_names(self) -> list[str]:
        if self.dataset is None:
            return []
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)

    def as_dict(self) -> dict[str, Any]:
        dataset = self.dataset if self.dataset is None or isinstance(self.dataset, str) else list(self.dataset)
        return {"dataset": dataset, "label": self.label, "cluster": self.cluster, "image_id": self.image_id,
                "min_area": self.min_area, "max_area": self.max_area,
                "exclude_same_image": self.exclude_same_image}


@dataclass(frozen=True)
class SearchHit(SegmentInfo):
    """A stored segment (see :class:`samsearch.search.segments.SegmentInfo`, ``mask()`` included) with its
    1-based ``rank`` and cosine ``score``."""

    rank: int = 0
    score: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "score": round(self.score, 6), "segment_id": self.segment_id,
            "image_id": self.image_id, "image_path": self.image_path, "dataset": self.dataset,
            "datasets": list(self.datasets), "bbox_xywh": list(self.bbox_xywh), "area": self.area,
            "source": self.source,
            "annotation_category": self.annotation_category, "label": self.label,
            "label_score": self.label_score, "cluster": self.cluster, "mask": self.rle,
        }


@dataclass
class QueryInfo:
    """What was searched for. ``rle`` is the query segment's mask (segment and image queries)."""

    kind: str  # segment | image | vector | label
    vectors: np.ndarray = field(repr=False)  # (n, dim) query vectors
    segment_id: str | None = None
    image_path: str | None = None
    image_hash: str | None = None
    prompt: dict[str, Any] | None = None
    predicted_iou: float | None = None
    rle: dict[str, Any] | None = None
    label: str | None = None
    bank: str | None = None
    examples: dict[str, Any] | None = None  # kind=examples: positive/negative ids, strategy, diversity
    text: str | None = None  # kind=text
    space: str | None = None  # kind=text and examples: the space searched

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "space": self.space,
                "segment_id": self.segment_id, "image_path": self.image_path,
                "prompt": self.prompt, "predicted_iou": self.predicted_iou, "mask": self.rle,
                "label": self.label, "bank": self.bank, "vectors": int(len(self.vectors)),
                "examples": self.examples}


@dataclass
class SearchResults:
    """The ranked hits of one query (iterable, indexable, sized) and what produced them."""

    query: QueryInfo
    hits: list[SearchHit]
    k: int
    min_score: float | None
    filters: SearchFilters
    seconds: float

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> SearchHit:
        return self.hits[i]

    def as_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "query": self.query.as_dict(), "k": self.k, "min_score": self.min_score,
                "filters": self.filters.as_dict(), "hits": [h.as_dict() for h in self.hits],
                "elapsed_ms": round(self.seconds * 1000, 3)}


# -- shared machinery ------------------------------------------------------------------------------


def _empty_corpus(home: Home) -> NotFoundError:
    return NotFoundError(f"{home.root}: no segments stored yet (run `samsearch ingest` first)")


_SPACES: weakref.WeakKeyDictionary[Home, EmbeddingSpace] = weakref.WeakKeyDictionary()


def _space(home: Home) -> EmbeddingSpace | None:
    """The home's embedding space, remembered per Home once set (a home never changes it)."""
    space = _SPACES.get(home)
    if space is None:
        space = home.embedding_space()
        if space is not None:
            _SPACES[home] = space
    return space


def _require_corpus(home: Home, space: str = SAM_SPACE) -> str:
    """The collection of ``space``; NotFoundError when the home has no vectors there."""
    if space != SAM_SPACE:
        home.space(space)  # NotFoundError naming the spaces this home has
    coll = space_collection(space)
    if not home.vectors.has_collection(coll):
        raise _empty_corpus(home)
    return coll


# Largest -k a search answers: every hit is fetched from SQL and held in memory (and each store sizes its
# result buffers by k), so an unbounded k (-k 10**9) would ask for gigabytes; page with filters instead.
MAX_K = 10_000


def _check_k(k: int, min_score: float | None) -> None:
    if int(k) < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    if int(k) > MAX_K:
        raise InputError(f"-k must be at most {MAX_K}, got {k} (narrow the search with filters instead)")
    if min_score is not None and not -1.0 <= float(min_score) <= 1.0:
        raise InputError(f"--min-score must lie in [-1, 1] (cosine similarity), got {min_score}")


def _merge(lists: list[list[Hit]], min_score: float | None) -> list[Hit]:
    """One list per query vector → each point once with its best score, best first."""
    best: dict[str, Hit] = {}
    for hits in lists:
        for h in hits:
            if (min_score is None or h.score >= min_score) and (h.id not in best or h.score > best[h.id].score):
                best[h.id] = h
    return sorted(best.values(), key=lambda h: -h.score)


def _results(home: Home, query: QueryInfo, found: list[Hit], k: int, filters: SearchFilters,
             min_score: float | None, started: float, own: str | None = None) -> SearchResults:
    """Ranked store hits → SearchResults, metadata from one SQL query (``own``: the query segment's row)."""
    if not found and home.vectors.count(SEGMENTS) == 0:
        raise _empty_corpus(home)
    meta = fetch_segments(home, [h.id for h in found] + ([own] if own else []))
    if own and own in meta:
        query.image_path, query.rle = meta[own].image_path, meta[own].rle
    kept = [(h, meta[h.id]) for h in found if h.id in meta]
    wanted = filters.dataset_names()
    hits = [SearchHit(**{**info.__dict__, "dataset": _shown_dataset(info, wanted)}, rank=i + 1, score=h.score)
            for i, (h, info) in enumerate(kept)]
    return SearchResults(query, hits, int(k), min_score, filters, time.perf_counter() - started)


def _run(home: Home, query: QueryInfo, k: int, filters: SearchFilters | None, min_score: float | None,
         started: float, space: str = SAM_SPACE) -> SearchResults:
    filters = filters or SearchFilters()
    _check_k(k, min_score)
    flt = filters.to_filter(query.image_hash)
    own = query.segment_id if query.kind == "segment" else None
    limit = int(k) + (own is not None)  # the query segment itself comes back first: ask for one more
    coll = space_collection(space)
    if len(query.vectors) == 1:
        found = home.vectors.search(coll, query.vectors[0], k=limit, flt=flt, min_score=min_score)
    else:
        found = _merge(home.vectors.search_batch(coll, query.vectors, k=limit, flt=flt), min_score)
    found = [h for h in found if h.id != own][: int(k)]
    if not found and home.vectors.count(coll) == 0:
        raise _empty_corpus(home)
    # One SQL query for every hit (and the query segment's own row, for its picture).
    return _results(home, query, found, k, filters, min_score, started, own)


def _shown_dataset(info: SegmentInfo, wanted: list[str]) -> str:
    """A hit's ``dataset``: the first of its image's datasets the filter asked for, else the image's first."""
    return next((d for d in info.datasets if d in wanted), info.dataset)


# -- the queries -----------------------------------------------------------------------------------


def search_by_vector(home: Home, vector: np.ndarray | Sequence[float], k: int = 10,
                     filters: SearchFilters | None = None, min_score: float | None = None,
                     space: str = SAM_SPACE) -> SearchResults:
    """Segments most similar to ``vector`` in embedding space ``space`` (normalised here; must have the
    space's dimension)."""
    started = time.perf_counter()
    _require_corpus(home, space)
    ident = _space(home) if space == SAM_SPACE else home.space(space)
    x = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    if ident is not None and x.shape[1] != ident.dim:
        where = "" if space == SAM_SPACE else f" in space {space!r}"
        raise InputError(f"the query vector has {x.shape[1]} dimensions; this home's vectors{where} have {ident.dim}")
    if not np.isfinite(x).all() or not np.abs(x).sum():
        raise InputError("the query vector must be finite and non-zero")
    return _run(home, QueryInfo("vector", x), k, filters, min_score, started, space)


def search_by_segment(home: Home, segment_id: str, k: int = 10, filters: SearchFilters | None = None,
                      min_score: float | None = None, space: str = SAM_SPACE) -> SearchResults:
    """Segments most similar to a stored segment, compared in embedding space ``space`` (the segment itself
    is not among the hits)."""
    started = time.perf_counter()
    coll = _require_corpus(home, space)
    segment_id = resolve_segment_id(home.db, segment_id, f" in {home.root}")  # a unique prefix is enough
    found = home.vectors.retrieve(coll, [segment_id], with_vectors=True) if _is_uuid(segment_id) else []
    if not found:
        if home.vectors.count(coll) == 0:
            raise _empty_corpus(home)
        where = "" if space == SAM_SPACE else f" with a vector in space {space!r} (`samsearch embed --space {space}`)"
        raise NotFoundError(f"no segment {segment_id!r}{where} in {home.root}")
    rec = found[0]
    query = QueryInfo("segment", rec.vector[None, :], segment_id=rec.id,
                      image_hash=rec.payload.get("image_hash"))
    return _run(home, query, k, filters, min_score, started, space)


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(str(text))
    except ValueError:
        return False
    return True


def model_for_home(home: Home, model: Any = None, checkpoint: Path | str | None = None,
                   device: str | None = None) -> Any:
    """The SAM model that produced the home's vectors: ``model`` if given (checked), else loaded from
    the cache or ``checkpoint``. Never downloads; a missing checkpoint or another model is an error."""
    from samsearch.sam.models import ModelError, get_spec, load_model, resolve_checkpoint

    space = home.embedding_space()
    if space is None:
        raise _empty_corpus(home)
    if model is None:
        if space.model != "tiny-random":
            try:
                spec = get_spec(space.model)
                if checkpoint is None and spec.sha256 != space.checkpoint_sha256:
                    raise ModelError(f"they come from a custom {space.model} checkpoint; pass --checkpoint FILE")
                checkpoint, _ = resolve_checkpoint(space.model, Path(checkpoint) if checkpoint else None,
                                                   download=False)
            except ModelError as exc:
                raise ModelError(f"{home.root} holds vectors from {space.describe()}; to embed the query: {exc} "
                                 f"(pass --checkpoint FILE, or run `samsearch ingest --model {space.model}` "
                                 "once to download it)") from None
        model = load_model(space.model, checkpoint=checkpoint, device=device, progress=False)
    _check_space(home, space, model)
    return model


def _check_space(home: Home, space: EmbeddingSpace, model: Any) -> None:
    if (model.name, model.checkpoint_sha256, RECIPE) != (space.model, space.checkpoint_sha256, space.recipe):
        weights = model.checkpoint_sha256
        if weights[:12] != space.checkpoint_sha256[:12]:
            weights = weights[:12]  # the short form the home's description uses, when it tells them apart
        raise EmbeddingSpaceMismatch(
            f"{home.root} holds vectors from {space.describe()}; the query would be embedded by "
            f"{model.name} (weights {weights}, {RECIPE}); a query must use the model that produced the "
            "corpus (same --model/--checkpoint as ingest)"
        )


def search_by_image(
    home: Home,
    image: Path | str | LoadedImage,
    *,
    box: Sequence[float] | None = None,
    points: Sequence[Sequence[float]] = (),
    negative_points: Sequence[Sequence[float]] = (),
    mask: np.ndarray | Path | str | None = None,
    model: Any = None,
    k: int = 10,
    filters: SearchFilters | None = None,
    min_score: float | None = None,
    checkpoint: Path | str | None = None,
    device: str | None = None,
    space: str = SAM_SPACE,
    space_weights: Path | str | None = None,
) -> SearchResults:
    """Segments like the one marked on ``image`` (which need not be in the corpus) by a box
    ``(x0, y0, x1, y1)``, points (foreground; ``negative_points`` background), or a mask (H×W array or a
    mask image file). SAM runs with the home's own model (see :func:`model_for_home`), and the segment
    is embedded exactly as ingest embeds one; in another ``space`` SAM's mask is pooled in that space's
    backbone (its weights must be the ones of the home's vectors: cached, or ``space_weights``). ``image``
    may also be an already decoded :class:`~samsearch.data.imageio.LoadedImage` (an upload: ``samsearch
    serve`` decodes the bytes itself, with its own pixel limit, and never writes them to a file); its
    ``path`` only names it."""
    from samsearch.data.imageio import ImageLoadError, load_image
    from samsearch.data.masks import mask_to_rle
    from samsearch.search.prompt import Prompt, check_prompt, embed_prompted_segment, load_mask_file

    started = time.perf_counter()
    _require_corpus(home, space)
    _check_k(k, min_score)
    if box is not None:
        box = tuple(float(v) for v in box)
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise InputError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}")
    prompt = Prompt(box=box, points=[(float(x), float(y)) for x, y in points],  # type: ignore[arg-type]
                    negative_points=[(float(x), float(y)) for x, y in negative_points])
    if isinstance(mask, (str, Path)):
        prompt.mask, prompt.mask_path = load_mask_file(mask), str(mask)
    elif mask is not None:
        prompt.mask = np.asarray(mask, dtype=bool)
    if isinstance(image, LoadedImage):
        loaded = image
    else:
        try:
            loaded = load_image(image)
        except ImageLoadError as exc:
            raise InputError(str(exc)) from None
    image = loaded.path
    check_prompt(prompt, loaded.width, loaded.height, str(image))
    (filters or SearchFilters()).to_filter(loaded.content_hash)  # bad filters fail before SAM runs
    model = model_for_home(home, model, checkpoint, device)
    try:
        emb = embed_prompted_segment(model, loaded.rgb, prompt)
    except InputError as exc:  # e.g. an image too thin for SAM: say which
        raise InputError(f"{image}: {exc}") from None
    vector = emb.vector
    if space != SAM_SPACE:
        from samsearch.spaces.models import embed_segments, load_space

        sm = load_space(space, None if space_weights is None else Path(space_weights), str(model.device))
        held = home.space(space)
        if sm.space != held:
            raise InputError(f"space {space!r} here holds vectors from {held.describe()}; the loaded weights are "
                             f"{sm.space.describe()} (pass --weights with the home's copy)")
        vectors, _ = embed_segments(sm, loaded.rgb, emb.mask[None])
        vector = vectors[0].cpu().numpy().astype(np.float32)
    query = QueryInfo("image", vector[None, :], image_path=str(image), image_hash=loaded.content_hash,
                      prompt=prompt.describe(), predicted_iou=emb.predicted_iou, rle=mask_to_rle(emb.mask))
    return _run(home, query, k, filters, min_score, started, space)


def search_by_label(home: Home, label: str, bank: str, k: int = 10, filters: SearchFilters | None = None,
                    min_score: float | None = None, space: str | None = None) -> SearchResults:
    """"Find every <label>": each of the bank's centroids for ``label`` is a query; the hits are merged,
    each segment once with its best score. The search runs in the bank's space (``space``, if given, must
    be that one)."""
    started = time.perf_counter()
    _require_corpus(home)  # an empty home says so before it looks for the bank
    held = bank_space(get_bank(home, bank))
    if space is not None and space != held:
        raise InputError(f"bank {bank!r} lives in space {held!r}, not {space!r}: its centroids only compare with "
                         f"vectors of {held!r}")
    _require_corpus(home, held)
    vectors = load_centroids(home, bank, label).vectors
    return _run(home, QueryInfo("label", vectors, label=label, bank=bank), k, filters, min_score, started, held)


def text_space(home: Home, space: str | None = None) -> str:
    """The text-image space a text query runs in: ``space`` (checked), else the home's one text space.
    InputError when ``space`` has no text tower, when the home has none, or several and none was named."""
    from samsearch.spaces.registry import SPACES

    if space is not None:
        if space == SAM_SPACE or (space in SPACES and not SPACES[space].text):
            raise InputError(f"space {space!r} has no text tower: a text query needs a text-image space "
                             f"(e.g. clip-b32); this home has {', '.join(home.spaces()) or 'none'}")
        return space
    names = list(home.spaces())
    found = [n for n in names if n in SPACES and SPACES[n].text]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(f"{home.root} has no text-image space (it has {', '.join(names) or 'none'}); add one with "
                         "`samsearch embed --space clip-b32` (or ingest --spaces sam,clip-b32)")
    raise InputError(f"{home.root} has several text-image spaces ({', '.join(found)}): pick one with --space")


def load_text_space(home: Home, space: str, weights: Path | str | None = None, device: str | None = None) -> Any:
    """The space's model (text and image towers), checked against the identity of the home's vectors."""
    from samsearch.spaces.models import load_space

    held = home.space(space)
    sm = load_space(space, None if weights is None else Path(weights), device)
    if sm.space != held:
        raise InputError(f"space {space!r} here holds vectors from {held.describe()}; the loaded weights are "
                         f"{sm.space.describe()} (pass --weights with the home's copy)")
    return sm


def search_text(home: Home, text: str, k: int = 10, filters: SearchFilters | None = None,
                min_score: float | None = None, space: str | None = None, space_model: Any = None,
                weights: Path | str | None = None, device: str | None = None) -> SearchResults:
    """Segments matching ``text`` in a text-image space: the text tower's vector against the segments' crop
    vectors. ``space``: default the home's text-image space when it holds exactly one. ``space_model``: an
    already loaded model of that space (a server keeps one), else loaded here (cached weights, or the local
    copy ``weights``)."""
    started = time.perf_counter()
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text query is empty")
    name = text_space(home, space)
    _require_corpus(home, name)
    _check_k(k, min_score)
    (filters or SearchFilters()).to_filter()  # bad filters fail before the model loads
    if space_model is None:
        space_model = load_text_space(home, name, weights, device)
    elif space_model.spec.name != name:
        raise InputError(f"the loaded model is space {space_model.spec.name!r}, not {name!r}")
    from samsearch.spaces.models import embed_texts

    vector = embed_texts(space_model, [text]).numpy().astype(np.float32)
    query = QueryInfo("text", vector, text=text, space=name)
    return _run(home, query, k, filters, min_score, started, name)


# -- relevance feedback ------------------------------------------------------------------------------

MAX_EXAMPLES = 100
MMR_POOL = 4  # with diversity, MMR picks k of the best MMR_POOL * k candidates (at least 50)


def mmr_order(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: ``k`` indices of the candidates, each step taking the one with the
    best ``(1 - diversity) * relevance - diversity * (its highest cosine to those already taken)``.
    ``relevance`` is rescaled to [0, 1] over the candidates first, so the trade-off does not depend on
    the score's scale (recommend scores are not cosines); ``vectors`` are unit rows. diversity 0 keeps
    the relevance order; 1 spreads the picks as far apart as the pool allows (after the first)."""
    n = len(relevance)
    if n == 0 or k <= 0:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    span = float(rel.max() - rel.min())
    rel = (rel - rel.min()) / span if span > 0 else np.ones(n)
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    taken: list[int] = []
    closest = np.full(n, -np.inf)  # each candidate's highest similarity to a taken one
    free = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        gain = (1 - diversity) * rel - diversity * (closest if taken else 0.0)
        gain[~free] = -np.inf
        pick = int(np.argmax(gain))  # ties: the earlier (more relevant) candidate
        taken.append(pick)
        free[pick] = False
        closest = np.maximum(closest, sims[pick])
    return taken


def search_by_examples(home: Home, positive: Sequence[str], negative: Sequence[str] = (), k: int = 10,
                       filters: SearchFilters | None = None, diversity: float = 0.0,
                       strategy: str = "best_score", space: str = SAM_SPACE) -> SearchResults:
    """Relevance feedback: segments like the stored ``positive`` examples and unlike the ``negative``
    ones (the vector store's recommend query, ``strategy`` "best_score" or "sum_scores"); the examples
    are never among the hits. ``diversity`` in [0, 1] re-ranks the best ``MMR_POOL * k`` candidates by
    maximal marginal relevance (see :func:`mmr_order`) so near-duplicates do not fill the page.
    ``exclude_same_image`` drops every segment of any positive example's image. Compared in ``space``."""
    started = time.perf_counter()
    coll = _require_corpus(home, space)
    _check_k(k, None)
    pos, neg = list(dict.fromkeys(map(str, positive))), list(dict.fromkeys(map(str, negative)))
    if not pos:
        raise InputError("give at least one positive example segment")
    if len(pos) + len(neg) > MAX_EXAMPLES:
        raise InputError(f"at most {MAX_EXAMPLES} example segments, got {len(pos) + len(neg)}")
    # unique prefixes are enough (one SQL query); full ids come back canonical
    ids = resolve_segment_ids(home.db, pos + neg, f" in {home.root}")
    pos, neg = list(dict.fromkeys(ids[:len(pos)])), list(dict.fromkeys(ids[len(pos):]))
    both = set(pos) & set(neg)
    if both:
        raise InputError(f"segment {sorted(both)[0]} is both a positive and a negative example")
    if strategy not in RECOMMEND_STRATEGIES:
        raise InputError(f"strategy must be one of {', '.join(RECOMMEND_STRATEGIES)}, got {strategy!r}")
    if isinstance(diversity, bool) or not 0.0 <= float(diversity) <= 1.0:
        raise InputError(f"diversity must lie in [0, 1], got {diversity}")
    filters = filters or SearchFilters()
    bad = [i for i in pos + neg if not _is_uuid(i)]
    records = home.vectors.retrieve(coll, [i for i in pos + neg if _is_uuid(i)])
    known = {r.id for r in records}
    missing = bad + [i for i in pos + neg if _is_uuid(i) and str(_uuid(i)) not in known]
    if missing:
        if home.vectors.count(coll) == 0:
            raise _empty_corpus(home)
        raise NotFoundError(f"no segment {missing[0]!r} in {home.root}")
    by_id = {r.id: r for r in records}
    pos, neg = [str(_uuid(i)) for i in pos], [str(_uuid(i)) for i in neg]
    flt = replace(filters, exclude_same_image=False).to_filter()
    if filters.exclude_same_image:  # every positive example's image, by content hash
        hashes = sorted({h for i in pos if (h := by_id[i].payload.get("image_hash"))})
        if hashes:
            not_same = Match("image_hash", hashes[0] if len(hashes) == 1 else hashes)
            flt = Filter(flt.must if flt else (), (*(flt.must_not if flt else ()), not_same))
    diversity = float(diversity)
    pool = int(k) if diversity == 0 else min(MAX_K, max(MMR_POOL * int(k), 50))
    found = home.vectors.recommend(coll, pos, neg, k=pool, flt=flt, strategy=strategy)
    if diversity > 0 and len(found) > 1:
        vecs = {r.id: r.vector for r in home.vectors.retrieve(coll, [h.id for h in found], with_vectors=True)}
        found = [h for h in found if h.id in vecs]
        order = mmr_order(np.array([h.score for h in found]), np.stack([vecs[h.id] for h in found]), int(k),
                          diversity)
        found = [found[i] for i in order]
    query = QueryInfo("examples", np.zeros((len(pos) + len(neg), 0), np.float32),
                      examples={"positive": pos, "negative": neg, "strategy": strategy, "diversity": diversity},
                      space=space)
    return _results(home, query, found[: int(k)], k, filters, None, started)


def _uuid(text: str) -> Any:
    import uuid

    return uuid.UUID(str(text))

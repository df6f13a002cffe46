"""Qdrant server backend through ``qdrant-client`` (REST); ``location=":memory:"`` runs qdrant-client's
local mode, which stands in for a server in tests (it ignores payload indexes and quantization).

Writes are batched (``upsert_batch`` points per request) and use ``wait=True``: when a call returns,
the server has applied it and written its WAL, so SQL may then record the image as done. They also
ask for ``ordering=medium`` (writes to one shard go through its leader, so replicas apply concurrent
writes in one order). A collection created with ``replication_factor`` > 1 gets a majority
``write_consistency_factor`` unless one is given: an acknowledged write is then on most replicas.
Every failure surfaces as a one-line :class:`VectorStoreError`.

:class:`QdrantSettings` collects the knobs; :meth:`QdrantSettings.from_env` reads them from the
``SAMSEARCH_QDRANT_*`` environment variables (see the README's "Scale out" section).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from samsearch.vectors.base import (
    FLOAT_FIELDS,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    Filter,
    Hit,
    IsNull,
    Match,
    Range,
    Record,
    VectorBatch,
    VectorStoreError,
    check_examples,
    in_order,
    plain_payload,
    plain_value,
    unit_rows,
)

UPSERT_BATCH = 512  # points per request: ~1.3 MB of JSON at 256-d
SET_PAYLOAD_BATCH = 10_000  # ids per request
WRITE_ORDERINGS = ("weak", "medium", "strong")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class QdrantSettings:
    """How samsearch talks to a Qdrant server and how it creates the collection there.

    Creation-time settings (``shard_number``, ``replication_factor``, ``write_consistency_factor``,
    ``on_disk``, ``quantization``) apply only when samsearch creates a collection; an existing one keeps
    its own (change those with Qdrant's API)."""

    api_key: str | None = None
    shard_number: int | None = None  # None: the server's default (1 per node on a cluster)
    replication_factor: int | None = None
    write_consistency_factor: int | None = None  # None: majority of replication_factor
    on_disk: bool = False  # vectors and payloads on disk (memory-mapped) instead of RAM
    quantization: bool = False  # int8 scalar quantization (kept in RAM), searches rescore with originals
    write_ordering: str = "medium"
    timeout: int = 30  # seconds per request
    upsert_batch: int = UPSERT_BATCH

    ENV = {
        "api_key": "SAMSEARCH_QDRANT_API_KEY",
        "shard_number": "SAMSEARCH_QDRANT_SHARDS",
        "replication_factor": "SAMSEARCH_QDRANT_REPLICATION_FACTOR",
        "write_consistency_factor": "SAMSEARCH_QDRANT_WRITE_CONSISTENCY_FACTOR",
        "on_disk": "SAMSEARCH_QDRANT_ON_DISK",
        "quantization": "SAMSEARCH_QDRANT_QUANTIZATION",
        "write_ordering": "SAMSEARCH_QDRANT_WRITE_ORDERING",
        "timeout": "SAMSEARCH_QDRANT_TIMEOUT",
        "upsert_batch": "SAMSEARCH_QDRANT_UPSERT_BATCH",
    }

    def __post_init__(self) -> None:
        for name in ("shard_number", "replication_factor", "write_consistency_factor", "timeout", "upsert_batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise VectorStoreError(f"{self.ENV[name]}: must be a positive integer, not {value!r}")
        if self.write_ordering not in WRITE_ORDERINGS:
            raise VectorStoreError(
                f"{self.ENV['write_ordering']}: must be one of {', '.join(WRITE_ORDERINGS)}, "
                f"not {self.write_ordering!r}"
            )
        if (self.write_consistency_factor or 1) > (self.replication_factor or 1):
            raise VectorStoreError(
                f"{self.ENV['write_consistency_factor']} ({self.write_consistency_factor}) cannot exceed "
                f"{self.ENV['replication_factor']} ({self.replication_factor or 1})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, api_key: str | None = None) -> QdrantSettings:
        """Settings from ``SAMSEARCH_QDRANT_*`` variables; a bad value is a one-line error naming it."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in cls.ENV.items():
            raw = env.get(var)
            if raw is None or (raw.strip() == "" and name != "on_disk"):
                continue
            raw = raw.strip()
            if name in ("api_key", "write_ordering"):
                values[name] = raw.lower() if name == "write_ordering" else raw
            elif name == "on_disk":
                values[name] = _flag(var, raw, _TRUE, _FALSE)
            elif name == "quantization":
                values[name] = _flag(var, raw, ("int8", *_TRUE), ("none", *_FALSE))
            else:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise VectorStoreError(f"{var}: must be a positive integer, not {raw!r}") from None
        if api_key:
            values["api_key"] = api_key
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """The settings without the API key (for status output)."""
        d = {k: getattr(self, k) for k in self.ENV if k != "api_key"}
        d["api_key"] = "set" if self.api_key else None
        return d


def _flag(var: str, raw: str, true: tuple[str, ...], false: tuple[str, ...]) -> bool:
    low = raw.lower()
    if low in true:
        return True
    if low in false:
        return False
    raise VectorStoreError(f"{var}: must be one of {', '.join(x for x in (*true, *false) if x)}, not {raw!r}")

_SCHEMAS = {
    **{f: models.PayloadSchemaType.KEYWORD for f in KEYWORD_FIELDS},
    **{f: models.PayloadSchemaType.INTEGER for f in INTEGER_FIELDS},
    **{f: models.PayloadSchemaType.FLOAT for f in FLOAT_FIELDS},
}


def _condition(c: Match | Range | IsNull) -> models.Condition:
    if isinstance(c, Match):
        value = c.value
        if isinstance(value, (list, tuple, set, frozenset)):
            values = [plain_value(v) for v in value]
            if any(isinstance(v, float) for v in values):
                raise VectorStoreError(f"Match on {c.field!r}: a list of floats cannot be matched; use Range")
            return models.FieldCondition(key=c.field, match=models.MatchAny(any=values))
        value = plain_value(value)
        if isinstance(value, float):  # exact float equality has no keyword/integer match in Qdrant
            return models.FieldCondition(key=c.field, range=models.Range(gte=value, lte=value))
        return models.FieldCondition(key=c.field, match=models.MatchValue(value=value))
    if isinstance(c, Range):
        return models.FieldCondition(key=c.field, range=models.Range(gte=c.gte, lte=c.lte))
    if isinstance(c, IsNull):
        # Qdrant's is_null needs an explicit null; is_empty also matches a missing key.
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=c.field))
    raise VectorStoreError(f"unsupported filter condition {c!r}")


def to_qdrant_filter(flt: Filter | None) -> models.Filter | None:
    if flt is None or (not flt.must and not flt.must_not):
        return None
    try:
        return models.Filter(
            must=[_condition(c) for c in flt.must] or None,
            must_not=[_condition(c) for c in flt.must_not] or None,
        )
    except (TypeError, ValueError) as exc:  # e.g. a list mixing strings and integers
        raise VectorStoreError(f"cannot express {flt} as a Qdrant filter: {_one_line(str(exc))}") from exc


_SECRET_PARAMS = ("key", "token", "password", "secret", "auth")


def safe_url(url: str) -> str:
    """``url`` with its credentials masked (``https://user:***@host``, ``?api_key=***``), as the database
    URL is shown: for error messages and reports, which users paste into issues and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url if "@" not in url else "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if has_password else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if any(w in k.lower() for w in _SECRET_PARAMS) else v) for k, v in pairs],
                          safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _url_secrets(url: str) -> list[str]:
    """The pieces of ``url`` that :func:`safe_url` masks (and the URL itself, when it has any)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url] if "@" in url else []
    secrets = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        secrets.append(userinfo.partition(":")[2] or userinfo)
    secrets += [v for k, v in parse_qsl(parts.query) if v and any(w in k.lower() for w in _SECRET_PARAMS)]
    secrets = [s for s in secrets if len(s) >= 3]  # a one-letter "password" would mask half the message
    return [url, *secrets] if secrets or "@" in url else []


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ServerVectorStore:
    """Collections on a Qdrant server (``url``), or in qdrant-client's local mode (``location``).

    ``settings`` (or the same fields as keywords) say how to talk to the server and how to create a
    collection: ``shard_number``/``replication_factor``/``write_consistency_factor``/``on_disk`` apply
    when a collection is created; ``quantization`` creates it with int8 scalar quantization and
    rescores with the original vectors at search time. ``timeout`` is the per-request limit in seconds.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        location: str | None = None,
        settings: QdrantSettings | None = None,
        **overrides: Any,
    ) -> None:
        if (url is None) == (location is None):
            raise VectorStoreError("ServerVectorStore needs exactly one of url or location")
        cfg = settings or QdrantSettings()
        if overrides:
            cfg = QdrantSettings(**{**cfg.__dict__, **overrides})
        self.settings = cfg
        self.where = safe_url(url or location or "")  # what error messages show: no credentials
        self._secrets = _url_secrets(url or "")
        self.api_key = cfg.api_key
        self.shard_number = cfg.shard_number
        self.replication_factor = cfg.replication_factor
        self.on_disk = cfg.on_disk
        self.quantization = cfg.quantization
        self._ordering = models.WriteOrdering(cfg.write_ordering)
        api_key, timeout = cfg.api_key, cfg.timeout
        self.local = location is not None and not location.startswith(("http://", "https://"))
        # Local mode is plain Python state: serialise it. A real client is thread-safe on its own.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.local else contextlib.nullcontext()
        )
        self._dims: dict[str, int] = {}
        with self._errors("connect"):
            if self.local:
                self._client = QdrantClient(location=location)
            else:
                # check_compatibility=False: its own probe only warns; ours below fails clearly.
                self._client = QdrantClient(
                    url=url, api_key=api_key, timeout=timeout, check_compatibility=False
                )
            self._client.get_collections()  # reachability + auth, up front

    # -- errors ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str, name: str | None = None) -> Iterator[None]:
        try:
            with self._translated_errors(what, name):
                yield
        except VectorStoreError as exc:
            text = str(exc)
            if not any(secret in text for secret in self._secrets):
                raise
            for secret in sorted(self._secrets, key=len, reverse=True):  # the whole URL first, then its parts
                text = text.replace(secret, self.where if "://" in secret else "***")
            raise VectorStoreError(text) from exc.__cause__

    @contextlib.contextmanager
    def _translated_errors(self, what: str, name: str | None = None) -> Iterator[None]:
        try:
            yield
        except VectorStoreError:
            raise
        except (ResponseHandlingException, httpx.TransportError) as exc:
            reason = _one_line(str(getattr(exc, "source", exc))) or type(exc).__name__
            raise VectorStoreError(
                f"cannot reach Qdrant at {self.where}: {reason} "
                "(set SAMSEARCH_QDRANT_URL or start the server)"
            ) from exc
        except UnexpectedResponse as exc:
            raise VectorStoreError(self._http_error(exc, what, name)) from exc
        except Exception as exc:  # local mode raises ValueError & co.
            target = f" on collection {name!r}" if name else ""
            msg = _one_line(str(exc)) or type(exc).__name__
            if name and msg == f"Collection {name} not found":
                raise VectorStoreError(
                    f"Qdrant at {self.where}: no collection {name!r} (ensure_collection creates it)"
                ) from exc
            raise VectorStoreError(f"Qdrant at {self.where}: {what}{target} failed: {msg}") from exc

    def _http_error(self, exc: UnexpectedResponse, what: str, name: str | None) -> str:
        if exc.status_code in (401, 403):
            if self.api_key is None:
                return (
                    f"Qdrant at {self.where} refused the request: an API key is required "
                    "(set SAMSEARCH_QDRANT_API_KEY)"
                )
            return f"Qdrant at {self.where} refused the API key (check SAMSEARCH_QDRANT_API_KEY)"
        detail = ""
        with contextlib.suppress(Exception):  # not JSON: not a Qdrant answer
            detail = _one_line(str(exc.structured().get("status", {}).get("error", "")))
        if not detail:
            return (
                f"cannot reach Qdrant at {self.where}: HTTP {exc.status_code} {exc.reason_phrase} from "
                "something that is not a Qdrant server (set SAMSEARCH_QDRANT_URL or start the server)"
            )
        if exc.status_code == 404 and name is not None:
            return f"Qdrant at {self.where}: no collection {name!r} (ensure_collection creates it): {detail}"
        target = f" on collection {name!r}" if name else ""
        return f"Qdrant at {self.where}: {what}{target} failed: HTTP {exc.status_code}: {detail}"

    # -- collections -------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int) -> None:
        with self._lock, self._errors("ensure_collection", name):
            if not self._client.collection_exists(name):
                try:
                    self._create(name, dim)
                except UnexpectedResponse as exc:
                    if exc.status_code != 409:  # 409: another client created it meanwhile
                        raise
            info = self._client.get_collection(name)
            params = info.config.params.vectors
            if not isinstance(params, models.VectorParams) or params.size != dim or (
                params.distance != models.Distance.COSINE
            ):
                held = (
                    f"{params.size}-d {params.distance.value.lower()}"
                    if isinstance(params, models.VectorParams) else "named vectors"
                )
                raise VectorStoreError(
                    f"collection {name!r} at Qdrant {self.where} holds {held} vectors, not {dim}-d cosine "
                    "(use another collection/server, or drop it)"
                )
            if not self.local:  # local mode ignores payload indexes (and warns about them)
                for field_name, schema in _SCHEMAS.items():
                    if field_name not in (info.payload_schema or {}):
                        self._client.create_payload_index(name, field_name, field_schema=schema, wait=True)
            self._dims[name] = dim

    def _create(self, name: str, dim: int) -> None:
        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                )
            )
            if self.quantization
            else None
        )
        consistency = self.settings.write_consistency_factor
        if consistency is None and (self.replication_factor or 1) > 1:
            consistency = self.replication_factor // 2 + 1  # majority: an acked write survives a node loss
        self._client.create_collection(
            name,
            vectors_config=models.VectorParams(
                size=dim, distance=models.Distance.COSINE, on_disk=self.on_disk or None
            ),
            shard_number=self.shard_number,
            replication_factor=self.replication_factor,
            write_consistency_factor=consistency,
            on_disk_payload=self.on_disk or None,
            quantization_config=quantization,
        )

    def has_collection(self, name: str) -> bool:
        with self._lock, self._errors("has_collection", name):
            return bool(self._client.collection_exists(name))

    def drop_collection(self, name: str) -> None:
        with self._lock, self._errors("drop_collection", name):
            self._client.delete_collection(name)
            self._dims.pop(name, None)

    def _dim(self, name: str) -> int:
        if name not in self._dims:
            with self._lock, self._errors("get_collection", name):
                params = self._client.get_collection(name).config.params.vectors
            if not isinstance(params, models.VectorParams):
                raise VectorStoreError(f"collection {name!r} at Qdrant {self.where} has named vectors")
            self._dims[name] = params.size
        return self._dims[name]

    # -- writes ------------------------------------------------------------------------------------
    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        if len(ids) != len(payloads) or len(ids) != len(vectors):
            raise VectorStoreError(
                f"upsert: {len(ids)} ids, {len(vectors)} vectors and {len(payloads)} payloads differ"
            )
        if not len(ids):
            return
        x = unit_rows(vectors, self._dim(name))
        step = self.settings.upsert_batch
        for start in range(0, len(ids), step):
            end = start + step
            batch = models.Batch(
                ids=[str(i) for i in ids[start:end]],
                vectors=x[start:end].tolist(),
                payloads=[plain_payload(p) for p in payloads[start:end]],
            )
            with self._lock, self._errors("upsert", name):
                self._client.upsert(name, points=batch, wait=True, ordering=self._ordering)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if not len(ids):
            return
        selector = models.PointIdsList(points=[str(i) for i in ids])
        with self._lock, self._errors("delete", name):
            self._client.delete(name, points_selector=selector, wait=True, ordering=self._ordering)

    def delete_by_filter(self, name: str, flt: Filter) -> None:
        qflt = to_qdrant_filter(flt)
        if qflt is None:
            raise VectorStoreError("delete_by_filter needs a non-empty filter (drop_collection deletes all)")
        with self._lock, self._errors("delete", name):
            self._client.delete(
                name, points_selector=models.FilterSelector(filter=qflt), wait=True, ordering=self._ordering
            )

    def set_payload(self, name: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if not len(ids) or not payload:
            return
        payload = plain_payload(payload)
        for start in range(0, len(ids), SET_PAYLOAD_BATCH):
            # By id filter: ids that do not exist are skipped rather than failing the request.
            chunk = [str(i) for i in ids[start : start + SET_PAYLOAD_BATCH]]
            selector = models.Filter(must=[models.HasIdCondition(has_id=chunk)])
            with self._lock, self._errors("set_payload", name):
                self._client.set_payload(name, payload=payload, points=selector, wait=True, ordering=self._ordering)

    # -- reads -------------------------------------------------------------------------------------
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        if not len(ids):
            return []
        with self._lock, self._errors("retrieve", name):
            found = self._client.retrieve(
                name, ids=[str(i) for i in ids], with_payload=True, with_vectors=with_vectors
            )
        return in_order(ids, {str(r.id): _record(r, with_vectors) for r in found})

    def _params(self, exact: bool) -> models.SearchParams | None:
        if self.local:  # local mode is always exact, and warns about any search params
            return None
        if self.quantization:
            q = models.QuantizationSearchParams(ignore=True) if exact else models.QuantizationSearchParams(
                rescore=True, oversampling=2.0
            )
            return models.SearchParams(exact=exact, quantization=q)
        return models.SearchParams(exact=True) if exact else None

    def search(
        self,
        name: str,
        vector: np.ndarray,
        k: int = 10,
        flt: Filter | None = None,
        min_score: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        if k <= 0:
            return []
        q = unit_rows(vector, self._dim(name))[0].tolist()
        with self._lock, self._errors("search", name):
            res = self._client.query_points(
                name, query=q, limit=int(k), query_filter=to_qdrant_filter(flt), score_threshold=min_score,
                with_payload=True, search_params=self._params(exact),
            )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def search_batch(
        self, name: str, vectors: np.ndarray, k: int = 10, flt: Filter | None = None
    ) -> list[list[Hit]]:
        if k <= 0:
            return [[] for _ in range(len(np.atleast_2d(vectors)))]
        x = unit_rows(vectors, self._dim(name))
        if not len(x):
            return []
        qflt = to_qdrant_filter(flt)
        requests = [
            models.QueryRequest(
                query=row, limit=int(k), filter=qflt, with_payload=True, params=self._params(False)
            )
            for row in x.tolist()
        ]
        with self._lock, self._errors("search", name):
            responses = self._client.query_batch_points(name, requests=requests)
        return [[Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in responses]

    def recommend(
        self,
        name: str,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        k: int = 10,
        flt: Filter | None = None,
        strategy: str = "best_score",
    ) -> list[Hit]:
        pos, neg = check_examples(positive, negative, strategy)
        if k <= 0:
            return []
        # By id: the server looks the examples up itself and leaves them out of the answer.
        query = models.RecommendQuery(recommend=models.RecommendInput(
            positive=pos, negative=neg or None, strategy=models.RecommendStrategy(strategy)))
        with self._lock, self._errors("recommend", name):
            # A missing example is a 404 that reads like a missing collection (a KeyError in local mode):
            # check them first, one cheap request, so the error names the point.
            have = {str(r.id) for r in self._client.retrieve(name, ids=pos + neg, with_payload=False)}
            missing = [i for i in pos + neg if i not in have]
            if missing:
                raise VectorStoreError(f"recommend on collection {name!r}: no point {missing[0]}")
            res = self._client.query_points(
                name, query=query, limit=int(k), query_filter=to_qdrant_filter(flt), with_payload=True,
                search_params=self._params(False),
            )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def scroll(
        self,
        name: str,
        flt: Filter | None = None,
        batch_size: int = 1024,
        with_vectors: bool = False,
    ) -> Iterator[list[Record]]:
        qflt = to_qdrant_filter(flt)
        offset: Any = None
        while True:
            with self._lock, self._errors("scroll", name):
                records, offset = self._client.scroll(
                    name, scroll_filter=qflt, limit=batch_size, offset=offset, with_payload=True,
                    with_vectors=with_vectors,
                )
            if records:
                yield [_record(r, with_vectors) for r in records]
            if offset is None:
                return

    def scroll_vectors(
        self,
        name: str,
        flt: Filter | None = None,
        batch_size: int = 4096,
        payload_fields: Sequence[str] = (),
    ) -> Iterator[VectorBatch]:
        qflt = to_qdrant_filter(flt)
        offset: Any = None
        while True:
            with self._lock, self._errors("scroll", name):
                records, offset = self._client.scroll(
                    name, scroll_filter=qflt, limit=batch_size, offset=offset,
                    with_payload=list(payload_fields) if payload_fields else False, with_vectors=True,
                )
            if records:
                x = np.asarray([r.vector for r in records], dtype=np.float32).reshape(len(records), -1)
                payloads = [dict(r.payload or {}) for r in records] if payload_fields else [{} for _ in records]
                yield VectorBatch([str(r.id) for r in records], x, payloads)
            if offset is None:
                return

    def set_payloads(self, name: str, groups: Iterable[tuple[Sequence[str], dict[str, Any]]]) -> None:
        for ids, payload in groups:  # every request waits for the server (wait=True): nothing to flush
            self.set_payload(name, ids, payload)

    @contextlib.contextmanager
    def deferred_flush(self) -> Iterator[None]:
        """Nothing to defer: the server applies and logs every write (wait=True) before it answers."""
        yield

    @contextlib.contextmanager
    def bulk_load(self, name: str, report: Callable[[str], None] | None = None) -> Iterator[None]:
        """Nothing to do: the server indexes in its own background optimizer, and no write here waits for
        it (upserts wait for the WAL and apply, not for indexing)."""
        yield

    def finish_index(self, name: str, report: Callable[[str], None] | None = None) -> None:
        """Nothing to do: the server's optimizer indexes in the background; nothing here waits for it."""

    def index_status(self, name: str) -> tuple[int, int]:
        with self._lock, self._errors("info", name):
            info = self._client.get_collection(name)
        points = int(info.points_count or 0)
        # Local mode (":memory:") has no index and reports none: every point is scanned.
        return points, int(info.indexed_vectors_count or 0)

    def count(self, name: str, flt: Filter | None = None) -> int:
        with self._lock, self._errors("count", name):
            return int(self._client.count(name, count_filter=to_qdrant_filter(flt), exact=True).count)

    def claim_writes(self) -> None:
        """A Qdrant server takes any number of writers: nothing to claim."""

    def close(self) -> None:
        with self._lock, self._errors("close"):
            self._client.close()


def _record(r: Any, with_vectors: bool) -> Record:
    vec = np.asarray(r.vector, dtype=np.float32) if with_vectors and r.vector is not None else None
    return Record(str(r.id), dict(r.payload or {}), vec)

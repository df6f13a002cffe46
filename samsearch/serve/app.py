"""The Starlette application: JSON routes over one open :class:`~samsearch.home.Home`.

Rules every route follows:

* errors are ``{"error": "<one line>"}`` with a 4xx/5xx status, never a traceback (unexpected ones are
  logged on the server's stderr and answered 500 "internal error");
* with a token, every ``/api`` request needs ``Authorization: Bearer <token>`` (401 otherwise);
* in read-only mode every write (any method but GET/HEAD under ``/api``, except ``POST /api/search``, a
  read) is 403;
* a segment id from the request is only ever a key for a SQL lookup: images are read from the paths the
  home registered at ingest, so no path from a request reaches the file system.

Handlers are plain functions: Starlette runs them in its thread pool, so several clients are served at
once; the stores keep their own rules (Edge serialises its calls; SQLite has one writer at a time).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from samsearch.bank.classify import clear_manual_labels, set_manual_labels
from samsearch.bank.store import list_banks
from samsearch.cluster.naming import name_cluster
from samsearch.data.imageio import ImageLoadError, LoadedImage, decode_image, load_image
from samsearch.errors import EmbeddingSpaceMismatch, InputError, NotFoundError, SamsearchError, one_line
from samsearch.home import SAM_SPACE, Home
from samsearch.reports.clusters import cluster_report, list_runs
from samsearch.reports.gallery import render_crop, render_image_overlay
from samsearch.reports.stats import collect_stats, label_counts
from samsearch.search.query import (
    SearchFilters,
    load_text_space,
    model_for_home,
    search_by_examples,
    search_by_image,
    search_by_segment,
    search_text,
    text_space,
)
from samsearch.search.segments import SegmentInfo, get_image, get_segment, list_segments
from samsearch.serve.page import PAGE
from samsearch.vectors import VectorStoreBusy, VectorStoreError

API_SCHEMA = "samsearch.api/v1"
MAX_BODY = 1 << 20  # JSON bodies; no route takes more than a list of ids
MAX_IDS = 10_000
MAX_ID_LEN = 100
MAX_UPLOAD_BYTES = 10 << 20  # an uploaded query image (decoded from base64), and its mask
MAX_UPLOAD_PIXELS = 40_000_000  # checked from the image header before decoding (decompression bombs)
READS_BY_POST = {"/api/search"}  # a POST only because the query is a body; allowed in read-only mode
log = logging.getLogger("samsearch.serve")


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status)


def _status_for(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, HttpError):
        return exc.status, str(exc)
    if isinstance(exc, NotFoundError):
        return 404, str(exc)
    if isinstance(exc, InputError):
        return 400, str(exc)
    if isinstance(exc, EmbeddingSpaceMismatch):
        return 409, str(exc)
    if isinstance(exc, VectorStoreBusy):  # another process (an ingest, a worker) holds the embedded store
        return 409, str(exc)
    if isinstance(exc, VectorStoreError):
        return 503, str(exc)
    if isinstance(exc, SamsearchError):
        return 400, str(exc)
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig):
        return 409, "the database is busy with another writer (a worker or job); try again when it is done"
    return 500, "internal error (see the server log)"


# -- request parsing ---------------------------------------------------------------------------------


def _segment_id(request: Request) -> str:
    sid = request.path_params["id"]
    if not sid or len(sid) > MAX_ID_LEN or not sid.isprintable():
        raise HttpError(404, "no such segment")
    return sid


def _int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise HttpError(400, f"{name} must be {lo}..{hi}, got {value}")
    return value


def _float_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise HttpError(400, f"{name} must be finite, got {raw!r}")
    return value


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes (by its
    Content-Length, or while streaming one without), so an oversized upload is never held whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    body = await _read_body(request, limit)
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise HttpError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the request body must be a JSON object")
    return data


_FORM_FILES = ("image", "mask")


async def _form_body(request: Request, limit: int) -> dict[str, Any]:
    """A ``multipart/form-data`` request as the JSON body it stands for: the ``image`` and ``mask`` file
    parts become their bytes; every other field is read as a JSON value (``k=5``, ``box=[0,0,9,9]``,
    ``filters={"dataset": "a"}``), or kept as a plain string when it is not JSON (``text=a red car``)."""
    body = await _read_body(request, limit)  # the size limit holds before any parsing

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=len(_FORM_FILES), max_fields=32)
    except HttpError:
        raise
    except Exception as exc:  # malformed multipart, too many parts
        raise HttpError(400, f"the multipart body cannot be read: {one_line(exc)}") from None
    data: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if key in data:
                raise HttpError(400, f"field {key!r} appears more than once")
            if isinstance(value, str):
                if key in _FORM_FILES:
                    raise HttpError(400, f"{key} must be a file part (filename=...), not a text field")
                try:
                    data[key] = json.loads(value)
                except ValueError:
                    data[key] = value
            elif key in _FORM_FILES:
                data[key] = await value.read()
            else:
                raise HttpError(400, f"field {key!r} must be a text field, not a file")
    finally:
        await form.close()
    return data


async def _search_body(request: Request, limit: int) -> dict[str, Any]:
    """The search request: a JSON object, or a multipart form (an image file and its fields)."""
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return await _form_body(request, limit)
    return await _json_body(request, limit)


def _check_keys(data: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise HttpError(400, f"unknown field(s) in {what}: {', '.join(map(repr, unknown))} "
                             f"(allowed: {', '.join(sorted(allowed))})")


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = data.get(key, default)
    if value is None:
        return default
    # bool is an int in Python: never accept true for a number
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise HttpError(400, f"{key} has the wrong type (bool)")
    if not isinstance(value, kind):
        raise HttpError(400, f"{key} has the wrong type ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise HttpError(400, f"{key} must be finite")
    return value


_FILTER_KEYS = {"dataset", "label", "cluster", "image_id", "min_area", "max_area", "exclude_same_image"}
_SEARCH_KEYS = {"segment_id", "k", "min_score", "filters", "positive", "negative", "diversity", "strategy", "space"}
_FEEDBACK_KEYS = {"positive", "negative", "diversity", "strategy"}
_IMAGE_KEYS = {"image", "box", "points", "negative_points", "mask", "k", "min_score", "filters"}
_TEXT_KEYS = {"text", "space", "k", "min_score", "filters"}
_NOT_YET = {"prompt", "mmr"}


def _filters(raw: Any) -> SearchFilters:
    if raw is None:
        return SearchFilters()
    if not isinstance(raw, dict):
        raise HttpError(400, "filters must be a JSON object")
    _check_keys(raw, _FILTER_KEYS, "filters")
    dataset = raw.get("dataset")
    if dataset is not None and not (isinstance(dataset, str) or (
            isinstance(dataset, list) and dataset and all(isinstance(d, str) for d in dataset))):
        raise HttpError(400, "filters.dataset must be a name or a non-empty list of names")
    return SearchFilters(
        dataset=dataset, label=_typed(raw, "label", str), cluster=_typed(raw, "cluster", int),
        image_id=_typed(raw, "image_id", int), min_area=_typed(raw, "min_area", int),
        max_area=_typed(raw, "max_area", int),
        exclude_same_image=bool(_typed(raw, "exclude_same_image", bool, False)),
    )


def _ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(i, str) for i in value):
        raise HttpError(400, "segment_ids must be a non-empty list of segment id strings")
    if len(value) > MAX_IDS:
        raise HttpError(400, f"at most {MAX_IDS} segment ids per request, got {len(value)}")
    return value


def _example_ids(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_LEN for i in value):
        raise HttpError(400, f"{key} must be a list of segment id strings")
    return value


def _numbers(value: Any, n: int, what: str) -> list[float]:
    if (not isinstance(value, list) or len(value) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise HttpError(400, f"{what} must be a list of {n} finite numbers")
    return [float(v) for v in value]


def _points(value: Any, what: str) -> list[list[float]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 100:
        raise HttpError(400, f"{what} must be a list of at most 100 [x, y] points")
    return [_numbers(p, 2, f"each of {what}") for p in value]


def _upload(value: Any, what: str, max_bytes: int) -> bytes:
    """Base64 (optionally a ``data:...;base64,`` URL), or a multipart file part's bytes → bytes, at most
    ``max_bytes``."""
    if isinstance(value, bytes):
        if len(value) > max_bytes:
            raise HttpError(413, f"{what}: upload over {max_bytes} bytes")
        if not value:
            raise HttpError(400, f"{what}: the uploaded file is empty")
        return value
    if not isinstance(value, str) or not value:
        raise HttpError(400, f"{what} must be a base64 string (the file's bytes)")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) > (max_bytes + 2) // 3 * 4 + 4:  # refuse before decoding
        raise HttpError(413, f"{what}: upload over {max_bytes} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{what} is not valid base64") from None
    if len(data) > max_bytes:
        raise HttpError(413, f"{what}: upload over {max_bytes} bytes")
    return data


def _decode(data: bytes, what: str, max_pixels: int) -> np.ndarray:
    try:
        return decode_image(data, f"<{what}>", max_pixels=max_pixels)
    except ImageLoadError as exc:
        raise HttpError(413 if "too large" in exc.reason else 400, str(exc)) from None


def segment_dict(seg: SegmentInfo, with_mask: bool = True) -> dict[str, Any]:
    d = {"segment_id": seg.segment_id, "image_id": seg.image_id, "image_path": seg.image_path,
         "dataset": seg.dataset, "bbox_xywh": list(seg.bbox_xywh), "area": seg.area, "height": seg.height,
         "width": seg.width, "source": seg.source, "annotation_category": seg.annotation_category,
         "label": seg.label, "label_score": seg.label_score, "cluster": seg.cluster}
    if with_mask:
        d["mask"] = seg.rle
    return d


# -- the application ---------------------------------------------------------------------------------


def create_app(home: Home, read_only: bool = False, token: str | None = None, *, model: Any = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_upload_pixels: int = MAX_UPLOAD_PIXELS) -> Starlette:
    """The ASGI app serving ``home`` (which the caller opens and closes). ``model``: the SAM model for
    image queries (default: the home's own, loaded on the first one); uploads are refused (413) over
    ``max_upload_bytes`` bytes or ``max_upload_pixels`` pixels."""
    if token is not None and not token:
        raise InputError("--token must not be empty")
    models: list[Any] = [model] if model is not None else []
    model_lock = threading.Lock()

    def query_model() -> Any:
        with model_lock:  # one load, however many clients ask at once
            if not models:
                models.append(model_for_home(home))
            return models[0]

    def image_search(data: dict[str, Any], k: int, min_score: float | None, filters: SearchFilters) -> Any:
        raw = _upload(data.get("image"), "image", max_upload_bytes)
        rgb = _decode(raw, "upload", max_upload_pixels)
        loaded = LoadedImage(path=Path("<upload>"), rgb=rgb, width=int(rgb.shape[1]), height=int(rgb.shape[0]),
                             content_hash=hashlib.sha256(raw).hexdigest(), file_size=len(raw))
        mask = None
        if data.get("mask") is not None:
            mask = _decode(_upload(data["mask"], "mask", max_upload_bytes), "mask", max_upload_pixels).any(axis=2)
        box = None if data.get("box") is None else _numbers(data["box"], 4, "box")
        return search_by_image(home, loaded, box=box, points=_points(data.get("points"), "points"),
                               negative_points=_points(data.get("negative_points"), "negative_points"),
                               mask=mask, model=query_model(), k=k, filters=filters, min_score=min_score)

    text_models: dict[str, Any] = {}  # text-image space name → its loaded model (one load per space)
    text_lock = threading.Lock()

    def text_search(text: str, space: str | None, k: int, min_score: float | None, filters: SearchFilters) -> Any:
        name = text_space(home, space)
        with text_lock:
            if name not in text_models and name in home.spaces():
                text_models[name] = load_text_space(home, name)
        return search_text(home, text, k=k, filters=filters, min_score=min_score, space=name,
                           space_model=text_models.get(name))

    def json_route(fn: Callable[..., Any]) -> Callable[[Request], Any]:
        """A handler whose work (store calls) runs in the thread pool, with errors as JSON."""

        async def endpoint(request: Request) -> Response:
            try:
                result = await fn(request)
            except Exception as exc:  # the one boundary: map, never leak a traceback
                status, message = _status_for(exc)
                if status == 500:
                    log.exception("unexpected error on %s %s", request.method, request.url.path)
                return _error(status, message)
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return run_in_threadpool(fn, *args, **kwargs)

    async def stats(request: Request) -> Any:
        data = await call(collect_stats, home)
        return {"schema": API_SCHEMA, **data}

    async def segments(request: Request) -> Any:
        q = request.query_params
        for name in ("dataset", "label"):
            if name in q and not q[name]:
                raise HttpError(400, f"{name} must not be empty")
        page = await call(
            list_segments, home, limit=_int_param(request, "limit", 60, 1, 1000),
            offset=_int_param(request, "offset", 0, 0, 2**62), dataset=q.get("dataset"), label=q.get("label"),
            cluster=_int_param(request, "cluster", None, -(2**31), 2**31),
            min_score=_float_param(request, "min_score"), max_score=_float_param(request, "max_score"))
        return {"schema": API_SCHEMA, "segments": [segment_dict(s, with_mask=False) for s in page]}

    async def segment(request: Request) -> Any:
        seg = await call(get_segment, home, _segment_id(request))
        return {"schema": API_SCHEMA, **segment_dict(seg)}

    def _registered_image(path: str, masks: list, what: str):
        """The pixels of an image the home registered (never a path from the request), checked against its
        stored masks: 410 when the file is unreadable now, 409 when it changed size since ingest."""
        try:
            rgb = load_image(path).rgb
        except (ImageLoadError, OSError):
            raise HttpError(410, f"{what}: its image is no longer readable") from None
        if any(m.shape != rgb.shape[:2] for m in masks):
            raise HttpError(409, f"{what}: the file at its image path changed size since ingest")
        return rgb

    def _crop_png(sid: str, size: int) -> bytes:
        seg = get_segment(home, sid)
        mask = seg.mask()
        rgb = _registered_image(seg.image_path, [mask], f"segment {sid}")
        buf = io.BytesIO()
        render_crop(rgb, mask, size=size).save(buf, format="PNG")
        return buf.getvalue()

    def _overlay_png(image_id: int, max_side: int) -> bytes:
        info = get_image(home, image_id)
        masks = [seg.mask() for seg in info.segments]
        rgb = _registered_image(info.image_path, masks, f"image {image_id}")
        captions = [seg.label or seg.annotation_category or "" for seg in info.segments]
        buf = io.BytesIO()
        render_image_overlay(rgb, masks, captions, max_side=max_side).save(buf, format="PNG")
        return buf.getvalue()

    def _image_id(request: Request) -> int:
        iid = request.path_params["id"]
        if iid > 2**31 - 1:  # larger than any key the database holds
            raise HttpError(404, "no such image")
        return iid

    async def image(request: Request) -> Any:
        info = await call(get_image, home, _image_id(request))
        return {"schema": API_SCHEMA, "image_id": info.image_id, "image_path": info.image_path,
                "dataset": info.dataset, "width": info.width, "height": info.height, "status": info.status,
                "segments": [segment_dict(seg, with_mask=False) for seg in info.segments]}

    async def overlay(request: Request) -> Any:
        max_side = _int_param(request, "max_side", 1024, 64, 4096)
        png = await call(_overlay_png, _image_id(request), max_side)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    async def crop(request: Request) -> Any:
        size = _int_param(request, "size", 160, 16, 512)
        png = await call(_crop_png, _segment_id(request), size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    async def search(request: Request) -> Any:
        # an image and its mask, base64 (4/3 of their bytes) or multipart, and the rest of the request
        data = await _search_body(request, max(MAX_BODY, (2 * max_upload_bytes) * 4 // 3 + MAX_BODY))
        asked = sorted(set(data) & _NOT_YET)
        if asked:
            raise HttpError(400, f"{', '.join(asked)}: not supported by this server yet "
                                 "(search by segment_id, positive/negative examples, image, or text)")
        k = _typed(data, "k", int, 10)
        min_score = _typed(data, "min_score", (int, float))
        if "text" in data:
            _check_keys(data, _TEXT_KEYS, "the text search request")
            text = _typed(data, "text", str)
            if text is None:
                raise HttpError(400, "text must be a string")
            results = await call(text_search, text, _typed(data, "space", str), k,
                                 None if min_score is None else float(min_score), _filters(data.get("filters")))
            return results.as_dict()
        if "image" in data:
            _check_keys(data, _IMAGE_KEYS, "the image search request")
            results = await call(image_search, data, k, None if min_score is None else float(min_score),
                                 _filters(data.get("filters")))
            return results.as_dict()
        _check_keys(data, _SEARCH_KEYS, "the search request")
        sid = data.get("segment_id")
        space = _typed(data, "space", str, SAM_SPACE) or SAM_SPACE  # compare in this embedding space
        if _FEEDBACK_KEYS & set(data):
            # Relevance feedback: segment_id (if any) is one more positive example.
            positive = ([sid] if isinstance(sid, str) and sid else []) + _example_ids(data, "positive")
            negative = _example_ids(data, "negative")
            if not positive:
                raise HttpError(400, "relevance feedback needs segment_id or a non-empty positive list")
            if min_score is not None:
                raise HttpError(400, "min_score does not apply to positive/negative queries (their scores "
                                     "are not cosines)")
            diversity = _typed(data, "diversity", (int, float), 0.0)
            results = await call(search_by_examples, home, positive, negative, k=k,
                                 filters=_filters(data.get("filters")), diversity=float(diversity),
                                 strategy=_typed(data, "strategy", str, "best_score"), space=space)
            return results.as_dict()
        if not isinstance(sid, str) or not sid:
            raise HttpError(400, "segment_id (a string) is required")
        results = await call(search_by_segment, home, sid, k=k, filters=_filters(data.get("filters")),
                             min_score=None if min_score is None else float(min_score), space=space)
        return results.as_dict()

    async def labels(request: Request) -> Any:
        data = await _json_body(request)
        _check_keys(data, {"segment_ids", "label"}, "the labels request")
        ids = _ids(data.get("segment_ids"))
        if "label" not in data:
            raise HttpError(400, "label (a string, or null to clear manual labels) is required")
        label = data["label"]
        if label is None:
            return await clear(ids)
        if not isinstance(label, str):
            raise HttpError(400, "label must be a string (or null to clear manual labels)")
        n = await call(set_manual_labels, home, ids, label)
        return {"schema": API_SCHEMA, "label": label, "requested": len(set(ids)), "labeled": n}

    async def clear(ids: list[str]) -> Any:
        n = await call(clear_manual_labels, home, ids)
        return {"schema": API_SCHEMA, "label": None, "requested": len(set(ids)), "cleared": n}

    async def unlabel(request: Request) -> Any:
        data = await _json_body(request)
        _check_keys(data, {"segment_ids"}, "the labels request")
        return await clear(_ids(data.get("segment_ids")))

    async def facets(request: Request) -> Any:
        return {"schema": API_SCHEMA, "labels": await call(label_counts, home)}

    async def clusters(request: Request) -> Any:
        return {"schema": API_SCHEMA, "runs": await call(list_runs, home)}

    async def cluster_run(request: Request) -> Any:
        top = _int_param(request, "top", 8, 1, 100)
        report = await call(cluster_report, home, request.path_params["run"], top)
        return {"schema": API_SCHEMA, **report.as_dict()}

    async def name(request: Request) -> Any:
        data = await _json_body(request)
        _check_keys(data, {"label", "overwrite_manual"}, "the name request")
        label = data.get("label")
        if not isinstance(label, str):
            raise HttpError(400, "label (a string) is required")
        summary = await call(name_cluster, home, request.path_params["run"], request.path_params["cluster"],
                             label, overwrite_manual=bool(_typed(data, "overwrite_manual", bool, False)))
        return {"schema": API_SCHEMA, **summary.as_dict()}

    async def banks(request: Request) -> Any:
        return {"schema": API_SCHEMA, "banks": [b.as_dict() for b in await call(list_banks, home)]}

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; "
                                           "script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
                                           "img-src 'self' blob:"})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/api/stats", json_route(stats), methods=["GET"]),
        Route("/api/segments", json_route(segments), methods=["GET"]),
        Route("/api/segments/{id}", json_route(segment), methods=["GET"]),
        Route("/api/segments/{id}/crop.png", json_route(crop), methods=["GET"]),
        Route("/api/images/{id:int}", json_route(image), methods=["GET"]),
        Route("/api/images/{id:int}/overlay.png", json_route(overlay), methods=["GET"]),
        Route("/api/search", json_route(search), methods=["POST"]),
        Route("/api/labels", json_route(labels), methods=["POST"]),
        Route("/api/labels", json_route(facets), methods=["GET"]),
        Route("/api/labels", json_route(unlabel), methods=["DELETE"]),
        Route("/api/clusters", json_route(clusters), methods=["GET"]),
        Route("/api/clusters/{run}", json_route(cluster_run), methods=["GET"]),
        Route("/api/clusters/{run}/{cluster:int}/name", json_route(name), methods=["POST"]),
        Route("/api/banks", json_route(banks), methods=["GET"]),
    ]

    async def guard(scope: Any, receive: Any, send: Any) -> None:
        """Token and read-only checks for every ``/api`` request, before any route runs."""
        if scope["type"] == "http" and scope["path"].startswith("/api"):
            request = Request(scope)
            if token is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    response = _error(401, "missing or wrong token (send Authorization: Bearer <token>)")
                    response.headers["WWW-Authenticate"] = "Bearer"
                    await response(scope, receive, send)
                    return
            if read_only and request.method not in ("GET", "HEAD") and scope["path"] not in READS_BY_POST:
                await _error(403, "this server is read-only (started with --read-only)")(scope, receive, send)
                return
        await inner(scope, receive, send)

    async def on_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        message = {404: "no such route", 405: f"{request.method} is not allowed here"}.get(status, "internal error")
        return _error(status, message)

    inner = Starlette(routes=routes, exception_handlers={404: on_error, 405: on_error, 500: on_error})
    inner.router.redirect_slashes = False  # "/api/segments/.." normalised by a client must not redirect
    return _Guarded(guard, inner)  # type: ignore[return-value]


class _Guarded:
    """An ASGI app: ``guard`` in front of the Starlette app (kept as ``.app`` for lifespan and tests)."""

    def __init__(self, guard: Any, app: Starlette):
        self.guard, self.app = guard, app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
        else:
            await self.guard(scope, receive, send)


def run_server(home: Home, host: str = "127.0.0.1", port: int = 8765, read_only: bool = False,
               token: str | None = None, log_level: str = "info") -> None:
    """Serve ``home`` until interrupted (blocking)."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise InputError(f"binding to {host} exposes the home to the network: give --token (or use 127.0.0.1)")
    uvicorn.run(create_app(home, read_only=read_only, token=token), host=host, port=port, log_level=log_level,
                access_log=False)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

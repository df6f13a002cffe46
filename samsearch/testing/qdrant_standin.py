"""A stand-in Qdrant server for tests and the reliability script, where no real Qdrant can run.

It serves, over real HTTP, the part of Qdrant's REST API that :class:`~samsearch.vectors.server.ServerVectorStore`
uses (collections, payload indexes, upsert/delete/set_payload, retrieve/scroll/count/query), backed by
qdrant-client's own local engine (``QdrantLocal``, in memory, one lock around it). Several worker
*processes* can therefore share one vector store through the real client code path (HTTP, JSON,
``wait=true``, error responses).

What it adds for tests: an optional API key (401 without it), a log of every request (method, path,
query string, body) to check what the client sent, and fault injection: ``fail_upsert=n`` makes the
n-th points upsert apply only its first half and then answer HTTP 500, i.e. a store failing mid-batch.

It is not Qdrant: no sharding, replication, on-disk storage or quantization happen; the creation
parameters are remembered and reported back by ``GET /collections/{name}`` so callers can check them.

    python -m samsearch.testing.qdrant_standin --port 6333 [--api-key KEY] [--fail-upsert N]
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from qdrant_client.http import models
from qdrant_client.local.qdrant_local import QdrantLocal


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class StandinState:
    """Everything the server holds; shared by the handler threads under ``lock``."""

    api_key: str | None = None
    fail_upsert: int | None = None  # the n-th upsert (1-based) fails half-applied; None: never
    engine: QdrantLocal = field(default_factory=lambda: QdrantLocal(":memory:"))
    created: dict[str, models.CreateCollection] = field(default_factory=dict)
    indexes: dict[str, dict[str, str]] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    upserts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    return value


def _done() -> dict[str, Any]:
    return {"operation_id": 0, "status": "completed"}


class _Routes:
    """``(method, regex) → handler(state, name, query, body)``; handlers return the ``result`` JSON."""

    def __init__(self) -> None:
        self.table: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = []

    def add(self, method: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.table.append((method, re.compile(f"^{pattern}$"), fn))
            return fn

        return register

    def find(self, method: str, path: str) -> tuple[Callable[..., Any], str | None]:
        for m, rx, fn in self.table:
            hit = rx.match(path)
            if m == method and hit:
                return fn, (hit.group(1) if rx.groups else None)
        raise _HttpError(404, f"no route for {method} {path}")


routes = _Routes()
NAME = r"/collections/([^/]+)"


def _collection(st: StandinState, name: str) -> None:
    if not st.engine.collection_exists(name):
        raise _HttpError(404, f"Not found: Collection `{name}` doesn't exist!")


@routes.add("GET", "/collections")
def _list(st: StandinState, _name: None, _q: dict, _body: Any) -> Any:
    return _dump(st.engine.get_collections())


@routes.add("GET", NAME + "/exists")
def _exists(st: StandinState, name: str, _q: dict, _body: Any) -> Any:
    return {"exists": st.engine.collection_exists(name)}


@routes.add("PUT", NAME)
def _create(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    if st.engine.collection_exists(name):
        raise _HttpError(409, f"Wrong input: Collection `{name}` already exists!")
    spec = models.CreateCollection.model_validate(body)
    st.engine.create_collection(name, vectors_config=spec.vectors)
    st.created[name] = spec
    st.indexes[name] = {}
    return True


@routes.add("GET", NAME)
def _info(st: StandinState, name: str, _q: dict, _body: Any) -> Any:
    _collection(st, name)
    info = st.engine.get_collection(name)
    spec = st.created.get(name)
    if spec is not None:  # report the creation parameters a server would apply
        params = info.config.params
        params.shard_number = spec.shard_number or 1
        params.replication_factor = spec.replication_factor or 1
        params.write_consistency_factor = spec.write_consistency_factor or 1
        params.on_disk_payload = bool(spec.on_disk_payload)
        info.config.quantization_config = spec.quantization_config
    info.payload_schema = {
        f: models.PayloadIndexInfo(data_type=models.PayloadSchemaType(t), points=0)
        for f, t in st.indexes.get(name, {}).items()
    }
    return _dump(info)


@routes.add("DELETE", NAME)
def _drop(st: StandinState, name: str, _q: dict, _body: Any) -> Any:
    st.created.pop(name, None)
    st.indexes.pop(name, None)
    return st.engine.delete_collection(name)


@routes.add("PUT", NAME + "/index")
def _index(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    spec = models.CreateFieldIndex.model_validate(body)
    schema = spec.field_schema
    st.indexes[name][spec.field_name] = schema.value if isinstance(schema, models.PayloadSchemaType) else str(schema)
    return _done()


@routes.add("PUT", NAME + "/points")
def _upsert(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    st.upserts += 1
    if "batch" in body:
        b = models.Batch.model_validate(body["batch"])
        n = len(b.ids)
        points: Any = b
        half: Any = models.Batch(ids=b.ids[: n // 2], vectors=b.vectors[: n // 2],  # type: ignore[index]
                                 payloads=(b.payloads or [])[: n // 2] or None)
    else:
        points = [models.PointStruct.model_validate(p) for p in body["points"]]
        half = points[: len(points) // 2]
    if st.fail_upsert is not None and st.upserts == st.fail_upsert:
        st.engine.upsert(name, half)  # the first half lands, then the "server" fails
        raise _HttpError(500, f"Service internal error: injected fault in upsert #{st.upserts}")
    st.engine.upsert(name, points)
    return _done()


def _selector(body: dict[str, Any]) -> Any:
    if "points" in body:
        return models.PointIdsList.model_validate(body)
    return models.FilterSelector.model_validate(body)


@routes.add("POST", NAME + "/points/delete")
def _delete(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    st.engine.delete(name, _selector(body))
    return _done()


@routes.add("POST", NAME + "/points/payload")
def _set_payload(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    sp = models.SetPayload.model_validate(body)
    st.engine.set_payload(name, sp.payload, points=sp.points if sp.points is not None else sp.filter, key=sp.key)
    return _done()


@routes.add("POST", NAME + "/points")
def _retrieve(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    req = models.PointRequest.model_validate(body)
    return _dump(st.engine.retrieve(name, req.ids, req.with_payload if req.with_payload is not None else True,
                                    req.with_vector or False))


@routes.add("POST", NAME + "/points/scroll")
def _scroll(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    req = models.ScrollRequest.model_validate(body)
    records, nxt = st.engine.scroll(
        name, scroll_filter=req.filter, limit=req.limit or 10, offset=req.offset,
        with_payload=req.with_payload if req.with_payload is not None else True,
        with_vectors=req.with_vector or False,
    )
    return {"points": _dump(records), "next_page_offset": nxt}


@routes.add("POST", NAME + "/points/count")
def _count(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    req = models.CountRequest.model_validate(body)
    return _dump(st.engine.count(name, count_filter=req.filter))


def _query(st: StandinState, name: str, req: models.QueryRequest) -> Any:
    # Local mode is exact and warns about search params: the client's params are logged, not applied.
    return st.engine.query_points(
        name, query=req.query, query_filter=req.filter, limit=req.limit or 10,
        score_threshold=req.score_threshold,
        with_payload=req.with_payload if req.with_payload is not None else False,
        with_vectors=req.with_vector or False,
    )


@routes.add("POST", NAME + "/points/query")
def _query_one(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    return _dump(_query(st, name, models.QueryRequest.model_validate(body)))


@routes.add("POST", NAME + "/points/query/batch")
def _query_batch(st: StandinState, name: str, _q: dict, body: Any) -> Any:
    _collection(st, name)
    batch = models.QueryRequestBatch.model_validate(body)
    return [_dump(_query(st, name, r)) for r in batch.searches]


def _handler_for(state: StandinState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real server does

        def log_message(self, *_args: Any) -> None:  # quiet
            pass

        def _answer(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
                with state.lock:
                    state.log.append(Request(self.command, url.path, query, body))
                    if state.api_key is not None and self.headers.get("api-key") != state.api_key:
                        raise _HttpError(401, "Must provide an API key or an Authorization bearer token")
                    fn, name = routes.find(self.command, url.path)
                    result = fn(state, name, query, body)
            except _HttpError as exc:
                self._answer(exc.status, {"status": {"error": str(exc)}, "time": 0.0})
                return
            except Exception as exc:  # a bad request body or an engine refusal
                self._answer(400, {"status": {"error": f"Bad request: {exc}"}, "time": 0.0})
                return
            self._answer(200, {"result": result, "status": "ok", "time": 0.0})

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve  # noqa: N815

    return Handler


class QdrantStandin:
    """The stand-in server on ``127.0.0.1:<port>`` (0 picks a free port), served from a thread."""

    def __init__(self, port: int = 0, api_key: str | None = None, fail_upsert: int | None = None):
        self.state = StandinState(api_key=api_key, fail_upsert=fail_upsert)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self.state))
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="qdrant-standin",
                                        daemon=True)

    def start(self) -> QdrantStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.state.engine.close()

    def __enter__(self) -> QdrantStandin:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def requests(self, method: str | None = None, suffix: str = "") -> list[Request]:
        with self.state.lock:
            return [r for r in self.state.log if (method is None or r.method == method) and r.path.endswith(suffix)]


def main() -> None:
    ap = argparse.ArgumentParser(description="A stand-in Qdrant REST server (tests only).")
    ap.add_argument("--port", type=int, default=6333)
    ap.add_argument("--api-key")
    ap.add_argument("--fail-upsert", type=int)
    args = ap.parse_args()
    server = QdrantStandin(args.port, args.api_key, args.fail_upsert)
    print(server.url, flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()

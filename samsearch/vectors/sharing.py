"""One embedded vector store per home, and reads for the other samsearch processes.

Qdrant Edge lets one process open a shard, and its own directory lock comes too late: ``EdgeShard.load``
in a second process rewrites the open shard's payload tracker journals before the WAL lock refuses it,
and the first process's next flush then dies ("tracker journal is shorter than expected"). So every
:class:`~samsearch.vectors.edge.EdgeVectorStore` takes :class:`HomeLock` (an advisory ``flock`` on
``<root>/.samsearch.lock``, dropped by the kernel when the process dies) before it opens, creates or
drops a shard or writes a collection's meta; a process that cannot take it never calls into
qdrant-edge for that root.

The holder answers reads for the others (:class:`ReadServer`): a Unix socket (Linux: the abstract
namespace, named from a hash of the root, so no file and no path-length limit) in a daemon thread,
calling its own open store (whose lock serialises the calls). Only processes of the same user are
answered (``SO_PEERCRED``). Frames are a 4-byte length and JSON (vectors as base64 float32), so no
peer can make the holder run code. :class:`RemoteReader` is the client side. May import ``base`` only.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samsearch.vectors.base import (
    Filter,
    Hit,
    IsNull,
    Match,
    Range,
    Record,
    VectorBatch,
    VectorStoreBusy,
    VectorStoreError,
    plain_value,
)

LOCK_FILE = ".samsearch.lock"
OWNER_FILE = ".samsearch-owner.json"  # {"pid", "command", "started", "mode"} of the lock's holder
READ_OPS = ("count", "retrieve", "search", "search_batch", "recommend", "index_status", "scroll_page")
_MAX_FRAME = 1 << 31


# -- the lock ----------------------------------------------------------------------------------------

def _command_line() -> str:
    argv = list(sys.argv)
    if argv and (argv[0].endswith(("__main__.py", "/samsearch")) or argv[0] == "samsearch"):
        argv[0] = "samsearch"
    line = " ".join(argv) if argv else f"python (pid {os.getpid()})"
    return line if len(line) <= 120 else line[:117] + "..."


class HomeLock:
    """The exclusive advisory lock of one embedded store root, with its holder's description."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._fd: int | None = None
        self.owner: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if free (never waits); True when this object holds it."""
        if self._fd is not None:
            return True
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.owner = {"pid": os.getpid(), "command": _command_line(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": "read"}
        self._write_owner()
        return True

    def set_mode(self, mode: str) -> None:
        """Record ``read`` (opened the shards to read) or ``write`` (claimed writes) for waiting peers."""
        if self._fd is not None and self.owner.get("mode") != mode:
            self.owner["mode"] = mode
            self._write_owner()

    def _write_owner(self) -> None:
        tmp = self.root / f"{OWNER_FILE}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):  # only a description for others' messages
            tmp.write_text(json.dumps(self.owner))
            os.replace(tmp, self.root / OWNER_FILE)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @staticmethod
    def read_owner(root: Path) -> dict[str, Any]:
        try:
            data = json.loads((Path(root) / OWNER_FILE).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}


def busy_error(root: Path, owner: dict[str, Any], what: str = "writes") -> VectorStoreBusy:
    """The one-line refusal naming the process that holds ``root``."""
    who = f"`{owner['command']}` (pid {owner.get('pid', '?')})" if owner.get("command") else "another process"
    return VectorStoreBusy(
        f"{root} is in use by {who}; {what} must wait until it ends (an embedded vector store has one writer; "
        "stats, search and doctor work beside it), or use a Qdrant server via SAMSEARCH_QDRANT_URL", owner)


def socket_address(root: Path) -> str | None:
    """Where the holder of ``root`` answers reads: an abstract Unix socket on Linux, else None (readers
    then wait for the holder to end)."""
    if not sys.platform.startswith("linux"):
        return None
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:40]
    return f"\0samsearch-edge-{digest}"


# -- the wire ------------------------------------------------------------------------------------------

def _array(x: np.ndarray) -> dict[str, Any]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return {"nd": base64.b64encode(x.tobytes()).decode("ascii"), "shape": list(x.shape)}


def _unarray(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["nd"]), dtype=np.float32).reshape(d["shape"]).copy()


def _value(v: Any) -> Any:
    if isinstance(v, (list, tuple, set, frozenset)):
        return [plain_value(x) for x in v]
    return plain_value(v)


def encode_filter(flt: Filter | None) -> Any:
    if flt is None:
        return None

    def cond(c: Match | Range | IsNull) -> dict[str, Any]:
        if isinstance(c, Match):
            return {"match": c.field, "value": _value(c.value)}
        if isinstance(c, Range):
            return {"range": c.field, "gte": c.gte, "lte": c.lte}
        if isinstance(c, IsNull):
            return {"is_null": c.field}
        raise VectorStoreError(f"unsupported filter condition {c!r}")

    return {"must": [cond(c) for c in flt.must], "must_not": [cond(c) for c in flt.must_not]}


def decode_filter(d: Any) -> Filter | None:
    if d is None:
        return None

    def cond(c: dict[str, Any]) -> Match | Range | IsNull:
        if "match" in c:
            return Match(c["match"], c["value"])
        if "range" in c:
            return Range(c["range"], c.get("gte"), c.get("lte"))
        return IsNull(c["is_null"])

    return Filter(tuple(cond(c) for c in d.get("must", ())), tuple(cond(c) for c in d.get("must_not", ())))


def _records(records: Sequence[Record]) -> list[Any]:
    return [[r.id, r.payload, None if r.vector is None else _array(r.vector)] for r in records]


def _unrecords(rows: list[Any]) -> list[Record]:
    return [Record(i, p, None if v is None else _unarray(v)) for i, p, v in rows]


def _hits(hits: Sequence[Hit]) -> list[Any]:
    return [[h.id, h.score, h.payload] for h in hits]


def _unhits(rows: list[Any]) -> list[Hit]:
    return [Hit(i, float(s), p) for i, s, p in rows]


def _send(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket) -> Any:
    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    if n >= _MAX_FRAME:
        raise ConnectionError("frame too large")
    return json.loads(_recv_exact(sock, n))


# -- the holder's side -----------------------------------------------------------------------------------

def _call(store: Any, op: str, a: dict[str, Any]) -> Any:
    """Run read ``op`` on the holder's ``store`` and encode its answer."""
    name, flt = a["name"], decode_filter(a.get("filter"))
    if op == "count":
        return store.count(name, flt)
    if op == "index_status":
        return list(store.index_status(name))
    if op == "retrieve":
        return _records(store.retrieve(name, a["ids"], with_vectors=bool(a.get("with_vectors"))))
    if op == "search":
        return _hits(store.search(name, _unarray(a["vector"]), k=int(a["k"]), flt=flt, min_score=a.get("min_score"),
                                  exact=bool(a.get("exact"))))
    if op == "search_batch":
        return [_hits(h) for h in store.search_batch(name, _unarray(a["vectors"]), k=int(a["k"]), flt=flt)]
    if op == "recommend":
        return _hits(store.recommend(name, a["positive"], a.get("negative", ()), k=int(a["k"]), flt=flt,
                                     strategy=a.get("strategy", "best_score")))
    if op == "scroll_page":
        fields = a.get("payload_fields")
        page, offset = store.scroll_page(name, flt, a.get("offset"), int(a["limit"]),
                                         with_vectors=bool(a.get("with_vectors")), payload_fields=fields)
        if fields is None:
            return {"records": _records(page), "offset": offset}
        return {"batch": {"ids": page.ids, "vectors": _array(page.vectors), "payloads": page.payloads},
                "offset": offset}
    raise VectorStoreError(f"{op!r} is not a read the holder of an embedded store answers")


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock = self.request
        if not _same_user(sock):
            return
        try:
            req = _recv(sock)
            op = req.get("op")
            if op not in READ_OPS:
                _send(sock, {"error": f"{op!r} is not a read; writes must wait until the holder ends"})
                return
            with self.server.serialise:  # the store's lock: close() sets ``closed`` under it
                if self.server.closed:
                    _send(sock, {"gone": True})
                    return
                try:
                    result = _call(self.server.store, op, req.get("args") or {})
                except VectorStoreError as exc:
                    _send(sock, {"error": str(exc)})
                    return
                except Exception as exc:  # a bad request must not kill the holder's thread quietly
                    _send(sock, {"error": f"{op} failed in the holder: {' '.join(str(exc).split())[:300]}"})
                    return
            _send(sock, {"ok": result})
        except (OSError, ConnectionError, ValueError):
            return  # the reader went away or sent garbage


def _same_user(sock: socket.socket) -> bool:
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None:
        return False
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i")))
    except OSError:
        return False
    return uid == os.getuid()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: str, store: Any, serialise: Any):
        self.store = store
        self.serialise = serialise
        self.closed = False
        super().__init__(address, _Handler)


class ReadServer:
    """Answers :data:`READ_OPS` for ``store`` (the lock holder) on ``address`` until :meth:`close`."""

    def __init__(self, store: Any, address: str, serialise: Any):
        self._server = _Server(address, store, serialise)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="samsearch-edge-reads", daemon=True)
        self._thread.start()

    @staticmethod
    def start(store: Any, address: str | None, serialise: Any) -> ReadServer | None:
        """A running server, or None where none can listen (another platform, the address taken)."""
        if address is None:
            return None
        try:
            return ReadServer(store, address, serialise)
        except OSError:
            return None

    def stop_answering(self) -> None:
        """Call with ``serialise`` held: requests from now on answer "gone" (the reader retries)."""
        self._server.closed = True

    def close(self) -> None:
        self._server.closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- the readers' side -------------------------------------------------------------------------------------

class HolderGone(Exception):
    """The holder did not answer (it is ending, or starting): look again at the lock."""


class RemoteReader:
    """The reads of a store held by another process, through its :class:`ReadServer`."""

    def __init__(self, address: str | None, connect_timeout: float = 2.0, timeout: float = 600.0):
        self.address = address
        self.connect_timeout = connect_timeout
        self.timeout = timeout  # a read waits while the holder builds its index

    def call(self, op: str, **args: Any) -> Any:
        if self.address is None:
            raise HolderGone("no socket on this platform")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(self.address)
            except OSError as exc:
                raise HolderGone(str(exc)) from exc
            sock.settimeout(self.timeout)
            try:
                _send(sock, {"op": op, "args": args})
                reply = _recv(sock)
            except (OSError, ConnectionError, ValueError) as exc:
                raise HolderGone(str(exc)) from exc
        finally:
            sock.close()
        if reply.get("gone"):
            raise HolderGone("the holder is closing")
        if "error" in reply:
            raise VectorStoreError(reply["error"])
        return reply["ok"]

    # decoded forms of the READ_OPS
    def count(self, name: str, flt: Filter | None = None) -> int:
        return int(self.call("count", name=name, filter=encode_filter(flt)))

    def index_status(self, name: str) -> tuple[int, int]:
        points, indexed = self.call("index_status", name=name)
        return int(points), int(indexed)

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        return _unrecords(self.call("retrieve", name=name, ids=[str(i) for i in ids], with_vectors=with_vectors))

    def search(self, name: str, vector: np.ndarray, k: int = 10, flt: Filter | None = None,
               min_score: float | None = None, exact: bool = False) -> list[Hit]:
        return _unhits(self.call("search", name=name, vector=_array(np.asarray(vector, np.float32)), k=int(k),
                                 filter=encode_filter(flt), min_score=min_score, exact=exact))

    def search_batch(self, name: str, vectors: np.ndarray, k: int = 10, flt: Filter | None = None) -> list[list[Hit]]:
        rows = self.call("search_batch", name=name, vectors=_array(np.atleast_2d(np.asarray(vectors, np.float32))),
                         k=int(k), filter=encode_filter(flt))
        return [_unhits(r) for r in rows]

    def recommend(self, name: str, positive: Sequence[str], negative: Sequence[str] = (), k: int = 10,
                  flt: Filter | None = None, strategy: str = "best_score") -> list[Hit]:
        return _unhits(self.call("recommend", name=name, positive=[str(i) for i in positive],
                                 negative=[str(i) for i in negative], k=int(k), filter=encode_filter(flt),
                                 strategy=strategy))

    def scroll_page(self, name: str, flt: Filter | None, offset: str | None, limit: int, with_vectors: bool = False,
                    payload_fields: Sequence[str] | None = None) -> tuple[Any, str | None]:
        fields = None if payload_fields is None else list(payload_fields)
        out = self.call("scroll_page", name=name, filter=encode_filter(flt), offset=offset, limit=int(limit),
                        with_vectors=with_vectors, payload_fields=fields)
        if "records" in out:
            return _unrecords(out["records"]), out["offset"]
        b = out["batch"]
        return VectorBatch(b["ids"], _unarray(b["vectors"]), b["payloads"]), out["offset"]


def wait_for(check: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    """Poll ``check`` until it is true or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)

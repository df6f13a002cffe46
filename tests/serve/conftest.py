"""Fixtures for the serve tests: a small real corpus (tiny-random SAM over synthetic shapes, a clustering
run) and real uvicorn servers on free localhost ports, stopped after the module."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from samsearch.cluster.job import ClusterOptions, run_clustering
from samsearch.home import Home
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.serve import create_app

N_IMAGES = 6
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def _backend_home(kind: str, root: Path) -> Iterator[Home]:
    """An empty home on ``kind``: "sqlite+edge", "postgres+server" (qdrant-client's local engine) or
    "postgres+qdrant-http" (a Qdrant server over real HTTP: the stand-in). Postgres gets a fresh schema,
    dropped afterwards."""
    if kind == "sqlite+edge":
        with Home(root) as home:
            yield home
        return
    import psycopg

    from samsearch.testing.qdrant_standin import QdrantStandin

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    standin = QdrantStandin().start() if kind == "postgres+qdrant-http" else None
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
        with Home(root, database_url=url, qdrant_url=standin.url if standin else ":memory:") as home:
            yield home
    finally:
        if standin is not None:
            standin.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="session")
def backend_home():
    """``with backend_home(kind, root) as home:`` an empty home on one backend (see ``_backend_home``)."""
    return _backend_home


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(driver_path).exists():
        pytest.skip("chromedriver not found (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
    yield driver
    driver.quit()


def build(home: Home, model, shapes) -> None:
    files = [im.path for im in shapes.images[:N_IMAGES]]
    opts = dict(prompts="masks", annotations=shapes.annotations_path)
    ingest(home, files[:4], model, IngestOptions(dataset="a", **opts), progress=False)
    ingest(home, files[4:], model, IngestOptions(dataset="b", **opts), progress=False)
    run_clustering(home, ClusterOptions(algorithm="kmeans", n_clusters=3, name="k3"), progress=False)


@pytest.fixture(scope="module")
def build_corpus(tiny_model, shapes):
    """Fills an empty home: 6 images (datasets "a" and "b") and a kmeans run "k3"."""
    return lambda home: build(home, tiny_model, shapes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A uvicorn server in a thread, and an httpx client for it."""

    def __init__(self, home: Home, **kwargs):
        self.port = _free_port()
        config = uvicorn.Config(create_app(home, **kwargs), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def serve():
    """``serve(home, **create_app_options)`` starts a server; every one is stopped after the module."""
    started: list[Served] = []

    def start(home: Home, **kwargs) -> Served:
        started.append(Served(home, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.close()


@pytest.fixture
def free_port() -> int:
    return _free_port()

"""Fixtures for the serve tests: a small real corpus (tiny-random SAM over synthetic shapes, a clustering
run) and real uvicorn servers on free localhost ports, stopped after the module."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from samsearch.cluster.job import ClusterOptions, run_clustering
from samsearch.home import Home
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.serve import create_app

N_IMAGES = 6


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

"""Shared fixtures: real SQLite and Postgres databases, both vector backends, tiny-random SAM,
and synthetic labeled images."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

PG_ADMIN = os.environ.get("SAMSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_schema_url(schema: str) -> str:
    base = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url():
    """A fresh Postgres schema per test (the real server on 127.0.0.1), dropped afterwards."""
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _pg_schema_url(schema)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite+edge", "postgres+server"])
def home(request, tmp_path):
    """A home on SQLite + Qdrant Edge, and one on Postgres + qdrant-client (":memory:" server API)."""
    from samsearch.home import Home

    if request.param == "sqlite+edge":
        h = Home(tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'home' / 'samsearch.db'}")
    else:
        h = Home(tmp_path / "home", database_url=request.getfixturevalue("pg_url"), qdrant_url=":memory:")
    yield h
    h.close()


@pytest.fixture(scope="session")
def tiny_model():
    from samsearch.sam.models import load_model

    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> object:
    """24 synthetic images (256×192) with 2–4 coloured/textured objects each, and their COCO file."""
    from samsearch.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("shapes"), n_images=24, seed=0)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Tests never touch the user's home or cache, whatever the environment says."""
    for var in ("SAMSEARCH_HOME", "SAMSEARCH_DATABASE_URL", "SAMSEARCH_QDRANT_URL", "SAMSEARCH_QDRANT_API_KEY",
                "SAMSEARCH_FAULT", "SAMSEARCH_INDEX_THRESHOLD"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("SAMSEARCH_QDRANT_")]:  # shards, on-disk, ... (issue 6)
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SAMSEARCH_CACHE", str(tmp_path / "cache"))


def pytest_collection_modifyitems(config, items):
    """Tests that need the PostgreSQL server carry the ``postgres`` marker (``-m "not postgres"`` runs the
    rest on a machine without it): those that take ``pg_url``, and the Postgres cases of parametrized
    fixtures (``database_url``, ``home``)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "pg_url" in item.fixturenames or any(str(v).startswith("postgres") for v in params.values()):
            item.add_marker(pytest.mark.postgres)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _same_class_precision(home, space: str, n: int, k: int = 3) -> tuple[float, float]:
    """Mean precision@k of ``samsearch search --space SPACE --segment ID`` over the first ``n`` segments
    (by id), a hit counting when it has the query's annotation category; and chance (the largest class's
    share). Runs the real CLI on the home at ``home``."""
    import json
    from collections import Counter

    from sqlalchemy import select
    from typer.testing import CliRunner

    from samsearch.cli import app
    from samsearch.db import Segment
    from samsearch.home import Home

    with Home(home) as h, h.db.session() as s:
        classes = dict(s.execute(select(Segment.id, Segment.annotation_category)).all())
    chance = max(Counter(classes.values()).values()) / len(classes)
    precision = []
    for sid in sorted(classes)[:n]:
        r = CliRunner().invoke(app, ["--home", str(home), "search", "--space", space, "--segment", sid,
                                     "-k", str(k), "--json"])
        assert r.exit_code == 0, r.output
        hits = json.loads(r.output)["hits"]
        assert len(hits) == k and sid not in {h["segment_id"] for h in hits}
        precision.append(sum(classes[h["segment_id"]] == classes[sid] for h in hits) / k)
    return sum(precision) / len(precision), chance


@pytest.fixture(scope="session")
def same_class_precision():
    """``same_class_precision(home, space, n, k=3) -> (mean precision@k, chance)`` through the CLI."""
    return _same_class_precision

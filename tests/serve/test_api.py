"""The HTTP API through a real uvicorn server on a free localhost port, against real stores (SQLite + Qdrant
Edge, Postgres + qdrant-client): every route, and the security cases (path tricks in ids, script-laden
labels, wrong or missing token, writes in read-only mode, errors as JSON without tracebacks)."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import httpx
import psycopg
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from samsearch.cli import app as cli_app
from samsearch.db import Segment
from samsearch.home import Home
from samsearch.search.query import search_by_segment

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
N_IMAGES = 6  # as the conftest's corpus
TOKEN = "s3cret-token"
EVIL = '<script>alert("x")</script>&<img src=x onerror=alert(1)>'


@pytest.fixture(scope="module", params=["sqlite+edge", "postgres+server"])
def home(request, tmp_path_factory, build_corpus):
    root = tmp_path_factory.mktemp("serve") / "home"
    if request.param == "sqlite+edge":
        h = Home(root)
        schema = None
    else:
        schema = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
        h = Home(root, database_url=url, qdrant_url=":memory:")
    try:
        build_corpus(h)
        yield h
    finally:
        h.close()
        if schema:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="module")
def api(home, serve):
    return serve(home).client


@pytest.fixture(scope="module")
def read_only(home, serve):
    return serve(home, read_only=True).client


@pytest.fixture(scope="module")
def with_token(home, serve):
    return serve(home, token=TOKEN).client


def _all_ids(home: Home) -> list[str]:
    with home.db.session() as s:
        return list(s.execute(select(Segment.id).order_by(Segment.image_id, Segment.id)).scalars())


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and body["error"] and "Traceback" not in body["error"]
    return body["error"]


# -- reading ---------------------------------------------------------------------------------------------


def test_stats(api, home):
    r = api.get("/api/stats")
    assert r.status_code == 200
    data = r.json()
    assert data["schema"] == "samsearch.api/v1"
    assert data["segments"] == len(_all_ids(home)) > 0 and data["images"] == N_IMAGES
    assert set(data["datasets"]) == {"a", "b"}


def test_segments_pages_cover_every_segment_once(api, home):
    ids = _all_ids(home)
    got, offset = [], 0
    while True:
        page = api.get("/api/segments", params={"limit": 5, "offset": offset}).json()["segments"]
        got += [s["segment_id"] for s in page]
        if len(page) < 5:
            break
        offset += 5
    assert got == ids


def test_segments_filters(api, home):
    with home.db.session() as s:
        rows = s.execute(select(Segment.id, Segment.cluster)).all()
    by_cluster = Counter(c for _, c in rows)
    for cluster, n in by_cluster.items():
        page = api.get("/api/segments", params={"cluster": cluster, "limit": 1000}).json()["segments"]
        assert len(page) == n and {s["cluster"] for s in page} == {cluster}
    b = api.get("/api/segments", params={"dataset": "b", "limit": 1000}).json()["segments"]
    assert b and {s["dataset"] for s in b} == {"b"}
    assert api.get("/api/segments", params={"dataset": "nope"}).json()["segments"] == []
    _error(api.get("/api/segments", params={"limit": "ten"}), 400)
    _error(api.get("/api/segments", params={"limit": 0}), 400)
    _error(api.get("/api/segments", params={"offset": -1}), 400)


def test_one_segment_and_its_crop(api, home):
    sid = _all_ids(home)[0]
    seg = api.get(f"/api/segments/{sid}").json()
    assert seg["segment_id"] == sid and seg["mask"]["size"] == [192, 256] and seg["area"] > 0
    r = api.get(f"/api/segments/{sid}/crop.png", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(r.content)).size == (64, 64)
    _error(api.get(f"/api/segments/{uuid.uuid4()}"), 404)
    _error(api.get(f"/api/segments/{uuid.uuid4()}/crop.png"), 404)


@pytest.mark.parametrize("trick", [
    "..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..", "....%2F%2Fetc%2Fpasswd", "%00", "C:%5Cwindows",
    "x" * 300, "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
])
def test_path_tricks_in_ids_never_reach_the_file_system(api, trick):
    for suffix in ("", "/crop.png"):
        r = api.get(f"/api/segments/{trick}{suffix}")
        assert r.status_code == 404, (trick, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json") and b"root:" not in r.content


def test_search_matches_the_library_and_cli_fields(api, home):
    sid = _all_ids(home)[3]
    r = api.post("/api/search", json={"segment_id": sid, "k": 4, "filters": {"exclude_same_image": True}})
    assert r.status_code == 200, r.text
    data = r.json()
    lib = search_by_segment(home, sid, k=4, filters=None).as_dict()  # without the filter: a superset
    assert data["schema"] == lib["schema"] == "samsearch.search/v1"
    assert set(data) == set(lib) and set(data["hits"][0]) == set(lib["hits"][0])
    image = api.get(f"/api/segments/{sid}").json()["image_id"]
    assert len(data["hits"]) == 4 and all(h["image_id"] != image for h in data["hits"])
    assert [h["rank"] for h in data["hits"]] == [1, 2, 3, 4]
    scores = [h["score"] for h in data["hits"]]
    assert scores == sorted(scores, reverse=True)
    from samsearch.search.query import SearchFilters

    same = search_by_segment(home, sid, k=4, filters=SearchFilters(exclude_same_image=True))
    assert [h["segment_id"] for h in data["hits"]] == [h.segment_id for h in same]
    only_b = api.post("/api/search", json={"segment_id": sid, "k": 50, "filters": {"dataset": "b"}}).json()
    assert only_b["hits"] and {h["dataset"] for h in only_b["hits"]} == {"b"}


def test_search_bad_requests(api, home):
    sid = _all_ids(home)[0]
    _error(api.post("/api/search", json={"segment_id": str(uuid.uuid4())}), 404)
    _error(api.post("/api/search", json={"k": 3}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "k": "many"}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "k": 0}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "k": True}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "filters": {"colour": "red"}}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "filters": {"min_area": 9, "max_area": 1}}), 400)
    assert "not supported" in _error(api.post("/api/search", json={"segment_id": sid, "positive": [sid]}), 400)
    _error(api.post("/api/search", content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(api.post("/api/search", json=[1, 2]), 400)
    _error(api.get("/api/search"), 405)
    _error(api.get("/api/nothing-here"), 404)


def test_clusters_and_banks(api):
    runs = api.get("/api/clusters").json()["runs"]
    assert [r["name"] for r in runs] == ["k3"] and runs[0]["current"]
    rep = api.get("/api/clusters/k3", params={"top": 2}).json()
    assert rep["run"] == "k3" and sum(c["size"] for c in rep["clusters"]) == rep["segments"]
    assert all(0 < len(c["typical"]) <= 2 for c in rep["clusters"])
    _error(api.get("/api/clusters/nope"), 404)
    assert api.get("/api/banks").json()["banks"] == []


# -- writing ---------------------------------------------------------------------------------------------


def test_labels_are_stored_and_script_labels_stay_data(api, home):
    ids = _all_ids(home)[:2]
    r = api.post("/api/labels", json={"segment_ids": ids, "label": EVIL})
    assert r.status_code == 200, r.text
    assert r.json()["labeled"] == 2
    page = api.get("/api/segments", params={"label": EVIL, "limit": 100}).json()["segments"]
    assert sorted(s["segment_id"] for s in page) == sorted(ids)
    with home.db.session() as s:  # SQL and the vector payload agree
        assert set(s.execute(select(Segment.label_source).where(Segment.id.in_(ids))).scalars()) == {"manual"}
    assert {r.payload["label"] for r in home.vectors.retrieve("segments", ids)} == {EVIL}
    # The JSON carries the text as data; the page never puts data into HTML (only textContent).
    facets = {f["label"]: f for f in api.get("/api/labels").json()["labels"]}
    assert facets[EVIL]["count"] >= 2 and facets[EVIL]["by_source"]["manual"] >= 2
    assert sum(f["count"] for f in facets.values()) == len(_all_ids(home))
    page_html = api.get("/").text
    assert "innerHTML" not in page_html and "outerHTML" not in page_html and EVIL not in page_html
    _error(api.post("/api/labels", json={"segment_ids": ids, "label": ""}), 400)
    _error(api.post("/api/labels", json={"segment_ids": [], "label": "x"}), 400)
    _error(api.post("/api/labels", json={"segment_ids": ids}), 400)
    _error(api.post("/api/labels", json={"segment_ids": [1, 2], "label": "x"}), 400)


def test_name_a_cluster(api, home):
    rep = api.get("/api/clusters/k3").json()
    c = rep["clusters"][0]
    r = api.post(f"/api/clusters/k3/{c['cluster']}/name", json={"label": "blob"})
    assert r.status_code == 200, r.text
    assert r.json()["members"] == c["size"]
    assert api.get("/api/clusters/k3").json()["clusters"][0]["name"] == "blob"
    _error(api.post("/api/clusters/k3/99/name", json={"label": "x"}), 400)
    _error(api.post("/api/clusters/nope/0/name", json={"label": "x"}), 404)
    _error(api.post(f"/api/clusters/k3/{c['cluster']}/name", json={"label": " padded "}), 400)


def test_read_only_refuses_every_write(read_only, home):
    ids = _all_ids(home)[:1]
    before = read_only.get(f"/api/segments/{ids[0]}").json()["label"]
    assert "read-only" in _error(read_only.post("/api/labels", json={"segment_ids": ids, "label": "ro"}), 403)
    _error(read_only.post("/api/clusters/k3/0/name", json={"label": "ro"}), 403)
    _error(read_only.delete(f"/api/segments/{ids[0]}"), 403)
    assert read_only.get(f"/api/segments/{ids[0]}").json()["label"] == before
    # reads and search still work
    assert len(read_only.post("/api/search", json={"segment_id": ids[0], "k": 2}).json()["hits"]) == 2
    assert read_only.get("/api/stats").status_code == 200


def test_token_is_required(with_token, home):
    sid = _all_ids(home)[0]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        assert "token" in _error(with_token.get("/api/stats", headers=headers), 401)
        _error(with_token.get(f"/api/segments/{sid}/crop.png", headers=headers), 401)
        _error(with_token.post("/api/labels", json={"segment_ids": [sid], "label": "t"}, headers=headers), 401)
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert with_token.get("/api/stats", headers=ok).status_code == 200
    assert with_token.get(f"/api/segments/{sid}/crop.png", headers=ok).status_code == 200
    assert with_token.get("/").status_code == 200  # the page holds no data; it asks for the token


# -- the CLI command ----------------------------------------------------------------------------------


def test_cli_refuses_a_public_host_without_token(tmp_path):
    r = CliRunner().invoke(cli_app, ["--home", str(tmp_path / "h"), "serve", "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "--token" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "h").exists()  # refused before the home was opened


def test_cli_serves_a_home_until_stopped(tmp_path, free_port):
    """The real command in a subprocess: it answers, with the token it was given, and stops on SIGINT."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port
    proc = subprocess.Popen([sys.executable, "-m", "samsearch", "--home", str(tmp_path / "h"), "serve",
                             "--port", str(port), "--token", TOKEN, "--read-only"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/stats", headers={"Authorization": f"Bearer {TOKEN}"})
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["segments"] == 0
        assert httpx.get(f"http://127.0.0.1:{port}/api/stats").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err

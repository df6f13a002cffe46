"""The HTTP API through a real uvicorn server on a free localhost port, against real stores (SQLite + Qdrant
Edge, Postgres + qdrant-client): every route, and the security cases (path tricks in ids, script-laden
labels, wrong or missing token, writes in read-only mode, errors as JSON without tracebacks)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select
from typer.testing import CliRunner

from samsearch.cli import app as cli_app
from samsearch.db import Segment
from samsearch.home import Home
from samsearch.search.query import search_by_segment

N_IMAGES = 6  # as the conftest's corpus
TOKEN = "s3cret-token"
EVIL = '<script>alert("x")</script>&<img src=x onerror=alert(1)>'


@pytest.fixture(scope="module", params=["sqlite+edge", "postgres+server"])
def home(request, tmp_path_factory, build_corpus, backend_home):
    with backend_home(request.param, tmp_path_factory.mktemp("serve") / "home") as h:
        build_corpus(h)
        yield h


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


def test_image_view(api, home):
    import numpy as np
    from PIL import Image

    from samsearch.data.imageio import load_image

    seg = api.get(f"/api/segments/{_all_ids(home)[0]}").json()
    with home.db.session() as s:
        want = sorted(s.execute(select(Segment.id).where(Segment.image_id == seg["image_id"])).scalars())
    info = api.get(f"/api/images/{seg['image_id']}").json()
    assert info["image_id"] == seg["image_id"] and info["dataset"] == seg["dataset"]
    assert [x["segment_id"] for x in info["segments"]] == want and len(want) > 1
    assert all(x["image_id"] == seg["image_id"] for x in info["segments"])
    r = api.get(f"/api/images/{seg['image_id']}/overlay.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    from io import BytesIO

    pic = np.asarray(Image.open(BytesIO(r.content)).convert("RGB"))
    raw = load_image(seg["image_path"]).rgb
    assert pic.shape == raw.shape
    changed = (pic != raw).any(axis=2)
    # every segment's outline is drawn: each mask's border pixels changed, far-away pixels did not
    from samsearch.search.segments import get_segment

    for sid in want:
        mask = get_segment(home, sid).mask()
        assert changed[mask].any()
    assert 0 < changed.mean() < 0.5
    small = Image.open(BytesIO(api.get(f"/api/images/{seg['image_id']}/overlay.png",
                                       params={"max_side": 64}).content))
    assert max(small.size) == 64
    _error(api.get("/api/images/999999"), 404)
    _error(api.get("/api/images/999999/overlay.png"), 404)
    _error(api.get("/api/images/99999999999999999999999"), 404)
    _error(api.get("/api/images/..%2F..%2Fetc%2Fpasswd"), 404)
    _error(api.get("/api/images/-1/overlay.png"), 404)
    _error(api.get(f"/api/images/{seg['image_id']}/overlay.png", params={"max_side": 10}), 400)


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


def test_relevance_feedback_matches_the_library(api, home):
    from samsearch.search.query import SearchFilters, search_by_examples

    ids = _all_ids(home)
    pos, neg = ids[:2], ids[5:6]
    body = {"segment_id": pos[0], "positive": pos[1:], "negative": neg, "k": 5,
            "filters": {"exclude_same_image": True}}
    r = api.post("/api/search", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    lib = search_by_examples(home, pos, neg, k=5, filters=SearchFilters(exclude_same_image=True))
    assert [h["segment_id"] for h in data["hits"]] == [h.segment_id for h in lib] and len(lib) == 5
    assert data["query"]["kind"] == "examples" and data["query"]["examples"]["negative"] == neg
    assert not {h["segment_id"] for h in data["hits"]} & set(pos + neg)
    examples = {api.get(f"/api/segments/{i}").json()["image_id"] for i in pos}
    assert all(h["image_id"] not in examples for h in data["hits"])
    # diversity re-ranks (MMR): same first hit, ranks 1..k, the library's order
    d = api.post("/api/search", json={"positive": pos, "k": 5, "diversity": 0.7}).json()
    lib_d = search_by_examples(home, pos, k=5, diversity=0.7)
    assert [h["segment_id"] for h in d["hits"]] == [h.segment_id for h in lib_d]
    assert [h["rank"] for h in d["hits"]] == [1, 2, 3, 4, 5] and d["query"]["examples"]["diversity"] == 0.7


def test_search_bad_requests(api, home):
    sid = _all_ids(home)[0]
    _error(api.post("/api/search", json={"segment_id": str(uuid.uuid4())}), 404)
    _error(api.post("/api/search", json={"k": 3}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "k": "many"}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "k": 0}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "k": True}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "filters": {"colour": "red"}}), 400)
    _error(api.post("/api/search", json={"segment_id": sid, "filters": {"min_area": 9, "max_area": 1}}), 400)
    assert "not supported" in _error(api.post("/api/search", json={"segment_id": sid, "prompt": "a cat"}), 400)
    assert "no text-image space" in _error(api.post("/api/search", json={"text": "a cat"}), 400)
    _error(api.post("/api/search", json={"positive": []}), 400)
    _error(api.post("/api/search", json={"positive": "abc"}), 400)
    _error(api.post("/api/search", json={"positive": [sid], "negative": [sid]}), 400)
    _error(api.post("/api/search", json={"positive": [sid], "diversity": 2}), 400)
    _error(api.post("/api/search", json={"positive": [sid], "diversity": True}), 400)
    _error(api.post("/api/search", json={"positive": [sid], "strategy": "mean"}), 400)
    _error(api.post("/api/search", json={"positive": [sid], "min_score": 0.5}), 400)
    _error(api.post("/api/search", json={"positive": [sid, str(uuid.uuid4())]}), 404)
    _error(api.post("/api/search", json={"positive": [sid], "negative": ["../../etc/passwd"]}), 404)
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


def test_clearing_manual_labels(api, home):
    ids = _all_ids(home)[6:9]
    assert api.post("/api/labels", json={"segment_ids": ids, "label": "to-clear"}).json()["labeled"] == 3
    r = api.request("DELETE", "/api/labels", json={"segment_ids": ids[:2]})
    assert r.status_code == 200, r.text
    assert r.json()["cleared"] == 2
    r = api.post("/api/labels", json={"segment_ids": ids[2:], "label": None})
    assert r.status_code == 200 and r.json()["cleared"] == 1 and r.json()["label"] is None
    with home.db.session() as s:  # SQL and payload agree: unlabeled
        rows = s.execute(select(Segment.label, Segment.label_source).where(Segment.id.in_(ids))).all()
    assert set(rows) == {(None, None)}
    assert {(p.payload.get("label"), p.payload.get("label_source")) for p in home.vectors.retrieve("segments", ids)} \
        == {(None, None)}
    assert api.get("/api/segments", params={"label": "to-clear"}).json()["segments"] == []
    assert api.request("DELETE", "/api/labels", json={"segment_ids": ids}).json()["cleared"] == 0
    _error(api.request("DELETE", "/api/labels", json={"segment_ids": []}), 400)
    _error(api.request("DELETE", "/api/labels", json={"segment_ids": ids, "label": "x"}), 400)


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
    _error(read_only.request("DELETE", "/api/labels", json={"segment_ids": ids}), 403)
    _error(read_only.post("/api/labels", json={"segment_ids": ids, "label": None}), 403)
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


# -- search by an uploaded image -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _png(array) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_with_a_mask_finds_the_segment_it_came_from(api, home):
    """The image file of a stored segment, uploaded with that segment's mask: embedded as ingest embedded
    it, so the segment itself is the first hit (score ~1), and the hits are the library's."""
    import numpy as np

    from samsearch.search.query import search_by_image
    from samsearch.search.segments import get_segment

    seg = get_segment(home, _all_ids(home)[4])
    raw = Path(seg.image_path).read_bytes()
    mask = seg.mask()
    body = {"image": "data:image/png;base64," + _b64(raw), "mask": _b64(_png(mask.astype(np.uint8) * 255)),
            "k": 5, "filters": {"dataset": seg.dataset}}
    r = api.post("/api/search", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["query"]["kind"] == "image" and data["query"]["image_path"] == "<upload>"
    assert data["hits"][0]["segment_id"] == seg.segment_id and data["hits"][0]["score"] > 0.999
    from samsearch.search.query import SearchFilters

    lib = search_by_image(home, seg.image_path, mask=mask, k=5, filters=SearchFilters(dataset=seg.dataset))
    assert [h["segment_id"] for h in data["hits"]] == [h.segment_id for h in lib]
    # "other images only" knows the upload's image by its content hash
    other = api.post("/api/search", json={**body, "filters": {"exclude_same_image": True}}).json()
    assert other["hits"] and all(h["image_id"] != seg.image_id for h in other["hits"])
    # a box prompt works too (tiny-random's mask for it is arbitrary: only that it answers, ranked)
    x, y, w, h = seg.bbox_xywh
    boxed = api.post("/api/search", json={"image": _b64(raw), "box": [x, y, x + w, y + h], "k": 3})
    assert boxed.status_code == 200, boxed.text
    assert [h["rank"] for h in boxed.json()["hits"]] == [1, 2, 3]


def test_multipart_upload_is_the_same_search_as_base64(api, home):
    """``multipart/form-data`` (what ``curl -F image=@photo.jpg`` sends): the file parts are the image and
    mask, the other fields JSON values; the answer is the base64 request's."""
    import json as _json

    import numpy as np

    from samsearch.search.segments import get_segment

    seg = get_segment(home, _all_ids(home)[4])
    raw = Path(seg.image_path).read_bytes()
    mask_png = _png(seg.mask().astype(np.uint8) * 255)
    as_json = api.post("/api/search", json={"image": _b64(raw), "mask": _b64(mask_png), "k": 5,
                                            "filters": {"exclude_same_image": True}}).json()
    r = api.post("/api/search", files={"image": ("photo.png", raw, "image/png"),
                                       "mask": ("mask.png", mask_png, "image/png")},
                 data={"k": "5", "filters": _json.dumps({"exclude_same_image": True})})
    assert r.status_code == 200, r.text
    assert [h["segment_id"] for h in r.json()["hits"]] == [h["segment_id"] for h in as_json["hits"]]
    assert len(as_json["hits"]) == 5 and all(h["image_id"] != seg.image_id for h in as_json["hits"])
    # the fields are checked as in JSON; the image must be a file part; parts are not repeated
    assert "k" in _error(api.post("/api/search", files={"image": ("p.png", raw)}, data={"k": "many"}), 400)
    assert "file part" in _error(api.post("/api/search", files={"mask": ("m.png", mask_png)},
                                          data={"image": _b64(raw), "box": "[0,0,9,9]"}), 400)
    assert "empty" in _error(api.post("/api/search", files={"image": ("p.png", b"")}, data={"box": "[0,0,9,9]"}),
                             400)
    assert "unknown field" in _error(api.post("/api/search", files={"image": ("p.png", raw)},
                                              data={"box": "[0,0,9,9]", "evil": "1"}), 400)
    garbled = api.post("/api/search", content=b"--xx\r\nnot a part", headers={
        "content-type": "multipart/form-data; boundary=xx"})
    assert "multipart" in _error(garbled, 400)


def test_uploads_over_the_limits_are_refused(home, serve, tiny_model):
    import numpy as np

    small = serve(home, model=tiny_model, max_upload_bytes=20_000, max_upload_pixels=100_000).client
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    big = _png(noise)  # ~120 kB of incompressible pixels
    assert len(big) > 20_000
    assert "bytes" in _error(small.post("/api/search", json={"image": _b64(big), "box": [0, 0, 9, 9]}), 413)
    # the body limit holds without a Content-Length too (chunked)
    import json as _json

    def chunks():
        payload = _json.dumps({"image": _b64(big), "box": [0, 0, 9, 9]}).encode()
        for i in range(0, len(payload), 8192):
            yield payload[i:i + 8192]

    assert "bytes" in _error(small.post("/api/search", content=chunks(),
                                        headers={"content-type": "application/json"}), 413)
    # few bytes, many pixels: refused from the header, before decoding
    flat = _png(np.zeros((400, 400, 3), np.uint8))
    assert len(flat) < 20_000
    assert "pixels" in _error(small.post("/api/search", json={"image": _b64(flat), "box": [0, 0, 9, 9]}), 413)
    # and as multipart: the body cap holds before parsing, the byte and pixel caps after
    assert "bytes" in _error(small.post("/api/search", files={"image": ("big.png", big * 3)},
                                        data={"box": "[0, 0, 9, 9]"}), 413)
    assert "bytes" in _error(small.post("/api/search", files={"image": ("big.png", big)},
                                        data={"box": "[0, 0, 9, 9]"}), 413)
    assert "pixels" in _error(small.post("/api/search", files={"image": ("flat.png", flat)},
                                         data={"box": "[0, 0, 9, 9]"}), 413)


def test_a_pixel_bomb_is_refused_at_the_default_limit(api):
    """A PNG whose header claims 60000 x 60000 pixels (3.6 G, ~10 GB decoded) in a few hundred bytes."""
    import struct
    import zlib

    import numpy as np

    png = bytearray(_png(np.zeros((8, 8, 3), np.uint8)))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4:ihdr + 12] = struct.pack(">II", 60_000, 60_000)
    png[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr:ihdr + 17])))
    message = _error(api.post("/api/search", json={"image": _b64(bytes(png)), "box": [0, 0, 9, 9]}), 413)
    assert "pixels" in message


def test_bad_uploads_are_400(api, home):
    from samsearch.search.segments import get_segment

    seg = get_segment(home, _all_ids(home)[0])
    raw = _b64(Path(seg.image_path).read_bytes())
    for body, word in (({"image": "not base64!!", "box": [0, 0, 9, 9]}, "base64"),
                       ({"image": _b64(b"hello, not an image"), "box": [0, 0, 9, 9]}, "upload"),
                       ({"image": raw}, "prompt"),
                       ({"image": raw, "box": [0, 0, 9]}, "box"),
                       ({"image": raw, "box": [0, 0, True, 9]}, "box"),
                       ({"image": raw, "box": [0, 0, 9000, 9000]}, "outside"),
                       ({"image": raw, "points": [[1, 2, 3]]}, "points"),
                       ({"image": raw, "box": [0, 0, 9, 9], "segment_id": seg.segment_id}, "unknown"),
                       ({"image": raw, "mask": _b64(b"\x89PNG garbage")}, "mask"),
                       ({"image": 5, "box": [0, 0, 9, 9]}, "base64")):
        assert word in _error(api.post("/api/search", json=body), 400), body


# -- segment id prefixes (issue 12) ------------------------------------------------------------------------


def _prefix(home: Home, sid: str) -> str:
    assert [i for i in _all_ids(home) if i.startswith(sid[:8])] == [sid]
    return sid[:8]


def test_routes_take_a_unique_segment_id_prefix(api, home):
    from samsearch.search.query import search_by_examples

    ids = _all_ids(home)
    sid, pos, neg = ids[1], ids[2], ids[4]
    seg = api.get(f"/api/segments/{_prefix(home, sid)}").json()
    assert seg["segment_id"] == sid
    assert api.get(f"/api/segments/{_prefix(home, sid)}/crop.png").status_code == 200
    r = api.post("/api/search", json={"segment_id": _prefix(home, sid), "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["query"]["segment_id"] == sid
    assert [h["segment_id"] for h in r.json()["hits"]] == [h.segment_id for h in search_by_segment(home, sid, k=3)]
    r = api.post("/api/search", json={"positive": [_prefix(home, pos)], "negative": [_prefix(home, neg)], "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["query"]["examples"]["positive"] == [pos] and r.json()["query"]["examples"]["negative"] == [neg]
    lib = search_by_examples(home, [pos], [neg], k=3)
    assert [h["segment_id"] for h in r.json()["hits"]] == [h.segment_id for h in lib]
    mine = ids[-2:]
    r = api.post("/api/labels", json={"segment_ids": [_prefix(home, i) for i in mine], "label": "by-prefix"})
    assert r.status_code == 200 and r.json()["labeled"] == 2, r.text
    with home.db.session() as s:
        assert sorted(s.execute(select(Segment.id).where(Segment.label == "by-prefix")).scalars()) == sorted(mine)
    assert {p.payload["label"] for p in home.vectors.retrieve("segments", mine)} == {"by-prefix"}
    r = api.request("DELETE", "/api/labels", json={"segment_ids": [_prefix(home, i) for i in mine]})
    assert r.status_code == 200 and r.json()["cleared"] == 2, r.text


def test_unknown_and_ambiguous_prefixes_are_404_and_400(api, home):
    ids = _all_ids(home)
    missing = next(p for p in (f"{n:08x}" for n in range(0xFFFF0000, 0xFFFFFFFF))
                   if not any(i.startswith(p) for i in ids))
    assert _error(api.get(f"/api/segments/{missing}"), 404) == f"no segment '{missing}' in {home.root} " \
        "(no stored id starts with it)"
    _error(api.post("/api/search", json={"segment_id": missing}), 404)
    _error(api.post("/api/labels", json={"segment_ids": [missing], "label": "x"}), 404)
    _error(api.get("/api/segments/abc"), 400)  # too short to be a prefix
    sid = ids[0]
    twin = sid[:8] + "-ffff-4fff-bfff-ffffffffffff"
    with home.db.session() as s:  # a second row sharing sid's first 8 characters
        row = s.get(Segment, sid)
        s.add(Segment(**{**{c.key: getattr(row, c.key) for c in Segment.__table__.columns}, "id": twin,
                         "segment_index": 10_000}))
    try:
        message = _error(api.post("/api/search", json={"segment_id": sid[:8]}), 400)
        assert message.startswith(f"segment id prefix '{sid[:8]}' is ambiguous in {home.root}: 2 segments match (")
        _error(api.get(f"/api/segments/{sid[:8]}"), 400)
        _error(api.post("/api/labels", json={"segment_ids": [sid[:8]], "label": "x"}), 400)
        assert api.get(f"/api/segments/{sid[:9]}{sid[9:12]}").json()["segment_id"] == sid
    finally:
        with home.db.session() as s:
            s.execute(delete(Segment).where(Segment.id == twin))


def test_segments_filter_by_label_score(api, home):
    """The grid's score filter: segments whose bank label scored within [min_score, max_score]; manual
    labels and unlabeled segments have no score and never match a bound. (Last in the module: it labels
    the corpus with a bank.)"""
    from samsearch.bank.build import create_bank_from_clusters
    from samsearch.bank.classify import LabelOptions, label_segments
    from samsearch.cluster.naming import name_cluster

    with home.db.session() as s:
        clusters = sorted({c for (c,) in s.execute(select(Segment.cluster)) if c is not None and c >= 0})
    for c in clusters:
        name_cluster(home, "k3", c, f"kind {c}", overwrite_manual=True)
    create_bank_from_clusters(home, "k3", "from-k3", replace=True)
    label_segments(home, LabelOptions(bank="from-k3", relabel=True, overwrite_manual=True), progress=False)
    with home.db.session() as s:
        scores = {sid: sc for sid, sc in s.execute(select(Segment.id, Segment.label_score))}
    assert all(v is not None for v in scores.values())
    cut = sorted(scores.values())[len(scores) // 2]

    def page(**params):
        return {s["segment_id"]: s for s in api.get("/api/segments", params={"limit": 1000, **params})
                .json()["segments"]}

    low, high = page(max_score=cut), page(min_score=cut)
    assert set(low) == {k for k, v in scores.items() if v <= cut}
    assert set(high) == {k for k, v in scores.items() if v >= cut}
    assert all(s["label_score"] <= cut for s in low.values()) and low and high
    assert page(min_score=cut, max_score=cut).keys() == {k for k, v in scores.items() if v == cut}
    _error(api.get("/api/segments", params={"min_score": "high"}), 400)
    _error(api.get("/api/segments", params={"max_score": "nan"}), 400)
    _error(api.get("/api/segments", params={"min_score": 2}), 400)

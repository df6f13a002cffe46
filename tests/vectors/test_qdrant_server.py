"""Qdrant server settings for scale, checked on what the real client sends over HTTP (to the REST
stand-in in ``samsearch.testing.qdrant_standin``: no Qdrant server can run here), and the clear errors."""

import numpy as np
import pytest

from samsearch.home import SEGMENTS, Home
from samsearch.testing.qdrant_standin import QdrantStandin
from samsearch.vectors import FLOAT_FIELDS, INTEGER_FIELDS, KEYWORD_FIELDS, Filter, Match, VectorStoreError
from samsearch.vectors.server import QdrantSettings, ServerVectorStore


@pytest.fixture
def standin():
    with QdrantStandin() as server:
        yield server


def test_collection_is_created_with_the_scale_settings_and_every_index(standin):
    settings = QdrantSettings(shard_number=6, replication_factor=3, on_disk=True, quantization=True)
    store = ServerVectorStore(standin.url, settings=settings)
    store.ensure_collection(SEGMENTS, 256)
    (create,) = standin.requests("PUT", f"/collections/{SEGMENTS}")
    body = create.body
    assert body["vectors"] == {"size": 256, "distance": "Cosine", "on_disk": True}
    assert (body["shard_number"], body["replication_factor"], body["write_consistency_factor"]) == (6, 3, 2)
    assert body["on_disk_payload"] is True
    assert body["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
    indexed = {r.body["field_name"]: r.body["field_schema"] for r in standin.requests("PUT", "/index")}
    assert indexed == {**{f: "keyword" for f in KEYWORD_FIELDS}, **{f: "integer" for f in INTEGER_FIELDS},
                       **{f: "float" for f in FLOAT_FIELDS}}
    # A second client finds everything in place and creates nothing.
    ServerVectorStore(standin.url, settings=settings).ensure_collection(SEGMENTS, 256)
    assert len(standin.requests("PUT", f"/collections/{SEGMENTS}")) == 1
    assert len(standin.requests("PUT", "/index")) == len(indexed)

    # Searches rescore the int8 candidates with the original vectors.
    store.upsert(SEGMENTS, ["00000000-0000-0000-0000-000000000001"], np.ones((1, 256), np.float32), [{}])
    store.search(SEGMENTS, np.ones(256, np.float32), k=1)
    (query,) = standin.requests("POST", "/points/query")
    assert query.body["params"]["quantization"] == {"rescore": True, "oversampling": 2.0}
    store.close()


def test_writes_are_batched_and_wait_for_the_server(standin):
    store = ServerVectorStore(standin.url, settings=QdrantSettings(upsert_batch=40))
    store.ensure_collection(SEGMENTS, 8)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(100)]
    store.upsert(SEGMENTS, ids, np.random.default_rng(0).standard_normal((100, 8)), [{"image_id": 1}] * 100)
    store.set_payload(SEGMENTS, ids, {"label": "cat"})
    store.delete(SEGMENTS, ids[:3])
    store.delete_by_filter(SEGMENTS, Filter.of(Match("image_id", 2)))
    upserts = standin.requests("PUT", "/points")
    assert [len(r.body["batch"]["ids"]) for r in upserts] == [40, 40, 20]
    writes = upserts + standin.requests("POST", "/points/payload") + standin.requests("POST", "/points/delete")
    assert len(writes) == 6
    assert all(r.query == {"wait": "true", "ordering": "medium"} for r in writes)
    assert store.count(SEGMENTS) == 97
    store.close()


def test_api_key_required_or_refused_is_one_clear_line():
    with QdrantStandin(api_key="s3cret") as server:
        with pytest.raises(VectorStoreError) as err:
            ServerVectorStore(server.url)
        assert str(err.value) == (f"Qdrant at {server.url} refused the request: an API key is required "
                                  "(set SAMSEARCH_QDRANT_API_KEY)")
        with pytest.raises(VectorStoreError) as err:
            ServerVectorStore(server.url, api_key="wrong")
        assert str(err.value) == f"Qdrant at {server.url} refused the API key (check SAMSEARCH_QDRANT_API_KEY)"
        ok = ServerVectorStore(server.url, api_key="s3cret")
        ok.ensure_collection(SEGMENTS, 8)
        ok.close()


def test_existing_collection_with_another_dimension_is_refused(standin):
    ServerVectorStore(standin.url).ensure_collection(SEGMENTS, 128)
    with pytest.raises(VectorStoreError) as err:
        ServerVectorStore(standin.url).ensure_collection(SEGMENTS, 256)
    assert str(err.value) == (f"collection 'segments' at Qdrant {standin.url} holds 128-d cosine vectors, not "
                              "256-d cosine (use another collection/server, or drop it)")


def test_settings_come_from_the_environment(standin, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSEARCH_QDRANT_URL", standin.url)
    monkeypatch.setenv("SAMSEARCH_QDRANT_SHARDS", "4")
    monkeypatch.setenv("SAMSEARCH_QDRANT_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("SAMSEARCH_QDRANT_ON_DISK", "true")
    monkeypatch.setenv("SAMSEARCH_QDRANT_QUANTIZATION", "int8")
    monkeypatch.setenv("SAMSEARCH_QDRANT_WRITE_ORDERING", "strong")
    with Home(tmp_path / "h") as home:
        assert home.vectors.settings == QdrantSettings(shard_number=4, replication_factor=2, on_disk=True,
                                                       quantization=True, write_ordering="strong")
        home.vectors.ensure_collection(SEGMENTS, 16)
    body = standin.requests("PUT", f"/collections/{SEGMENTS}")[0].body
    assert (body["shard_number"], body["replication_factor"], body["write_consistency_factor"]) == (4, 2, 2)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, QdrantSettings()),
        ({"SAMSEARCH_QDRANT_ON_DISK": "0", "SAMSEARCH_QDRANT_QUANTIZATION": "none"}, QdrantSettings()),
        ({"SAMSEARCH_QDRANT_TIMEOUT": "5", "SAMSEARCH_QDRANT_UPSERT_BATCH": "64", "SAMSEARCH_QDRANT_API_KEY": "k"},
         QdrantSettings(timeout=5, upsert_batch=64, api_key="k")),
        ({"SAMSEARCH_QDRANT_SHARDS": "two"}, "SAMSEARCH_QDRANT_SHARDS: must be a positive integer, not 'two'"),
        ({"SAMSEARCH_QDRANT_SHARDS": "0"}, "SAMSEARCH_QDRANT_SHARDS: must be a positive integer, not 0"),
        ({"SAMSEARCH_QDRANT_ON_DISK": "maybe"},
         "SAMSEARCH_QDRANT_ON_DISK: must be one of 1, true, yes, on, 0, false, no, off, not 'maybe'"),
        ({"SAMSEARCH_QDRANT_QUANTIZATION": "pq"},
         "SAMSEARCH_QDRANT_QUANTIZATION: must be one of int8, 1, true, yes, on, none, 0, false, no, off, not 'pq'"),
        ({"SAMSEARCH_QDRANT_WRITE_ORDERING": "eventual"},
         "SAMSEARCH_QDRANT_WRITE_ORDERING: must be one of weak, medium, strong, not 'eventual'"),
        ({"SAMSEARCH_QDRANT_WRITE_CONSISTENCY_FACTOR": "3"},
         "SAMSEARCH_QDRANT_WRITE_CONSISTENCY_FACTOR (3) cannot exceed SAMSEARCH_QDRANT_REPLICATION_FACTOR (1)"),
    ],
)
def test_environment_parsing(env, expected):
    if isinstance(expected, QdrantSettings):
        assert QdrantSettings.from_env(env) == expected
    else:
        with pytest.raises(VectorStoreError) as err:
            QdrantSettings.from_env(env)
        assert str(err.value) == expected


def test_bad_setting_is_a_one_line_cli_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from samsearch.cli import app

    monkeypatch.setenv("SAMSEARCH_QDRANT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("SAMSEARCH_QDRANT_SHARDS", "-3")
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "h"), "stats"])
    assert result.exit_code == 1
    assert result.stderr == "Error: SAMSEARCH_QDRANT_SHARDS: must be a positive integer, not -3\n"
    monkeypatch.delenv("SAMSEARCH_QDRANT_SHARDS")
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "h"), "queue", "status"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach Qdrant at http://127.0.0.1:1: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:hunter22@127.0.0.1:1", "http://admin:***@127.0.0.1:1"),
        ("http://tok3n-abc@127.0.0.1:1/", "http://***@127.0.0.1:1/"),
        ("http://127.0.0.1:1/?api_key=hunter22&x=1", "http://127.0.0.1:1/?api_key=***&x=1"),
        ("http://127.0.0.1:1", "http://127.0.0.1:1"),
    ],
)
def test_credentials_in_the_qdrant_url_never_reach_an_error(url, shown):
    with pytest.raises(VectorStoreError) as err:
        ServerVectorStore(url, timeout=2)
    msg = str(err.value)
    assert msg.startswith(f"cannot reach Qdrant at {shown}: ")
    assert "hunter22" not in msg and "tok3n" not in msg


def test_credentials_in_the_qdrant_url_are_masked_in_the_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from samsearch.cli import app

    monkeypatch.setenv("SAMSEARCH_QDRANT_URL", "http://admin:hunter22@127.0.0.1:1")
    monkeypatch.setenv("SAMSEARCH_QDRANT_TIMEOUT", "2")
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "h"), "stats"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach Qdrant at http://admin:***@127.0.0.1:1: ")
    assert "hunter22" not in result.stdout + result.stderr


def test_credentials_in_the_url_are_masked_when_the_server_refuses():
    with QdrantStandin(api_key="s3cret") as server:
        url = server.url.replace("http://", "http://admin:hunter22@")
        with pytest.raises(VectorStoreError) as err:
            ServerVectorStore(url)
        shown = server.url.replace("http://", "http://admin:***@")
        assert str(err.value) == (f"Qdrant at {shown} refused the request: an API key is required "
                                  "(set SAMSEARCH_QDRANT_API_KEY)")

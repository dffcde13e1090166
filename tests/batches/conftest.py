"""Fixtures of the batch tests: the API app on the session's Postgres database and a real HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from werkzeug.serving import make_server

from api.app import create_app
from api.openapi import build_openapi
from slotq.keys import create_key
from slotq.settings import Settings
from slotq.store import JobRepository

OPENAPI_URI = "urn:slotq:openapi"


class RecordingEnqueue:
    """Stand-in for the broker: records job ids sent one by one and through ``many``."""

    def __init__(self) -> None:
        self.job_ids: list[str] = []
        self.many_calls = 0

    def __call__(self, job_id: str) -> None:
        self.job_ids.append(job_id)

    def many(self, job_ids) -> None:
        self.many_calls += 1
        self.job_ids.extend(job_ids)


@pytest.fixture
def enqueue() -> RecordingEnqueue:
    return RecordingEnqueue()


@pytest.fixture
def batch_settings(postgres_settings: Settings) -> Settings:
    return postgres_settings


@pytest.fixture
def app(batch_settings: Settings, postgres_repository: JobRepository, enqueue: RecordingEnqueue) -> Flask:
    return create_app(batch_settings, enqueue=enqueue, repository=postgres_repository)


@pytest.fixture
def make_client(
    postgres_settings: Settings, postgres_repository: JobRepository, enqueue: RecordingEnqueue, api_key: str
):
    """Return ``make(**settings_changes)``: a test client, sending ``api_key``, of an app with changed settings."""

    def make(**changes: Any) -> FlaskClient:
        settings = replace(postgres_settings, **changes)
        return keyed(create_app(settings, enqueue=enqueue, repository=postgres_repository).test_client(), api_key)

    return make


def keyed(client: FlaskClient, key: str) -> FlaskClient:
    """Return ``client`` after making it send ``key`` as a bearer token with every request."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


@pytest.fixture
def api_key(postgres_repository: JobRepository) -> str:
    """A new key of the tenant ``acme`` on the session's Postgres database."""
    return create_key("acme", repository=postgres_repository).key


@pytest.fixture
def authorize(api_key: str) -> Callable[[FlaskClient], FlaskClient]:
    """Return ``authorize(client)``, which makes a test client send ``api_key``."""
    return lambda client: keyed(client, api_key)


@pytest.fixture
def client(app: Flask, api_key: str) -> Iterator[FlaskClient]:
    """Test client that sends ``api_key`` with every request."""
    with app.test_client() as test_client:
        yield keyed(test_client, api_key)


@pytest.fixture
def server_url(app: Flask, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Base URL of the app served by Werkzeug's threaded server on a free port.

    ``SLOTQ_API_KEY`` is set to ``api_key``, so the batch client functions and commands send it.
    """
    monkeypatch.setenv("SLOTQ_API_KEY", api_key)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def schema_check(postgres_settings: Settings) -> Callable[[str, Any], list[str]]:
    """Return ``check(schema_name, instance)``, listing violations of an OpenAPI component schema."""
    document = build_openapi(postgres_settings)
    registry = Registry().with_resource(OPENAPI_URI, DRAFT202012.create_resource(document))

    def check(schema_name: str, instance: Any) -> list[str]:
        schema = {"$ref": f"{OPENAPI_URI}#/components/schemas/{schema_name}"}
        validator = Draft202012Validator(schema, registry=registry)
        return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(instance)]

    return check

"""Fixtures of the security tests: the API on the session's Postgres database, keys of two tenants
and an admin, and a real HTTP server."""

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
from slotq.keys import CreatedKey, create_key
from slotq.settings import Settings
from slotq.store import JobRepository

OPENAPI_URI = "urn:slotq:openapi"


class RecordingEnqueue:
    """Stand-in for the broker that records the job ids it was given."""

    def __init__(self) -> None:
        self.job_ids: list[str] = []

    def __call__(self, job_id: str) -> None:
        self.job_ids.append(job_id)


@pytest.fixture
def enqueue() -> RecordingEnqueue:
    return RecordingEnqueue()


@pytest.fixture
def settings(postgres_settings: Settings) -> Settings:
    return postgres_settings


@pytest.fixture
def app(settings: Settings, postgres_repository: JobRepository, enqueue: RecordingEnqueue) -> Flask:
    return create_app(settings, enqueue=enqueue, repository=postgres_repository)


@pytest.fixture
def tenant_key(postgres_repository: JobRepository) -> CreatedKey:
    return create_key("acme", repository=postgres_repository)


@pytest.fixture
def other_key(postgres_repository: JobRepository) -> CreatedKey:
    return create_key("globex", repository=postgres_repository)


@pytest.fixture
def admin_key(postgres_repository: JobRepository) -> CreatedKey:
    return create_key("operators", admin=True, repository=postgres_repository)


@pytest.fixture
def client_for(app: Flask) -> Callable[[CreatedKey], FlaskClient]:
    """Return ``client_for(key)``: a test client that sends ``key`` with every request."""

    def make(key: CreatedKey) -> FlaskClient:
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key.key}"
        return client

    return make


@pytest.fixture
def client(client_for, tenant_key: CreatedKey) -> FlaskClient:
    return client_for(tenant_key)


@pytest.fixture
def make_app(settings: Settings, postgres_repository: JobRepository, enqueue: RecordingEnqueue):
    """Return ``make(**settings_changes)``: an app on the same store with changed settings."""

    def make(**changes: Any) -> Flask:
        return create_app(replace(settings, **changes), enqueue=enqueue, repository=postgres_repository)

    return make


@pytest.fixture
def serve() -> Iterator[Callable[[Flask], str]]:
    """Return ``serve(app)``: the base URL of ``app`` on Werkzeug's threaded server on a free port."""
    servers = []

    def start(app: Flask) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def schema_check(settings: Settings) -> Callable[[str, Any], list[str]]:
    """Return ``check(schema_name, instance)``, listing violations of an OpenAPI component schema."""
    document = build_openapi(settings)
    registry = Registry().with_resource(OPENAPI_URI, DRAFT202012.create_resource(document))

    def check(schema_name: str, instance: Any) -> list[str]:
        schema = {"$ref": f"{OPENAPI_URI}#/components/schemas/{schema_name}"}
        validator = Draft202012Validator(schema, registry=registry)
        return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(instance)]

    return check

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
def make_client(postgres_settings: Settings, postgres_repository: JobRepository, enqueue: RecordingEnqueue):
    """Return ``make(**settings_changes)``: a test client of an app with changed settings."""

    def make(**changes: Any) -> FlaskClient:
        settings = replace(postgres_settings, **changes)
        return create_app(settings, enqueue=enqueue, repository=postgres_repository).test_client()

    return make


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as test_client:
        yield test_client


@pytest.fixture
def server_url(app: Flask) -> Iterator[str]:
    """Base URL of the app served by Werkzeug's threaded server on a free port."""
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

"""Fixtures of the API tests: an app on the session's Postgres database with a recording enqueue."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from api.app import create_app
from api.openapi import build_openapi
from slotq.keys import create_key
from slotq.settings import Settings
from slotq.store import JobRepository

OPENAPI_URI = "urn:slotq:openapi"


class RecordingEnqueue:
    """Stand-in for the broker that records the job ids it was given, or raises ``error``."""

    def __init__(self) -> None:
        self.job_ids: list[str] = []
        self.error: Exception | None = None

    def __call__(self, job_id: str) -> None:
        self.job_ids.append(job_id)
        if self.error is not None:
            raise self.error


@pytest.fixture
def enqueue() -> RecordingEnqueue:
    return RecordingEnqueue()


@pytest.fixture
def app(postgres_settings: Settings, postgres_repository: JobRepository, enqueue: RecordingEnqueue) -> Flask:
    return create_app(postgres_settings, enqueue=enqueue, repository=postgres_repository)


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
def schema_check(postgres_settings: Settings) -> Callable[[str, Any], list[str]]:
    """Return ``check(schema_name, instance)``, listing violations of an OpenAPI component schema."""
    document = build_openapi(postgres_settings)
    registry = Registry().with_resource(OPENAPI_URI, DRAFT202012.create_resource(document))

    def check(schema_name: str, instance: Any) -> list[str]:
        schema = {"$ref": f"{OPENAPI_URI}#/components/schemas/{schema_name}"}
        validator = Draft202012Validator(schema, registry=registry)
        return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(instance)]

    return check

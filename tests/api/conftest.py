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


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as test_client:
        yield test_client


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

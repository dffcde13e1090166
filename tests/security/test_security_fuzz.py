"""Property-based fuzz of the OpenAPI document with schemathesis, against the Flask app over WSGI.

Every operation gets `MAX_EXAMPLES` generated requests that follow the schema and as many that
break it, with a valid key and a fixed seed. No response may be a 5xx, and every response must
have a documented status code, content type, headers and body.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

#: Generated requests per operation and generation mode.
MAX_EXAMPLES = 30
#: Upper bound of the whole fuzz in seconds, well above its usual time on a 2-core machine.
TIME_LIMIT_S = 90
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def fuzz_app(make_app):
    # The rate limit and queue limit are tested elsewhere; here they would only answer 429.
    return make_app(rate_limit_per_minute=0, max_queued_jobs=1_000_000)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz(fuzz_app, tenant_key, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    headers = {"Authorization": f"Bearer {tenant_key.key}"}
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    started = time.monotonic()
    tested = []
    statuses: list[int] = []

    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            response = case.call_and_validate(headers={**(case.headers or {}), **headers}, checks=checks)
            statuses.append(response.status_code)

        try:
            run()
        except Unsatisfiable:
            # An operation without parameters or body has no invalid request to generate.
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        tested.append(operation.label)

    # schemathesis leaves out the operation that serves the document itself.
    assert len(tested) == (12 if mode is GenerationMode.POSITIVE else 10)
    assert len(statuses) >= 10 * len(tested)
    assert max(statuses) < 500
    assert time.monotonic() - started < TIME_LIMIT_S

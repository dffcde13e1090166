"""Bad job input: each gets a clear 4xx naming the problem, and the next request works."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from slotq.store import JobRepository

CASES = [
    ("empty prompt", b'{"prompt": ""}', 422, "prompt"),
    ("blank prompt", b'{"prompt": "   "}', 422, "prompt"),
    ("control character", b'{"prompt": "a\\u0007b"}', 422, "prompt"),
    ("NUL in message", b'{"messages": [{"role": "user", "content": "a\\u0000"}]}', 422, "messages.0.content"),
    ("lone surrogate", b'{"prompt": "\\ud800"}', 422, "prompt"),
    ("huge max_new_tokens", b'{"prompt": "x", "generation": {"max_new_tokens": 1000000000000}}', 422, "generation.max_new_tokens"),
    ("huge integer", b'{"prompt": "x", "generation": {"max_new_tokens": 1' + b"0" * 5000 + b"}}", 400, None),
    ("unknown field", b'{"prompt": "x", "temperature": 0.5}', 422, "temperature"),
    ("model field", b'{"prompt": "x", "model": "gpt-unknown-9"}', 422, "model"),
    ("unknown nested field", b'{"prompt": "x", "slot": {"steps": 1, "beta": 2}}', 422, "slot.beta"),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', 400, None),
    ("truncated JSON", b'{"prompt": "x"', 400, None),
    ("not an object", b'["x"]', 422, None),
    ("deep nesting", b'{"prompt": "x", "metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}", 400, None),
]


@pytest.mark.parametrize("name, body, status, field", CASES, ids=[case[0] for case in CASES])
def test_bad_input_4xx_then_next_works(
    client: FlaskClient, postgres_repository: JobRepository, enqueue, name: str, body: bytes, status: int, field: str | None
) -> None:
    response = client.post("/v1/jobs", data=body, content_type="application/json")

    error = response.get_json()["error"]
    assert response.status_code == status, error
    assert error["message"]
    if field is not None:
        assert field in [detail["field"] for detail in error["details"]]
    assert "Traceback" not in response.get_data(as_text=True)
    assert enqueue.job_ids == []

    following = client.post("/v1/jobs", json={"prompt": "次は正常です"})
    assert following.status_code == 202
    assert postgres_repository.get_job(following.get_json()["id"]).prompt == "次は正常です"


def test_error_names_value_and_range(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", json={"prompt": "x", "generation": {"max_new_tokens": 10**9}})

    detail = response.get_json()["error"]["details"][0]
    assert detail["value"] == 10**9
    assert "512" in detail["message"]


def test_wrong_content_type_415(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", data=b'{"prompt": "x"}', content_type="text/plain")

    assert response.status_code == 415
    assert client.post("/v1/jobs", json={"prompt": "x"}).status_code == 202

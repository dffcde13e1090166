"""Job routes through Flask's test client, on the real Postgres store with a recording enqueue."""

from __future__ import annotations

import json
import logging

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from slotq.settings import Settings
from slotq.store import JobRepository

JAPANESE = "日本語の質問です：東京タワーの高さは？「333m」と答えてください。🗼"


def submit(client: FlaskClient, body: object, **kwargs):
    return client.post("/v1/jobs", json=body, **kwargs)


def error_fields(response) -> list[str]:
    return [detail["field"] for detail in response.get_json()["error"]["details"]]


def test_submit_returns_202(client: FlaskClient, enqueue) -> None:
    response = submit(client, {"prompt": "Hello"})

    body = response.get_json()
    assert response.status_code == 202
    assert body["status"] == "queued"
    assert body["url"] == f"/v1/jobs/{body['id']}"
    assert response.headers["Location"] == body["url"]
    assert enqueue.job_ids == [body["id"]]


def test_submit_matches_schema(client: FlaskClient, schema_check) -> None:
    response = submit(client, {"prompt": "Hello"})

    assert schema_check("JobAccepted", response.get_json()) == []


def test_get_queued_job(client: FlaskClient, schema_check) -> None:
    job_id = submit(client, {"prompt": "Hello", "metadata": {"k": 1}}).get_json()["id"]

    response = client.get(f"/v1/jobs/{job_id}")

    body = response.get_json()
    assert response.status_code == 200
    assert schema_check("Job", body) == []
    assert body["status"] == "queued"
    assert body["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert body["request"]["slot"] == {"steps": 5, "lr": 0.1, "overfit_policy": "flag"}
    assert body["request"]["metadata"] == {"k": 1}
    assert body["result"] is None
    assert body["timings_ms"] == {}
    assert body["attempts"] == 0
    assert body["created_at"].endswith("Z")
    assert body["started_at"] is None


def test_japanese_round_trip_byte_exact(client: FlaskClient, postgres_repository: JobRepository) -> None:
    request_body = {
        "messages": [{"role": "user", "content": JAPANESE}],
        "generation": {"stop": ["。"]},
        "metadata": {"説明": "テスト\n改行"},
    }
    raw = json.dumps(request_body, ensure_ascii=False).encode("utf-8")
    job_id = client.post("/v1/jobs", data=raw, content_type="application/json").get_json()["id"]
    postgres_repository.claim_job(job_id, "w")
    postgres_repository.complete_job(job_id, {"text": "答え：" + JAPANESE})

    response = client.get(f"/v1/jobs/{job_id}")

    assert response.content_type == "application/json"
    for text_value in (JAPANESE, "。", "テスト\\n改行", "答え：" + JAPANESE):
        assert text_value.encode("utf-8") in response.data
    assert b"\\u" not in response.data
    body = response.get_json()
    assert body["request"]["messages"][0]["content"] == JAPANESE
    assert body["request"]["metadata"] == {"説明": "テスト\n改行"}
    assert body["result"]["output_text"] == "答え：" + JAPANESE


def test_finished_job_shows_result(client: FlaskClient, postgres_repository: JobRepository, schema_check) -> None:
    job_id = submit(client, {"prompt": "Hi", "slot": {"steps": 2}}).get_json()["id"]
    postgres_repository.claim_job(job_id, "host/42")
    postgres_repository.complete_job(
        job_id,
        {
            "text": "Hello!",
            "finish_reason": "length",
            "prompt_tokens": 12,
            "output_tokens": 3,
            "delta_norm": 0.25,
            "delta": [0.5, 0.5],
            "loss_trace": [3.0, 2.5, 2.0],
            "timings_ms": {"prefill": 1.0, "optimize": 2.0, "decode": 3.0, "total": 6.5},
            "head_path": "autograd",
            "steps_run": 2,
            "diverged_at": None,
            "seed": 99,
        },
    )

    body = client.get(f"/v1/jobs/{job_id}").get_json()

    assert schema_check("Job", body) == []
    assert body["status"] == "succeeded"
    assert body["worker"] == "host/42"
    assert body["attempts"] == 1
    assert body["started_at"] is not None
    assert body["finished_at"] is not None
    assert set(body["timings_ms"]) == {"queue_wait", "prefill", "optimize", "decode", "total"}
    assert body["timings_ms"]["queue_wait"] >= 0
    assert body["result"] == {
        "output_text": "Hello!",
        "finish_reason": "length",
        "prompt_tokens": 12,
        "output_tokens": 3,
        "delta_norm": 0.25,
        "delta_dim": 2,
        "loss_trace": [3.0, 2.5, 2.0],
        "head_path": "autograd",
        "steps_run": 2,
        "diverged_at": None,
        "seed": 99,
    }


def test_failed_job_shows_error(client: FlaskClient, postgres_repository: JobRepository, schema_check) -> None:
    job_id = submit(client, {"prompt": "Hi"}).get_json()["id"]
    postgres_repository.claim_job(job_id, "w")
    postgres_repository.fail_job(job_id, "PromptTooLongError: prompt has 9000 tokens")

    body = client.get(f"/v1/jobs/{job_id}").get_json()

    assert schema_check("Job", body) == []
    assert body["status"] == "failed"
    assert body["error"] == "PromptTooLongError: prompt has 9000 tokens"
    assert body["result"] is None


@pytest.mark.parametrize(
    "job_id",
    [
        "00000000-0000-0000-0000-000000000000",
        "not-a-uuid",
        "00000000-0000-0000-0000-00000000000",
        "x" * 500,
        "1; DROP TABLE jobs",
    ],
)
def test_unknown_or_malformed_id_404(client: FlaskClient, job_id: str, schema_check) -> None:
    for method in (client.get, client.delete):
        response = method(f"/v1/jobs/{job_id}")

        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "job_not_found"
        assert schema_check("Error", response.get_json()) == []


def test_uppercase_id_found(client: FlaskClient) -> None:
    job_id = submit(client, {"prompt": "Hi"}).get_json()["id"]

    response = client.get(f"/v1/jobs/{job_id.upper()}")

    assert response.status_code == 200
    assert response.get_json()["id"] == job_id


def test_validation_errors_422(client: FlaskClient, enqueue, schema_check) -> None:
    response = submit(
        client,
        {"prompt": "x", "slot": {"steps": 21, "lr": 2}, "generation": {"top_p": 0}, "model": "other"},
    )

    body = response.get_json()
    assert response.status_code == 422
    assert schema_check("Error", body) == []
    assert body["error"]["code"] == "validation_failed"
    assert sorted(error_fields(response)) == ["generation.top_p", "model", "slot.lr", "slot.steps"]
    lr_error = next(detail for detail in body["error"]["details"] if detail["field"] == "slot.lr")
    assert lr_error == {"field": "slot.lr", "value": 2, "message": "must be a number between 0.0001 and 1.0"}
    assert enqueue.job_ids == []


def test_nan_in_body_named(client: FlaskClient) -> None:
    response = client.post(
        "/v1/jobs", data=b'{"prompt": "x", "slot": {"lr": NaN}}', content_type="application/json"
    )

    assert response.status_code == 422
    assert error_fields(response) == ["slot.lr"]
    assert response.get_json()["error"]["details"][0]["value"] == "nan"


def test_control_character_prompt_422(client: FlaskClient) -> None:
    response = submit(client, {"prompt": "bad\u0000prompt"})

    assert response.status_code == 422
    assert error_fields(response) == ["prompt"]


def test_lone_surrogate_prompt_422(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", data=b'{"prompt": "a\\ud800b"}', content_type="application/json")

    assert response.status_code == 422
    assert error_fields(response) == ["prompt"]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b'{"prompt": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"prompt": "x"}', None, 415, "unsupported_media_type"),
        (b'{"prompt": "x"}', "application/json; charset=latin-1", 415, "unsupported_media_type"),
        (b'{"prompt": "x"', "application/json", 400, "invalid_body"),
        (b"", "application/json", 400, "invalid_body"),
        (b'{"prompt": "\xff\xfe"}', "application/json", 400, "invalid_body"),
        (b"[" * 100000, "application/json", 400, "invalid_body"),
        (b'{"prompt": "x"}', "application/json; charset=UTF-8", 202, None),
        (b"[]", "application/json", 422, "validation_failed"),
    ],
)
def test_bad_bodies(client: FlaskClient, data: bytes, content_type: str | None, status: int, code: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}

    response = client.post("/v1/jobs", data=data, headers=headers)

    assert response.status_code == status
    if code is not None:
        assert response.get_json()["error"]["code"] == code
        assert "Traceback" not in response.get_data(as_text=True)


def test_invalid_utf8_message_names_offset(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", data=b'{"prompt": "ab\xc3"}', content_type="application/json")

    assert "UTF-8" in response.get_json()["error"]["message"]
    assert "offset 14" in response.get_json()["error"]["message"]


def test_body_too_large_413(
    postgres_settings: Settings, postgres_repository: JobRepository, enqueue, authorize
) -> None:
    settings = Settings(
        data_dir=postgres_settings.data_dir,
        database_url=postgres_settings.database_url,
        broker_url=postgres_settings.broker_url,
        max_body_bytes=2048,
    )
    client = authorize(create_app(settings, enqueue=enqueue, repository=postgres_repository).test_client())

    response = client.post("/v1/jobs", data=json.dumps({"prompt": "x" * 3000}), content_type="application/json")

    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert "2048 bytes" in response.get_json()["error"]["message"]
    assert enqueue.job_ids == []


def test_method_not_allowed_405(client: FlaskClient, schema_check) -> None:
    response = client.put("/v1/jobs")

    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]
    assert schema_check("Error", response.get_json()) == []


def test_unknown_route_404(client: FlaskClient) -> None:
    response = client.get("/v2/nothing")

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_unexpected_error_500_without_traceback(
    postgres_settings: Settings,
    postgres_repository: JobRepository,
    enqueue,
    authorize,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenRepository(JobRepository):
        def get_job(self, job_id: str, tenant_id: str | None = None):
            raise RuntimeError("secret internal detail")

    app = create_app(postgres_settings, enqueue=enqueue, repository=BrokenRepository(postgres_repository.engine))
    caplog.set_level(logging.ERROR, logger="api")

    response = authorize(app.test_client()).get(
        "/v1/jobs/00000000-0000-0000-0000-000000000000", headers={"X-Request-ID": "req-500"}
    )

    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    assert response.get_json()["error"]["request_id"] == "req-500"
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    logged = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(logged) == 1
    assert "request_id=req-500" in logged[0].getMessage()
    assert logged[0].exc_info is not None


def test_request_id_echoed_or_generated(client: FlaskClient) -> None:
    echoed = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    generated = client.get("/healthz")

    assert echoed.headers["X-Request-ID"] == "abc-123"
    assert replaced.headers["X-Request-ID"] != "bad id with spaces"
    assert len(generated.headers["X-Request-ID"]) == 32


def test_enqueue_failure_still_accepted(client: FlaskClient, enqueue, postgres_repository: JobRepository) -> None:
    enqueue.error = ConnectionError("broker down")

    response = submit(client, {"prompt": "Hi"})

    assert response.status_code == 202
    assert postgres_repository.get_job(response.get_json()["id"]).status == "queued"


def test_prompt_not_logged(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    submit(client, {"prompt": "TOP-SECRET-PROMPT"})

    assert "TOP-SECRET-PROMPT" not in caplog.text
    assert "job accepted" in caplog.text


def test_cancel_queued_200(client: FlaskClient, schema_check) -> None:
    job_id = submit(client, {"prompt": "Hi"}).get_json()["id"]

    response = client.delete(f"/v1/jobs/{job_id}")

    body = response.get_json()
    assert response.status_code == 200
    assert schema_check("Job", body) == []
    assert body["status"] == "cancelled"
    assert body["cancelled_at"] is not None
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"


def test_cancel_running_409(client: FlaskClient, postgres_repository: JobRepository, schema_check) -> None:
    job_id = submit(client, {"prompt": "Hi"}).get_json()["id"]
    postgres_repository.claim_job(job_id, "w")

    response = client.delete(f"/v1/jobs/{job_id}")

    body = response.get_json()
    assert response.status_code == 409
    assert schema_check("Error", body) == []
    assert body["error"]["code"] == "job_running"
    assert "will finish" in body["error"]["message"]
    assert postgres_repository.get_job(job_id).status == "running"


def test_cancel_finished_409(client: FlaskClient) -> None:
    job_id = submit(client, {"prompt": "Hi"}).get_json()["id"]
    client.delete(f"/v1/jobs/{job_id}")

    response = client.delete(f"/v1/jobs/{job_id}")

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "job_finished"
    assert "cancelled" in response.get_json()["error"]["message"]


def test_list_pages_newest_first(client: FlaskClient, schema_check) -> None:
    ids = [submit(client, {"prompt": f"p{index}"}).get_json()["id"] for index in range(5)]

    seen = []
    url = "/v1/jobs?limit=2"
    for _ in range(10):
        body = client.get(url).get_json()
        assert schema_check("JobList", body) == []
        seen.extend(job["id"] for job in body["jobs"])
        if body["next_cursor"] is None:
            break
        url = f"/v1/jobs?limit=2&cursor={body['next_cursor']}"

    assert seen == list(reversed(ids))


def test_list_default_and_status_filter(client: FlaskClient) -> None:
    first = submit(client, {"prompt": "a"}).get_json()["id"]
    second = submit(client, {"prompt": "b"}).get_json()["id"]
    client.delete(f"/v1/jobs/{first}")

    everything = client.get("/v1/jobs").get_json()
    cancelled = client.get("/v1/jobs?status=cancelled").get_json()
    queued = client.get("/v1/jobs?status=queued").get_json()

    assert [job["id"] for job in everything["jobs"]] == [second, first]
    assert everything["next_cursor"] is None
    assert [job["id"] for job in cancelled["jobs"]] == [first]
    assert [job["id"] for job in queued["jobs"]] == [second]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=WyJ4IiwieSJd", "cursor"),
        ("sort=asc", "sort"),
        ("status=queued&status=running", "status"),
    ],
)
def test_list_bad_query_422(client: FlaskClient, query: str, field: str, schema_check) -> None:
    response = client.get(f"/v1/jobs?{query}")

    assert response.status_code == 422
    assert schema_check("Error", response.get_json()) == []
    assert field in error_fields(response)


def test_list_limit_bounds_accepted(client: FlaskClient) -> None:
    submit(client, {"prompt": "a"})

    assert client.get("/v1/jobs?limit=1").status_code == 200
    assert client.get("/v1/jobs?limit=200").status_code == 200

"""Batch routes through Flask's test client, on the real Postgres store with a recording enqueue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from slotq.store import JobRepository

JSONL = "application/x-ndjson"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "forms_ja"
SCHEMA = {"type": "object", "required": ["数量"], "properties": {"数量": {"type": "integer"}}}


def jsonl(*items) -> bytes:
    return ("\n".join(item if isinstance(item, str) else json.dumps(item, ensure_ascii=False) for item in items) + "\n").encode("utf-8")


def line(custom_id, **request):
    return {"custom_id": custom_id, "request": request or {"prompt": "こんにちは"}}


def submit(client: FlaskClient, body: bytes, query: str = "", content_type: str = JSONL):
    return client.post(f"/v1/batches{query}", data=body, content_type=content_type)


def accepted_id(response) -> str:
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["id"]


def results(client: FlaskClient, batch_id: str, after_line: int | None = None):
    query = "" if after_line is None else f"?after_line={after_line}"
    response = client.get(f"/v1/batches/{batch_id}/results{query}")
    assert response.status_code == 200
    return response, [json.loads(text) for text in response.get_data(as_text=True).splitlines()]


def finish(repository: JobRepository, job_id: str, text: str, check=None) -> None:
    repository.claim_job(job_id, "test-worker")
    fields = check.result_fields() if check is not None else {}
    assert repository.complete_job(job_id, {"text": text, "delta_norm": 1.25, "timings_ms": {"total": 12.0}, **fields})


def test_submit_valid_batch(client: FlaskClient, enqueue, postgres_repository, schema_check) -> None:
    header = {"batch": {"defaults": {"generation": {"max_new_tokens": 16}}}}

    response = submit(client, jsonl(header, line("a"), line("b", prompt="二")), "?file_name=注文.jsonl")

    body = response.get_json()
    assert response.status_code == 202
    assert schema_check("BatchAccepted", body) == []
    assert response.headers["Location"] == body["url"] == f"/v1/batches/{body['id']}"
    assert (body["line_count"], body["skipped_count"], body["skipped"]) == (2, 0, [])
    job_ids = postgres_repository.batch_job_ids(body["id"])
    assert enqueue.job_ids == job_ids
    assert enqueue.many_calls == 1
    assert postgres_repository.get_job(job_ids[0]).request["generation"]["max_new_tokens"] == 16


def test_status_view(client: FlaskClient, postgres_repository, schema_check) -> None:
    header = {"batch": {"response_format": {"type": "json_schema", "schema": SCHEMA}, "validation_prompts": [{"messages": [{"role": "user", "content": "検証"}]}]}}
    batch_id = accepted_id(submit(client, jsonl(header, line("a"), line("b"), line("c")), "?file_name=夜間バッチ.jsonl"))
    from slotq.formats import check_output, parse_response_format

    response_format = parse_response_format({"type": "json_schema", "schema": SCHEMA})
    job_ids = postgres_repository.batch_job_ids(batch_id)
    finish(postgres_repository, job_ids[0], '{"数量": 3}', check_output('{"数量": 3}', response_format))
    finish(postgres_repository, job_ids[1], "だめ", check_output("だめ", response_format))

    response = client.get(f"/v1/batches/{batch_id}")

    body = response.get_json()
    assert response.status_code == 200
    assert schema_check("Batch", body) == []
    assert body["status"] == "running"
    assert body["input_file_name"] == "夜間バッチ.jsonl"
    assert body["counts"] == {"queued": 1, "running": 0, "succeeded": 2, "failed": 0, "cancelled": 0}
    assert body["progress"] == pytest.approx(2 / 3, abs=1e-5)
    assert body["format"]["compliance_rate"] == 0.5
    assert body["format"]["checked"] == 2
    assert body["estimated_seconds_left"] is not None
    assert body["validation_prompt_count"] == 1
    assert body["overfit_count"] == 0
    assert body["started_at"] is not None and body["finished_at"] is None


def test_all_errors_in_one_response(client: FlaskClient, enqueue, postgres_repository, schema_check) -> None:
    body = jsonl(line("a"), "nope", line("a"), line("d", prompt="x", slot={"steps": -1}), line("e"))

    response = submit(client, body)

    error = response.get_json()["error"]
    assert response.status_code == 422
    assert schema_check("Error", response.get_json()) == []
    assert [(detail["line"], detail["custom_id"], detail["field"]) for detail in error["details"]] == [
        (2, None, "line"),
        (3, "a", "custom_id"),
        (4, "d", "request.slot.steps"),
    ]
    assert enqueue.job_ids == []
    assert postgres_repository.list_jobs()[0] == []


def test_skip_invalid_accepts_rest(client: FlaskClient, enqueue) -> None:
    body = jsonl(line("a"), "nope", line("a"), line("c"))

    response = submit(client, body, "?skip_invalid=true")

    accepted = response.get_json()
    assert response.status_code == 202
    assert accepted["line_count"] == 2
    assert [(skipped["line"], skipped["custom_id"]) for skipped in accepted["skipped"]] == [(2, None), (3, "a")]
    assert len(enqueue.job_ids) == 2
    assert client.get(accepted["url"]).get_json()["skipped_count"] == 2


def test_default_cap_of_fifty_thousand(client: FlaskClient, enqueue, postgres_repository) -> None:
    body = b"".join(b'{"custom_id":"%d","request":{"prompt":"p"}}\n' % index for index in range(50_001))

    response = submit(client, body)

    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "too_many_lines"
    assert "50000" in response.get_json()["error"]["message"]
    assert postgres_repository.list_jobs()[0] == []
    assert enqueue.job_ids == []


def test_response_format_errors(client: FlaskClient) -> None:
    header = {"batch": {"response_format": {"type": "json_schema", "schema": {"type": "objekt"}}}}

    response = submit(client, jsonl(header, line("a")))

    details = response.get_json()["error"]["details"]
    assert response.status_code == 422
    assert details[0]["field"] == "batch.response_format.schema.type"


def test_json_form_accepted(client: FlaskClient, postgres_repository) -> None:
    body = {"defaults": {"slot": {"steps": 1}}, "requests": [line("一"), line("二")]}

    batch_id = accepted_id(client.post("/v1/batches", json=body))

    jobs = [postgres_repository.get_job(job_id) for job_id in postgres_repository.batch_job_ids(batch_id)]
    assert [(job.custom_id, job.line_number, job.slot_steps) for job in jobs] == [("一", 1, 1), ("二", 2, 1)]


def test_results_partial_then_resume(client: FlaskClient, postgres_repository, schema_check) -> None:
    batch_id = accepted_id(submit(client, jsonl({"batch": {}}, *(line(f"id-{index}") for index in range(5)))))
    job_ids = postgres_repository.batch_job_ids(batch_id)
    for index in (0, 1, 3):
        finish(postgres_repository, job_ids[index], f"出力{index}")

    response, first = results(client, batch_id)

    assert [item["line"] for item in first] == [2, 3]
    assert [item["custom_id"] for item in first] == ["id-0", "id-1"]
    assert first[0]["output"] == "出力0"
    assert first[0]["delta_norm"] == 1.25
    assert first[0]["timings_ms"]["total"] == 12.0
    assert all(schema_check("BatchResultLine", item) == [] for item in first)
    assert response.headers["X-Slotq-Last-Line"] == "3"
    assert response.headers["X-Slotq-Results-Complete"] == "false"
    assert response.content_type.startswith("application/x-ndjson")

    finish(postgres_repository, job_ids[2], "出力2")
    response, second = results(client, batch_id, after_line=3)
    assert [item["line"] for item in second] == [4, 5]
    assert response.headers["X-Slotq-Last-Line"] == "5"

    _, empty = results(client, batch_id, after_line=5)
    assert empty == []


def test_cancel_midway_keeps_results(client: FlaskClient, postgres_repository, schema_check) -> None:
    batch_id = accepted_id(submit(client, jsonl(*(line(f"id-{index}") for index in range(4)))))
    job_ids = postgres_repository.batch_job_ids(batch_id)
    finish(postgres_repository, job_ids[0], "done")
    postgres_repository.claim_job(job_ids[1], "w")

    response = client.post(f"/v1/batches/{batch_id}/cancel")

    body = response.get_json()
    assert response.status_code == 200
    assert schema_check("BatchCancelled", body) == []
    assert body["cancelled_jobs"] == 2
    assert body["status"] == "cancelling"
    postgres_repository.complete_job(job_ids[1], {"text": "late"})
    _, lines = results(client, batch_id)
    assert [(item["line"], item["status"]) for item in lines] == [(1, "succeeded"), (2, "succeeded"), (3, "cancelled"), (4, "cancelled")]
    assert lines[0]["output"] == "done"
    assert client.get(f"/v1/batches/{batch_id}").get_json()["status"] == "cancelled"
    assert client.post(f"/v1/batches/{batch_id}/cancel").status_code == 409


def test_japanese_round_trip_unescaped(client: FlaskClient, postgres_repository) -> None:
    text = "株式会社青葉精工の佐藤です。「六角ボルト」を５００本。🔩"
    batch_id = accepted_id(submit(client, jsonl(line("注文-一", messages=[{"role": "user", "content": text}], metadata={"備考": "至急"}))))
    job_id = postgres_repository.batch_job_ids(batch_id)[0]
    finish(postgres_repository, job_id, '{"品名": "六角ボルト", "数量": 500}')

    response = client.get(f"/v1/batches/{batch_id}/results")

    assert b"\\u" not in response.data
    assert "注文-一".encode() in response.data
    assert '六角ボルト'.encode() in response.data
    assert postgres_repository.get_job(job_id).messages[0]["content"] == text


def test_body_limit_413(make_client) -> None:
    small = make_client(max_batch_body_bytes=2048)

    response = small.post("/v1/batches", data=jsonl(*(line(f"id-{index}") for index in range(100))), content_type=JSONL)

    assert response.status_code == 413
    assert "SLOTQ_MAX_BATCH_BODY_BYTES" in response.get_json()["error"]["message"]


def test_batch_body_may_exceed_job_limit(make_client) -> None:
    roomy = make_client(max_body_bytes=2048, max_batch_body_bytes=1_000_000)

    response = roomy.post("/v1/batches", data=jsonl(*(line(f"id-{index}") for index in range(200))), content_type=JSONL)

    assert response.status_code == 202


@pytest.mark.parametrize(
    "path, method, status",
    [
        ("/v1/batches/not-a-uuid", "get", 404),
        ("/v1/batches/00000000-0000-0000-0000-000000000000", "get", 404),
        ("/v1/batches/00000000-0000-0000-0000-000000000000/results", "get", 404),
        ("/v1/batches/00000000-0000-0000-0000-000000000000/cancel", "post", 404),
        ("/v1/batches/00000000-0000-0000-0000-000000000000/results?after_line=-1", "get", 422),
        ("/v1/batches/00000000-0000-0000-0000-000000000000/results?after_line=x", "get", 422),
        ("/v1/batches/00000000-0000-0000-0000-000000000000/results?from=1", "get", 422),
    ],
)
def test_bad_ids_and_parameters(client: FlaskClient, path, method, status) -> None:
    response = getattr(client, method)(path)

    assert response.status_code == status
    assert "error" in response.get_json()


@pytest.mark.parametrize("query", ["?skip_invalid=maybe", "?unknown=1"])
def test_bad_submit_parameters(client: FlaskClient, query) -> None:
    assert submit(client, jsonl(line("a")), query).status_code == 422


def test_wrong_media_type_415(client: FlaskClient) -> None:
    assert submit(client, jsonl(line("a")), content_type="text/plain").status_code == 415
    assert submit(client, jsonl(line("a")), content_type="application/x-ndjson; charset=latin-1").status_code == 415


def test_example_batch_accepted(client: FlaskClient, postgres_repository) -> None:
    body = (EXAMPLE / "orders.jsonl").read_bytes()

    accepted = submit(client, body, "?file_name=orders.jsonl").get_json()
    status = client.get(accepted["url"]).get_json()

    assert accepted["line_count"] == 24
    assert status["response_format"]["type"] == "json_schema"
    assert status["validation_prompt_count"] == 4
    assert status["defaults"]["generation"]["temperature"] == 0.0


def test_openapi_lists_batch_paths(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()

    for path in ("/v1/batches", "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/results", "/v1/batches/{batch_id}/cancel"):
        assert path in document["paths"]
    assert "after_line" in json.dumps(document["paths"]["/v1/batches/{batch_id}/results"])

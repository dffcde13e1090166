"""Logs of a full API request cycle never contain prompt or output text."""

from __future__ import annotations

import json
import logging

import pytest

MARKER = "MARKER-7f3a9c"
PROMPT = f"社外秘：新製品の価格は {MARKER} です。要約してください。"


def test_no_prompt_or_output_in_logs(client_for, tenant_key, other_key, postgres_repository, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(tenant_key)

    job_id = client.post("/v1/jobs", json={"prompt": PROMPT, "metadata": {"note": MARKER}}, headers={"Idempotency-Key": "log-1"}).get_json()["id"]
    client.post("/v1/jobs", json={"prompt": PROMPT, "metadata": {"note": MARKER}}, headers={"Idempotency-Key": "log-1"})
    client.post("/v1/jobs", json={"prompt": PROMPT + "!"}, headers={"Idempotency-Key": "log-1"})
    client.post("/v1/jobs", json={"messages": [{"role": "user", "content": PROMPT}], "slot": {"lr": 99}})
    client.post("/v1/jobs", data=PROMPT.encode("utf-8"), content_type="application/json")
    postgres_repository.claim_job(job_id, "w")
    postgres_repository.complete_job(job_id, {"text": f"回答 {MARKER}", "parsed_output": {"x": MARKER}})
    client.get(f"/v1/jobs/{job_id}")
    client.get("/v1/jobs")
    client_for(other_key).get(f"/v1/jobs/{job_id}")

    lines = "".join(json.dumps({"custom_id": f"c{index}", "request": {"prompt": PROMPT}}, ensure_ascii=False) + "\n" for index in range(3))
    batch = client.post("/v1/batches", data=lines.encode("utf-8"), content_type="application/x-ndjson").get_json()
    client.post("/v1/batches", data=(lines + '{"custom_id": "bad", "request": {"prompt": ""}}\n').encode("utf-8"), content_type="application/x-ndjson")
    client.get(f"/v1/batches/{batch['id']}/results")
    client.post(f"/v1/batches/{batch['id']}/cancel")
    client.delete(f"/v1/jobs/{job_id}")

    # The capture works: lifecycle lines with the ids were recorded.
    assert any(job_id in record.getMessage() for record in caplog.records)
    assert any(batch["id"] in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        assert MARKER not in text, f"{record.name}: {record.getMessage()}"
        assert "社外秘" not in text, f"{record.name}: {record.getMessage()}"

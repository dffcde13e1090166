"""API keys, tenants and the admin role, through the Flask test client on the real Postgres store."""

from __future__ import annotations

import argparse

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from slotq.keys import PREFIX_CHARS, add_keys_command, create_key, hash_key, list_keys, revoke_key, verify_key
from slotq.store import JobRepository
from slotq.store.models import ApiKey

NO_JOB = "00000000-0000-0000-0000-000000000000"


def submit(client: FlaskClient, prompt: str = "Hello") -> str:
    response = client.post("/v1/jobs", json={"prompt": prompt})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def submit_batch(client: FlaskClient) -> str:
    body = b'{"custom_id": "a", "request": {"prompt": "x"}}\n'
    response = client.post("/v1/batches", data=body, content_type="application/x-ndjson")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def test_missing_key_401(app) -> None:
    response = app.test_client().get("/v1/jobs")

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert "slotq keys create" in response.get_json()["error"]["message"]
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="slot-queue"'


@pytest.mark.parametrize(
    "header",
    [
        {"Authorization": "Bearer sq_" + "a" * 43},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"X-API-Key": "sq_" + "b" * 43},
        {"Authorization": "Bearer sq_" + "c" * 5000},
    ],
)
def test_invalid_key_401(app, tenant_key, header: dict) -> None:
    response = app.test_client().get("/v1/jobs", headers=header)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert "invalid_token" in response.headers["WWW-Authenticate"]


def test_key_with_one_character_changed_401(app, tenant_key) -> None:
    last = tenant_key.key[-1]
    forged = tenant_key.key[:-1] + ("A" if last != "A" else "B")

    response = app.test_client().get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"})

    assert response.status_code == 401


def test_x_api_key_header_accepted(app, tenant_key) -> None:
    response = app.test_client().get("/v1/jobs", headers={"X-API-Key": tenant_key.key})

    assert response.status_code == 200


def test_bearer_scheme_case_insensitive(app, tenant_key) -> None:
    response = app.test_client().get("/v1/jobs", headers={"Authorization": f"bearer {tenant_key.key}"})

    assert response.status_code == 200


def test_public_endpoints_need_no_key(app) -> None:
    client = app.test_client()

    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)


def test_revoked_key_401(app, tenant_key, postgres_repository: JobRepository) -> None:
    headers = {"Authorization": f"Bearer {tenant_key.key}"}
    assert app.test_client().get("/v1/jobs", headers=headers).status_code == 200

    assert revoke_key(tenant_key.id, repository=postgres_repository)
    assert not revoke_key(tenant_key.id, repository=postgres_repository)

    assert app.test_client().get("/v1/jobs", headers=headers).status_code == 401


def test_key_stored_only_hashed(tenant_key, postgres_repository: JobRepository) -> None:
    with postgres_repository.engine.connect() as connection:
        row = connection.execute(select(ApiKey.key_hash, ApiKey.prefix)).one()

    assert tenant_key.key.startswith("sq_")
    assert len(tenant_key.key) == 46
    assert row.key_hash == hash_key(tenant_key.key)
    assert row.prefix == tenant_key.key[:PREFIX_CHARS]
    assert tenant_key.key not in row.key_hash


def test_keys_are_random(postgres_repository: JobRepository) -> None:
    keys = {create_key("acme", repository=postgres_repository).key for _ in range(5)}

    assert len(keys) == 5
    assert len(list_keys(repository=postgres_repository)) == 5


def test_verify_key_matches_only_exact(tenant_key, other_key, postgres_repository: JobRepository) -> None:
    assert verify_key(postgres_repository, tenant_key.key).tenant_name == "acme"
    assert verify_key(postgres_repository, other_key.key).tenant_name == "globex"
    assert verify_key(postgres_repository, tenant_key.key + "x") is None
    assert verify_key(postgres_repository, "") is None


@pytest.mark.parametrize("name", ["", "two words", "tab\there", "x" * 101])
def test_invalid_tenant_name_rejected(name: str, postgres_repository: JobRepository) -> None:
    with pytest.raises(ValueError, match="invalid tenant name"):
        create_key(name, repository=postgres_repository)


def test_japanese_tenant_name(postgres_repository: JobRepository) -> None:
    created = create_key("東京支社", repository=postgres_repository)

    assert verify_key(postgres_repository, created.key).tenant_name == "東京支社"


def test_other_tenant_job_404(client_for, tenant_key, other_key) -> None:
    owner, stranger = client_for(tenant_key), client_for(other_key)
    job_id = submit(owner)

    read = stranger.get(f"/v1/jobs/{job_id}")
    cancel = stranger.delete(f"/v1/jobs/{job_id}")

    assert read.status_code == 404
    assert read.get_json()["error"]["code"] == "job_not_found"
    assert cancel.status_code == 404
    assert owner.get(f"/v1/jobs/{job_id}").get_json()["status"] == "queued"


def test_lists_show_only_own_jobs(client_for, tenant_key, other_key) -> None:
    acme, globex = client_for(tenant_key), client_for(other_key)
    acme_ids = {submit(acme) for _ in range(3)}
    globex_ids = {submit(globex) for _ in range(2)}

    acme_listed = {job["id"] for job in acme.get("/v1/jobs").get_json()["jobs"]}
    globex_listed = {job["id"] for job in globex.get("/v1/jobs?status=queued").get_json()["jobs"]}

    assert acme_listed == acme_ids
    assert globex_listed == globex_ids


def test_other_tenant_batch_404(client_for, tenant_key, other_key) -> None:
    owner, stranger = client_for(tenant_key), client_for(other_key)
    batch_id = submit_batch(owner)
    job_id = owner.get(f"/v1/jobs").get_json()["jobs"][0]["id"]

    assert stranger.get(f"/v1/batches/{batch_id}").status_code == 404
    assert stranger.get(f"/v1/batches/{batch_id}/results").status_code == 404
    assert stranger.post(f"/v1/batches/{batch_id}/cancel").status_code == 404
    assert stranger.get(f"/v1/jobs/{job_id}").status_code == 404
    assert owner.get(f"/v1/batches/{batch_id}").status_code == 200


def test_admin_queue_counts_all_tenants(client_for, tenant_key, other_key, admin_key, schema_check) -> None:
    submit(client_for(tenant_key))
    submit(client_for(tenant_key))
    cancelled = submit(client_for(other_key))
    client_for(other_key).delete(f"/v1/jobs/{cancelled}")

    response = client_for(admin_key).get("/v1/admin/queue")

    body = response.get_json()
    assert response.status_code == 200
    assert schema_check("AdminQueue", body) == []
    assert body["queued"] == 2
    assert body["counts"]["cancelled"] == 1
    by_tenant = {entry["tenant"]: entry["counts"] for entry in body["tenants"]}
    assert by_tenant["acme"]["queued"] == 2
    assert by_tenant["globex"]["cancelled"] == 1


def test_admin_keys_lists_without_secrets(client_for, tenant_key, admin_key, schema_check) -> None:
    response = client_for(admin_key).get("/v1/admin/keys")

    body = response.get_json()
    assert response.status_code == 200
    assert schema_check("AdminKeys", body) == []
    assert {key["tenant"] for key in body["keys"]} == {"acme", "operators"}
    assert tenant_key.key not in response.get_data(as_text=True)
    assert hash_key(tenant_key.key) not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/v1/admin/queue", "/v1/admin/keys"])
def test_admin_endpoints_403_for_tenant_key(client: FlaskClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert "--admin" in response.get_json()["error"]["message"]


def test_admin_sees_only_own_jobs(client_for, tenant_key, admin_key) -> None:
    submit(client_for(tenant_key))

    assert client_for(admin_key).get("/v1/jobs").get_json()["jobs"] == []


def test_auth_disabled_acts_as_local_admin(make_app, tenant_key) -> None:
    client = make_app(auth="disabled").test_client()

    job_id = submit(client)

    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.get("/v1/admin/queue").status_code == 200
    assert make_app().test_client().get("/v1/jobs").status_code == 401


def test_keys_command(postgres_url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLOTQ_DATABASE_URL", postgres_url)
    parser = argparse.ArgumentParser(prog="slotq")
    add_keys_command(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.handler(args)

    assert run("keys", "create", "--tenant", "cli-tenant", "--admin") == 0
    created = capsys.readouterr()
    key = created.out.strip()
    assert key.startswith("sq_")
    assert "shown only now" in created.err

    assert run("keys", "list") == 0
    listing = capsys.readouterr().out
    assert "cli-tenant" in listing
    assert key[:PREFIX_CHARS] in listing
    assert key not in listing
    key_id = next(line.split()[0] for line in listing.splitlines() if "cli-tenant" in line)

    assert run("keys", "revoke", key_id) == 0
    assert run("keys", "revoke", key_id) == 1
    assert "no unrevoked key" in capsys.readouterr().err
    assert run("keys", "create", "--tenant", "has space") == 1

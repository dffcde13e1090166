"""API keys: create, check, list and revoke them, and the ``slotq keys`` command.

A key is ``sq_`` followed by 43 URL-safe characters from 32 random bytes (256 bits). The store
keeps only its SHA-256 and its first `PREFIX_CHARS` characters. A fast hash is enough here: a
slow password hash (bcrypt, scrypt, Argon2) slows down guessing low-entropy secrets, but a
256-bit random key cannot be guessed at any hash speed, and a slow hash would add its cost to
every request. The prefix finds the candidate rows and the hashes are compared with
`hmac.compare_digest`, so the comparison takes the same time wherever two hashes differ.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from slotq import SlotqError
from slotq.store import ApiKeyRecord, JobRepository, make_engine

KEY_PREFIX = "sq_"
#: Characters of a key that are stored in clear and shown by ``slotq keys list``.
PREFIX_CHARS = 12
#: Random bytes per key: 256 bits, encoded as 43 URL-safe base64 characters.
KEY_BYTES = 32
#: Longest key header value that is looked up at all; longer values are rejected unread.
MAX_KEY_CHARS = 128
#: Tenant names: 1 to 100 characters, no whitespace or control characters (any script).
TENANT_NAME_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,100}")

EXIT_FAILURE = 1


class ApiKeyError(SlotqError, ValueError):
    """An argument of a key operation is invalid; the message names it and what is allowed."""


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``key`` is the plaintext, returned once and never stored; ``record`` is what is stored."""

    key: str
    record: ApiKeyRecord

    @property
    def id(self) -> str:
        return self.record.id


def generate_key() -> str:
    """Return a new random key, ``sq_`` and 43 URL-safe characters."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> str:
    """Return the hex SHA-256 of ``key``'s UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(
    tenant: str,
    admin: bool = False,
    *,
    repository: JobRepository | None = None,
    database_url: str | None = None,
) -> CreatedKey:
    """Create a key for ``tenant`` (the tenant is created when missing) and return it once.

    Args:
        tenant: tenant name, 1 to 100 characters without whitespace.
        admin: the key may also call the operations endpoints under ``/v1/admin``.
        repository: store to write to; default a repository on ``database_url``.
        database_url: used without ``repository``; default ``SLOTQ_DATABASE_URL`` (the
            embedded SQLite file when unset). The schema must be migrated.

    Raises:
        ApiKeyError: ``tenant`` is not a valid name.
    """
    _check_tenant_name(tenant)
    key = generate_key()
    with _repository(repository, database_url) as store:
        record = store.create_api_key(tenant, key[:PREFIX_CHARS], hash_key(key), admin=admin)
    return CreatedKey(key=key, record=record)


def verify_key(repository: JobRepository, presented: str) -> ApiKeyRecord | None:
    """Return the unrevoked key matching ``presented``, or None."""
    if not presented.startswith(KEY_PREFIX) or len(presented) > MAX_KEY_CHARS:
        return None

    digest = hash_key(presented)
    match = None
    for candidate in repository.find_api_keys(presented[:PREFIX_CHARS]):
        if hmac.compare_digest(candidate.key_hash, digest):
            match = candidate
    return match


def list_keys(*, repository: JobRepository | None = None, database_url: str | None = None) -> list[ApiKeyRecord]:
    """Return every key, revoked ones included, oldest first."""
    with _repository(repository, database_url) as store:
        return store.list_api_keys()


def revoke_key(key_id: str, *, repository: JobRepository | None = None, database_url: str | None = None) -> bool:
    """Revoke the key with ``key_id``; False when there is none or it was already revoked."""
    with _repository(repository, database_url) as store:
        return store.revoke_api_key(key_id)


def add_keys_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``keys create | list | revoke`` on the ``slotq`` command's subparsers."""
    parser = subparsers.add_parser("keys", help="create, list and revoke API keys")
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--tenant", required=True, help="tenant name; the tenant is created when missing")
    create.add_argument("--admin", action="store_true", help="the key may also call the /v1/admin endpoints")
    create.set_defaults(handler=_run_create)

    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.set_defaults(handler=_run_list)

    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="ID", help="key id from 'slotq keys list'")
    revoke.set_defaults(handler=_run_revoke)


def _run_create(args: argparse.Namespace) -> int:
    try:
        created = create_key(args.tenant, admin=args.admin)
    except ApiKeyError as error:
        print(f"slotq keys create: {error}", file=sys.stderr)
        return EXIT_FAILURE

    role = "admin" if created.record.admin else "tenant"
    print(
        f"created {role} key {created.id} for tenant {created.record.tenant_name!r}; "
        "it is shown only now, so store it safely",
        file=sys.stderr,
    )
    print(created.key)
    return 0


def _run_list(args: argparse.Namespace) -> int:
    print(f"{'ID':36}  {'PREFIX':12}  {'ROLE':6}  {'CREATED':20}  {'REVOKED':20}  TENANT")
    for key in list_keys():
        revoked = key.revoked_at.strftime("%Y-%m-%dT%H:%M:%SZ") if key.revoked_at else "-"
        role = "admin" if key.admin else "tenant"
        created = key.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{key.id:36}  {key.prefix:12}  {role:6}  {created:20}  {revoked:20}  {key.tenant_name}")
    return 0


def _run_revoke(args: argparse.Namespace) -> int:
    if not revoke_key(args.key_id):
        print(f"slotq keys revoke: no unrevoked key with id {args.key_id!r}; see 'slotq keys list'", file=sys.stderr)
        return EXIT_FAILURE
    print(f"key {args.key_id} revoked", file=sys.stderr)
    return 0


def _check_tenant_name(tenant: str) -> None:
    if not isinstance(tenant, str) or not TENANT_NAME_PATTERN.fullmatch(tenant):
        raise ApiKeyError(
            f"invalid tenant name {tenant!r}: must be 1 to 100 characters without whitespace or control characters"
        )


@contextmanager
def _repository(repository: JobRepository | None, database_url: str | None) -> Iterator[JobRepository]:
    """Yield ``repository``, or a temporary one on ``database_url`` that is disposed afterwards."""
    if repository is not None:
        yield repository
        return

    if database_url is None:
        from slotq.settings import load_settings

        database_url = load_settings().database_url
    engine = make_engine(database_url)
    try:
        yield JobRepository(engine)
    finally:
        engine.dispose()

"""The ``Idempotency-Key`` header of submits: request hashes, replays and conflicts.

A submit with a key that its tenant used before, within ``SLOTQ_IDEMPOTENCY_TTL_S``, gets the
first response again (same status and body, plus ``Idempotent-Replayed: true``) when it sent
the same request, and 409 when it sent another one. The request hash covers the route, the query
string, the media type and the body: for ``POST /v1/jobs`` the body as canonical JSON (sorted
keys, no spaces), so formatting does not matter; for ``POST /v1/batches`` the raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import IO, Any

from flask import Response, jsonify, request

from api.errors import ApiError
from slotq.store import StoredResponse

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
#: Keys are 1 to 255 visible ASCII characters, such as a UUID.
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
#: Bytes read per call while a replayed upload is drained to compute its hash.
DRAIN_CHUNK_BYTES = 65536


def idempotency_key() -> str | None:
    """Return the request's ``Idempotency-Key``, None when absent, or raise 422 when malformed."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if not KEY_PATTERN.fullmatch(value):
        shown = value if len(value) <= 64 else value[:64] + "…"
        raise ApiError(
            422,
            "validation_failed",
            f"the {IDEMPOTENCY_HEADER} header is invalid",
            [{"field": IDEMPOTENCY_HEADER, "value": shown, "message": "must be 1 to 255 visible ASCII characters"}],
        )
    return value


def json_request_hash(body: Any) -> str:
    """Return the hash of a JSON submit: route, query string and canonical JSON body."""
    digest = _route_hash()
    digest.update(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


class HashingReader:
    """Stream wrapper that hashes every byte read, after the route, query and media type."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self._digest = _route_hash()
        self._digest.update(request.mimetype.encode("ascii", "replace") + b"\n")

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._digest.update(data)
        return data

    def drain(self) -> None:
        """Read the rest of the stream, so that `hexdigest` covers the whole body."""
        while self.read(DRAIN_CHUNK_BYTES):
            pass

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def replay(stored: StoredResponse, request_hash: str) -> tuple[Response, int, dict[str, str]]:
    """Return the stored response for a repeated submit, or raise 409 when the request differs."""
    if stored.request_hash != request_hash:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"{IDEMPOTENCY_HEADER} {stored.key!r} was already used for another request (it created "
            f"{stored.resource_type} {stored.resource_id}); send a new key for a new request",
            [{"field": IDEMPOTENCY_HEADER, "value": stored.key, "message": "must not be reused with a different request"}],
        )
    headers = {REPLAYED_HEADER: "true"}
    if "url" in stored.body:
        headers["Location"] = stored.body["url"]
    return jsonify(stored.body), stored.status_code, headers


def _route_hash():
    digest = hashlib.sha256()
    query = "&".join(sorted(f"{name}={value}" for name, value in request.args.items(multi=True)))
    digest.update(f"{request.method} {request.path}?{query}\n".encode("utf-8"))
    return digest

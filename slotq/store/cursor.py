"""Opaque cursors for newest-first pagination over (created_at, id)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from slotq import SlotqError


class InvalidCursorError(SlotqError, ValueError):
    """A pagination cursor was not produced by `encode_cursor`."""


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """Return a URL-safe cursor that points just past the job with these keys."""
    payload = json.dumps([created_at.isoformat(), job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Return the (created_at, id) keys of ``cursor``.

    Raises:
        InvalidCursorError: the cursor is malformed.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at_text, job_id = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        created_at = datetime.fromisoformat(created_at_text)
    except (ValueError, TypeError, UnicodeError, binascii.Error) as error:
        raise InvalidCursorError(f"invalid cursor {cursor!r}: use next_cursor from a previous page") from error

    if created_at.tzinfo is None or not isinstance(job_id, str):
        raise InvalidCursorError(f"invalid cursor {cursor!r}: use next_cursor from a previous page")
    return created_at, job_id

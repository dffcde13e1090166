"""Per-app objects that route handlers share: settings, repository, enqueue function, rate limiter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from api.enqueue import Enqueue
from slotq.settings import Settings
from slotq.store import JobRepository

EXTENSION_KEY = "slotq"


@dataclass(frozen=True)
class ApiState:
    """Objects that `api.app.create_app` built for one app."""

    settings: Settings
    repository: JobRepository
    enqueue: Enqueue
    # api.ratelimit.RateLimiter, or None when the rate limit is off.
    rate_limiter: Any = None


def current_state() -> ApiState:
    """Return the `ApiState` of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]

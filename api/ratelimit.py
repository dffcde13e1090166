"""Per-key rate limit: a token bucket per API key, in Redis or in this process.

Each key's bucket holds up to ``SLOTQ_RATE_LIMIT_BURST`` tokens and refills at
``SLOTQ_RATE_LIMIT_PER_MINUTE`` / 60 tokens per second; each request takes one token, and a
request that finds less than one gets 429 with ``Retry-After``. With a Redis broker the buckets
live in that Redis, so every API process shares them; otherwise (the embedded mode) each process
keeps its own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis
from flask import Response, g

from api.errors import error_response
from api.state import current_state
from slotq.logging import with_ids
from slotq.settings import Settings

logger = logging.getLogger(__name__)

#: Redis key of a bucket; the API key id follows.
REDIS_KEY_PREFIX = "slotq:ratelimit:"
#: Seconds a Redis call may take before the request is let through unlimited.
REDIS_TIMEOUT_S = 0.5
#: Seconds between two warnings about an unreachable Redis.
WARNING_INTERVAL_S = 60.0

# KEYS[1]: bucket. ARGV: refill rate in tokens per second, bucket size. Returns the seconds to
# wait as a string (0 when a token was taken). Redis's own clock is used, so API hosts with
# different clocks share one bucket correctly.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RateLimiter(Protocol):
    """Takes a token for ``identity`` and returns 0, or the seconds until a token is available."""

    def acquire(self, identity: str) -> float: ...


class MemoryRateLimiter:
    """Token buckets in this process's memory, shared by its threads."""

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, identity: str) -> float:
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(identity, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[identity] = (tokens - 1.0, now)
                return 0.0
            self._buckets[identity] = (tokens, now)
            return (1.0 - tokens) / self.rate


class RedisRateLimiter:
    """Token buckets in Redis, shared by every API process that uses the same Redis.

    When Redis does not answer within `REDIS_TIMEOUT_S` the request is let through and a warning
    is logged at most once per `WARNING_INTERVAL_S`: an outage of the limiter must not stop
    the API.
    """

    def __init__(self, url: str, per_minute: int, burst: int):
        self.rate = per_minute / 60.0
        self.burst = burst
        self._client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
        self._script = self._client.register_script(_TOKEN_BUCKET_LUA)
        self._last_warning = -math.inf

    def acquire(self, identity: str) -> float:
        try:
            wait = self._script(keys=[REDIS_KEY_PREFIX + identity], args=[repr(self.rate), self.burst])
        except redis.RedisError as error:
            self._warn(error)
            return 0.0
        return float(wait)

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARNING_INTERVAL_S:
            self._last_warning = now
            logger.warning("rate limit not applied: Redis unavailable (%s); requests pass unlimited", error)


def make_rate_limiter(settings: Settings) -> RateLimiter | None:
    """Return the limiter for ``settings``; None when ``SLOTQ_RATE_LIMIT_PER_MINUTE`` is 0."""
    if settings.rate_limit_per_minute == 0:
        return None
    if settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return RedisRateLimiter(settings.broker_url, settings.rate_limit_per_minute, settings.rate_limit_burst)
    return MemoryRateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)


def limit_rate() -> Response | None:
    """Take a token for the request's key, or return 429 (a ``before_request`` hook after auth)."""
    state = current_state()
    principal = g.get("principal")
    if state.rate_limiter is None or principal is None:
        return None

    wait_s = state.rate_limiter.acquire(principal.rate_limit_id)
    if wait_s <= 0:
        return None

    retry_after = max(1, math.ceil(wait_s))
    with_ids(logger, request_id=g.get("request_id"), tenant_id=principal.tenant_id).info(
        "request rate limited; retry after %d s", retry_after
    )
    response = error_response(
        429,
        "rate_limited",
        f"too many requests for this API key: the limit is {state.settings.rate_limit_per_minute} per minute "
        f"with bursts of {state.settings.rate_limit_burst}; retry after {retry_after} s",
    )
    response.headers["Retry-After"] = str(retry_after)
    return response

"""Liveness (``/healthz``) and readiness (``/readyz``) probes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError

from flask import Blueprint, Response, g, jsonify
from kombu import Connection

from api.enqueue import broker_transport_options
from api.state import current_state

logger = logging.getLogger(__name__)

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """Report that the process is up; checks nothing else."""
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Check the database (``SELECT 1``) and the broker, each within SLOTQ_READY_TIMEOUT_S.

    Returns 200 when both respond and 503 naming each check that failed.
    """
    state = current_state()
    timeout_s = state.settings.ready_timeout_s
    broker_url = state.settings.broker_url
    checks = {
        "database": _run_check(state.repository.ping, timeout_s),
        "broker": _run_check(lambda: _ping_broker(broker_url, timeout_s), timeout_s),
    }

    failed = [name for name, check in checks.items() if not check["ok"]]
    if not failed:
        return jsonify({"status": "ready", "checks": checks}), 200

    for name in failed:
        logger.warning("readiness check %s failed: %s", name, checks[name]["error"])
    details = [{"field": name, "value": None, "message": checks[name]["error"]} for name in failed]
    body = {
        "status": "unavailable",
        "checks": checks,
        "error": {
            "code": "not_ready",
            "message": "unreachable: " + ", ".join(failed),
            "details": details,
            "request_id": g.get("request_id"),
        },
    }
    return jsonify(body), 503


def _run_check(check: Callable[[], None], timeout_s: float) -> dict:
    """Run ``check`` in a thread; a check still running after ``timeout_s`` counts as failed."""
    started = time.monotonic()
    executor = ThreadPoolExecutor(max_workers=1)
    future = executor.submit(check)
    try:
        future.result(timeout=timeout_s)
        error = None
    except FutureTimeoutError:
        error = f"timed out after {timeout_s} s"
    except Exception as exc:  # any failure of the check means not ready, and it is reported
        error = f"{type(exc).__name__}: {exc}".strip()
    finally:
        # The thread of a timed-out check ends by itself within the driver's own time limit.
        executor.shutdown(wait=False)

    elapsed_ms = round((time.monotonic() - started) * 1000.0, 3)
    return {"ok": error is None, "error": error, "ms": elapsed_ms}


def _ping_broker(broker_url: str, timeout_s: float) -> None:
    with Connection(
        broker_url,
        connect_timeout=timeout_s,
        transport_options=broker_transport_options(broker_url, timeout_s),
    ) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)

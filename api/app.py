"""Flask app factory of the slot-queue API.

Served by gunicorn as ``gunicorn 'api.app:create_app()'``. Each gunicorn worker process builds its
own app, engine pool and broker connection.
"""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, Response, g, request

from api import admin, batches, health, jobs, metrics, openapi
from api.auth import authenticate
from api.enqueue import Enqueue, make_celery_enqueue
from api.errors import register_error_handlers
from api.ratelimit import limit_rate, make_rate_limiter
from api.state import EXTENSION_KEY, ApiState
from slotq.logging import configure_logging
from slotq.settings import Settings, load_settings
from slotq.store import JobRepository, make_engine

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: A client-supplied request id is kept only if it matches this; otherwise a new one is made.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")


def create_app(
    settings: Settings | None = None,
    enqueue: Enqueue | None = None,
    repository: JobRepository | None = None,
) -> Flask:
    """Build the API app.

    Args:
        settings: defaults to `load_settings()` from the environment.
        enqueue: sends a stored job's id to the workers; defaults to a Celery producer on
            ``settings.broker_url``. Tests pass a recorder.
        repository: job store; defaults to one on ``settings.database_url``. The schema must
            already exist (``slotq db upgrade``).
    """
    if settings is None:
        settings = load_settings()
    configure_logging(settings.log_level)
    if repository is None:
        repository = JobRepository(make_engine(settings.database_url))
    if enqueue is None:
        enqueue = make_celery_enqueue(settings)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.extensions[EXTENSION_KEY] = ApiState(
        settings=settings, repository=repository, enqueue=enqueue, rate_limiter=make_rate_limiter(settings)
    )

    # Hooks run in this order, so a request without a valid key never reaches the rate limit
    # or a handler, and nothing reads the body before the handler sets its size limit. The
    # metrics hook comes first, so that requests rejected by a later hook are counted too.
    metrics.install_http_metrics(app)
    app.before_request(_assign_request_id)
    app.before_request(authenticate)
    app.before_request(limit_rate)
    app.after_request(_send_request_id)
    register_error_handlers(app)
    for blueprint in (
        jobs.blueprint, batches.blueprint, admin.blueprint, health.blueprint, openapi.blueprint, metrics.blueprint
    ):
        app.register_blueprint(blueprint)

    if settings.auth == "disabled":
        logger.warning(
            "SLOTQ_AUTH=disabled: every request acts as an admin without a key; never expose this API to others"
        )
    logger.info("API app created; embedded=%s, queue=%s, auth=%s", settings.embedded, settings.queue, settings.auth)
    return app


def _assign_request_id() -> None:
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = supplied if REQUEST_ID_PATTERN.fullmatch(supplied) else uuid.uuid4().hex


def _send_request_id(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response

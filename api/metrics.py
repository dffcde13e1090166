"""Prometheus metrics of the API, served at ``GET /metrics`` without an API key.

The route needs no key because it exports aggregate numbers only: job counts per status, the
queue depth and HTTP request counts per route template, never a job id, tenant, key or text.

HTTP counters and histograms are kept per process. Under ``slotq api`` every gunicorn worker
writes them to ``PROMETHEUS_MULTIPROC_DIR`` and the worker that serves a scrape adds up all of
them (`slotq.metrics`). Job counts and the queue depth are read at scrape time, in the process
that serves the scrape only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from api.state import current_state
from slotq.broker import BrokerError, queue_depth
from slotq.metrics import multiprocess_enabled
from slotq.settings import Settings
from slotq.store import STATUSES, Job, JobRepository

logger = logging.getLogger(__name__)

blueprint = Blueprint("metrics", __name__)

#: Seconds that reading the queue depth may take during a scrape (Prometheus waits 10 s by default).
BROKER_TIMEOUT_S = 2.0
#: Seconds between two log lines about failures of one scrape source; the counter counts all.
ERROR_LOG_INTERVAL_S = 60.0
#: HTTP methods kept as a label value; any other method is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Route label of requests that matched no route (404 and 405), whatever their path.
UNMATCHED_ROUTE = "unmatched"
SCRAPE_SOURCES = ("database", "broker")
#: Buckets of request durations in seconds: Prometheus's defaults, plus 30 and 60 s for uploads
#: of large batch files.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)

# Metrics of this process. They sit on a registry of their own, so that the scrape in
# single-process mode exports them and nothing from other libraries.
REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "slotq_http_requests",
    "HTTP requests handled by the API, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_DURATION = Histogram(
    "slotq_http_request_duration_seconds",
    "Time from the start of a request until its response is ready, by route template.",
    ["route"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)
SCRAPE_ERRORS = Counter(
    "slotq_scrape_errors",
    "Failed reads of scrape-time metrics, by source (database: slotq_jobs, broker: slotq_queue_depth).",
    ["source"],
    registry=REGISTRY,
)
for _source in SCRAPE_SOURCES:
    SCRAPE_ERRORS.labels(source=_source)

_last_error_log: dict[str, float] = {}


@blueprint.get("/metrics")
def metrics() -> Response:
    """Return every API metric in the Prometheus text format."""
    state = current_state()
    registry = CollectorRegistry()
    # The store collector comes first, so that a scrape error it counts is in this scrape.
    registry.register(StoreCollector(state.repository, state.settings))
    if multiprocess_enabled():
        MultiProcessCollector(registry)
    else:
        registry.register(_RegistryCollector(REGISTRY))
    return Response(generate_latest(registry), status=200, content_type=CONTENT_TYPE_LATEST)


def install_http_metrics(app: Flask) -> None:
    """Count and time every request of ``app``; call it before any other request hook is added."""
    app.before_request(_start_timer)
    app.after_request(_record_request)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _record_request(response: Response) -> Response:
    # The route template, not the path, keeps ids out of the labels.
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
    method = request.method if request.method in KNOWN_METHODS else "other"
    HTTP_REQUESTS.labels(method=method, route=route, status=str(response.status_code)).inc()

    # NOTE: a streamed response (batch results) is timed until its first byte is ready, not
    # until the whole body is sent.
    started = g.get("metrics_started")
    if started is not None:
        HTTP_REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - started)
    return response


class StoreCollector:
    """Gauges read at scrape time: jobs per status (one query) and the broker's queue depth.

    A source that fails is left out of the scrape and counted in ``slotq_scrape_errors_total``.
    """

    def __init__(self, repository: JobRepository, settings: Settings):
        self.repository = repository
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        counts = self._job_counts()
        if counts is not None:
            jobs = GaugeMetricFamily("slotq_jobs", "Jobs in the job store, by status.", labels=["status"])
            for status in STATUSES:
                jobs.add_metric([status], counts.get(status, 0))
            yield jobs

        depth = self._queue_depth()
        if depth is not None:
            yield GaugeMetricFamily(
                "slotq_queue_depth", "Messages waiting in the Celery queue of the broker.", value=depth
            )

    def _job_counts(self) -> dict[str, int] | None:
        query = select(Job.status, func.count()).group_by(Job.status)
        try:
            with self.repository.engine.connect() as connection:
                return {status: count for status, count in connection.execute(query)}
        except SQLAlchemyError as error:
            _count_scrape_error("database", error)
            return None

    def _queue_depth(self) -> int | None:
        try:
            return queue_depth(self.settings.broker_url, self.settings.queue, BROKER_TIMEOUT_S)
        except BrokerError as error:
            _count_scrape_error("broker", error)
            return None


class _RegistryCollector:
    """Adapter that lets one registry collect the metrics of another."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return self.registry.collect()


def _count_scrape_error(source: str, error: Exception) -> None:
    SCRAPE_ERRORS.labels(source=source).inc()

    now = time.monotonic()
    if now - _last_error_log.get(source, float("-inf")) >= ERROR_LOG_INTERVAL_S:
        _last_error_log[source] = now
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        logger.warning(
            "metrics scrape: reading the %s failed, its metrics are left out (logged at most once per %.0f s): %s",
            source, ERROR_LOG_INTERVAL_S, reason,
        )

"""Logging setup shared by the API and the workers.

Loggers are per module (``logging.getLogger(__name__)``). Code that works on a job wraps its
logger with `with_ids` so that every line carries the job id, and prompt or output text goes
through `redact_text`, which hides it unless ``SLOTQ_LOG_PROMPTS`` is on.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s"

#: Top-level loggers of slot-queue's own packages.
PROJECT_LOGGERS = ("slotq", "api", "worker", "slot_core")


class IdLoggerAdapter(logging.LoggerAdapter):
    """Logger adapter that starts each message with ``key=value`` pairs such as the job id."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping]:
        prefix = " ".join(f"{key}={value}" for key, value in self.extra.items())
        return f"{prefix} {msg}", kwargs


def with_ids(logger: logging.Logger, **ids: object) -> IdLoggerAdapter:
    """Return ``logger`` wrapped so that every line names ``ids`` (for example ``job_id``)."""
    return IdLoggerAdapter(logger, ids)


def redact_text(text: str | None, log_prompts: bool) -> str:
    """Return ``text`` when prompt logging is on, else only its length in characters."""
    if text is None:
        return "<none>"
    if log_prompts:
        return repr(text)
    return f"<{len(text)} characters hidden>"


def configure_logging(level: str = "INFO") -> None:
    """Send the project loggers to stderr at ``level``, once per process.

    A process that already configured the root logger (gunicorn, Celery) keeps its handlers,
    and only the level of the project loggers is set.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)

    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)

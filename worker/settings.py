"""Settings of the processes that ``slotq`` starts: Celery workers and the gunicorn API server.

Read from ``SLOTQ_*`` environment variables like `slotq.settings`, which contains the queue name
and every other knob that the API and the workers share. An unset or empty variable
takes the default; ranges are inclusive.

| Variable | Unit | Default | Allowed | Meaning |
|---|---|---|---|---|
| `SLOTQ_WORKER_CONCURRENCY` | processes | `1` | 1 to 64 | Jobs one `slotq worker` runs at once, each process with its own model copy. |
| `SLOTQ_WORKER_POOL` | - | `prefork` | `prefork`, `solo`, `threads` | Celery execution pool of `slotq worker`. |
| `SLOTQ_TASK_SOFT_TIME_LIMIT_S` | seconds | `1800` | 1 to 86400 | Soft limit of one job: the job fails with a time-limit error. |
| `SLOTQ_TASK_TIME_LIMIT_S` | seconds | `1860` | 2 to 86400, above the soft limit | Hard limit: the worker process running the job is killed. |
| `SLOTQ_VISIBILITY_TIMEOUT_S` | seconds | `7200` | 60 to 604800, above the hard limit | Redis transport: an unacknowledged task is delivered again after this long. |
| `SLOTQ_API_WORKERS` | processes | `2` | 1 to 64 | gunicorn worker processes of `slotq api`. |
| `SLOTQ_API_TIMEOUT_S` | seconds | `60` | 1 to 3600 | gunicorn worker timeout of `slotq api`. |

The visibility timeout must exceed the hard time limit, because tasks are acknowledged late: a
task still running when the timeout expires would be delivered to a second worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from slotq.settings import SettingsError

POOLS = ("prefork", "solo", "threads")

# TODO: move these knobs into slotq.settings next to the others, so that one module reads every
# SLOTQ_* variable.

#: (field, variable, minimum, maximum) of every integer knob.
_INTEGER_KNOBS = (
    ("worker_concurrency", "SLOTQ_WORKER_CONCURRENCY", 1, 64),
    ("task_soft_time_limit_s", "SLOTQ_TASK_SOFT_TIME_LIMIT_S", 1, 86_400),
    ("task_time_limit_s", "SLOTQ_TASK_TIME_LIMIT_S", 2, 86_400),
    ("visibility_timeout_s", "SLOTQ_VISIBILITY_TIMEOUT_S", 60, 604_800),
    ("api_workers", "SLOTQ_API_WORKERS", 1, 64),
    ("api_timeout_s", "SLOTQ_API_TIMEOUT_S", 1, 3600),
)


@dataclass(frozen=True)
class ProcessSettings:
    """Knobs of worker and API processes; the module docstring lists variables and ranges."""

    worker_concurrency: int = 1
    worker_pool: str = "prefork"
    task_soft_time_limit_s: int = 1800
    task_time_limit_s: int = 1860
    visibility_timeout_s: int = 7200
    api_workers: int = 2
    api_timeout_s: int = 60

    def __post_init__(self) -> None:
        errors = _check_ranges(self)
        if errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))


def load_process_settings(env: Mapping[str, str] | None = None) -> ProcessSettings:
    """Read `ProcessSettings` from ``env`` (default: ``os.environ``).

    Raises:
        SettingsError: a variable does not parse or is out of range; every invalid one is listed.
    """
    if env is None:
        env = os.environ

    values: dict[str, object] = {}
    errors: list[str] = []
    for field, variable, minimum, maximum in _INTEGER_KNOBS:
        raw = env.get(variable, "").strip()
        if not raw:
            continue
        try:
            values[field] = int(raw)
        except ValueError:
            errors.append(f"{variable}={raw!r} is invalid: must be an integer between {minimum} and {maximum}")

    pool = env.get("SLOTQ_WORKER_POOL", "").strip()
    if pool:
        values["worker_pool"] = pool

    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    return ProcessSettings(**values)


def _check_ranges(settings: ProcessSettings) -> list[str]:
    variables = {field: variable for field, variable, _, _ in _INTEGER_KNOBS}
    errors = []
    for field, variable, minimum, maximum in _INTEGER_KNOBS:
        value = getattr(settings, field)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            errors.append(f"{variable}={value!r} is invalid: must be an integer between {minimum} and {maximum}")
    if errors:
        return errors

    if settings.task_time_limit_s <= settings.task_soft_time_limit_s:
        errors.append(
            f"{variables['task_time_limit_s']}={settings.task_time_limit_s} is invalid: must be above "
            f"SLOTQ_TASK_SOFT_TIME_LIMIT_S={settings.task_soft_time_limit_s}"
        )
    if settings.visibility_timeout_s <= settings.task_time_limit_s:
        errors.append(
            f"{variables['visibility_timeout_s']}={settings.visibility_timeout_s} is invalid: must be "
            f"above SLOTQ_TASK_TIME_LIMIT_S={settings.task_time_limit_s}"
        )
    if settings.worker_pool not in POOLS:
        errors.append(f"SLOTQ_WORKER_POOL={settings.worker_pool!r} is invalid: must be one of {', '.join(POOLS)}")
    return errors


"""Settings of slot-queue, read from ``SLOTQ_*`` environment variables.

Every knob has one environment variable. An unset or empty variable takes the default. A value
that does not parse, or lies outside its allowed range, makes `load_settings` raise
`SettingsError` naming the variable, the value and the allowed range. Ranges are inclusive.

| Variable | Unit | Default | Allowed | Meaning |
|---|---|---|---|---|
| `SLOTQ_DATA_DIR` | path | `~/.local/share/slot-queue` | any path | Folder for the embedded SQLite database and broker files. |
| `SLOTQ_DATABASE_URL` | SQLAlchemy URL | `sqlite:///<data dir>/slotq.db` | any SQLAlchemy URL | Job store, for example `postgresql+psycopg2://user@host/db`. |
| `SLOTQ_BROKER_URL` | Celery broker URL | `sqla+sqlite:///<data dir>/broker.db` | any Celery broker URL | Task queue, for example `redis://host:6379/0`. |
| `SLOTQ_QUEUE` | - | `slotq` | 1 to 200 letters, digits, `.`, `_`, `-` | Celery queue that the API sends jobs to and workers consume. |
| `SLOTQ_MODEL` | path | bundled SmolLM2-135M-Instruct | a local Hugging Face model folder | Causal LM that workers load; nothing is downloaded from a model hub. |
| `SLOTQ_DEVICE` | - | `auto` | `auto`, `cpu`, `cuda` | Worker device; `auto` picks CUDA when present. |
| `SLOTQ_API_HOST` | host | `127.0.0.1` | any host name or address | Address the API server binds. |
| `SLOTQ_API_PORT` | TCP port | `8000` | 1 to 65535 | Port the API server binds. |
| `SLOTQ_FLOWER_BASIC_AUTH` | - | unset | `user:password`, several joined by `,` | HTTP basic authentication of `slotq flower`, which does not start without it. Passwords cannot contain `,`. |
| `SLOTQ_FLOWER_HOST` | host | `127.0.0.1` | any host name or address | Address `slotq flower` binds. |
| `SLOTQ_FLOWER_PORT` | TCP port | `5555` | 1 to 65535 | Port `slotq flower` binds. |
| `SLOTQ_FLOWER_MAX_TASKS` | tasks | `10000` | 1 to 1000000 | Most tasks Flower keeps in memory; the tasks with the oldest events are dropped first. |
| `SLOTQ_MAX_STEPS` | optimizer steps | `20` | 0 to 1000 | Largest `slot.steps` a request may ask for. |
| `SLOTQ_MIN_LR` | learning rate | `0.0001` | 1e-08 to 10.0 | Smallest `slot.lr` a request may ask for. |
| `SLOTQ_MAX_LR` | learning rate | `1.0` | 1e-08 to 10.0, at least `SLOTQ_MIN_LR` | Largest `slot.lr` a request may ask for. |
| `SLOTQ_MAX_NEW_TOKENS` | tokens | `512` | 1 to 32768 | Largest `generation.max_new_tokens` a request may ask for. |
| `SLOTQ_MAX_PROMPT_CHARS` | characters | `20000` | 1 to 1000000 | Longest prompt; for `messages`, the sum of all contents. |
| `SLOTQ_MAX_PROMPT_TOKENS` | tokens | unset | 1 to 1048576 | Longest prompt after the chat template, checked by workers. Unset: the model's context length minus the request's `max_new_tokens`; a set value never raises that bound. |
| `SLOTQ_MAX_MESSAGES` | messages | `64` | 1 to 1000 | Most chat messages in one request. |
| `SLOTQ_MAX_STOP_STRINGS` | strings | `4` | 0 to 32 | Most entries in `generation.stop`. |
| `SLOTQ_MAX_STOP_CHARS` | characters | `64` | 1 to 1024 | Longest entry in `generation.stop`. |
| `SLOTQ_MAX_METADATA_BYTES` | bytes | `4096` | 0 to 1048576 | Largest `metadata`, measured as compact UTF-8 JSON. |
| `SLOTQ_OVERFIT_TOLERANCE` | ratio | `0.05` | 0.0 to 10.0 | Largest relative rise of the validation loss with δ over the loss without δ; a larger rise flags the job as over-fitted (0.05 = 5%). |
| `SLOTQ_OVERFIT_POLICY` | - | `flag` | `flag`, `fallback`, `reject` | What workers do with an over-fitted job unless its request sets `slot.overfit_policy`: keep the output and flag it, decode with the step of lowest validation loss, or fail the job. |
| `SLOTQ_VALIDATION_PROMPTS` | path | the shipped `slotq/data/validation_prompts.jsonl` | an existing, readable file | Held-out validation prompts, one JSON object `{"messages": [{"role", "content"}, ...]}` per line. |
| `SLOTQ_WORKER_BATCH_SIZE` | jobs | `8` | 1 to 256 | Most queued jobs one worker runs as one SLOT batch; 1 turns batching off. |
| `SLOTQ_WORKER_BATCH_WAIT_MS` | milliseconds | `50` | 0 to 10000 | How long a worker waits for more queued jobs before it runs a batch that is not full. |
| `SLOTQ_LOGITS_MEMORY_MB` | MiB | `512` | 16 to 65536 | Memory for cached prompt logits and softmax buffers of one delta fit; a fit that needs more recomputes logits in chunks. |
| `SLOTQ_MAX_BODY_BYTES` | bytes | `1048576` | 1024 to 67108864 | Largest HTTP request body; larger bodies get 413. |
| `SLOTQ_MAX_BATCH_BODY_BYTES` | bytes | `268435456` | 1024 to 4294967296 | Largest batch upload (`POST /v1/batches`); larger bodies get 413. Each line of it is also limited to `SLOTQ_MAX_BODY_BYTES`. |
| `SLOTQ_MAX_BATCH_LINES` | lines | `50000` | 1 to 1000000 | Most requests in one batch upload. |
| `SLOTQ_MAX_BATCH_VALIDATION_PROMPTS` | prompts | `16` | 0 to 256 | Most validation prompts a batch may bring. |
| `SLOTQ_DEFAULT_PAGE_SIZE` | jobs | `50` | 1 to 1000, at most `SLOTQ_MAX_PAGE_SIZE` | Page size of `GET /v1/jobs` without `limit`. |
| `SLOTQ_MAX_PAGE_SIZE` | jobs | `200` | 1 to 1000 | Largest `limit` of `GET /v1/jobs`. |
| `SLOTQ_READY_TIMEOUT_S` | seconds | `2.0` | 0.1 to 60.0 | Time limit of each check in `GET /readyz`. |
| `SLOTQ_LOG_LEVEL` | - | `INFO` | `DEBUG`, `INFO`, `WARNING`, `ERROR` | Level of the `slotq`, `api` and `worker` loggers. |
| `SLOTQ_LOG_PROMPTS` | boolean | `false` | `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` | Log prompt and output text (debugging only). |
| `SLOTQ_AUTH` | - | `required` | `required`, `disabled` | `required`: every `/v1` request needs an API key (`slotq keys create`). `disabled` is UNSAFE and meant only for local experiments: every request acts as the admin of the tenant `local`. |
| `SLOTQ_API_KEY` | - | unset | any key from `slotq keys create` | Key that the `slotq batch` commands and the demo send to the API. |
| `SLOTQ_IDEMPOTENCY_TTL_S` | seconds | `86400` | 60 to 2592000 | How long an `Idempotency-Key` of a submit is remembered. |
| `SLOTQ_RATE_LIMIT_PER_MINUTE` | requests per minute | `1200` | 0 to 1000000 | Sustained request rate allowed per API key; 0 turns the rate limit off. |
| `SLOTQ_RATE_LIMIT_BURST` | requests | `300` | 1 to 100000 | Requests an idle API key may send at once (token bucket size). |
| `SLOTQ_MAX_QUEUED_JOBS` | jobs | `100000` | 1 to 1000000000 | Most queued jobs across all tenants; submits that would exceed it get 429. |
| `SLOTQ_LEASE_S` | seconds | `60.0` | 5.0 to 3600.0 | Lease of a running job; its worker renews it every third of this. A job whose lease passed is queued again by the sweeper. |
| `SLOTQ_MAX_ATTEMPTS` | attempts | `3` | 1 to 100 | Most times a job is started; a job whose worker was lost on its last attempt fails with the reason. |
| `SLOTQ_SWEEP_INTERVAL_S` | seconds | `10.0` | 0.5 to 3600.0 | Pause between two passes of `slotq sweeper`. |
| `SLOTQ_ENQUEUE_GRACE_S` | seconds | `30.0` | 1.0 to 3600.0 | How long after a job is queued the sweeper waits before it takes a missing broker send for failed and sends the job itself. |
| `SLOTQ_SWEEPER_METRICS_PORT` | TCP port | `9809` | 0 to 65535 | Port of the Prometheus metrics of `slotq sweeper`; 0 turns them off. |
| `SLOTQ_WORKER_METRICS_PORT` | TCP port | `9808` | 0 to 65535 | Port on which `slotq worker` serves its Prometheus metrics, on all interfaces; 0 turns them off. |

A JSON request body can be up to six times longer than its text, because every character may be
written as a ``\\uXXXX`` escape, so keep ``SLOTQ_MAX_BODY_BYTES`` well above
``SLOTQ_MAX_PROMPT_CHARS``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from slotq import SlotqError

#: Name recorded for jobs when ``SLOTQ_MODEL`` is unset and workers load the bundled model.
BUNDLED_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

DEFAULT_DATA_DIR = "~/.local/share/slot-queue"
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,200}")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

#: Values of ``SLOTQ_AUTH``. ``disabled`` lets every request in as an admin, so it is unsafe on
#: any machine that others can reach.
AUTH_MODES = ("required", "disabled")

#: Policies for a job whose δ over-fits: keep the output and flag the job, decode with an earlier
#: step, or fail the job. ``slotq.guardrails.POLICIES`` lists the same names.
OVERFIT_POLICIES = ("flag", "fallback", "reject")

#: Validation prompts shipped with slot-queue.
DEFAULT_VALIDATION_PROMPTS = Path(__file__).parent / "data" / "validation_prompts.jsonl"


class SettingsError(SlotqError, ValueError):
    """One or more settings are invalid; the message lists each variable, value and range."""


@dataclass(frozen=True)
class Knob:
    """One setting: its field on `Settings`, its variable, and how to parse and bound it."""

    field: str
    env: str
    kind: str  # "str" | "path" | "file" | "url" | "queue" | "int" | "float" | "bool" | "choice" | "basic_auth"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


KNOBS: tuple[Knob, ...] = (
    Knob("data_dir", "SLOTQ_DATA_DIR", "path"),
    Knob("database_url", "SLOTQ_DATABASE_URL", "url"),
    Knob("broker_url", "SLOTQ_BROKER_URL", "str"),
    Knob("queue", "SLOTQ_QUEUE", "queue"),
    Knob("model", "SLOTQ_MODEL", "str"),
    Knob("device", "SLOTQ_DEVICE", "choice", choices=DEVICES),
    Knob("api_host", "SLOTQ_API_HOST", "str"),
    Knob("api_port", "SLOTQ_API_PORT", "int", 1, 65535),
    Knob("flower_basic_auth", "SLOTQ_FLOWER_BASIC_AUTH", "basic_auth"),
    Knob("flower_host", "SLOTQ_FLOWER_HOST", "str"),
    Knob("flower_port", "SLOTQ_FLOWER_PORT", "int", 1, 65535),
    Knob("flower_max_tasks", "SLOTQ_FLOWER_MAX_TASKS", "int", 1, 1_000_000),
    Knob("max_steps", "SLOTQ_MAX_STEPS", "int", 0, 1000),
    Knob("min_lr", "SLOTQ_MIN_LR", "float", 1e-8, 10.0),
    Knob("max_lr", "SLOTQ_MAX_LR", "float", 1e-8, 10.0),
    Knob("max_new_tokens", "SLOTQ_MAX_NEW_TOKENS", "int", 1, 32768),
    Knob("max_prompt_chars", "SLOTQ_MAX_PROMPT_CHARS", "int", 1, 1_000_000),
    Knob("max_prompt_tokens", "SLOTQ_MAX_PROMPT_TOKENS", "int", 1, 1_048_576),
    Knob("max_messages", "SLOTQ_MAX_MESSAGES", "int", 1, 1000),
    Knob("max_stop_strings", "SLOTQ_MAX_STOP_STRINGS", "int", 0, 32),
    Knob("max_stop_chars", "SLOTQ_MAX_STOP_CHARS", "int", 1, 1024),
    Knob("max_metadata_bytes", "SLOTQ_MAX_METADATA_BYTES", "int", 0, 1_048_576),
    Knob("overfit_tolerance", "SLOTQ_OVERFIT_TOLERANCE", "float", 0.0, 10.0),
    Knob("overfit_policy", "SLOTQ_OVERFIT_POLICY", "choice", choices=OVERFIT_POLICIES),
    Knob("validation_prompts", "SLOTQ_VALIDATION_PROMPTS", "file"),
    Knob("worker_batch_size", "SLOTQ_WORKER_BATCH_SIZE", "int", 1, 256),
    Knob("worker_batch_wait_ms", "SLOTQ_WORKER_BATCH_WAIT_MS", "int", 0, 10_000),
    Knob("logits_memory_mb", "SLOTQ_LOGITS_MEMORY_MB", "int", 16, 65_536),
    Knob("max_body_bytes", "SLOTQ_MAX_BODY_BYTES", "int", 1024, 67_108_864),
    Knob("max_batch_body_bytes", "SLOTQ_MAX_BATCH_BODY_BYTES", "int", 1024, 4_294_967_296),
    Knob("max_batch_lines", "SLOTQ_MAX_BATCH_LINES", "int", 1, 1_000_000),
    Knob("max_batch_validation_prompts", "SLOTQ_MAX_BATCH_VALIDATION_PROMPTS", "int", 0, 256),
    Knob("default_page_size", "SLOTQ_DEFAULT_PAGE_SIZE", "int", 1, 1000),
    Knob("max_page_size", "SLOTQ_MAX_PAGE_SIZE", "int", 1, 1000),
    Knob("ready_timeout_s", "SLOTQ_READY_TIMEOUT_S", "float", 0.1, 60.0),
    Knob("log_level", "SLOTQ_LOG_LEVEL", "choice", choices=LOG_LEVELS),
    Knob("log_prompts", "SLOTQ_LOG_PROMPTS", "bool"),
    Knob("auth", "SLOTQ_AUTH", "choice", choices=AUTH_MODES),
    Knob("api_key", "SLOTQ_API_KEY", "str"),
    Knob("idempotency_ttl_s", "SLOTQ_IDEMPOTENCY_TTL_S", "int", 60, 2_592_000),
    Knob("rate_limit_per_minute", "SLOTQ_RATE_LIMIT_PER_MINUTE", "int", 0, 1_000_000),
    Knob("rate_limit_burst", "SLOTQ_RATE_LIMIT_BURST", "int", 1, 100_000),
    Knob("max_queued_jobs", "SLOTQ_MAX_QUEUED_JOBS", "int", 1, 1_000_000_000),
    Knob("lease_s", "SLOTQ_LEASE_S", "float", 5.0, 3600.0),
    Knob("max_attempts", "SLOTQ_MAX_ATTEMPTS", "int", 1, 100),
    Knob("sweep_interval_s", "SLOTQ_SWEEP_INTERVAL_S", "float", 0.5, 3600.0),
    Knob("enqueue_grace_s", "SLOTQ_ENQUEUE_GRACE_S", "float", 1.0, 3600.0),
    Knob("sweeper_metrics_port", "SLOTQ_SWEEPER_METRICS_PORT", "int", 0, 65535),
    Knob("worker_metrics_port", "SLOTQ_WORKER_METRICS_PORT", "int", 0, 65535),
)


def default_database_url(data_dir: Path) -> str:
    """Return the SQLite URL of the embedded job store inside ``data_dir``."""
    return f"sqlite:///{data_dir / 'slotq.db'}"


def default_broker_url(data_dir: Path) -> str:
    """Return the kombu SQLAlchemy-transport URL of the embedded broker inside ``data_dir``."""
    return f"sqla+sqlite:///{data_dir / 'broker.db'}"


@dataclass(frozen=True)
class Settings:
    """Every knob of slot-queue; the module docstring lists variables, units and ranges.

    ``database_url`` and ``broker_url`` left as None resolve to SQLite files in ``data_dir``.
    Construction checks every range, so a `Settings` built in code obeys the same bounds as one
    read from the environment.
    """

    data_dir: Path = Path(DEFAULT_DATA_DIR).expanduser()
    database_url: str | None = None
    broker_url: str | None = None
    queue: str = "slotq"
    model: str | None = None
    device: str = "auto"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # None: `slotq flower` does not start. Left out of repr so that logging the settings never
    # writes the passwords.
    flower_basic_auth: str | None = dataclasses.field(default=None, repr=False)
    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    flower_max_tasks: int = 10_000
    max_steps: int = 20
    min_lr: float = 1e-4
    max_lr: float = 1.0
    max_new_tokens: int = 512
    max_prompt_chars: int = 20000
    # None: no cap beyond the model's context length minus max_new_tokens.
    max_prompt_tokens: int | None = None
    max_messages: int = 64
    max_stop_strings: int = 4
    max_stop_chars: int = 64
    max_metadata_bytes: int = 4096
    overfit_tolerance: float = 0.05
    overfit_policy: str = "flag"
    validation_prompts: Path = DEFAULT_VALIDATION_PROMPTS
    worker_batch_size: int = 8
    worker_batch_wait_ms: int = 50
    logits_memory_mb: int = 512
    max_body_bytes: int = 1_048_576
    max_batch_body_bytes: int = 268_435_456
    max_batch_lines: int = 50_000
    max_batch_validation_prompts: int = 16
    default_page_size: int = 50
    max_page_size: int = 200
    ready_timeout_s: float = 2.0
    log_level: str = "INFO"
    log_prompts: bool = False
    auth: str = "required"
    # None: clients send no key, which only works against an API with SLOTQ_AUTH=disabled.
    # Left out of repr so that logging the settings never writes the key.
    api_key: str | None = dataclasses.field(default=None, repr=False)
    idempotency_ttl_s: int = 86_400
    # 0: no rate limit.
    rate_limit_per_minute: int = 1200
    rate_limit_burst: int = 300
    max_queued_jobs: int = 100_000
    lease_s: float = 60.0
    max_attempts: int = 3
    sweep_interval_s: float = 10.0
    enqueue_grace_s: float = 30.0
    sweeper_metrics_port: int = 9809
    # 0: the worker serves no metrics.
    worker_metrics_port: int = 9808

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).expanduser()
        object.__setattr__(self, "data_dir", data_dir)
        object.__setattr__(self, "validation_prompts", Path(self.validation_prompts).expanduser())
        if self.database_url is None:
            object.__setattr__(self, "database_url", default_database_url(data_dir))
        if self.broker_url is None:
            object.__setattr__(self, "broker_url", default_broker_url(data_dir))

        errors = [_check_value(knob, getattr(self, knob.field)) for knob in KNOBS]
        errors = [error for error in errors if error]
        if not errors:
            errors = _check_relations(self)
        if errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))

    @property
    def embedded(self) -> bool:
        """True when both the database and the broker are the SQLite files in ``data_dir``."""
        return self.database_url == default_database_url(
            self.data_dir
        ) and self.broker_url == default_broker_url(self.data_dir)

    @property
    def model_name(self) -> str:
        """Model recorded on new jobs: ``model``, or the bundled model's name when unset."""
        return self.model or BUNDLED_MODEL_NAME


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read `Settings` from ``env`` (default: ``os.environ``).

    Raises:
        SettingsError: a variable does not parse or is out of range. The message lists every
            invalid variable, not only the first.
    """
    if env is None:
        env = os.environ

    values: dict[str, Any] = {}
    errors: list[str] = []
    for knob in KNOBS:
        raw = env.get(knob.env, "").strip()
        if not raw:
            continue
        try:
            values[knob.field] = _PARSERS[knob.kind](raw)
        except ValueError:
            errors.append(f"{knob.env}={raw!r} is invalid: must be {_describe_range(knob)}")

    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    return Settings(**values)


def settings_table() -> list[dict[str, str]]:
    """Return one row per knob with its variable and current default, for docs and tests."""
    defaults = {field.name: field.default for field in dataclasses.fields(Settings)}
    return [
        {"env": knob.env, "default": str(defaults[knob.field]), "allowed": _describe_range(knob)}
        for knob in KNOBS
    ]


def _parse_bool(raw: str) -> bool:
    word = raw.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(raw)


def _parse_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "url": str,
    "queue": str,
    "path": lambda raw: Path(raw).expanduser(),
    "file": lambda raw: Path(raw).expanduser(),
    "int": int,
    "float": _parse_float,
    "bool": _parse_bool,
    "choice": str,
    "basic_auth": str,
}


def _describe_range(knob: Knob) -> str:
    if knob.kind == "int":
        return f"an integer between {knob.minimum} and {knob.maximum}"
    if knob.kind == "float":
        return f"a number between {knob.minimum} and {knob.maximum}"
    if knob.kind == "bool":
        return "one of " + ", ".join(TRUE_WORDS + FALSE_WORDS)
    if knob.kind == "choice":
        return "one of " + ", ".join(knob.choices)
    if knob.kind == "url":
        return "a SQLAlchemy database URL"
    if knob.kind == "queue":
        return "1 to 200 letters, digits, '.', '_' or '-'"
    if knob.kind == "file":
        return "the path of an existing, readable file"
    if knob.kind == "basic_auth":
        return "user:password, several joined by ',', each with a user name without ':' and a non-empty password"
    return "a non-empty string"


def _check_value(knob: Knob, value: Any) -> str | None:
    """Return an error line when ``value`` breaks the knob's type or range, else None."""
    if value is None and knob.field in ("database_url", "broker_url", "model", "max_prompt_tokens", "api_key", "flower_basic_auth"):
        return None

    valid = True
    if knob.kind == "int":
        valid = isinstance(value, int) and not isinstance(value, bool)
        valid = valid and knob.minimum <= value <= knob.maximum
    elif knob.kind == "float":
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        valid = valid and math.isfinite(value) and knob.minimum <= value <= knob.maximum
    elif knob.kind == "bool":
        valid = isinstance(value, bool)
    elif knob.kind == "choice":
        valid = value in knob.choices
    elif knob.kind == "url":
        valid = isinstance(value, str) and _is_database_url(value)
    elif knob.kind == "queue":
        valid = isinstance(value, str) and bool(QUEUE_NAME_PATTERN.fullmatch(value))
    elif knob.kind in ("str", "path"):
        valid = bool(str(value).strip())
    elif knob.kind == "file":
        valid = Path(value).is_file() and os.access(value, os.R_OK)
    elif knob.kind == "basic_auth":
        return _check_basic_auth(knob, value)

    if valid:
        return None
    shown = str(value) if isinstance(value, Path) else value
    return f"{knob.env}={shown!r} is invalid: must be {_describe_range(knob)}"


def basic_auth_credentials(value: str) -> list[str]:
    """Split ``SLOTQ_FLOWER_BASIC_AUTH`` into ``user:password`` entries, spaces around commas removed.

    Raises:
        ValueError: an entry is empty, has no ``:``, or has an empty user name or password. The
            message names the entry by position and never contains the password.
    """
    credentials = [entry.strip() for entry in value.split(",")]
    for position, entry in enumerate(credentials, start=1):
        user, separator, password = entry.partition(":")
        if not separator or not user.strip() or not password:
            raise ValueError(f"entry {position} is not user:password with a non-empty user name and password")
    return credentials


def _check_basic_auth(knob: Knob, value: Any) -> str | None:
    # The value contains passwords, so the message names the invalid entry by position only.
    if not isinstance(value, str):
        return f"{knob.env} is invalid: must be a string of {_describe_range(knob)}"
    try:
        basic_auth_credentials(value)
    except ValueError as error:
        return f"{knob.env} is invalid: {error} (value not shown); must be {_describe_range(knob)}"
    return None


def _is_database_url(value: str) -> bool:
    try:
        make_url(value)
    except ArgumentError:
        return False
    return True


def _check_relations(settings: Settings) -> list[str]:
    errors = []
    if settings.min_lr > settings.max_lr:
        errors.append(
            f"SLOTQ_MIN_LR={settings.min_lr!r} is invalid: must be at most "
            f"SLOTQ_MAX_LR={settings.max_lr!r}"
        )
    if settings.default_page_size > settings.max_page_size:
        errors.append(
            f"SLOTQ_DEFAULT_PAGE_SIZE={settings.default_page_size!r} is invalid: must be at most "
            f"SLOTQ_MAX_PAGE_SIZE={settings.max_page_size!r}"
        )
    return errors

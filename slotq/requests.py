"""Validation of a job request, shared by the API (on submit) and the workers (before running).

`parse_job_request` turns a decoded JSON body into a frozen `JobRequest` or raises
`RequestValidationError` listing every problem at once. Each problem names the field as a dotted
path (``slot.lr``, ``messages.2.content``), the rejected value and the allowed range. Limits come
from `slotq.settings.Settings`; all ranges are inclusive unless a message states otherwise.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from slotq import SlotqError
from slotq.settings import OVERFIT_POLICIES, Settings

ROLES = ("system", "user", "assistant")
TOP_LEVEL_FIELDS = ("prompt", "messages", "slot", "generation", "metadata")
MESSAGE_FIELDS = ("role", "content")
SLOT_FIELDS = ("steps", "lr", "overfit_policy")
GENERATION_FIELDS = ("max_new_tokens", "temperature", "top_p", "seed", "stop")

DEFAULT_STEPS = 5
DEFAULT_LR = 0.1
#: Policy of a `SlotParams` built in code; `parse_job_request` takes ``SLOTQ_OVERFIT_POLICY``.
DEFAULT_OVERFIT_POLICY = "flag"
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TOP_P = 1.0

#: Largest seed: seeds are stored and passed on as signed 64-bit integers.
MAX_SEED = 2**63 - 1

#: Control characters (Unicode category Cc) other than tab, newline and carriage return, and
#: lone surrogates, which JSON can encode as ``\\ud800`` but UTF-8 cannot store.
_FORBIDDEN_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

#: Maximum length of a string echoed back as the value of an error; longer ones are cut.
_MAX_ECHO_CHARS = 64


class RequestValidationError(SlotqError, ValueError):
    """A job request is invalid.

    Attributes:
        errors: one ``{"field", "value", "message"}`` dict per problem, in field order.
    """

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        summary = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        super().__init__(f"invalid job request: {summary}")


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn."""

    role: str
    content: str


@dataclass(frozen=True)
class SlotParams:
    """SLOT optimisation parameters: AdamW steps on δ, their learning rate, and what a worker
    does when δ over-fits (one of `OVERFIT_POLICIES`)."""

    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    overfit_policy: str = DEFAULT_OVERFIT_POLICY


@dataclass(frozen=True)
class GenerationParams:
    """Decoding parameters; temperature 0 means greedy decoding."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobRequest:
    """A validated job request; exactly one of ``prompt`` and ``messages`` is set."""

    prompt: str | None
    messages: tuple[ChatMessage, ...] | None
    slot: SlotParams = SlotParams()
    generation: GenerationParams = GenerationParams()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def engine_prompt(self) -> str | list[dict[str, str]]:
        """Prompt in the form ``slot_core.generate`` takes: a string or a list of messages."""
        if self.prompt is not None:
            return self.prompt
        return [{"role": message.role, "content": message.content} for message in self.messages]

    def to_dict(self) -> dict[str, Any]:
        """Return the request as JSON-ready data with every default filled in.

        `parse_job_request` accepts the result and returns an equal `JobRequest`.
        """
        data: dict[str, Any] = {}
        if self.prompt is not None:
            data["prompt"] = self.prompt
        else:
            data["messages"] = [
                {"role": message.role, "content": message.content} for message in self.messages
            ]
        data["slot"] = {
            "steps": self.slot.steps,
            "lr": self.slot.lr,
            "overfit_policy": self.slot.overfit_policy,
        }
        data["generation"] = {
            "max_new_tokens": self.generation.max_new_tokens,
            "temperature": self.generation.temperature,
            "top_p": self.generation.top_p,
            "seed": self.generation.seed,
            "stop": list(self.generation.stop),
        }
        data["metadata"] = self.metadata
        return data


def parse_job_request(body: Any, settings: Settings) -> JobRequest:
    """Validate a decoded JSON job request against the limits in ``settings``.

    Raises:
        RequestValidationError: with every problem found, not only the first.
    """
    errors = _ErrorList()
    if not isinstance(body, dict):
        errors.add("body", body, f"must be a JSON object, not {_json_type(body)}")
        raise RequestValidationError(errors.items)

    errors.reject_unknown("", body, TOP_LEVEL_FIELDS)
    prompt, messages = _parse_prompt(body, settings, errors)
    slot = _parse_slot(body.get("slot", {}), settings, errors)
    generation = _parse_generation(body.get("generation", {}), settings, errors)
    metadata = _parse_metadata(body.get("metadata", {}), settings, errors)

    if errors.items:
        raise RequestValidationError(errors.items)
    return JobRequest(prompt, messages, slot, generation, metadata)


def prompt_token_limit(settings: Settings, context_length: int, max_new_tokens: int) -> int:
    """Return the most prompt tokens (after the chat template) a job may have.

    The limit is the model's context length minus ``max_new_tokens``, lowered to
    ``settings.max_prompt_tokens`` when that is set. It can be 0 or negative when
    ``max_new_tokens`` fills the whole context.
    """
    limit = context_length - max_new_tokens
    if settings.max_prompt_tokens is not None:
        limit = min(limit, settings.max_prompt_tokens)
    return limit


def check_prompt_tokens(
    request: JobRequest, prompt_tokens: int, context_length: int, settings: Settings
) -> None:
    """Check the prompt's token count, which only a worker holding the tokenizer can measure.

    Args:
        prompt_tokens: tokens of the prompt after the chat template
            (``slot_core.count_prompt_tokens``).
        context_length: the model's context length in tokens (``slot_core.model_context_length``).

    Raises:
        RequestValidationError: on ``generation.max_new_tokens`` when it leaves no room for a
            prompt, else on ``prompt`` or ``messages`` when the prompt is over the limit. The
            message names the limit and where it comes from.
    """
    max_new_tokens = request.generation.max_new_tokens
    if max_new_tokens >= context_length:
        raise RequestValidationError(
            [
                {
                    "field": "generation.max_new_tokens",
                    "value": max_new_tokens,
                    "message": f"must be below the model's context length of {context_length} tokens",
                }
            ]
        )

    limit = prompt_token_limit(settings, context_length, max_new_tokens)
    if prompt_tokens <= limit:
        return
    if settings.max_prompt_tokens is not None and limit == settings.max_prompt_tokens:
        source = "SLOTQ_MAX_PROMPT_TOKENS"
    else:
        source = (
            f"the model's context length of {context_length} tokens minus "
            f"generation.max_new_tokens={max_new_tokens}"
        )
    raise RequestValidationError(
        [
            {
                "field": "prompt" if request.prompt is not None else "messages",
                "value": f"<{prompt_tokens} tokens>",
                "message": f"must be at most {limit} tokens after the chat template ({source})",
            }
        ]
    )


class _ErrorList:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, field_path: str, value: Any, message: str) -> None:
        self.items.append({"field": field_path, "value": _echo(value), "message": message})

    def reject_unknown(self, prefix: str, data: dict, allowed: tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                self.add(
                    f"{prefix}{key}",
                    data[key],
                    "unknown field; allowed fields: " + ", ".join(allowed),
                )


def _parse_prompt(
    body: dict, settings: Settings, errors: _ErrorList
) -> tuple[str | None, tuple[ChatMessage, ...] | None]:
    if "prompt" in body and "messages" in body:
        errors.add("messages", body["messages"], "must not be given together with prompt")
        return None, None
    if "prompt" not in body and "messages" not in body:
        errors.add("prompt", None, "is required unless messages is given")
        return None, None

    if "prompt" in body:
        prompt = body["prompt"]
        if _check_text("prompt", prompt, errors, allow_blank=False):
            _check_length("prompt", len(prompt), settings.max_prompt_chars, errors)
            return prompt, None
        return None, None

    return None, _parse_messages(body["messages"], settings, errors)


def _parse_messages(
    messages: Any, settings: Settings, errors: _ErrorList
) -> tuple[ChatMessage, ...] | None:
    if not isinstance(messages, list):
        errors.add("messages", messages, f"must be an array, not {_json_type(messages)}")
        return None
    if not 1 <= len(messages) <= settings.max_messages:
        errors.add(
            "messages",
            f"<array of {len(messages)} items>",
            f"must contain between 1 and {settings.max_messages} messages",
        )
        return None

    parsed = []
    for index, message in enumerate(messages):
        prefix = f"messages.{index}"
        if not isinstance(message, dict):
            errors.add(prefix, message, f"must be an object, not {_json_type(message)}")
            continue
        errors.reject_unknown(f"{prefix}.", message, MESSAGE_FIELDS)

        role = message.get("role")
        if role not in ROLES:
            errors.add(f"{prefix}.role", role, "must be one of " + ", ".join(ROLES))
        content = message.get("content")
        content_ok = _check_text(f"{prefix}.content", content, errors, allow_blank=False)
        if role in ROLES and content_ok:
            parsed.append(ChatMessage(role, content))

    if len(parsed) != len(messages):
        return None
    total = sum(len(message.content) for message in parsed)
    if not _check_length("messages", total, settings.max_prompt_chars, errors):
        return None
    return tuple(parsed)


def _parse_slot(slot: Any, settings: Settings, errors: _ErrorList) -> SlotParams:
    if not isinstance(slot, dict):
        errors.add("slot", slot, f"must be an object, not {_json_type(slot)}")
        return SlotParams()
    errors.reject_unknown("slot.", slot, SLOT_FIELDS)

    steps = slot.get("steps", DEFAULT_STEPS)
    if not _is_integer(steps) or not 0 <= steps <= settings.max_steps:
        errors.add("slot.steps", steps, f"must be an integer between 0 and {settings.max_steps}")

    lr = slot.get("lr", DEFAULT_LR)
    if not _is_number(lr) or not settings.min_lr <= lr <= settings.max_lr:
        errors.add(
            "slot.lr", lr, f"must be a number between {settings.min_lr} and {settings.max_lr}"
        )
        lr = DEFAULT_LR

    policy = slot.get("overfit_policy", settings.overfit_policy)
    if policy not in OVERFIT_POLICIES:
        errors.add("slot.overfit_policy", policy, "must be one of " + ", ".join(OVERFIT_POLICIES))
        policy = settings.overfit_policy

    return SlotParams(steps=steps, lr=float(lr), overfit_policy=policy)


def _parse_generation(generation: Any, settings: Settings, errors: _ErrorList) -> GenerationParams:
    if not isinstance(generation, dict):
        errors.add("generation", generation, f"must be an object, not {_json_type(generation)}")
        return GenerationParams()
    errors.reject_unknown("generation.", generation, GENERATION_FIELDS)

    max_new_tokens = generation.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if not _is_integer(max_new_tokens) or not 1 <= max_new_tokens <= settings.max_new_tokens:
        errors.add(
            "generation.max_new_tokens",
            max_new_tokens,
            f"must be an integer between 1 and {settings.max_new_tokens}",
        )

    temperature = generation.get("temperature", DEFAULT_TEMPERATURE)
    if not _is_number(temperature) or temperature < 0:
        errors.add("generation.temperature", temperature, "must be a finite number of at least 0")
        temperature = DEFAULT_TEMPERATURE

    top_p = generation.get("top_p", DEFAULT_TOP_P)
    if not _is_number(top_p) or not 0 < top_p <= 1:
        errors.add("generation.top_p", top_p, "must be a number greater than 0 and at most 1")
        top_p = DEFAULT_TOP_P

    seed = generation.get("seed")
    if seed is not None and (not _is_integer(seed) or not 0 <= seed <= MAX_SEED):
        errors.add("generation.seed", seed, f"must be null or an integer between 0 and {MAX_SEED}")

    stop = _parse_stop(generation.get("stop", []), settings, errors)
    return GenerationParams(max_new_tokens, float(temperature), float(top_p), seed, stop)


def _parse_stop(stop: Any, settings: Settings, errors: _ErrorList) -> tuple[str, ...]:
    if not isinstance(stop, list):
        errors.add("generation.stop", stop, f"must be an array of strings, not {_json_type(stop)}")
        return ()
    if len(stop) > settings.max_stop_strings:
        errors.add(
            "generation.stop",
            f"<array of {len(stop)} items>",
            f"must contain at most {settings.max_stop_strings} strings",
        )
        return ()

    for index, entry in enumerate(stop):
        path = f"generation.stop.{index}"
        if _check_text(path, entry, errors, allow_blank=True):
            if not entry:
                errors.add(path, entry, "must not be empty")
            else:
                _check_length(path, len(entry), settings.max_stop_chars, errors)
    return tuple(stop)


def _parse_metadata(metadata: Any, settings: Settings, errors: _ErrorList) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        errors.add("metadata", metadata, f"must be an object, not {_json_type(metadata)}")
        return {}

    try:
        encoded = json.dumps(
            metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    except ValueError as error:
        # UnicodeEncodeError is a ValueError too, so test for it first.
        if isinstance(error, UnicodeEncodeError):
            errors.add("metadata", None, "must contain only valid Unicode text (no lone surrogates)")
        else:
            errors.add("metadata", None, "must not contain NaN or infinite numbers")
        return {}
    except TypeError:
        errors.add("metadata", None, "must contain only JSON values")
        return {}
    except RecursionError:
        errors.add("metadata", None, "is nested too deeply")
        return {}

    if len(encoded) > settings.max_metadata_bytes:
        errors.add(
            "metadata",
            f"<{len(encoded)} bytes>",
            f"must be at most {settings.max_metadata_bytes} bytes as compact UTF-8 JSON",
        )
        return {}
    return metadata


def _check_text(path: str, value: Any, errors: _ErrorList, allow_blank: bool) -> bool:
    """Add an error and return False unless ``value`` is a string free of forbidden characters."""
    if not isinstance(value, str):
        errors.add(path, value, f"must be a string, not {_json_type(value)}")
        return False
    if not allow_blank and not value.strip():
        errors.add(path, value, "must contain at least one non-whitespace character")
        return False

    match = _FORBIDDEN_CHARACTER.search(value)
    if match:
        errors.add(
            path,
            f"U+{ord(match.group()):04X} at character {match.start()}",
            "must not contain control characters other than tab, newline and carriage return, "
            "nor lone surrogates",
        )
        return False
    return True


def _check_length(path: str, length: int, maximum: int, errors: _ErrorList) -> bool:
    if length > maximum:
        errors.add(path, f"<{length} characters>", f"must be at most {maximum} characters long")
        return False
    return True


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _echo(value: Any) -> Any:
    """Return ``value`` in a form that is safe and short to send back in an error."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        if len(value) > _MAX_ECHO_CHARS:
            value = value[:_MAX_ECHO_CHARS] + "…"
        if _FORBIDDEN_CHARACTER.search(value):
            # Lone surrogates cannot be encoded in a UTF-8 response, so send the escaped form.
            return json.dumps(value)
        return value
    if isinstance(value, (list, dict)):
        try:
            text = json.dumps(value, allow_nan=False)
        except (ValueError, TypeError, RecursionError):
            return f"<{_json_type(value)}>"
        if len(text) > _MAX_ECHO_CHARS:
            return f"<{_json_type(value)} of {len(value)} items>"
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return f"<{_json_type(value)}>"

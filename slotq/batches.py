"""Streaming parser of batch uploads.

An upload is one of two forms.

JSONL (``application/x-ndjson`` or ``application/jsonl``): one JSON object per line, each
``{"custom_id": "...", "request": {...}}`` with a job request as ``POST /v1/jobs`` takes it. The
first line may instead be ``{"batch": {...}}`` with the batch options ``defaults``,
``response_format``, ``validation_prompts`` and ``metadata``. Blank lines are ignored. Line
numbers are the 1-based physical lines of the file, header and blank lines included, so an
error points at the line an editor shows.

JSON (``application/json``): one object ``{"defaults": ..., "response_format": ...,
"validation_prompts": [...], "metadata": ..., "requests": [...]}`` whose ``requests`` items
look like JSONL lines. ``requests`` must be the last member, because the options apply to
every request and the parser reads the body once. The line number of a request is its
1-based position in ``requests``.

Batch ``defaults`` may set ``slot``, ``generation`` and ``metadata``. Each line's request is
merged over them key by key (a line's ``generation.max_new_tokens`` beats the default's) and
only then validated, so defaults count towards every limit.

The parser reads the body in chunks and yields valid lines as it goes. It collects every
problem (line number, custom_id, field, value, message) and raises `BatchUploadError` once the
body is exhausted, unless the client asked to skip invalid lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import IO, Any

import ijson

from slotq import SlotqError
from slotq.formats import ResponseFormatError, parse_response_format
from slotq.requests import RequestValidationError, parse_job_request
from slotq.settings import Settings
from slotq.store.batches import BatchLine, BatchSpec
from slotq.store.models import MAX_CUSTOM_ID_CHARS

JSONL_MEDIA_TYPES = ("application/x-ndjson", "application/jsonl")
JSON_MEDIA_TYPE = "application/json"

BATCH_OPTION_FIELDS = ("defaults", "response_format", "validation_prompts", "metadata")
DEFAULT_FIELDS = ("slot", "generation", "metadata")
LINE_FIELDS = ("custom_id", "request")

#: Longest stored input file name, in characters.
MAX_FILE_NAME_CHARS = 255
#: Bytes read from the request body at a time.
READ_CHUNK_BYTES = 65536

#: Control characters other than tab, lone surrogates and DEL..APC (as in job requests).
_FORBIDDEN_ID_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_PLACEHOLDER_PROMPT = "x"


class BatchUploadError(SlotqError, ValueError):
    """An upload was rejected as a whole.

    Attributes:
        status: HTTP status for the API: 400 for a body that is not JSON or JSONL at all, 422
            for invalid options or lines.
        code: stable error code, such as ``validation_failed``.
        details: one dict per problem with ``field``, ``value`` and ``message``, plus ``line``
            and ``custom_id`` for problems of a line.
    """

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


class BatchUpload:
    """One upload being parsed: call `read_spec` first, then iterate `lines`.

    Args:
        stream: the request body, read with ``read(size)`` and never seeked.
        media_type: one of `JSONL_MEDIA_TYPES` or `JSON_MEDIA_TYPE`.
        settings: limits of requests and batches.
        skip_invalid: leave invalid lines out instead of rejecting the upload; they are listed
            in `skipped`.
        input_file_name: the client's file name; any path part is dropped.
    """

    def __init__(
        self,
        stream: IO[bytes],
        media_type: str,
        settings: Settings,
        skip_invalid: bool = False,
        input_file_name: str | None = None,
    ):
        if media_type not in (*JSONL_MEDIA_TYPES, JSON_MEDIA_TYPE):
            raise ValueError(f"unsupported media type {media_type!r}")
        self.settings = settings
        self.skip_invalid = skip_invalid
        self.input_file_name = clean_file_name(input_file_name)
        self.is_jsonl = media_type in JSONL_MEDIA_TYPES
        #: Invalid lines left out: ``{"line", "custom_id", "errors": [{"field", "value", "message"}]}``.
        self.skipped: list[dict[str, Any]] = []
        self.spec: BatchSpec | None = None

        self._errors: list[dict[str, Any]] = []
        self._custom_ids: dict[str, int] = {}
        self._current_line = 0
        self._request_count = 0
        self._defaults: dict[str, Any] = {}
        if self.is_jsonl:
            self._raw_lines = _split_lines(stream, settings.max_body_bytes)
            self._pending: tuple[int, Any] | None = None
        else:
            self._events = _json_events(stream)

    def read_spec(self) -> BatchSpec:
        """Read the batch options at the start of the upload and return them validated.

        Raises:
            BatchUploadError: the options are invalid, or the body is not the expected form.
        """
        options, prefix = self._read_jsonl_header() if self.is_jsonl else self._read_json_options()
        self.spec = self._validate_options(options, prefix)
        self._defaults = self.spec.defaults
        return self.spec

    def lines(self) -> Iterator[BatchLine]:
        """Yield the valid lines in input order.

        Raises:
            BatchUploadError: after the last line when any line was invalid and invalid lines
                are not skipped, or at once when the upload has more than
                ``settings.max_batch_lines`` requests. Also when no valid line remains.
        """
        if self.spec is None:
            raise RuntimeError("call read_spec() before lines()")
        items = self._jsonl_items() if self.is_jsonl else self._json_items()
        for line_number, item in items:
            line = self._parse_line(line_number, item)
            if line is not None:
                yield line

        if self._errors and not self.skip_invalid:
            invalid_lines = len({error["line"] for error in self._errors})
            raise BatchUploadError(
                422,
                "validation_failed",
                f"{invalid_lines} of {self._request_count} lines are invalid; nothing was accepted. "
                "Fix them, or resubmit with skip_invalid=true to leave them out",
                self._errors,
            )
        if self._request_count == len(self.skipped):
            raise BatchUploadError(
                422,
                "empty_batch",
                "the upload contains no valid request line",
                self._errors,
            )

    # --- batch options --------------------------------------------------------------------------

    def _read_jsonl_header(self) -> tuple[dict[str, Any], str]:
        for line_number, raw in self._raw_lines:
            if raw is not None and not raw.strip():
                continue
            # A first line that does not decode is reported as a request line, with its number.
            item = _decode_line(raw, self.settings.max_body_bytes)
            if isinstance(item, dict) and "batch" in item:
                if len(item) != 1:
                    extra = sorted(key for key in item if key != "batch")
                    raise _options_error(f"line {line_number}", extra, "a header line must contain only the key batch")
                if not isinstance(item["batch"], dict):
                    raise _options_error("batch", item["batch"], "must be an object")
                return item["batch"], "batch."
            self._pending = (line_number, item)
            break
        return {}, "batch."

    def _read_json_options(self) -> tuple[dict[str, Any], str]:
        options: dict[str, Any] = {}
        try:
            prefix, event, _ = next(self._events)
        except StopIteration:
            raise BatchUploadError(400, "invalid_body", "request body is empty") from None
        if event != "start_map":
            raise BatchUploadError(400, "invalid_body", "request body must be a JSON object with a requests array")

        for prefix, event, value in self._events:
            if event == "end_map" and prefix == "":
                raise BatchUploadError(422, "validation_failed", "requests is missing", [
                    {"field": "requests", "value": None, "message": "is required: an array of {custom_id, request} objects"}
                ])
            if event != "map_key":
                continue
            if value == "requests":
                return options, ""
            if value not in BATCH_OPTION_FIELDS:
                raise _options_error(value, None, "unknown field; allowed fields: " + ", ".join((*BATCH_OPTION_FIELDS, "requests")))
            options[value] = _build_value(self._events)
        return options, ""

    def _validate_options(self, options: dict[str, Any], prefix: str) -> BatchSpec:
        errors: list[dict[str, Any]] = []
        for key in options:
            if key not in BATCH_OPTION_FIELDS:
                errors.append(_detail(f"{prefix}{key}", options[key], "unknown field; allowed fields: " + ", ".join(BATCH_OPTION_FIELDS)))

        defaults = self._validate_defaults(options.get("defaults", {}), f"{prefix}defaults", errors)
        response_format = None
        if options.get("response_format") is not None:
            try:
                response_format = parse_response_format(options["response_format"], f"{prefix}response_format").to_dict()
            except ResponseFormatError as error:
                errors.extend(error.errors)
        validation_prompts = self._validate_prompts(options.get("validation_prompts"), f"{prefix}validation_prompts", errors)
        metadata = self._validate_metadata(options.get("metadata", {}), f"{prefix}metadata", errors)

        if errors:
            raise BatchUploadError(422, "validation_failed", "the batch options are invalid; nothing was accepted", errors)
        return BatchSpec(
            defaults=defaults,
            response_format=response_format,
            validation_prompts=validation_prompts,
            metadata=metadata,
            input_file_name=self.input_file_name,
        )

    def _validate_defaults(self, defaults: Any, field_path: str, errors: list) -> dict[str, Any]:
        if not isinstance(defaults, dict):
            errors.append(_detail(field_path, defaults, "must be an object with any of " + ", ".join(DEFAULT_FIELDS)))
            return {}
        unknown = [key for key in defaults if key not in DEFAULT_FIELDS]
        for key in unknown:
            errors.append(_detail(f"{field_path}.{key}", defaults[key], "unknown field; allowed fields: " + ", ".join(DEFAULT_FIELDS)))
        if unknown:
            return {}

        try:
            parse_job_request({"prompt": _PLACEHOLDER_PROMPT, **defaults}, self.settings)
        except RequestValidationError as error:
            errors.extend(_prefixed(error.errors, field_path))
            return {}
        return defaults

    def _validate_prompts(self, prompts: Any, field_path: str, errors: list) -> list[list[dict[str, str]]] | None:
        if prompts is None:
            return None
        maximum = self.settings.max_batch_validation_prompts
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= maximum:
            shown = f"<array of {len(prompts)} items>" if isinstance(prompts, list) else prompts
            errors.append(_detail(
                field_path,
                shown,
                f"must be an array of 1 to {maximum} objects {{\"messages\": [...]}}; "
                "leave it out to use the workers' default validation prompts",
            ))
            return None

        checked = []
        for index, prompt in enumerate(prompts):
            item_path = f"{field_path}.{index}"
            if not isinstance(prompt, dict) or set(prompt) != {"messages"}:
                errors.append(_detail(item_path, prompt, "must be an object with only the key messages"))
                continue
            try:
                request = parse_job_request({"messages": prompt["messages"]}, self.settings)
            except RequestValidationError as error:
                errors.extend(_prefixed(error.errors, item_path))
                continue
            checked.append(request.to_dict()["messages"])
        return checked

    def _validate_metadata(self, metadata: Any, field_path: str, errors: list) -> dict[str, Any]:
        try:
            parse_job_request({"prompt": _PLACEHOLDER_PROMPT, "metadata": metadata}, self.settings)
        except RequestValidationError as error:
            errors.extend(_prefixed(error.errors, field_path, strip="metadata"))
            return {}
        return metadata

    # --- request lines --------------------------------------------------------------------------

    def _jsonl_items(self) -> Iterator[tuple[int, Any]]:
        if self._pending is not None:
            yield self._pending
            self._pending = None
        for line_number, raw in self._raw_lines:
            if raw is not None and not raw.strip():
                continue
            yield line_number, _decode_line(raw, self.settings.max_body_bytes)

    def _json_items(self) -> Iterator[tuple[int, Any]]:
        prefix, event, _ = next(self._events, ("", None, None))
        if event != "start_array":
            raise BatchUploadError(422, "validation_failed", "requests must be an array", [
                _detail("requests", None, "must be an array of {custom_id, request} objects")
            ])

        index = 0
        for prefix, event, value in self._events:
            if event == "end_array" and prefix == "requests":
                break
            index += 1
            yield index, _build_value(self._events, first=(event, value))

        for prefix, event, value in self._events:
            if event == "map_key":
                raise BatchUploadError(422, "validation_failed", "requests must be the last member of the body", [
                    _detail(value, None, "must come before requests, because the batch options apply to every request")
                ])

    def _parse_line(self, line_number: int, item: Any) -> BatchLine | None:
        self._request_count += 1
        if self._request_count > self.settings.max_batch_lines:
            raise BatchUploadError(
                422,
                "too_many_lines",
                f"the upload has more than {self.settings.max_batch_lines} requests "
                "(SLOTQ_MAX_BATCH_LINES); split it into several batches",
                [_detail("requests", f"<more than {self.settings.max_batch_lines} lines>", f"must contain at most {self.settings.max_batch_lines} requests")],
            )

        if isinstance(item, _LineProblem):
            return self._reject(line_number, None, [_detail("line", item.value, item.message)])
        if not isinstance(item, dict):
            return self._reject(line_number, None, [_detail("line", item, "must be a JSON object {\"custom_id\": ..., \"request\": {...}}")])

        custom_id = item.get("custom_id")
        self._current_line = line_number
        problems = [
            _detail(key, item[key], "unknown field; allowed fields: " + ", ".join(LINE_FIELDS))
            for key in item
            if key not in LINE_FIELDS
        ]
        problems.extend(self._check_custom_id(custom_id))
        shown_id = custom_id if isinstance(custom_id, str) else None

        if "request" not in item:
            problems.append(_detail("request", None, "is required: a job request as POST /v1/jobs takes it"))
            return self._reject(line_number, shown_id, problems)
        try:
            request = parse_job_request(self._merge_defaults(item["request"]), self.settings)
        except RequestValidationError as error:
            problems.extend(_prefixed(error.errors, "request"))
            request = None

        if problems:
            return self._reject(line_number, shown_id, problems)
        return BatchLine(line_number=line_number, custom_id=custom_id, request=request)

    def _check_custom_id(self, custom_id: Any) -> list[dict[str, Any]]:
        if not isinstance(custom_id, str) or not custom_id.strip():
            return [_detail("custom_id", custom_id, "is required: a non-blank string unique within the batch")]
        if len(custom_id) > MAX_CUSTOM_ID_CHARS:
            return [_detail("custom_id", custom_id, f"must be at most {MAX_CUSTOM_ID_CHARS} characters long")]
        if _FORBIDDEN_ID_CHARACTER.search(custom_id):
            return [_detail("custom_id", json.dumps(custom_id), "must not contain control characters nor lone surrogates")]
        if custom_id in self._custom_ids:
            return [_detail("custom_id", custom_id, f"must be unique within the batch; line {self._custom_ids[custom_id]} uses it already")]
        # Registered even when the line has other problems, so a duplicate is reported now
        # and not only after the first line is fixed.
        self._custom_ids[custom_id] = self._current_line
        return []

    def _merge_defaults(self, request: Any) -> Any:
        if not isinstance(request, dict) or not self._defaults:
            return request
        merged = dict(request)
        for key, default in self._defaults.items():
            own = request.get(key)
            if own is None:
                merged[key] = default
            elif isinstance(own, dict):
                merged[key] = {**default, **own}
        return merged

    def _reject(self, line_number: int, custom_id: str | None, problems: list[dict[str, Any]]) -> None:
        for problem in problems:
            self._errors.append({"line": line_number, "custom_id": custom_id, **problem})
        if self.skip_invalid:
            self.skipped.append({"line": line_number, "custom_id": custom_id, "errors": problems})
        return None


def clean_file_name(name: str | None) -> str | None:
    """Return the last path part of ``name``, cut to `MAX_FILE_NAME_CHARS`; None when empty."""
    if not name:
        return None
    base = re.split(r"[\\/]", name)[-1].strip()
    base = _FORBIDDEN_ID_CHARACTER.sub("", base)
    return base[:MAX_FILE_NAME_CHARS] or None


class _LineProblem:
    """A line that could not be decoded; carried to `_parse_line` to be reported with its number."""

    def __init__(self, value: Any, message: str):
        self.value = value
        self.message = message


def _split_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_number, bytes)`` for each line; bytes is None for a line over the limit.

    A line longer than ``max_line_bytes`` is skipped to its end without being kept.
    """
    buffer = b""
    line_number = 1
    too_long = False
    while True:
        chunk = stream.read(READ_CHUNK_BYTES)
        if not chunk:
            break
        buffer += chunk
        start = 0
        while True:
            newline = buffer.find(b"\n", start)
            if newline < 0:
                break
            if too_long:
                yield line_number, None
            else:
                yield line_number, buffer[start:newline] if newline - start <= max_line_bytes else None
            too_long = False
            line_number += 1
            start = newline + 1
        buffer = buffer[start:]
        if len(buffer) > max_line_bytes:
            too_long = True
            buffer = b""

    if too_long:
        yield line_number, None
    elif buffer:
        yield line_number, buffer


def _decode_line(raw: bytes | None, max_line_bytes: int) -> Any:
    """Decode one JSONL line; a line that does not decode gives a `_LineProblem`."""
    if raw is None:
        problem = _LineProblem(None, f"line is longer than {max_line_bytes} bytes (SLOTQ_MAX_BODY_BYTES)")
    else:
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as error:
            problem = _LineProblem(None, f"line is not valid UTF-8: invalid byte at offset {error.start}")
        except json.JSONDecodeError as error:
            problem = _LineProblem(None, f"line is not valid JSON: {error.msg} at column {error.colno}")
        except (ValueError, RecursionError) as error:
            problem = _LineProblem(None, f"line is not acceptable JSON: {error}")
    return problem


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_events(stream: IO[bytes]) -> Iterator[tuple[str, str, Any]]:
    """Yield ijson parse events, turning malformed JSON into a 400 `BatchUploadError`."""
    try:
        yield from ijson.parse(_NonEmptyReads(stream), use_float=True, buf_size=READ_CHUNK_BYTES)
    except ijson.common.IncompleteJSONError as error:
        raise BatchUploadError(400, "invalid_body", f"request body is not valid JSON: {error}") from error
    except UnicodeDecodeError as error:
        raise BatchUploadError(400, "invalid_body", f"request body is not valid UTF-8: invalid byte at offset {error.start}") from error
    except ijson.common.JSONError as error:
        raise BatchUploadError(400, "invalid_body", f"request body is not acceptable JSON: {error}") from error


class _NonEmptyReads:
    """File wrapper that answers ``read(0)`` itself.

    ijson probes its input with ``read(0)``, which Werkzeug's request stream takes for a client
    that disconnected.
    """

    def __init__(self, stream: IO[bytes]):
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        return self._stream.read(size)


def _build_value(events: Iterator[tuple[str, str, Any]], first: tuple[str, Any] | None = None) -> Any:
    """Build the next complete JSON value from ``events`` (starting with ``first`` if given)."""
    builder = ijson.ObjectBuilder()
    depth = 0
    pending = [first] if first is not None else []
    while True:
        if pending:
            event, value = pending.pop()
        else:
            _, event, value = next(events)
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
        if depth == 0:
            return builder.value


def _detail(field_path: str, value: Any, message: str) -> dict[str, Any]:
    if isinstance(value, str) and len(value) > 64:
        value = value[:64] + "…"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        if len(text) > 64:
            value = f"<{'object' if isinstance(value, dict) else 'array'} of {len(value)} items>"
    return {"field": field_path, "value": value, "message": message}


def _prefixed(errors: list[dict[str, Any]], prefix: str, strip: str | None = None) -> list[dict[str, Any]]:
    """Return ``errors`` with each field moved under ``prefix`` (``slot.lr`` -> ``request.slot.lr``)."""
    moved = []
    for error in errors:
        field_path = error["field"]
        if strip is not None and (field_path == strip or field_path.startswith(strip + ".")):
            field_path = field_path[len(strip) :].lstrip(".")
        moved.append({**error, "field": f"{prefix}.{field_path}" if field_path else prefix})
    return moved


def _options_error(field_path: str, value: Any, message: str) -> BatchUploadError:
    return BatchUploadError(422, "validation_failed", "the batch options are invalid; nothing was accepted", [_detail(field_path, value, message)])

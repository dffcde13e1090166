"""Evaluation data files: GSM8K, IFEval and form-filling sets, detected from their fields.

- GSM8K: one JSON object per line with ``question`` and ``answer``; the reference is the number
  after ``#### `` in the answer.
- IFEval: ``key``, ``prompt``, ``instruction_id_list`` and ``kwargs`` (one dict per instruction).
- Form filling: a chat request per line, ``messages`` (a list of ``{role, content}``) or
  ``prompt``, with an optional ``id``; the JSON schema that outputs must follow comes from a
  separate file (``--schema``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slotq.evaluation.errors import EvaluationError

GSM8K = "gsm8k"
IFEVAL = "ifeval"
FORM = "form"
KINDS = (GSM8K, IFEVAL, FORM)

#: Appended to each GSM8K question, so that the final number is the last number of the output.
GSM8K_INSTRUCTION = "\nSolve the problem step by step, then give the final answer as a number on the last line."


@dataclass(frozen=True)
class EvalItem:
    """One prompt of a data set.

    Attributes:
        item_id: unique within the file: the IFEval key, the form record's id, or ``line-N``.
        messages: the chat request sent to the model, a list of ``{"role", "content"}``.
        reference: what the scorer needs: ``{"answer": "18"}`` for GSM8K, the instruction ids
            and kwargs for IFEval, nothing for forms (the schema is shared).
    """

    item_id: str
    messages: list[dict[str, str]]
    reference: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    """A loaded data file.

    Attributes:
        kind: one of KINDS.
        path: the file read.
        sha256: hex digest of the file's bytes, recorded so that a resumed run uses the same data.
        items: the prompts, in file order, cut to the limit.
        schema: the JSON schema of form-filling outputs; None for the other kinds.
    """

    kind: str
    path: Path
    sha256: str
    items: list[EvalItem]
    schema: dict | None = None


def load_dataset(path: str | Path, schema_path: str | Path | None = None, limit: int | None = None) -> Dataset:
    """Read a data file, detect its kind from the first record, and return its first ``limit`` items.

    Raises:
        EvaluationError: the file or schema is missing or unreadable, a line is not a JSON object,
            a record lacks a field of its kind, item ids repeat, or ``--schema`` does not fit the kind.
    """
    path = Path(path)
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise EvaluationError(f"invalid --limit={limit!r}: must be an integer >= 1")
    raw = _read_bytes(path, "data file")
    records = _parse_lines(path, raw)
    if not records:
        raise EvaluationError(f"data file {path} has no records")

    kind = detect_kind(path, records[0][1])
    schema = _load_schema(kind, path, schema_path)
    items = [_ITEM_BUILDERS[kind](path, number, record) for number, record in records]
    _check_unique_ids(path, items)
    if limit is not None:
        items = items[:limit]
    return Dataset(kind=kind, path=path, sha256=hashlib.sha256(raw).hexdigest(), items=items, schema=schema)


def detect_kind(path: Path, record: dict) -> str:
    """Return the kind of a data file from the fields of its first record."""
    if "instruction_id_list" in record:
        return IFEVAL
    if "question" in record and "answer" in record:
        return GSM8K
    if "messages" in record or "prompt" in record:
        return FORM
    raise EvaluationError(
        f"{path}:1: cannot tell the data set kind from the fields {sorted(record)}; expected GSM8K "
        "(question, answer), IFEval (key, prompt, instruction_id_list, kwargs) or a form-filling "
        "chat request (messages or prompt)"
    )


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise EvaluationError(f"{what} not found: {path}") from None
    except OSError as error:
        raise EvaluationError(f"{what} {path} cannot be read: {error.strerror}") from error


def _parse_lines(path: Path, raw: bytes) -> list[tuple[int, dict]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EvaluationError(f"{path}: not UTF-8 text (invalid byte at offset {error.start})") from error

    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvaluationError(f"{path}:{number}: not valid JSON: {error.msg}") from error
        if not isinstance(record, dict):
            raise EvaluationError(f"{path}:{number}: must be a JSON object, not {type(record).__name__}")
        records.append((number, record))
    return records


def _load_schema(kind: str, path: Path, schema_path: str | Path | None) -> dict | None:
    if kind != FORM:
        if schema_path is not None:
            raise EvaluationError(f"--schema applies only to form-filling sets, but {path} is a {kind} file")
        return None
    if schema_path is None:
        raise EvaluationError(f"{path} is a form-filling set: give the JSON schema of its outputs with --schema FILE")

    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    schema_file = Path(schema_path)
    try:
        schema = json.loads(_read_bytes(schema_file, "schema file").decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvaluationError(f"schema file {schema_file} is not valid UTF-8 JSON: {error}") from error
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise EvaluationError(f"schema file {schema_file} is not a valid JSON schema: {error.message}") from error
    return schema


def _gsm8k_item(path: Path, number: int, record: dict) -> EvalItem:
    question = _string_field(path, number, record, "question")
    answer = _string_field(path, number, record, "answer")
    _, separator, final = answer.rpartition("####")
    if not separator or not final.strip():
        raise EvaluationError(f"{path}:{number}: field \"answer\" has no final answer after '####'")
    return EvalItem(
        item_id=str(record.get("id", f"line-{number}")),
        messages=[{"role": "user", "content": question + GSM8K_INSTRUCTION}],
        reference={"answer": final.strip()},
    )


def _ifeval_item(path: Path, number: int, record: dict) -> EvalItem:
    prompt = _string_field(path, number, record, "prompt")
    instruction_ids = record.get("instruction_id_list")
    kwargs = record.get("kwargs")
    if not isinstance(instruction_ids, list) or not instruction_ids or not all(isinstance(i, str) for i in instruction_ids):
        raise EvaluationError(f"{path}:{number}: field \"instruction_id_list\" must be a non-empty list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(instruction_ids) or not all(isinstance(k, dict) for k in kwargs):
        raise EvaluationError(
            f"{path}:{number}: field \"kwargs\" must be a list of {len(instruction_ids)} objects, "
            "one per instruction"
        )
    if "key" not in record:
        raise EvaluationError(f"{path}:{number}: field \"key\" is missing")
    return EvalItem(
        item_id=str(record["key"]),
        messages=[{"role": "user", "content": prompt}],
        reference={"prompt": prompt, "instruction_id_list": instruction_ids, "kwargs": kwargs},
    )


def _form_item(path: Path, number: int, record: dict) -> EvalItem:
    if "messages" in record:
        messages = record["messages"]
        valid = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
        if not valid:
            raise EvaluationError(f"{path}:{number}: field \"messages\" must be a non-empty list of {{role, content}} objects")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        messages = [{"role": "user", "content": _string_field(path, number, record, "prompt")}]
    return EvalItem(item_id=str(record.get("id", f"line-{number}")), messages=messages)


def _string_field(path: Path, number: int, record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise EvaluationError(f"{path}:{number}: field \"{name}\" must be a non-empty string")
    return value


def _check_unique_ids(path: Path, items: list[EvalItem]) -> None:
    seen = set()
    for item in items:
        if item.item_id in seen:
            raise EvaluationError(f"{path}: item id {item.item_id!r} appears more than once; ids must be unique")
        seen.add(item.item_id)


_ITEM_BUILDERS = {GSM8K: _gsm8k_item, IFEVAL: _ifeval_item, FORM: _form_item}

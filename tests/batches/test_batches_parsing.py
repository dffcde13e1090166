"""Unit tests of the upload parser, on in-memory bodies (no database)."""

from __future__ import annotations

import io
import json

import pytest

from slotq.batches import BatchUpload, BatchUploadError, clean_file_name
from slotq.settings import Settings

JSONL = "application/x-ndjson"


class CountingStream(io.BytesIO):
    """Body that records the largest read, to show the parser reads in chunks."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.largest_read = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.largest_read = max(self.largest_read, len(data))
        return data


def jsonl(*items) -> bytes:
    return ("\n".join(item if isinstance(item, str) else json.dumps(item, ensure_ascii=False) for item in items) + "\n").encode("utf-8")


def line(custom_id, **request):
    return {"custom_id": custom_id, "request": request or {"prompt": "hello"}}


def parse(body: bytes, media_type: str = JSONL, settings: Settings | None = None, skip_invalid: bool = False):
    upload = BatchUpload(io.BytesIO(body), media_type, settings or Settings(), skip_invalid=skip_invalid)
    spec = upload.read_spec()
    return upload, spec, list(upload.lines())


def rejected(body: bytes, **kwargs) -> BatchUploadError:
    with pytest.raises(BatchUploadError) as excinfo:
        parse(body, **kwargs)
    return excinfo.value


def test_plain_lines_without_header() -> None:
    upload, spec, lines = parse(jsonl(line("a"), line("b", prompt="二番目")))

    assert [(item.line_number, item.custom_id) for item in lines] == [(1, "a"), (2, "b")]
    assert lines[1].request.prompt == "二番目"
    assert spec.defaults == {}
    assert spec.response_format is None


def test_header_line_and_numbering() -> None:
    header = {"batch": {"response_format": {"type": "regex", "pattern": "はい|いいえ"}, "metadata": {"部署": "営業"}}}

    _, spec, lines = parse(jsonl(header, "", line("a"), "   ", line("b")))

    assert spec.response_format == {"type": "regex", "pattern": "はい|いいえ"}
    assert spec.metadata == {"部署": "営業"}
    assert [item.line_number for item in lines] == [3, 5]


def test_defaults_merge_under_lines() -> None:
    header = {"batch": {"defaults": {"generation": {"max_new_tokens": 20, "temperature": 0.5}, "slot": {"steps": 2}, "metadata": {"a": 1}}}}
    own = line("x", prompt="p", generation={"max_new_tokens": 7}, metadata={"b": 2})

    _, _, lines = parse(jsonl(header, own, line("y")))

    first, second = lines[0].request, lines[1].request
    assert first.generation.max_new_tokens == 7
    assert first.generation.temperature == 0.5
    assert first.slot.steps == 2
    assert first.metadata == {"a": 1, "b": 2}
    assert second.generation.max_new_tokens == 20
    assert second.metadata == {"a": 1}


def test_defaults_count_towards_limits() -> None:
    header = {"batch": {"defaults": {"generation": {"max_new_tokens": 100}}}}
    settings = Settings(max_new_tokens=50)

    error = rejected(jsonl(header, line("a")), settings=settings)

    assert error.status == 422
    assert error.details[0]["field"] == "batch.defaults.generation.max_new_tokens"


def test_every_invalid_line_reported() -> None:
    body = jsonl(
        line("ok"),
        "{not json",
        [1, 2],
        {"request": {"prompt": "no id"}},
        line("bad-lr", prompt="p", slot={"lr": 50}),
        line("ok"),
        {"custom_id": "extra", "request": {"prompt": "p"}, "method": "POST"},
        {"custom_id": "noreq"},
        line("ok2", prompt="", generation={"top_p": 0}),
    )

    error = rejected(body)

    assert error.status == 422
    assert error.code == "validation_failed"
    by_line = {}
    for detail in error.details:
        by_line.setdefault(detail["line"], []).append((detail["custom_id"], detail["field"]))
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert by_line[2] == [(None, "line")]
    assert by_line[3] == [(None, "line")]
    assert by_line[4] == [(None, "custom_id")]
    assert by_line[5] == [("bad-lr", "request.slot.lr")]
    assert by_line[6] == [("ok", "custom_id")]
    assert by_line[7] == [("extra", "method")]
    assert by_line[8] == [("noreq", "request")]
    assert by_line[9] == [("ok2", "request.prompt"), ("ok2", "request.generation.top_p")]
    assert "8 of 9 lines are invalid" in error.message


def test_duplicate_reported_even_when_first_is_invalid() -> None:
    error = rejected(jsonl(line("a", prompt=""), line("a")))

    duplicate = [detail for detail in error.details if detail["line"] == 2]
    assert duplicate[0]["field"] == "custom_id"
    assert "line 1" in duplicate[0]["message"]


def test_skip_invalid_lists_skipped() -> None:
    upload, _, lines = parse(jsonl(line("a"), "oops", line("b", prompt=" ")), skip_invalid=True)

    assert [item.custom_id for item in lines] == ["a"]
    assert [(skipped["line"], skipped["custom_id"]) for skipped in upload.skipped] == [(2, None), (3, "b")]
    assert upload.skipped[1]["errors"][0]["field"] == "request.prompt"


def test_skip_invalid_with_nothing_valid() -> None:
    error = rejected(jsonl("x", "y"), skip_invalid=True)

    assert error.code == "empty_batch"


def test_empty_upload() -> None:
    assert rejected(b"").code == "empty_batch"
    assert rejected(jsonl({"batch": {}})).code == "empty_batch"


def test_line_cap() -> None:
    settings = Settings(max_batch_lines=3)
    body = jsonl(*(line(f"id-{index}") for index in range(4)))

    error = rejected(body, settings=settings)

    assert error.code == "too_many_lines"
    assert "3" in error.message
    upload, _, lines = parse(jsonl(*(line(f"id-{index}") for index in range(3))), settings=settings)
    assert len(lines) == 3


def test_long_line_rejected_without_buffering() -> None:
    settings = Settings(max_body_bytes=1024)
    long_line = json.dumps(line("long", prompt="あ" * 2000), ensure_ascii=False)
    stream = CountingStream(jsonl(line("a"), long_line, line("b")))

    upload = BatchUpload(stream, JSONL, settings)
    upload.read_spec()
    with pytest.raises(BatchUploadError) as excinfo:
        list(upload.lines())

    assert [(detail["line"], detail["field"]) for detail in excinfo.value.details] == [(2, "line")]
    assert "1024 bytes" in excinfo.value.details[0]["message"]


def test_reads_in_chunks() -> None:
    body = jsonl(*(line(f"id-{index}", prompt="x" * 100) for index in range(2000)))
    stream = CountingStream(body)

    upload = BatchUpload(stream, JSONL, Settings())
    upload.read_spec()
    count = sum(1 for _ in upload.lines())

    assert count == 2000
    assert len(body) > 200_000
    assert stream.largest_read <= 65536


def test_utf8_bom_and_crlf() -> None:
    body = b"\xef\xbb\xbf" + json.dumps(line("a")).encode() + b"\r\n" + json.dumps(line("b")).encode() + b"\r\n"

    _, _, lines = parse(body)

    assert [item.custom_id for item in lines] == ["a", "b"]


def test_invalid_utf8_line() -> None:
    error = rejected(jsonl(line("a")) + b'{"custom_id": "\xff"}\n')

    assert error.details[0]["line"] == 2
    assert "UTF-8" in error.details[0]["message"]


@pytest.mark.parametrize(
    "header, field",
    [
        ({"batch": {"unknown": 1}}, "batch.unknown"),
        ({"batch": {"defaults": {"prompt": "x"}}}, "batch.defaults.prompt"),
        ({"batch": {"defaults": {"slot": {"lr": 9}}}}, "batch.defaults.slot.lr"),
        ({"batch": {"defaults": []}}, "batch.defaults"),
        ({"batch": {"response_format": {"type": "json_schema", "schema": {"type": 5}}}}, "batch.response_format.schema.type"),
        ({"batch": {"validation_prompts": []}}, "batch.validation_prompts"),
        ({"batch": {"validation_prompts": [{"prompt": "x"}]}}, "batch.validation_prompts.0"),
        ({"batch": {"validation_prompts": [{"messages": [{"role": "robot", "content": "x"}]}]}}, "batch.validation_prompts.0.messages.0.role"),
        ({"batch": {"metadata": "x"}}, "batch.metadata"),
        ({"batch": "x"}, "batch"),
    ],
)
def test_invalid_options_rejected(header, field) -> None:
    error = rejected(jsonl(header, line("a")))

    assert error.status == 422
    assert field in [detail["field"] for detail in error.details]


def test_validation_prompts_cap() -> None:
    prompts = [{"messages": [{"role": "user", "content": f"q{index}"}]} for index in range(3)]
    settings = Settings(max_batch_validation_prompts=2)

    error = rejected(jsonl({"batch": {"validation_prompts": prompts}}, line("a")), settings=settings)

    assert error.details[0]["field"] == "batch.validation_prompts"


def test_validation_prompts_kept_as_message_lists() -> None:
    prompts = [{"messages": [{"role": "user", "content": "検証"}]}]

    _, spec, _ = parse(jsonl({"batch": {"validation_prompts": prompts}}, line("a")))

    assert spec.validation_prompts == [[{"role": "user", "content": "検証"}]]


def test_json_form() -> None:
    body = {
        "defaults": {"slot": {"steps": 1}},
        "response_format": {"type": "regex", "pattern": ".+"},
        "requests": [line("一"), line("二", prompt="p", slot={"lr": 0.2})],
    }

    _, spec, lines = parse(json.dumps(body, ensure_ascii=False).encode(), media_type="application/json")

    assert spec.response_format["type"] == "regex"
    assert [(item.line_number, item.custom_id) for item in lines] == [(1, "一"), (2, "二")]
    assert lines[1].request.slot.steps == 1
    assert lines[1].request.slot.lr == 0.2


def test_json_form_errors_use_positions() -> None:
    body = {"requests": [line("a"), line("a"), {"custom_id": "c", "request": {"prompt": 1.5}}]}

    error = rejected(json.dumps(body).encode(), media_type="application/json")

    assert [(detail["line"], detail["field"]) for detail in error.details] == [(2, "custom_id"), (3, "request.prompt")]


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"", 400, "invalid_body"),
        (b"[1, 2]", 400, "invalid_body"),
        (b'{"requests": [', 400, "invalid_body"),
        (b'{"defaults": {}}', 422, "validation_failed"),
        (b'{"requests": {}}', 422, "validation_failed"),
        (b'{"requests": [], "defaults": {}}', 422, "validation_failed"),
        (b'{"other": 1, "requests": []}', 422, "validation_failed"),
        (b'{"requests": []}', 422, "empty_batch"),
    ],
)
def test_json_form_structure_errors(body, status, code) -> None:
    error = rejected(body, media_type="application/json")

    assert (error.status, error.code) == (status, code)


@pytest.mark.parametrize(
    "name, cleaned",
    [("注文.jsonl", "注文.jsonl"), ("C:\\Users\\山田\\注文.jsonl", "注文.jsonl"), ("/tmp/a/b.jsonl", "b.jsonl"), ("", None), (None, None), ("a\x00b", "ab")],
)
def test_clean_file_name(name, cleaned) -> None:
    assert clean_file_name(name) == cleaned

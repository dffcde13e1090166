"""The batch CLI turns the API's line errors into messages a command-line user can act on."""

from __future__ import annotations

import requests

from slotq.batch_client import _describe_error


def response_with(status: int, body: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = requests.compat.json.dumps(body).encode("utf-8")
    return response


def test_invalid_lines_mention_cli_flag() -> None:
    body = {"error": {
        "code": "invalid_batch",
        "message": "2 lines are invalid. Fix them, or resubmit with skip_invalid=true to leave them out",
        "details": [
            {"line": 3, "custom_id": None, "errors": [{"field": "line", "value": None,
                                                       "message": "line is not valid JSON: Expecting value"}]},
            {"line": 5, "custom_id": "注文-5", "errors": [{"field": "request.slot.lr", "value": -1,
                                                          "message": "must be a number between 0.0001 and 1.0"}]},
        ],
    }}

    message = _describe_error(response_with(422, body))

    assert "line 3: line is not valid JSON" in message
    assert "line=None" not in message
    assert "line 5 (注文-5): request.slot.lr=-1 must be a number between 0.0001 and 1.0" in message
    assert "--skip-invalid" in message

"""Every documented subcommand of `slotq` is registered and rejects bad arguments cleanly."""

from __future__ import annotations

import pytest

from slotq.cli import main

COMMANDS = ["generate", "db", "api", "worker", "serve", "demo", "keys", "purge", "batch", "eval"]


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help_exits_zero(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"slotq {command}" in capsys.readouterr().out


def test_purge_rejects_negative_days(capsys) -> None:
    assert main(["purge", "--older-than", "-1"]) == 2
    assert "older-than" in capsys.readouterr().err

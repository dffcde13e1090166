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


def test_keys_on_unmigrated_database_explains(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLOTQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SLOTQ_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")

    assert main(["keys", "create", "--tenant", "me"]) == 1

    error = capsys.readouterr().err
    assert "slotq db upgrade" in error
    assert "no such table" in error
    assert "Traceback" not in error

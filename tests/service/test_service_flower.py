"""Settings of `slotq flower` and the checks that stop it before Flower starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slotq.cli import main
from slotq.flower import flower_argv
from slotq.settings import Settings, SettingsError, basic_auth_credentials, load_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-secret"
REDIS_URL = "redis://127.0.0.1:6379/0"


def run_flower_command(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    """Run `slotq flower` in a child process, because Flower sets process-wide options."""
    child_env = {name: value for name, value in os.environ.items() if not name.startswith(("SLOTQ_", "FLOWER_"))}
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "slotq.cli", "flower", *arguments],
        cwd=PROJECT_ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_flower_defaults() -> None:
    settings = load_settings({})

    assert settings.flower_basic_auth is None
    assert settings.flower_host == "127.0.0.1"
    assert settings.flower_port == 5555
    assert settings.flower_max_tasks == 10_000


def test_flower_values_parsed() -> None:
    settings = load_settings({
        "SLOTQ_FLOWER_BASIC_AUTH": f"ops:{SECRET} , viewer:with:colon",
        "SLOTQ_FLOWER_HOST": "0.0.0.0",
        "SLOTQ_FLOWER_PORT": "5600",
        "SLOTQ_FLOWER_MAX_TASKS": "250",
    })

    assert basic_auth_credentials(settings.flower_basic_auth) == [f"ops:{SECRET}", "viewer:with:colon"]
    assert settings.flower_host == "0.0.0.0"
    assert settings.flower_port == 5600
    assert settings.flower_max_tasks == 250


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SLOTQ_FLOWER_PORT", "0"),
        ("SLOTQ_FLOWER_PORT", "65536"),
        ("SLOTQ_FLOWER_PORT", "http"),
        ("SLOTQ_FLOWER_MAX_TASKS", "0"),
        ("SLOTQ_FLOWER_MAX_TASKS", "1000001"),
        ("SLOTQ_FLOWER_MAX_TASKS", "many"),
    ],
)
def test_flower_numbers_out_of_range_rejected(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({variable: value})

    message = str(error.value)
    assert f"{variable}=" in message
    assert value in message
    assert "is invalid: must be an integer between" in message


@pytest.mark.parametrize(
    ("value", "entry"),
    [
        (SECRET, 1),
        (f"ops:{SECRET},viewer:", 2),
        (f":{SECRET}", 1),
        (f"ops:{SECRET},,viewer:x", 2),
        (f"ops:{SECRET},", 2),
        (f"   :{SECRET}", 1),
    ],
)
def test_flower_basic_auth_invalid_entry_named(value: str, entry: int) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({"SLOTQ_FLOWER_BASIC_AUTH": value})

    message = str(error.value)
    assert "SLOTQ_FLOWER_BASIC_AUTH is invalid" in message
    assert f"entry {entry} " in message
    assert SECRET not in message


def test_flower_basic_auth_hidden_from_repr() -> None:
    settings = Settings(flower_basic_auth=f"ops:{SECRET}")

    assert SECRET not in repr(settings)


def test_flower_constructor_checks_basic_auth() -> None:
    with pytest.raises(SettingsError, match="SLOTQ_FLOWER_BASIC_AUTH"):
        Settings(flower_basic_auth="no-colon")


def test_flower_argv_bounded_and_not_persistent() -> None:
    settings = Settings(broker_url=REDIS_URL, flower_basic_auth=f"ops:{SECRET} , viewer:pw", flower_max_tasks=123)

    argv = flower_argv(settings, "127.0.0.1", 5601)

    assert argv[0] == "flower"
    assert f"--basic_auth=ops:{SECRET},viewer:pw" in argv
    assert "--max_tasks=123" in argv
    assert "--persistent=False" in argv
    assert "--address=127.0.0.1" in argv
    assert "--port=5601" in argv


def test_flower_help_exits_zero(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["flower", "--help"])

    assert exit_info.value.code == 0
    assert "SLOTQ_FLOWER_BASIC_AUTH" in capsys.readouterr().out


def test_flower_without_basic_auth_rejected(monkeypatch, capsys) -> None:
    monkeypatch.delenv("SLOTQ_FLOWER_BASIC_AUTH", raising=False)
    monkeypatch.setenv("SLOTQ_BROKER_URL", REDIS_URL)

    assert main(["flower"]) == 2

    error = capsys.readouterr().err
    assert "SLOTQ_FLOWER_BASIC_AUTH is not set" in error
    assert "user:password" in error


def test_flower_embedded_broker_rejected(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLOTQ_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SLOTQ_BROKER_URL", raising=False)
    monkeypatch.setenv("SLOTQ_FLOWER_BASIC_AUTH", f"ops:{SECRET}")

    assert main(["flower"]) == 2

    error = capsys.readouterr().err
    assert "SLOTQ_BROKER_URL='sqla+sqlite:///" in error
    assert "cannot carry Celery events" in error


def test_flower_broker_password_not_shown(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLOTQ_BROKER_URL", f"sqla+postgresql://slotq:{SECRET}@db/broker")
    monkeypatch.setenv("SLOTQ_FLOWER_BASIC_AUTH", "ops:pw")

    assert main(["flower"]) == 2

    error = capsys.readouterr().err
    assert "SLOTQ_BROKER_URL='sqla+postgresql://slotq:**@db/broker'" in error
    assert SECRET not in error


def test_flower_invalid_port_option_rejected(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLOTQ_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("SLOTQ_FLOWER_BASIC_AUTH", "ops:pw")

    assert main(["flower", "--port", "70000"]) == 2
    assert "invalid --port=70000" in capsys.readouterr().err


def test_flower_invalid_basic_auth_exits_without_secret() -> None:
    completed = run_flower_command({"SLOTQ_BROKER_URL": REDIS_URL, "SLOTQ_FLOWER_BASIC_AUTH": f"ops{SECRET}"})

    assert completed.returncode == 2
    assert "SLOTQ_FLOWER_BASIC_AUTH is invalid" in completed.stderr
    assert SECRET not in completed.stderr + completed.stdout


def test_flower_port_in_use_reported() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        completed = run_flower_command({
            "SLOTQ_BROKER_URL": REDIS_URL,
            "SLOTQ_FLOWER_BASIC_AUTH": f"ops:{SECRET}",
            "SLOTQ_FLOWER_PORT": str(port),
        })

    assert completed.returncode == 1
    assert f"failed to start Flower on 127.0.0.1:{port}" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert SECRET not in completed.stderr + completed.stdout

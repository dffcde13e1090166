"""Unit tests of `slotq.settings`."""

from __future__ import annotations

from pathlib import Path

import pytest

import slotq.settings
from slotq.settings import KNOBS, Settings, SettingsError, load_settings, settings_table


def test_defaults_are_embedded(tmp_path: Path) -> None:
    settings = load_settings({"SLOTQ_DATA_DIR": str(tmp_path)})

    assert settings.embedded
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path}/slotq.db"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path}/broker.db"
    assert settings.model is None
    assert settings.device == "auto"
    assert settings.max_steps == 20
    assert settings.min_lr == 1e-4
    assert settings.max_lr == 1.0
    assert settings.max_new_tokens == 512
    assert settings.max_prompt_chars == 20000
    assert settings.max_stop_strings == 4
    assert settings.log_prompts is False


def test_default_data_dir_in_home() -> None:
    settings = load_settings({})

    assert settings.data_dir == Path("~/.local/share/slot-queue").expanduser()


def test_configured_urls_not_embedded() -> None:
    settings = load_settings(
        {"SLOTQ_DATABASE_URL": "postgresql+psycopg2://u@db/slotq", "SLOTQ_BROKER_URL": "redis://r:6379/0"}
    )

    assert not settings.embedded
    assert settings.database_url == "postgresql+psycopg2://u@db/slotq"
    assert settings.broker_url == "redis://r:6379/0"


def test_one_configured_url_not_embedded() -> None:
    settings = load_settings({"SLOTQ_BROKER_URL": "redis://r:6379/0"})

    assert not settings.embedded


def test_values_parsed_with_types() -> None:
    settings = load_settings(
        {
            "SLOTQ_MAX_STEPS": "7",
            "SLOTQ_MIN_LR": "1e-3",
            "SLOTQ_MAX_LR": "0.5",
            "SLOTQ_API_PORT": "9000",
            "SLOTQ_DEVICE": "cpu",
            "SLOTQ_MODEL": "/models/tiny",
            "SLOTQ_LOG_PROMPTS": "Yes",
            "SLOTQ_READY_TIMEOUT_S": "0.5",
            "SLOTQ_QUEUE": "gpu.jobs",
        }
    )

    assert settings.max_steps == 7
    assert settings.min_lr == 1e-3
    assert settings.max_lr == 0.5
    assert settings.api_port == 9000
    assert settings.device == "cpu"
    assert settings.model == "/models/tiny"
    assert settings.model_name == "/models/tiny"
    assert settings.log_prompts is True
    assert settings.ready_timeout_s == 0.5
    assert settings.queue == "gpu.jobs"


def test_empty_value_means_default() -> None:
    settings = load_settings({"SLOTQ_MAX_STEPS": "", "SLOTQ_MODEL": "  "})

    assert settings.max_steps == 20
    assert settings.model is None


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("SLOTQ_MAX_STEPS", "-1", "between 0 and 1000"),
        ("SLOTQ_MAX_STEPS", "1001", "between 0 and 1000"),
        ("SLOTQ_MAX_STEPS", "abc", "between 0 and 1000"),
        ("SLOTQ_MAX_STEPS", "2.5", "integer"),
        ("SLOTQ_API_PORT", "0", "between 1 and 65535"),
        ("SLOTQ_API_PORT", "65536", "between 1 and 65535"),
        ("SLOTQ_MAX_LR", "nan", "between 1e-08 and 10.0"),
        ("SLOTQ_MAX_LR", "inf", "between 1e-08 and 10.0"),
        ("SLOTQ_MAX_LR", "11", "between 1e-08 and 10.0"),
        ("SLOTQ_MIN_LR", "0", "between 1e-08 and 10.0"),
        ("SLOTQ_DEVICE", "tpu", "auto, cpu, cuda"),
        ("SLOTQ_LOG_PROMPTS", "maybe", "true"),
        ("SLOTQ_LOG_LEVEL", "LOUD", "DEBUG"),
        ("SLOTQ_DATABASE_URL", "not a url", "SQLAlchemy"),
        ("SLOTQ_QUEUE", "bad queue!", "letters"),
        ("SLOTQ_MAX_BODY_BYTES", "1023", "between 1024"),
    ],
)
def test_invalid_value_named(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})

    message = str(caught.value)
    assert variable in message
    assert repr(value) in message or value in message
    assert fragment in message


@pytest.mark.parametrize(("variable", "value"), [("SLOTQ_MAX_STEPS", "0"), ("SLOTQ_MAX_STEPS", "1000")])
def test_bounds_inclusive(variable: str, value: str) -> None:
    assert load_settings({variable: value}).max_steps == int(value)


def test_every_invalid_variable_listed() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"SLOTQ_MAX_STEPS": "x", "SLOTQ_API_PORT": "y"})

    assert "SLOTQ_MAX_STEPS" in str(caught.value)
    assert "SLOTQ_API_PORT" in str(caught.value)


def test_min_lr_above_max_lr_rejected() -> None:
    with pytest.raises(SettingsError, match="SLOTQ_MIN_LR=0.5 is invalid: must be at most SLOTQ_MAX_LR=0.1"):
        load_settings({"SLOTQ_MIN_LR": "0.5", "SLOTQ_MAX_LR": "0.1"})


def test_default_page_size_above_max_rejected() -> None:
    with pytest.raises(SettingsError, match="SLOTQ_DEFAULT_PAGE_SIZE"):
        load_settings({"SLOTQ_DEFAULT_PAGE_SIZE": "300"})


def test_constructor_checks_bounds() -> None:
    with pytest.raises(SettingsError, match="SLOTQ_MAX_NEW_TOKENS"):
        Settings(max_new_tokens=0)


def test_settings_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().max_steps = 3


def test_docstring_lists_every_knob() -> None:
    lines = {line.split("`")[1]: line for line in slotq.settings.__doc__.splitlines() if line.startswith("| `SLOTQ_")}
    numeric = {knob.env for knob in KNOBS if knob.kind in ("int", "float")}

    assert set(lines) == {row["env"] for row in settings_table()}
    for row in settings_table():
        if row["env"] in numeric and row["default"] == "None":
            assert "| unset |" in lines[row["env"]]
        elif row["env"] in numeric:
            assert f"| `{row['default']}` |" in lines[row["env"]]

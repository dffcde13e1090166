import math

import pytest

from slot_core import DecodingConfig, SlotConfig, SlotConfigError


def test_defaults_match_method():
    config = SlotConfig()
    assert (config.steps, config.lr, config.weight_decay, config.eps, config.betas) == (
        5, 0.1, 1e-8, 1e-5, (0.9, 0.999)
    )


@pytest.mark.parametrize("field, value", [
    ("steps", -1), ("steps", 1.5), ("steps", True), ("steps", "5"),
    ("lr", 0), ("lr", -0.1), ("lr", math.nan), ("lr", math.inf), ("lr", "0.1"), ("lr", True),
    ("weight_decay", -1e-8), ("eps", 0.0), ("betas", (0.9,)), ("betas", (0.9, 1.0)),
])
def test_slot_config_rejects(field, value):
    with pytest.raises(SlotConfigError) as caught:
        SlotConfig(**{field: value})
    assert caught.value.field.startswith(field)
    assert repr(value) in str(caught.value) or field == "betas"


def test_slot_config_accepts_zero_steps():
    assert SlotConfig(steps=0).steps == 0


@pytest.mark.parametrize("field, value", [
    ("max_new_tokens", 0), ("max_new_tokens", False), ("temperature", -0.5),
    ("temperature", math.inf), ("top_p", 0), ("top_p", 1.01), ("seed", -1), ("seed", 1.0),
    ("stop", "END"), ("stop", ("",)),
])
def test_decoding_config_rejects(field, value):
    with pytest.raises(SlotConfigError) as caught:
        DecodingConfig(**{field: value})
    assert caught.value.field == field

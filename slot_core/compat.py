"""Calls into a model's transformer body that work across transformers releases.

transformers 5 renamed the key/value cache argument and output field from `past_key_values` to
`cache` (the old name is deprecated until 5.40). The engine inspects the body once per call.
"""

import inspect

import torch


def body_of(model: torch.nn.Module) -> torch.nn.Module:
    """Return the transformer body: the model without its language-model head."""
    return model.base_model


def run_body(body, input_ids, attention_mask, position_ids, cache=None):
    """Run the body and return (last_hidden_state [batch, seq, hidden], cache)."""
    cache_argument = _cache_argument(body)
    outputs = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **{cache_argument: cache},
    )
    returned_cache = getattr(outputs, "cache", None)
    if returned_cache is None:
        returned_cache = getattr(outputs, "past_key_values", None)
    return outputs.last_hidden_state, returned_cache


def _cache_argument(body) -> str:
    parameters = inspect.signature(body.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"

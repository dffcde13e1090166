"""Exceptions raised by the SLOT engine. Every one derives from `SlotError`."""


class SlotError(Exception):
    """Base class for every error the engine raises on purpose."""


class SlotConfigError(SlotError, ValueError):
    """A `SlotConfig` or decoding field is outside its allowed range."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}={value!r}: must be {allowed}")


class PromptTooLongError(SlotError, ValueError):
    """A prompt plus the requested new tokens does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int):
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        super().__init__(
            f"prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, "
            f"but the model's context is {context_length} tokens; "
            f"shorten the prompt to at most {max(context_length - max_new_tokens, 0)} tokens "
            "or lower max_new_tokens"
        )


class ModelLoadError(SlotError):
    """A model folder is missing, unreadable or not a causal language model."""


class UnsupportedModelError(SlotError):
    """The model has no output-embedding layer that the engine can add delta in front of."""

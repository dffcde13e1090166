"""slot_core: SLOT (Sample-specific Language Model Optimization at Test-time) for causal LMs.

SLOT (Hu et al. 2025, arXiv 2505.12392) adds one vector delta to the final hidden states of a frozen
model, fits it with a few AdamW steps on the prompt's own next-token loss, and decodes the answer
with delta added at every step. This package has no web, queue or database code.
"""

from slot_core.config import SlotConfig
from slot_core.decoding import DecodingConfig
from slot_core.errors import (
    ModelLoadError,
    PromptTooLongError,
    SlotConfigError,
    SlotError,
    UnsupportedModelError,
)
from slot_core.generate import (
    GenerationRequest,
    GenerationResult,
    PreparedBatch,
    decode_batch,
    generate,
    generate_batch,
    model_context_length,
    prepare_batch,
)
from slot_core.loading import DEFAULT_MODEL_NAME, load_model, model_display_name
from slot_core.optimize import DeltaFit, fit_delta, optimize_delta
from slot_core.prompts import count_prompt_tokens
from slot_core.validation import ValidationSet

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DecodingConfig",
    "DeltaFit",
    "GenerationRequest",
    "GenerationResult",
    "PreparedBatch",
    "ValidationSet",
    "ModelLoadError",
    "PromptTooLongError",
    "SlotConfig",
    "SlotConfigError",
    "SlotError",
    "UnsupportedModelError",
    "count_prompt_tokens",
    "decode_batch",
    "fit_delta",
    "generate",
    "generate_batch",
    "load_model",
    "model_context_length",
    "model_display_name",
    "optimize_delta",
    "prepare_batch",
]

"""Fixtures for the engine tests: tiny random models of several families and the bundled model."""

import pytest
import torch
from transformers import (
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import slot_core
from slot_core.loading import default_model_folder

# The tiny models share the bundled model's vocabulary so they can use its tokenizer.
VOCAB = 49152
HIDDEN = 32


def _llama():
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    ))


def _qwen2():
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    ))


def _gpt2():
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=256,
    ))


def _gemma():
    return GemmaForCausalLM(GemmaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
    ))


def _gemma2():
    # Gemma 2 soft-caps its final logits, so its head is not affine in delta.
    return Gemma2ForCausalLM(Gemma2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        final_logit_softcapping=3.0, attn_implementation="eager",
    ))


FAMILIES = {"llama": _llama, "qwen2": _qwen2, "gpt2": _gpt2, "gemma": _gemma, "gemma2": _gemma2}


def build_tiny(family: str):
    torch.manual_seed(1234)
    model = FAMILIES[family]()
    # Random init gives near-uniform logits; a larger head spreads them so that losses and
    # greedy choices are far from ties.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
    return model.eval()


@pytest.fixture(params=sorted(FAMILIES))
def tiny_model(request):
    return request.param, build_tiny(request.param)


@pytest.fixture(scope="session")
def bundled():
    """The real bundled model and its tokenizer, converted once per cache folder."""
    return slot_core.load_model(None, device="cpu")


@pytest.fixture(scope="session")
def tokenizer_folder(bundled):
    return default_model_folder()


@pytest.fixture
def fresh_tokenizer(tokenizer_folder):
    """A tokenizer instance owned by one test, which may change it."""
    return AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)


def random_ids(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 5000, (length,), generator=generator) for length in lengths]


def pad(sequences: list[torch.Tensor], side: str, pad_id: int = 0):
    """Stack sequences into (input_ids, attention_mask), padded on `side`."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        input_ids[row, span] = sequence
        mask[row, span] = 1
    return input_ids, mask


def parameters_snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_delta_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4):
    """Check delta against an expected one, relative to the expected delta's L2 norm."""
    error = torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected)
    assert error < tolerance, f"relative delta error {error:.2e}"

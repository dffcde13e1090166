"""Helpers of the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def build_tiny_llama():
    """A 2-layer Llama with the bundled model's vocabulary, so that it can use its tokenizer."""
    torch.manual_seed(1234)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    ))
    # Random init gives near-uniform logits; a larger head keeps greedy choices away from ties.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
    return model.eval()

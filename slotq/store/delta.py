"""Byte encoding of δ: float32 values in little-endian order."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable


def encode_delta(values: Iterable[float] | bytes) -> tuple[bytes, int]:
    """Return ``(bytes, dim)`` for δ given as floats, a tensor (via ``tolist``) or raw bytes.

    Raw bytes must already be float32 little-endian.
    """
    if isinstance(values, (bytes, bytearray, memoryview)):
        raw = bytes(values)
        if len(raw) % 4:
            raise ValueError(f"delta has {len(raw)} bytes; float32 data needs a multiple of 4")
        return raw, len(raw) // 4

    if hasattr(values, "tolist"):
        values = values.tolist()
    floats = array("f", values)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tobytes(), len(floats)


def decode_delta(raw: bytes) -> list[float]:
    """Return the float32 values of δ stored by `encode_delta`."""
    floats = array("f")
    floats.frombytes(raw)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()

"""Masking of secrets (API key, session and customer tokens) for display.

A KRN keeps its non-secret type prefix so a reader still sees *what* it was:
``krn:payment:eu1:klarna-network-session-token:****``.
"""

from __future__ import annotations

__all__ = ["MASK", "mask"]

MASK = "****"


def mask(value: str | None) -> str | None:
    """Return ``value`` with its secret part replaced by ``****``."""
    if value is None:
        return None
    if value.startswith("krn:") and value.count(":") >= 2:
        return value[: value.rfind(":") + 1] + MASK
    return MASK

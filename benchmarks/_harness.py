"""Shared helpers for the benchmarks: timing and the BENCH line format.

Every figure is a ratio against a baseline measured in the same run, because
the machines are shared and noisy: absolute times are printed as details only.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

__all__ = ["best_of", "report"]


def best_of(fn: Callable[[], object], *, repeat: int = 5) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in seconds (GC paused while timing)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return min(times)


def report(name: str, ratio: float, details: str) -> str:
    """Print and return one ``BENCH <name> ratio=<x> <details>`` line."""
    line = f"BENCH {name} ratio={ratio:.3f} {details}"
    print(line, flush=True)
    return line

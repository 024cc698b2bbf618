"""Run every benchmark module (or those named) and print BENCH lines.

Each ``benchmarks/bench_*.py`` module exposes ``BENCHMARKS``: a mapping of
benchmark name to a zero-argument callable that prints its own BENCH line.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    wanted = set(argv)
    folder = Path(__file__).parent
    found: set[str] = set()
    for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        for name, run in module.BENCHMARKS.items():
            if wanted and name not in wanted:
                continue
            found.add(name)
            run()
    missing = wanted - found
    if missing:
        print(f"unknown benchmark(s): {', '.join(sorted(missing))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Set up the development environment and run the project's two jobs.

    python3 tasks.py demo    # the main job: klarna-flow demo on a SQLite file
    python3 tasks.py test    # ruff, mypy --strict, pytest, mkdocs build --strict
    python3 tasks.py bench   # the benchmarks (python -m benchmarks)

Needs only Python 3.11+: the first run creates ``.venv`` and installs the
package with its extras; later runs reinstall only when pyproject.toml changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".klarna-flow-installed"


def _run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    completed = subprocess.run([str(a) for a in args], cwd=ROOT, check=False)  # noqa: S603
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def ensure_env() -> None:
    """Create .venv and install the package (editable) with its extras."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        venv.create(VENV, with_pip=True)
    _run(BIN / "python", "-m", "pip", "install", "-q", "--upgrade", "pip")
    _run(BIN / "python", "-m", "pip", "install", "-q", "-e", ".[dev,docs,postgres,otel]")
    STAMP.write_text(wanted)


def demo(argv: list[str]) -> None:
    _run(BIN / "klarna-flow", "demo", *argv)


def test(argv: list[str]) -> None:
    _run(BIN / "ruff", "check", ".")
    _run(BIN / "ruff", "format", "--check", ".")
    _run(BIN / "mypy")
    _run(BIN / "python", "-m", "pytest", *argv)
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")  # the theme's end-of-life banner
    _run(BIN / "mkdocs", "build", "--strict", "--quiet", "--site-dir", VENV / "site")


def bench(argv: list[str]) -> None:
    _run(BIN / "python", "-m", "benchmarks", *argv)


JOBS = {"demo": demo, "test": test, "bench": bench}


def main() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (this file may run on an old Python)
        sys.exit("klarna_flow needs Python 3.11 or newer")
    if len(sys.argv) < 2 or sys.argv[1] not in JOBS:
        sys.exit(f"usage: python3 tasks.py {{{'|'.join(JOBS)}}} [args...]")
    ensure_env()
    JOBS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()

"""The docs run: every Python block of ``docs/**/*.md`` and ``README.md`` is executed.

Each page is one test; its blocks run in order in one namespace (as a reader
would type them), in a temporary working directory, with none of
klarna_flow's environment variables set. A block that only includes a file
(``--8<-- "examples/quickstart.py"``) is not run here: the file it includes
must be one that a test of its own runs (``tests/docs_and_cli/test_examples.py`` and
friends); such a block sits between ``<!-- fmt:off -->`` and
``<!-- fmt:on -->``, because ``ruff format`` formats the Python blocks of
Markdown files and would otherwise rewrite the include line as Python.
Blocks that must not run use another fence (``console``, ``bash``,
``text``...), from the list below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser

from klarna_flow import Payments
from klarna_flow.klarna import AsyncKlarnaClient, KlarnaClient

ROOT = Path(__file__).resolve().parents[2]
PAGES = [*sorted(ROOT.glob("docs/**/*.md")), ROOT / "README.md"]
TESTS = ROOT / "tests"

# Fences that are shown, never run. Anything else (``py``, ``python3``, a bare
# fence...) is refused, so no Python block can slip past the runner.
NOT_RUN = frozenset({"console", "bash", "text", "mermaid", "toml", "json", "ini", "sql"})
NOT_RUN_1 = [[language] for language in NOT_RUN]
ENV = (
    "PERSISTENCE_MODULE",
    "SQLITE_DBNAME",
    "KLARNA_API_KEY",
    "KLARNA_FLOW_DB",
    "KLARNA_FLOW_CIPHER_KEY",
    "KLARNA_FLOW_OLD_CIPHER_KEYS",
    "KLARNA_FLOW_ALLOW_PLAINTEXT",
)

_FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)$", re.MULTILINE)
_SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::[^"]*)?"$')
_run_python = PythonEvaluator()


def _included_files(source: str) -> list[str] | None:
    """The files a block only includes, or None when it is code to run."""
    lines = [line.strip() for line in source.strip().splitlines()]
    matches = [_SNIPPET.match(line) for line in lines]
    if not lines or not all(matches):
        return None
    return [m["path"] for m in matches if m]


def _is_tested(path: str) -> bool:
    """Whether a test other than this one runs the file (by module or path)."""
    module = path.removesuffix(".py").replace("/", ".")
    for test in TESTS.rglob("test_*.py"):
        if test.name != Path(__file__).name:
            text = test.read_text(encoding="utf-8")
            if module in text or path in text:
                return True
    return False


def _evaluate(example: Example) -> None:
    source = str(example.parsed)
    included = _included_files(source)
    if included is None:
        _run_python(example)
        return
    for path in included:
        assert (ROOT / path).is_file(), f"{example.path}:{example.line}: no file {path}"
        assert _is_tested(path), f"{example.path}:{example.line}: no test runs {path}"


PARSER = CodeBlockParser("python", evaluator=_evaluate)


def _close(namespace: dict[str, Any]) -> None:
    """Close what a page opened and left open (stores, HTTP clients)."""
    for value in list(namespace.values()):
        if isinstance(value, Payments | KlarnaClient):
            value.close()


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary working directory and no klarna_flow settings; restored afterwards."""
    saved = dict(os.environ)
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page: Path, clean_env: Path) -> None:
    document = Document.parse(str(page), PARSER)
    try:
        for example in document:
            example.evaluate()
    finally:
        _close(document.namespace)
        for value in document.namespace.values():
            assert not isinstance(value, AsyncKlarnaClient) or value._http.is_closed, (
                f"{page.name}: close the AsyncKlarnaClient (await client.aclose())"
            )


def _fences(text: str) -> Iterator[str]:
    """The info string of every opening fence."""
    inside = False
    for match in _FENCE.finditer(text):
        if not inside:
            yield match["info"].strip()
        inside = not inside


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_fence_is_run_or_marked_as_not_python(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    infos = list(_fences(text))
    unknown = [info for info in infos if info != "python" and info.split()[:1] not in NOT_RUN_1]
    assert not unknown, (
        f"{page.name}: fences {unknown} are neither python nor one of {sorted(NOT_RUN)}"
    )
    python = sum(1 for info in infos if info == "python")
    found = sum(1 for _ in Document.parse(str(page), PARSER))
    assert found == python, f"{page.name}: {python} python fences, {found} found by the runner"


def test_the_pages_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in PAGES}
    assert {"README.md", "docs/quickstart.md", "docs/concepts.md"} <= names

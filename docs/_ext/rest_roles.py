"""A griffe extension for this site: Sphinx-style markup in docstrings, as Markdown.

klarna_flow's docstrings use reST roles (``:class:`TokenCipher```,
``:meth:`~klarna_flow.Payments.reconcile```) and ``::`` before literal
blocks; mkdocstrings renders docstrings as Markdown, where both would show
as typed. Roles become code spans (``~`` keeps only the last name, as in
Sphinx) and ``::`` becomes ``:``; the literal block itself is already an
indented code block in Markdown.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj):`(~?)([^`]+)`")
_LONE_MARKER = re.compile(r"^[ \t]*::[ \t]*$", re.MULTILINE)
_TRAILING_MARKER = re.compile(r"(\S)::[ \t]*$", re.MULTILINE)


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def markdown(text: str) -> str:
    """``text`` with reST roles and literal-block markers made Markdown."""
    text = _ROLE.sub(_code, text)
    text = _LONE_MARKER.sub("", text)
    return _TRAILING_MARKER.sub(r"\1:", text)


class ReSTRoles(griffe.Extension):
    """Rewrites every docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)

"""The ``klarna-flow`` command (entry point ``klarna_flow.cli:main``)."""

from klarna_flow.cli.commands import app, main

__all__ = ["app", "main"]

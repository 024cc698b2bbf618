"""Tests of the Klarna adapter and its fake (a package, so mypy keeps its conftest apart)."""

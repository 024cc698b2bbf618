"""``python -m klarna_flow.cli``: the ``klarna-flow`` command."""

from klarna_flow.cli.commands import main

main()

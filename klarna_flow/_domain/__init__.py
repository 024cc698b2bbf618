"""The domain: the lifecycle table, the ``Payment`` aggregate and its events.

Pure: no I/O. Imports ``attrs``, ``transitions``, ``eventsourcing.domain``,
:mod:`klarna_flow._errors` and :mod:`klarna_flow._shared`.
"""

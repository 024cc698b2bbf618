"""The application layer: ``Payments`` and its helpers (authorization,
reconciliation, notifications).

Helpers receive the small ports they need (:mod:`klarna_flow._app.ports`),
never the whole ``Payments``; only ``Payments`` wires the store, the audit
side and the Klarna clients together.
"""

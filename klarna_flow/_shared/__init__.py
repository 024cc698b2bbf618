"""Small pure helpers every layer may use: input checks, masking, the clock.

Imports only :mod:`klarna_flow._errors` from this package.
"""

"""Public test support: a fake Klarna, a manual clock and a pytest plugin.

Everything here works without a network, so flow logic can be unit-tested in
process::

    clock = ManualClock()
    fake = FakeKlarna(clock=clock)
"""

from klarna_flow.testing._clock import ManualClock

__all__ = ["ManualClock"]

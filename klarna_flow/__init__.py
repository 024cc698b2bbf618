"""klarna_flow: Klarna's final-authorization step as an event-sourced state machine."""

from klarna_flow._clock import Clock, SystemClock
from klarna_flow._errors import *  # noqa: F403  (the tree's own __all__)
from klarna_flow._errors import __all__ as _error_names

__version__ = "0.1.0"

__all__ = sorted(["Clock", "SystemClock", "__version__", *_error_names])

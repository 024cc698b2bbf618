"""The payment lifecycle: flows, states, and the one transition table.

The table is a single module-level ``transitions`` machine (:data:`MACHINE`).
No payment owns a machine: a command asks :func:`decide` which state the
trigger leads to from the payment's current state, and the guards of that
transition are checked against plain :class:`Facts`. Events then assign the
state they stand for, so replaying old events never re-runs a guard.

This is the only module that imports ``transitions``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
from transitions import Machine

from klarna_flow._errors import (
    CommandRefused,
    InvalidInput,
    InvalidTransition,
    MissingToken,
    NotYetExpired,
    WrongFlow,
)

__all__ = [
    "AUTHORIZATION_WINDOW",
    "DEFAULT_REQUEST_LIFETIME",
    "MACHINE",
    "Facts",
    "Flow",
    "PaymentState",
    "decide",
    "diagram",
    "is_final",
    "parse_state",
    "transition_table",
]

AUTHORIZATION_WINDOW = timedelta(minutes=60)
"""Klarna invalidates a completed purchase not authorized within this window."""

DEFAULT_REQUEST_LIFETIME = timedelta(hours=3)
"""Klarna's default lifetime of a payment request (configurable 15 min .. 48 h)."""


class Flow(enum.StrEnum):
    """What the payment request asked Klarna for; fixed at creation."""

    AUTHORIZATION = "AUTHORIZATION"
    TOKENIZATION = "TOKENIZATION"
    AUTHORIZATION_AND_TOKENIZATION = "AUTHORIZATION_AND_TOKENIZATION"

    @property
    def authorizes(self) -> bool:
        """True when the flow includes a payment transaction."""
        return self is not Flow.TOKENIZATION

    @property
    def tokenizes(self) -> bool:
        """True when the flow asks for a customer token."""
        return self is not Flow.AUTHORIZATION


class PaymentState(enum.StrEnum):
    """Where a payment is in its lifecycle."""

    CREATED = "CREATED"
    COMPLETED = "COMPLETED"
    AUTHORIZING = "AUTHORIZING"
    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"


def parse_state(value: object) -> PaymentState:
    """A :class:`PaymentState` from itself or its name.

    Raises:
        InvalidInput: not a state (field ``state``).
    """
    try:
        return PaymentState(str(value))
    except ValueError:
        names = ", ".join(s.value for s in PaymentState)
        raise InvalidInput("state", f"must be one of {names}") from None


_FINAL = frozenset(
    {
        PaymentState.AUTHORIZED,
        PaymentState.DECLINED,
        PaymentState.EXPIRED,
        PaymentState.CANCELED,
    }
)


def is_final(state: PaymentState, flow: Flow) -> bool:
    """Final states never change; ``COMPLETED`` is final for pure tokenization."""
    return state in _FINAL or (state is PaymentState.COMPLETED and flow is Flow.TOKENIZATION)


@attrs.frozen
class Facts:
    """What the guards may look at: the payment as it stands, and the command.

    Built by the aggregate when a command is decided; never stored.
    """

    flow: Flow
    state: PaymentState
    now: datetime
    completed_at: datetime | None = None
    request_expires_at: datetime | None = None
    has_session_token: bool = False
    has_customer_token: bool = False
    reported_by_klarna: bool = False
    authorization_requested: bool = False
    """A final authorization was requested for the current payment request."""
    request_open: bool = False
    """A payment request exists (Klarna's id is known) and awaits the customer."""
    initial_call_pending: bool = False
    """The pending authorize call is the initial one."""


@attrs.frozen
class Guard:
    """A named condition of a transition, and the error raised when it fails."""

    name: str
    check: Callable[[Facts], bool]
    error: type[CommandRefused]
    reason: str

    def __call__(self, facts: Facts) -> bool:
        return self.check(facts)


def _tokens_fit(f: Facts) -> bool:
    return (f.has_session_token == f.flow.authorizes) and (f.has_customer_token == f.flow.tokenizes)


def _within_window(f: Facts) -> bool:
    return f.completed_at is not None and f.now < f.completed_at + AUTHORIZATION_WINDOW


def _time_ran_out(f: Facts) -> bool:
    if f.reported_by_klarna:
        return True
    if f.state is PaymentState.CREATED:
        return f.request_expires_at is not None and f.now >= f.request_expires_at
    return not _within_window(f)


def _not_final(f: Facts) -> bool:
    return not is_final(f.state, f.flow)


NO_REQUEST_OPEN = Guard(
    "no_payment_request_open",
    lambda f: not f.request_open,
    InvalidTransition,
    "a payment request is already open: the customer completes it, or it is canceled",
)
INITIAL_CALL_PENDING = Guard(
    "initial_call_pending",
    lambda f: f.initial_call_pending,
    InvalidTransition,
    "the pending authorize call is not the initial one",
)
PURE_TOKENIZATION = Guard(
    "flow_is_pure_tokenization",
    lambda f: f.flow is Flow.TOKENIZATION,
    WrongFlow,
    "only a pure tokenization payment completes on its customer token alone",
)
NEVER_REQUESTED = Guard(
    "authorization_never_requested",
    lambda f: not f.authorization_requested,
    InvalidTransition,
    "authorization was requested for it once; it can only expire now",
)
TOKENS_FIT = Guard(
    "tokens_fit_flow",
    _tokens_fit,
    MissingToken,
    "the tokens do not fit the flow: a session token for authorization flows, "
    "a customer token for tokenization flows",
)
AUTHORIZING_FLOW = Guard(
    "flow_includes_payment_transaction",
    lambda f: f.flow.authorizes,
    WrongFlow,
    "a pure tokenization payment is never authorized",
)
WITHIN_WINDOW = Guard(
    "within_authorization_window",
    _within_window,
    CommandRefused,  # the application turns this into PaymentExpired + an error
    "the 60-minute authorization window has elapsed",
)
HOLDS_SESSION_TOKEN = Guard(
    "holds_session_token",
    lambda f: f.has_session_token,
    MissingToken,
    "no session token is held",
)
TIME_RAN_OUT = Guard(
    "time_ran_out",
    _time_ran_out,
    NotYetExpired,
    "the payment's time has not run out yet",
)
NOT_FINAL = Guard(
    "not_final",
    _not_final,
    InvalidTransition,
    "a completed tokenization payment is final",
)

_T = PaymentState
_TABLE: list[dict[str, Any]] = [
    # The initial authorize call (intent first); Klarna answers with a verdict
    # or a payment request for the customer (require_step_up).
    {
        "trigger": "initiate",
        "source": _T.CREATED,
        "dest": _T.AUTHORIZING,
        "conditions": [NO_REQUEST_OPEN],
    },
    {
        "trigger": "complete",
        "source": _T.CREATED,
        "dest": _T.COMPLETED,
        "conditions": [TOKENS_FIT],
    },
    {
        "trigger": "request_authorization",
        "source": _T.COMPLETED,
        "dest": _T.AUTHORIZING,
        "conditions": [AUTHORIZING_FLOW, HOLDS_SESSION_TOKEN, WITHIN_WINDOW],
    },
    {"trigger": "approve", "source": _T.AUTHORIZING, "dest": _T.AUTHORIZED},
    {"trigger": "decline", "source": _T.AUTHORIZING, "dest": _T.DECLINED},
    # Klarna reports that it declined the payment request itself (a notification).
    {"trigger": "decline_request", "source": _T.CREATED, "dest": _T.DECLINED},
    {"trigger": "require_step_up", "source": _T.AUTHORIZING, "dest": _T.CREATED},
    # A pure tokenization approved at the initial call: the customer token is held.
    {
        "trigger": "approve_tokenization",
        "source": _T.AUTHORIZING,
        "dest": _T.COMPLETED,
        "conditions": [PURE_TOKENIZATION, INITIAL_CALL_PENDING],
    },
    # Klarna refused without acting: back to where the attempt began.
    {"trigger": "fail", "source": _T.AUTHORIZING, "dest": _T.COMPLETED},
    {
        "trigger": "fail_initiation",
        "source": _T.AUTHORIZING,
        "dest": _T.CREATED,
        "conditions": [INITIAL_CALL_PENDING],
    },
    {
        "trigger": "expire",
        "source": [_T.CREATED, _T.COMPLETED],
        "dest": _T.EXPIRED,
        "conditions": [NOT_FINAL, TIME_RAN_OUT],
    },
    {
        "trigger": "cancel",
        "source": [_T.CREATED, _T.COMPLETED],
        "dest": _T.CANCELED,
        "conditions": [NOT_FINAL, NEVER_REQUESTED],
    },
]

MACHINE = Machine(
    model=None,
    states=PaymentState,
    transitions=_TABLE,
    initial=None,
    auto_transitions=False,
    send_event=True,
)
"""The lifecycle: every state, trigger and guard, shared by all payments."""


def _guard(func: object) -> Guard:
    assert isinstance(func, Guard), func  # the table holds only Guard conditions
    return func


def decide(trigger: str, facts: Facts, *, payment_id: Any = None) -> PaymentState:
    """The state ``trigger`` leads to from ``facts.state``, guards checked.

    Raises:
        InvalidTransition: the trigger is not allowed from this state.
        CommandRefused: a subclass naming the first failing guard.
    """
    candidates = MACHINE.get_transitions(trigger=trigger, source=facts.state.name)
    if not candidates:
        raise InvalidTransition(
            f"cannot {trigger} a payment in state {facts.state.value}",
            payment_id=payment_id,
            command=trigger,
            state=facts.state.value,
        )
    transition = candidates[0]
    for condition in transition.conditions:
        guard = _guard(condition.func)
        if guard(facts) != condition.target:
            raise guard.error(
                f"cannot {trigger} payment {payment_id}: {guard.reason}",
                payment_id=payment_id,
                command=trigger,
                state=facts.state.value,
            )
    return PaymentState[str(transition.dest)]


@attrs.frozen
class Row:
    """One row of the transition table, for documentation and diagrams."""

    trigger: str
    source: PaymentState
    dest: PaymentState
    guards: tuple[str, ...]


def transition_table() -> list[Row]:
    """The table as data, read back from :data:`MACHINE`."""
    rows = []
    for trigger, event in MACHINE.events.items():
        for source, transitions in event.transitions.items():
            for t in transitions:
                rows.append(
                    Row(
                        trigger=trigger,
                        source=PaymentState[source],
                        dest=PaymentState[str(t.dest)],
                        guards=tuple(_guard(c.func).name for c in t.conditions),
                    )
                )
    return rows


def diagram(fmt: str = "mermaid") -> str:
    """The lifecycle drawn from :data:`MACHINE` as Mermaid or Graphviz dot text."""
    rows = transition_table()
    if fmt == "mermaid":
        lines = ["stateDiagram-v2", "    [*] --> CREATED"]
        for r in rows:
            label = r.trigger + (f" [{', '.join(r.guards)}]" if r.guards else "")
            lines.append(f"    {r.source.value} --> {r.dest.value}: {label}")
        lines.extend(f"    {s.value} --> [*]" for s in PaymentState if s in _FINAL)
        return "\n".join(lines) + "\n"
    if fmt == "dot":
        lines = ["digraph lifecycle {", "    rankdir=LR;"]
        lines.extend(
            f"    {s.value} [shape={'doublecircle' if s in _FINAL else 'circle'}];"
            for s in PaymentState
        )
        for r in rows:
            label = r.trigger + (f"\\n[{', '.join(r.guards)}]" if r.guards else "")
            lines.append(f'    {r.source.value} -> {r.dest.value} [label="{label}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"
    raise InvalidInput("fmt", "must be 'mermaid' or 'dot'")

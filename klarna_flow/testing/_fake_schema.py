"""The authorize call's body as FakeKlarna reads it (klarna-api.md §2.1).

Unknown fields are ignored; every documented field is checked for its type
and, where Klarna documents one, its range. Problems come back as Klarna's
``validation_errors`` entries (``{"parameter", "reason"}``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import attrs

from klarna_flow._shared.secrets import mask
from klarna_flow._shared.validation import ISO_4217
from klarna_flow.testing._fake_records import SCOPES

__all__ = [
    "EXPIRY_PARAMETER",
    "MAX_EXPIRY",
    "MIN_EXPIRY",
    "AuthorizeRequest",
    "StepUpRequest",
    "problem",
    "read_body",
    "read_expiry",
    "step_up_request",
]

EXPIRY_PARAMETER = "step_up_config.customer_interaction_config.interaction_expiry"
MIN_EXPIRY = timedelta(minutes=15)
MAX_EXPIRY = timedelta(hours=48)
_METHODS = frozenset({"HANDOVER", "SDK"})
_CAPTURES = frozenset({"NOW", "LATER"})
_DURATION = re.compile(
    r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?"
)
_SUB_MICROSECOND = re.compile(r"(?<=[.,][0-9]{6})[0-9]+")

Problems = list[dict[str, str]]


def _masked(value: str | None) -> str:
    return repr(mask(value))


def problem(parameter: str, reason: str) -> dict[str, str]:
    """One ``validation_errors`` entry."""
    return {"parameter": parameter, "reason": reason}


@attrs.frozen
class StepUpRequest:
    """``step_up_config`` as sent: the expiry is a duration or a deadline (or neither)."""

    method: str
    reference: str | None
    duration: timedelta | None
    deadline: datetime | None


@attrs.frozen
class AuthorizeRequest:
    """An authorize call that passed the gateway and schema checks."""

    partner_account_id: str
    session_token: str | None = attrs.field(repr=_masked)
    customer_token: str | None = attrs.field(repr=_masked)
    idempotency_key: str
    currency: str
    amount: int | None
    reference: str | None
    capture: str | None
    scopes: tuple[str, ...] | None
    customer_token_reference: str | None
    step_up: StepUpRequest | None
    payment_request_id: str | None
    body: dict[str, Any] = attrs.field(repr=False)
    canonical_body: bytes = attrs.field(repr=False)

    @property
    def fingerprint(self) -> tuple[str, str, str, bytes]:
        """What must match for an idempotent replay: account, tokens, body."""
        return (
            self.partner_account_id,
            self.session_token or "",
            self.customer_token or "",
            self.canonical_body,
        )

    @property
    def wants_payment(self) -> bool:
        """``request_payment_transaction`` was sent."""
        return self.amount is not None

    @property
    def wants_token(self) -> bool:
        """``request_customer_token`` was sent."""
        return self.scopes is not None

    @property
    def flow(self) -> str:
        """AUTHORIZATION, TOKENIZATION or AUTHORIZATION_AND_TOKENIZATION."""
        if self.wants_payment and self.wants_token:
            return "AUTHORIZATION_AND_TOKENIZATION"
        return "AUTHORIZATION" if self.wants_payment else "TOKENIZATION"


def read_body(data: object) -> tuple[dict[str, Any], Problems]:
    """The body's problems (empty when it is valid), with the body as an object."""
    if not isinstance(data, dict):
        return {}, [problem("body", "must be a JSON object")]
    problems: Problems = []
    currency = data.get("currency")
    if not isinstance(currency, str) or currency not in ISO_4217:
        problems.append(problem("currency", "must be an ISO 4217 currency code"))
    payment = data.get("request_payment_transaction")
    token = data.get("request_customer_token")
    if payment is None and token is None:
        reason = "is required unless request_customer_token is sent"
        problems.append(problem("request_payment_transaction", reason))
    if payment is not None:
        problems += _payment_problems(payment)
    if token is not None:
        problems += _token_problems(token)
    purchase = data.get("supplementary_purchase_data")
    if purchase is not None and not isinstance(purchase, dict):
        problems.append(problem("supplementary_purchase_data", "must be an object"))
    if data.get("step_up_config") is not None:
        problems += _step_up_problems(data["step_up_config"])
    request_id = data.get("payment_request_id")
    if request_id is not None and not isinstance(request_id, str):
        problems.append(problem("payment_request_id", "must be a string"))
    return data, problems


def _payment_problems(payment: object) -> Problems:
    name = "request_payment_transaction"
    if not isinstance(payment, dict):
        return [problem(name, "must be an object")]
    problems = []
    amount = payment.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        problems.append(problem(f"{name}.amount", "must be a positive integer"))
    reference = payment.get("payment_transaction_reference")
    if not isinstance(reference, str) or not 1 <= len(reference) <= 255:
        reason = "must be a string of 1..255 characters"
        problems.append(problem(f"{name}.payment_transaction_reference", reason))
    option = payment.get("payment_option_id")
    if option is not None and not isinstance(option, str):
        problems.append(problem(f"{name}.payment_option_id", "must be a string"))
    capture = payment.get("capture")
    if capture is not None and capture not in _CAPTURES:
        problems.append(problem(f"{name}.capture", "must be NOW or LATER"))
    return problems


def _token_problems(token: object) -> Problems:
    name = "request_customer_token"
    if not isinstance(token, dict):
        return [problem(name, "must be an object")]
    problems = []
    scopes = token.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(s in SCOPES for s in scopes):
        problems.append(problem(f"{name}.scopes", f"must be a non-empty list of {sorted(SCOPES)}"))
    reference = token.get("customer_token_reference")
    if reference is not None and not isinstance(reference, str):
        problems.append(problem(f"{name}.customer_token_reference", "must be a string"))
    return problems


def _step_up_problems(config: object) -> Problems:
    name = "step_up_config"
    if not isinstance(config, dict):
        return [problem(name, "must be an object")]
    problems = []
    reference = config.get("payment_request_reference")
    if reference is not None and not isinstance(reference, str):
        problems.append(problem(f"{name}.payment_request_reference", "must be a string"))
    interaction = config.get("customer_interaction_config")
    name += ".customer_interaction_config"
    if not isinstance(interaction, dict):
        return [*problems, problem(name, "is required (an object)")]
    if interaction.get("method") not in _METHODS:
        problems.append(problem(f"{name}.method", "must be HANDOVER or SDK"))
    return_url = interaction.get("return_url")
    if not isinstance(return_url, str) or not return_url:
        problems.append(problem(f"{name}.return_url", "is required (a URL)"))
    app_url = interaction.get("app_return_url")
    if app_url is not None and not isinstance(app_url, str):
        problems.append(problem(f"{name}.app_return_url", "must be a string"))
    if interaction.get("interaction_expiry") is not None:
        try:
            read_expiry(interaction["interaction_expiry"])
        except ValueError as exc:
            problems.append(problem(EXPIRY_PARAMETER, str(exc)))
    return problems


def read_expiry(value: object) -> tuple[timedelta | None, datetime | None]:
    """``interaction_expiry`` as (duration, deadline); one of them is set.

    Raises:
        ValueError: not ``{"duration": ...}`` or ``{"timestamp": ...}``, or a
            duration outside 15 minutes .. 48 hours (a deadline's range
            depends on the time of the call: checked then).
    """
    if not isinstance(value, dict) or len(value.keys() & {"duration", "timestamp"}) != 1:
        raise ValueError("must be {'duration': ISO 8601 duration} or {'timestamp': RFC 3339}")
    if "timestamp" in value:
        return None, _timestamp(value["timestamp"])
    duration = _duration(value["duration"])
    if not MIN_EXPIRY <= duration <= MAX_EXPIRY:
        raise ValueError("must be between 15 minutes and 48 hours")
    return duration, None


def _duration(value: object) -> timedelta:
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None or not any(match.groups()):
        raise ValueError("duration must be an ISO 8601 duration such as PT15M")
    weeks, days, hours, minutes = (int(g or 0) for g in match.groups()[:4])
    seconds = float(match[5] or 0)
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("timestamp must be an RFC 3339 time")
    try:
        instant = datetime.fromisoformat(_SUB_MICROSECOND.sub("", value.upper()))
    except ValueError:
        raise ValueError("timestamp must be an RFC 3339 time") from None
    if instant.utcoffset() is None:
        raise ValueError("timestamp must carry a UTC offset")
    return instant


def step_up_request(data: dict[str, Any]) -> StepUpRequest | None:
    """The checked ``step_up_config`` of a valid body, or None."""
    config = data.get("step_up_config")
    if config is None:
        return None
    interaction = config["customer_interaction_config"]
    expiry = interaction.get("interaction_expiry")
    duration, deadline = (None, None) if expiry is None else read_expiry(expiry)
    return StepUpRequest(
        method=interaction["method"],
        reference=config.get("payment_request_reference"),
        duration=duration,
        deadline=deadline,
    )

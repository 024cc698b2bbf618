"""Typed values of the authorize request body: step-up, purchase data, token requests.

Each value checks its fields when it is built (a bad one raises
:class:`~klarna_flow.InvalidInput` naming the field, never echoing a value)
and writes itself as Klarna's JSON with :meth:`to_wire`. Purchase data is
read back with ``from_wire`` (fields this library does not name are kept in
``extra`` and sent again as they were), so the final authorization repeats
the initial payload exactly.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Self
from urllib.parse import urlsplit

import attrs

from klarna_flow._errors import InvalidInput

__all__ = [
    "MAX_INTERACTION_EXPIRY",
    "MIN_INTERACTION_EXPIRY",
    "Address",
    "Capture",
    "Customer",
    "CustomerTokenRequest",
    "CustomerTokenScope",
    "LineItem",
    "Shipment",
    "StepUpConfig",
    "StepUpMethod",
    "SupplementaryPurchaseData",
    "iso_duration",
    "parse_iso_duration",
]

MIN_INTERACTION_EXPIRY = timedelta(minutes=15)
MAX_INTERACTION_EXPIRY = timedelta(hours=48)
_TEXT_LIMIT = 255
_URL_LIMIT = 2048
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COUNTRY = re.compile(r"[A-Z]{2}")


class StepUpMethod(enum.StrEnum):
    """How the customer reaches the payment request."""

    HANDOVER = "HANDOVER"
    """Redirect the customer to ``payment_request_url``."""
    SDK = "SDK"
    """Hand ``payment_request_id`` to Klarna's Web SDK."""


class Capture(enum.StrEnum):
    """When the authorized amount is captured."""

    NOW = "NOW"
    """At authorization: the transaction is created ``COMPLETED``."""
    LATER = "LATER"
    """Later, by the partner (Klarna's default)."""


class CustomerTokenScope(enum.StrEnum):
    """What a customer token may be charged for."""

    CUSTOMER_PRESENT = "payment:customer_present"
    CUSTOMER_NOT_PRESENT = "payment:customer_not_present"


def _enum(value: object, kind: type[enum.StrEnum], field: str) -> Any:
    try:
        return kind(value)  # type: ignore[arg-type]  # any value: a bad one raises
    except ValueError:
        names = ", ".join(member.value for member in kind)
        raise InvalidInput(field, f"must be one of {names}") from None


def _text(value: object, field: str, limit: int = _TEXT_LIMIT) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "must be a non-empty string")
    if len(value) > limit:
        raise InvalidInput(field, f"must be at most {limit} characters")
    if _CONTROL.search(value):
        raise InvalidInput(field, "must not contain control characters")
    return value


def _optional_text(value: object, field: str, limit: int = _TEXT_LIMIT) -> str | None:
    return None if value is None else _text(value, field, limit)


def _url(value: object, field: str, *, web: bool) -> str:
    text = _text(value, field, _URL_LIMIT)
    parts = urlsplit(text)
    if any(c.isspace() for c in text) or not parts.scheme:
        raise InvalidInput(field, "must be an absolute URL")
    if web and (parts.scheme not in {"https", "http"} or not parts.hostname):
        raise InvalidInput(field, "must be an http(s) URL with a host")
    return text


def _count(value: object, field: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(field, f"must be an integer >= {minimum}")
    return value


def _optional_count(value: object, field: str) -> int | None:
    return None if value is None else _count(value, field, minimum=0)


def _extra(value: object, field: str, known: Iterable[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidInput(field, "must be a mapping of field names to JSON values")
    clash = sorted(set(value) & set(known))
    if clash:
        raise InvalidInput(field, f"repeats named fields: {', '.join(clash)}")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise InvalidInput(field, "must hold JSON values only") from None
    return dict(value)


def iso_duration(value: timedelta) -> str:
    """``value`` as an ISO 8601 duration (``PT15M``, ``PT1H30M``, ``PT48H``)."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n]
    return "PT" + ("".join(parts) or "0S")


def _wire(named: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in named.items() if v is not None and v != []}, **extra}


def _items(value: object, kind: type[Any], field: str) -> tuple[Any, ...]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise InvalidInput(field, f"must be a sequence of {kind.__name__}")
    items = tuple(value)
    if not all(isinstance(item, kind) for item in items):
        raise InvalidInput(field, f"must be a sequence of {kind.__name__}")
    return items


def _of(value: object, kind: type[Any], field: str) -> Any:
    if value is not None and not isinstance(value, kind):
        raise InvalidInput(field, f"must be a {kind.__name__} or None")
    return value


def _mapping(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(field, "must be a JSON object")
    return dict(value)


@attrs.frozen
class StepUpConfig:
    """``step_up_config`` of the initial authorize call: how the customer steps up.

    Args:
        return_url: where Klarna sends the customer back (http or https).
        app_return_url: the app's URL (any scheme, e.g. ``myapp://done``).
        method: ``HANDOVER`` (redirect to the request's URL) or ``SDK``.
        interaction_expiry: how long the payment request lives: a
            ``timedelta`` (15 minutes .. 48 hours) or an aware ``datetime``
            (checked against the clock when the call is made). None: Klarna's
            default (3 hours).
        payment_request_reference: the partner's own reference of the request.

    Raises:
        InvalidInput: a bad field (nothing is sent).
    """

    return_url: str = attrs.field(kw_only=True)
    app_return_url: str | None = attrs.field(default=None, kw_only=True)
    method: StepUpMethod | str = attrs.field(default=StepUpMethod.HANDOVER, kw_only=True)
    interaction_expiry: timedelta | datetime | None = attrs.field(default=None, kw_only=True)
    payment_request_reference: str | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _url(self.return_url, "step_up.return_url", web=True)
        if self.app_return_url is not None:
            _url(self.app_return_url, "step_up.app_return_url", web=False)
        object.__setattr__(self, "method", _enum(self.method, StepUpMethod, "step_up.method"))
        _optional_text(self.payment_request_reference, "step_up.payment_request_reference")
        expiry = self.interaction_expiry
        if isinstance(expiry, datetime):
            if expiry.tzinfo is None or expiry.utcoffset() is None:
                raise InvalidInput("step_up.interaction_expiry", "must be timezone-aware")
        elif isinstance(expiry, timedelta):
            if not MIN_INTERACTION_EXPIRY <= expiry <= MAX_INTERACTION_EXPIRY:
                raise InvalidInput("step_up.interaction_expiry", "must be 15 minutes .. 48 hours")
        elif expiry is not None:
            raise InvalidInput(
                "step_up.interaction_expiry", "must be a timedelta, an aware datetime or None"
            )

    def check_expiry(self, now: datetime) -> None:
        """Check an absolute ``interaction_expiry`` lies 15 minutes .. 48 hours after ``now``.

        Raises:
            InvalidInput: it does not.
        """
        expiry = self.interaction_expiry
        if isinstance(expiry, datetime) and not (
            MIN_INTERACTION_EXPIRY <= expiry - now <= MAX_INTERACTION_EXPIRY
        ):
            raise InvalidInput(
                "step_up.interaction_expiry", "must lie 15 minutes .. 48 hours from now"
            )

    def to_wire(self) -> dict[str, Any]:
        """The ``step_up_config`` object as Klarna reads it."""
        interaction: dict[str, Any] = {
            "method": StepUpMethod(self.method).value,
            "return_url": self.return_url,
        }
        if self.app_return_url is not None:
            interaction["app_return_url"] = self.app_return_url
        expiry = self.interaction_expiry
        if isinstance(expiry, timedelta):
            interaction["interaction_expiry"] = {"duration": iso_duration(expiry)}
        elif isinstance(expiry, datetime):
            stamp = expiry.astimezone(UTC).isoformat().replace("+00:00", "Z")
            interaction["interaction_expiry"] = {"timestamp": stamp}
        config: dict[str, Any] = {"customer_interaction_config": interaction}
        if self.payment_request_reference is not None:
            config = {"payment_request_reference": self.payment_request_reference, **config}
        return config

    @classmethod
    def from_wire(cls, data: object) -> Self:
        """Read back what :meth:`to_wire` wrote.

        Raises:
            InvalidInput: not that shape.
        """
        config = _mapping(data, "step_up")
        interaction = _mapping(config.get("customer_interaction_config"), "step_up")
        expiry = interaction.get("interaction_expiry")
        return cls(
            return_url=interaction.get("return_url"),  # type: ignore[arg-type]  # checked
            app_return_url=interaction.get("app_return_url"),
            method=interaction.get("method", StepUpMethod.HANDOVER),
            interaction_expiry=None if expiry is None else _expiry(expiry),
            payment_request_reference=config.get("payment_request_reference"),
        )


def _expiry(value: object) -> timedelta | datetime:
    data = _mapping(value, "step_up.interaction_expiry")
    if "duration" in data:
        return parse_iso_duration(data["duration"])
    try:
        return datetime.fromisoformat(str(data.get("timestamp")))
    except ValueError:
        raise InvalidInput("step_up.interaction_expiry", "is not a duration or a time") from None


_DURATION = re.compile(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?")


def parse_iso_duration(value: object) -> timedelta:
    """An ISO 8601 time duration (``PT15M``, ``PT1H30M``) as a ``timedelta``.

    Raises:
        InvalidInput: not a ``PT..H..M..S`` duration.
    """
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None or value == "PT":
        raise InvalidInput("step_up.interaction_expiry", "is not an ISO 8601 duration")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _scopes(value: Iterable[CustomerTokenScope | str]) -> tuple[CustomerTokenScope, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidInput("scopes", "must be a sequence of customer token scopes")
    scopes = tuple(dict.fromkeys(_enum(s, CustomerTokenScope, "scopes") for s in value))
    if not scopes:
        raise InvalidInput("scopes", "must name at least one scope")
    return scopes


@attrs.frozen
class CustomerTokenRequest:
    """``request_customer_token``: ask Klarna for a customer token.

    Args:
        scopes: what the token may be charged for (default: customer not present).
        customer_token_reference: the partner's reference of the token.
    """

    scopes: tuple[CustomerTokenScope, ...] = attrs.field(
        default=(CustomerTokenScope.CUSTOMER_NOT_PRESENT,), kw_only=True, converter=_scopes
    )
    customer_token_reference: str | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.scopes, str) or not isinstance(self.scopes, Iterable):
            raise InvalidInput("scopes", "must be a sequence of customer token scopes")
        scopes = tuple(dict.fromkeys(_enum(s, CustomerTokenScope, "scopes") for s in self.scopes))
        if not scopes:
            raise InvalidInput("scopes", "must name at least one scope")
        object.__setattr__(self, "scopes", scopes)
        _optional_text(self.customer_token_reference, "customer_token_reference")

    def to_wire(self) -> dict[str, Any]:
        """The ``request_customer_token`` object."""
        wire: dict[str, Any] = {"scopes": [s.value for s in self.scopes]}
        if self.customer_token_reference is not None:
            wire["customer_token_reference"] = self.customer_token_reference
        return wire

    @classmethod
    def from_wire(cls, data: object) -> Self:
        """Read back what :meth:`to_wire` wrote.

        Raises:
            InvalidInput: not that shape.
        """
        fields = _mapping(data, "customer_token_request")
        return cls(
            scopes=fields.get("scopes", ()),
            customer_token_reference=fields.get("customer_token_reference"),
        )


_ADDRESS_FIELDS = ("street_address", "street_address2", "postal_code", "city", "region", "country")


@attrs.frozen
class Address:
    """A postal address (``country``: ISO 3166-1 alpha-2, e.g. ``US``)."""

    street_address: str | None = attrs.field(default=None, kw_only=True)
    street_address2: str | None = attrs.field(default=None, kw_only=True)
    postal_code: str | None = attrs.field(default=None, kw_only=True)
    city: str | None = attrs.field(default=None, kw_only=True)
    region: str | None = attrs.field(default=None, kw_only=True)
    country: str | None = attrs.field(default=None, kw_only=True)
    extra: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True)

    def __attrs_post_init__(self) -> None:
        for name in _ADDRESS_FIELDS:
            _optional_text(getattr(self, name), f"address.{name}")
        if self.country is not None and not _COUNTRY.fullmatch(self.country):
            raise InvalidInput("address.country", "must be an ISO 3166-1 alpha-2 code")
        object.__setattr__(self, "extra", _extra(self.extra, "address.extra", _ADDRESS_FIELDS))

    def to_wire(self) -> dict[str, Any]:
        return _wire({n: getattr(self, n) for n in _ADDRESS_FIELDS}, self.extra)

    @classmethod
    def from_wire(cls, data: object) -> Self:
        fields = _mapping(data, "address")
        named = {n: fields.pop(n) for n in _ADDRESS_FIELDS if n in fields}
        return cls(**named, extra=fields)


_PERSON_FIELDS = ("given_name", "family_name", "email", "phone")


@attrs.frozen
class Customer:
    """The customer (or a shipment's recipient)."""

    given_name: str | None = attrs.field(default=None, kw_only=True)
    family_name: str | None = attrs.field(default=None, kw_only=True)
    email: str | None = attrs.field(default=None, kw_only=True)
    phone: str | None = attrs.field(default=None, kw_only=True)
    address: Address | None = attrs.field(default=None, kw_only=True)
    extra: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True)

    def __attrs_post_init__(self) -> None:
        for name in _PERSON_FIELDS:
            _optional_text(getattr(self, name), f"customer.{name}")
        if self.email is not None and "@" not in self.email:
            raise InvalidInput("customer.email", "must be an email address")
        _of(self.address, Address, "customer.address")
        known = (*_PERSON_FIELDS, "address")
        object.__setattr__(self, "extra", _extra(self.extra, "customer.extra", known))

    def to_wire(self) -> dict[str, Any]:
        named = {n: getattr(self, n) for n in _PERSON_FIELDS}
        named["address"] = self.address.to_wire() if self.address else None
        return _wire(named, self.extra)

    @classmethod
    def from_wire(cls, data: object) -> Self:
        fields = _mapping(data, "customer")
        named: dict[str, Any] = {n: fields.pop(n) for n in _PERSON_FIELDS if n in fields}
        if "address" in fields:
            named["address"] = Address.from_wire(fields.pop("address"))
        return cls(**named, extra=fields)


@attrs.frozen
class Shipment:
    """One shipment: where it goes and to whom."""

    address: Address | None = attrs.field(default=None, kw_only=True)
    recipient: Customer | None = attrs.field(default=None, kw_only=True)
    extra: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _of(self.address, Address, "shipping.address")
        _of(self.recipient, Customer, "shipping.recipient")
        known = ("address", "recipient")
        object.__setattr__(self, "extra", _extra(self.extra, "shipping.extra", known))

    def to_wire(self) -> dict[str, Any]:
        named = {
            "recipient": self.recipient.to_wire() if self.recipient else None,
            "address": self.address.to_wire() if self.address else None,
        }
        return _wire(named, self.extra)

    @classmethod
    def from_wire(cls, data: object) -> Self:
        fields = _mapping(data, "shipping")
        address = fields.pop("address", None)
        recipient = fields.pop("recipient", None)
        return cls(
            address=None if address is None else Address.from_wire(address),
            recipient=None if recipient is None else Customer.from_wire(recipient),
            extra=fields,
        )


_ITEM_FIELDS = ("name", "quantity", "unit_price", "total_amount", "reference")


@attrs.frozen
class LineItem:
    """One line of the purchase (amounts in minor units)."""

    name: str = attrs.field(kw_only=True)
    quantity: int = attrs.field(kw_only=True)
    total_amount: int = attrs.field(kw_only=True)
    unit_price: int | None = attrs.field(default=None, kw_only=True)
    reference: str | None = attrs.field(default=None, kw_only=True)
    extra: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _text(self.name, "line_items.name")
        _count(self.quantity, "line_items.quantity", minimum=1)
        _count(self.total_amount, "line_items.total_amount", minimum=0)
        _optional_count(self.unit_price, "line_items.unit_price")
        _optional_text(self.reference, "line_items.reference")
        object.__setattr__(self, "extra", _extra(self.extra, "line_items.extra", _ITEM_FIELDS))

    def to_wire(self) -> dict[str, Any]:
        return _wire({n: getattr(self, n) for n in _ITEM_FIELDS}, self.extra)

    @classmethod
    def from_wire(cls, data: object) -> Self:
        fields = _mapping(data, "line_items")
        named = {n: fields.pop(n) for n in _ITEM_FIELDS if n in fields}
        if "name" not in named or "quantity" not in named or "total_amount" not in named:
            raise InvalidInput("line_items", "needs name, quantity and total_amount")
        return cls(**named, extra=fields)


def _line_items(value: Iterable[LineItem]) -> tuple[LineItem, ...]:
    return _items(value, LineItem, "purchase.line_items")


def _shipments(value: Iterable[Shipment]) -> tuple[Shipment, ...]:
    return _items(value, Shipment, "purchase.shipping")


@attrs.frozen
class SupplementaryPurchaseData:
    """``supplementary_purchase_data``: what is bought, by whom, shipped where.

    Args:
        purchase_reference: the customer-facing reference of the purchase.
        line_items: the purchase's lines.
        customer: the customer.
        shipping: one :class:`Shipment` per shipment.
        extra: other fields Klarna reads here, sent as given.

    Raises:
        InvalidInput: a bad field (nothing is sent).
    """

    purchase_reference: str | None = attrs.field(default=None, kw_only=True)
    line_items: tuple[LineItem, ...] = attrs.field(default=(), kw_only=True, converter=_line_items)
    customer: Customer | None = attrs.field(default=None, kw_only=True)
    shipping: tuple[Shipment, ...] = attrs.field(default=(), kw_only=True, converter=_shipments)
    extra: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _optional_text(self.purchase_reference, "purchase.purchase_reference")
        _of(self.customer, Customer, "purchase.customer")
        known = ("purchase_reference", "line_items", "customer", "shipping")
        object.__setattr__(self, "extra", _extra(self.extra, "purchase.extra", known))

    def to_wire(self) -> dict[str, Any]:
        """The ``supplementary_purchase_data`` object."""
        named = {
            "purchase_reference": self.purchase_reference,
            "line_items": [item.to_wire() for item in self.line_items],
            "customer": self.customer.to_wire() if self.customer else None,
            "shipping": [shipment.to_wire() for shipment in self.shipping],
        }
        return _wire(named, self.extra)

    @classmethod
    def from_wire(cls, data: object) -> Self:
        """Read ``supplementary_purchase_data`` back (unknown fields kept in ``extra``).

        Raises:
            InvalidInput: not the documented shape.
        """
        fields = _mapping(data, "purchase")
        customer = fields.pop("customer", None)
        return cls(
            purchase_reference=fields.pop("purchase_reference", None),
            line_items=tuple(LineItem.from_wire(i) for i in _list(fields.pop("line_items", []))),
            customer=None if customer is None else Customer.from_wire(customer),
            shipping=tuple(Shipment.from_wire(s) for s in _list(fields.pop("shipping", []))),
            extra=fields,
        )


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput("purchase", "line_items and shipping must be lists")
    return value

"""Input checks shared by the domain and the Klarna adapter (no I/O, no imports
of either): amounts, ISO 4217 currencies, references, KRN-shaped ids, times.

Every check raises :class:`~klarna_flow.InvalidInput` naming the argument, and
never echoes a secret value back in its message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from klarna_flow._errors import InvalidInput, NaiveDatetime

__all__ = [
    "ISO_4217",
    "TOKEN_MAX_LENGTH",
    "check_amount",
    "check_aware",
    "check_cause",
    "check_currency",
    "check_idempotency_key",
    "check_krn",
    "check_positive_duration",
    "check_reference",
    "check_secret_krn",
    "check_token",
]

# Active ISO 4217 alphabetic codes (funds and precious metals excluded).
ISO_4217 = frozenset(
    [
        "AED",
        "AFN",
        "ALL",
        "AMD",
        "ANG",
        "AOA",
        "ARS",
        "AUD",
        "AWG",
        "AZN",
        "BAM",
        "BBD",
        "BDT",
        "BGN",
        "BHD",
        "BIF",
        "BMD",
        "BND",
        "BOB",
        "BRL",
        "BSD",
        "BTN",
        "BWP",
        "BYN",
        "BZD",
        "CAD",
        "CDF",
        "CHF",
        "CLP",
        "CNY",
        "COP",
        "CRC",
        "CUP",
        "CVE",
        "CZK",
        "DJF",
        "DKK",
        "DOP",
        "DZD",
        "EGP",
        "ERN",
        "ETB",
        "EUR",
        "FJD",
        "FKP",
        "GBP",
        "GEL",
        "GHS",
        "GIP",
        "GMD",
        "GNF",
        "GTQ",
        "GYD",
        "HKD",
        "HNL",
        "HTG",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "IQD",
        "IRR",
        "ISK",
        "JMD",
        "JOD",
        "JPY",
        "KES",
        "KGS",
        "KHR",
        "KMF",
        "KPW",
        "KRW",
        "KWD",
        "KYD",
        "KZT",
        "LAK",
        "LBP",
        "LKR",
        "LRD",
        "LSL",
        "LYD",
        "MAD",
        "MDL",
        "MGA",
        "MKD",
        "MMK",
        "MNT",
        "MOP",
        "MRU",
        "MUR",
        "MVR",
        "MWK",
        "MXN",
        "MYR",
        "MZN",
        "NAD",
        "NGN",
        "NIO",
        "NOK",
        "NPR",
        "NZD",
        "OMR",
        "PAB",
        "PEN",
        "PGK",
        "PHP",
        "PKR",
        "PLN",
        "PYG",
        "QAR",
        "RON",
        "RSD",
        "RUB",
        "RWF",
        "SAR",
        "SBD",
        "SCR",
        "SDG",
        "SEK",
        "SGD",
        "SHP",
        "SLE",
        "SLL",
        "SOS",
        "SRD",
        "SSP",
        "STN",
        "SVC",
        "SYP",
        "SZL",
        "THB",
        "TJS",
        "TMT",
        "TND",
        "TOP",
        "TRY",
        "TTD",
        "TWD",
        "TZS",
        "UAH",
        "UGX",
        "USD",
        "UYU",
        "UZS",
        "VES",
        "VND",
        "VUV",
        "WST",
        "XAF",
        "XCD",
        "XCG",
        "XOF",
        "XPF",
        "YER",
        "ZAR",
        "ZMW",
        "ZWG",
        "ZWL",
    ]
)

_MAX_AMOUNT = 10**15
_KRN = re.compile(r"krn:[\x21-\x7e]{1,1020}")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")
# Session and customer tokens are opaque: Klarna says to forward them
# "without parsing, decoding, or validating". Only what a header value needs
# is checked: visible ASCII (no whitespace or control characters) and a
# generous length cap against runaway input, far above any token seen so far.
TOKEN_MAX_LENGTH = 8192
_TOKEN = re.compile(r"[\x21-\x7e]+")


def check_amount(amount: object, field: str = "amount") -> int:
    """A positive integer amount in minor units (``bool`` refused)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidInput(field, f"must be an int in minor units, not {type(amount).__name__}")
    if not 0 < amount <= _MAX_AMOUNT:
        raise InvalidInput(field, f"must be between 1 and {_MAX_AMOUNT}, got {amount}")
    return amount


def check_currency(currency: object, field: str = "currency") -> str:
    """An ISO 4217 alphabetic code in upper case."""
    if not isinstance(currency, str) or currency not in ISO_4217:
        raise InvalidInput(field, f"must be an ISO 4217 currency code, got {currency!r:.20}")
    return currency


def check_reference(reference: object, field: str = "reference") -> str:
    """1..255 printable characters (no control characters)."""
    if not isinstance(reference, str):
        raise InvalidInput(field, f"must be a str, not {type(reference).__name__}")
    if not 1 <= len(reference) <= 255:
        raise InvalidInput(field, f"must be 1..255 characters, got {len(reference)}")
    if not _PRINTABLE.fullmatch(reference):
        raise InvalidInput(field, "must not contain control characters")
    return _check_encodable(reference, field)


def _check_encodable(text: str, field: str) -> str:
    """Refuse text UTF-8 cannot encode (lone surrogates such as ``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(field, "must be valid Unicode text (no lone surrogates)") from None
    return text


def check_cause(cause: object, field: str = "cause") -> str:
    """What caused a recorded event, as the audit trail shows it.

    ``command:<name>``, ``notification:<event_id>`` or ``operator:<who>`` by
    convention: 1..255 printable characters, valid Unicode.
    """
    if not isinstance(cause, str):
        raise InvalidInput(field, f"must be a str, not {type(cause).__name__}")
    if not 1 <= len(cause) <= 255 or not cause.isprintable():
        raise InvalidInput(field, "must be 1..255 printable characters")
    return _check_encodable(cause, field)


def check_krn(value: object, field: str) -> str:
    """A KRN-shaped identifier: ``krn:`` prefix, no whitespace, sane length.

    KRNs are opaque: only the shape is checked, and the value may be echoed.
    """
    if not isinstance(value, str) or not _KRN.fullmatch(value):
        raise InvalidInput(field, f"must be a KRN ('krn:...', no whitespace), got {value!r:.60}")
    return value


def check_secret_krn(value: object, field: str) -> str:
    """Like :func:`check_krn` for a secret: the value never appears in the error."""
    if not isinstance(value, str) or not _KRN.fullmatch(value):
        raise InvalidInput(field, "must be a KRN ('krn:...', no whitespace, at most 1024 chars)")
    return value


def check_token(value: object, field: str) -> str:
    """An opaque secret token, checked loosely: 1..8192 visible ASCII characters.

    No prefix or structure is required (``krn:payment:eu1:...`` and
    ``krn:network:us1:...`` both pass, as would a shape Klarna adopts later).
    The value never appears in the error.
    """
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= TOKEN_MAX_LENGTH
        or not _TOKEN.fullmatch(value)
    ):
        raise InvalidInput(
            field,
            f"must be 1..{TOKEN_MAX_LENGTH} visible ASCII characters (no whitespace)",
        )
    return value


def check_idempotency_key(key: object, field: str = "idempotency_key") -> str:
    """1..255 printable ASCII characters."""
    if not isinstance(key, str) or not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidInput(field, "must be 1..255 printable characters")
    return key


def check_aware(value: object, field: str) -> datetime:
    """A timezone-aware datetime, returned converted to UTC."""
    if not isinstance(value, datetime):
        raise InvalidInput(field, f"must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise NaiveDatetime(field)
    return value.astimezone(UTC)


def check_positive_duration(value: object, field: str) -> timedelta:
    """A strictly positive timedelta."""
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidInput(field, "must be a positive timedelta")
    return value

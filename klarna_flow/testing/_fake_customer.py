"""The customer's side of FakeKlarna: payment requests and customer tokens from Python.

Each method stands for something that happens at Klarna without the
partner's backend asking (the customer completes, Klarna expires or
cancels); those that Klarna notifies return the signed notification.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from klarna_flow._errors import InvalidInput
from klarna_flow._shared.validation import check_amount, check_currency, check_krn
from klarna_flow.testing._fake_records import (
    DEFAULT_SCOPES,
    FLOWS,
    SCOPES,
    CompletedRequest,
    CustomerTokenRecord,
    SignedNotification,
)
from klarna_flow.testing._fake_resources import Resources
from klarna_flow.testing._fake_state import OPEN, TokensIn
from klarna_flow.testing._fake_wire import payment_request

__all__ = ["CustomerSide"]

_TOKEN_PLACES = frozenset({"payload", "state_context"})


class CustomerSide(Resources):
    """Payment requests and customer tokens, driven from Python."""

    def create_payment_request(
        self,
        *,
        amount: int,
        currency: str,
        partner_account_id: str | None = None,
        flow: str = "AUTHORIZATION",
    ) -> str:
        """Create a ``SUBMITTED`` payment request (3 hours to live); return its id (a KRN).

        Args:
            flow: ``AUTHORIZATION``, ``TOKENIZATION`` or
                ``AUTHORIZATION_AND_TOKENIZATION``: which tokens completion hands out.
        """
        account = check_krn(partner_account_id or self.partner_account_id, "partner_account_id")
        if flow not in FLOWS:
            raise InvalidInput("flow", f"must be one of {sorted(FLOWS)}")
        with self._lock:
            record = self._new_request(
                account, check_amount(amount), check_currency(currency), flow
            )
        return record.payment_request_id

    def start_payment_request(self, payment_request_id: str) -> SignedNotification:
        """The customer opens the request: ``SUBMITTED`` -> ``IN_PROGRESS``.

        Raises:
            InvalidInput: unknown id, or the request is not ``SUBMITTED``.
        """
        with self._lock:
            record, previous = self._move(
                payment_request_id, "IN_PROGRESS", frozenset({"SUBMITTED"})
            )
            return self._state_change(record, previous)

    def complete_payment_request(
        self, payment_request_id: str, *, tokens_in: TokensIn = "payload"
    ) -> CompletedRequest:
        """The customer finishes: tokens are handed out as the flow says.

        A customer token is stored with the scopes the initial call requested
        (``payment:customer_not_present`` when it named none).

        Args:
            tokens_in: where the notification carries the tokens:
                ``"payload"`` (the top level, as webhook consumers read them:
                ``klarna_network_session_token``,
                ``klarna_customer.customer_token``) or ``"state_context"``
                (the same names inside the payload's ``state_context``, as the
                payment request resource holds them).

        Raises:
            InvalidInput: unknown id, the request is no longer open (expired
                by the clock included), or an unknown ``tokens_in``.
        """
        if tokens_in not in _TOKEN_PLACES:
            raise InvalidInput("tokens_in", f"must be one of {sorted(_TOKEN_PLACES)}")
        with self._lock:
            record, previous = self._move(payment_request_id, "COMPLETED")
            record.completed_at = self.clock.now()
            record.session_token, record.customer_token = self._issue_tokens(record)
            notification = self._state_change(record, previous, tokens_in)
            return CompletedRequest(
                payment_request_id=record.payment_request_id,
                session_token=record.session_token,
                customer_token=record.customer_token,
                completed_at=record.completed_at,
                notification=notification,
            )

    def issue_session_token(
        self, *, amount: int, currency: str, partner_account_id: str | None = None
    ) -> str:
        """A completed request's session token for ``amount``/``currency``; return it.

        It stands for a token obtained before the initial call (Express
        checkout, Sign in with Klarna): it may be sent on an initial call
        (``step_up_config`` allowed) as well as on a final one.
        """
        request_id = self.create_payment_request(
            amount=amount, currency=currency, partner_account_id=partner_account_id
        )
        with self._lock:
            self._get(request_id).express = True
        token = self.complete_payment_request(request_id).session_token
        assert token is not None  # an AUTHORIZATION flow always gets one
        return token

    def expire_payment_request(self, payment_request_id: str) -> SignedNotification:
        """Expire an open (or completed, unauthorized) request; its token dies.

        A request the clock already expired (past its ``expires_at``) gets
        its ``expired`` notification here, once.
        """
        with self._lock:
            record = self._get(payment_request_id)
            if record.expired_from is not None:
                previous, record.expired_from = record.expired_from, None
                return self._state_change(record, previous)
            record, previous = self._move(payment_request_id, "EXPIRED")
            return self._state_change(record, previous)

    def cancel_payment_request(self, payment_request_id: str) -> SignedNotification:
        """Klarna cancels an open (or completed, unauthorized) request; its token dies."""
        with self._lock:
            record, previous = self._move(payment_request_id, "CANCELED")
            return self._state_change(record, previous)

    def decline_payment_request(self, payment_request_id: str) -> SignedNotification:
        """Klarna declines an open (``SUBMITTED`` or ``IN_PROGRESS``) request.

        Raises:
            InvalidInput: unknown id, or the request is not open.
        """
        with self._lock:
            record, previous = self._move(payment_request_id, "DECLINED", OPEN)
            return self._state_change(record, previous)

    def request_notification(self, payment_request_id: str) -> SignedNotification:
        """The ``payment.request.state-change.*`` notification of the current state.

        E.g. the ``canceled`` one after a cancel over HTTP.
        """
        with self._lock:
            record = self._get(payment_request_id)
            return self._state_change(record, record.previous_state)

    def state_of(self, payment_request_id: str) -> str:
        """The payment request's state (``SUBMITTED``, ``COMPLETED``...)."""
        with self._lock:
            return self._get(payment_request_id).state

    def payment_request(self, payment_request_id: str) -> dict[str, Any]:
        """The payment request in Klarna's shape, in its current state.

        A ``COMPLETED`` request holds its tokens in ``state_context``
        (``klarna_network_session_token``, ``klarna_customer.customer_token``).
        """
        with self._lock:
            return payment_request(self._get(payment_request_id), tokens=True)

    # -- customer tokens ------------------------------------------------------------------

    def issue_customer_token(
        self,
        *,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        partner_account_id: str | None = None,
        customer_token_reference: str | None = None,
    ) -> str:
        """A stored customer token with ``scopes``, as a tokenization would leave one."""
        account = check_krn(partner_account_id or self.partner_account_id, "partner_account_id")
        if isinstance(scopes, str):
            raise InvalidInput("scopes", "must be a sequence of scopes, not a string")
        chosen = tuple(dict.fromkeys(scopes))
        if not chosen or not set(chosen) <= SCOPES:
            raise InvalidInput("scopes", f"must name one or more of {sorted(SCOPES)}")
        if customer_token_reference is not None and not isinstance(customer_token_reference, str):
            raise InvalidInput("customer_token_reference", "must be a string or None")
        with self._lock:
            token = self._new_customer_token(account, chosen, customer_token_reference)
        return token.customer_token

    def revoke_customer_token(self, customer_token: str) -> None:
        """Revoke a customer token: charging it is refused from now on.

        No notification: Klarna's revocation event names are not published.

        Raises:
            InvalidInput: an unknown token (the message never holds it).
        """
        with self._lock:
            known = isinstance(customer_token, str)
            found = self._customer_tokens.get(customer_token) if known else None
            if found is None:
                raise InvalidInput("customer_token", "no such customer token")
            self._customer_tokens[customer_token] = attrs.evolve(found, revoked=True)

    @property
    def customer_tokens(self) -> list[CustomerTokenRecord]:
        """Every customer token issued, in order (a copy; tokens masked in ``repr``)."""
        with self._lock:
            return list(self._customer_tokens.values())

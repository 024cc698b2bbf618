"""The synchronous Klarna client: Payment Authorize, payment-request cancel, transaction read."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TypeVar

import httpx

from klarna_flow._errors import KlarnaError
from klarna_flow.klarna._base import ClientBase
from klarna_flow.klarna._exchange import (
    AuthorizeArgs,
    Call,
    call_span,
    failed,
    prepare,
    prepare_cancel,
    prepare_read_transaction,
    received,
)
from klarna_flow.klarna._failures import transport_error
from klarna_flow.klarna._http import StatelessClient
from klarna_flow.klarna._purchase import (
    Capture,
    CustomerTokenRequest,
    StepUpConfig,
    SupplementaryPurchaseData,
)
from klarna_flow.klarna._retry import Attempts
from klarna_flow.klarna._wire import AuthorizationResponse, PaymentRequest, PaymentTransaction

__all__ = ["KlarnaClient"]

T = TypeVar("T")


class KlarnaClient(ClientBase[httpx.Client, httpx.BaseTransport]):
    """Calls Klarna's Payment Authorize API, retrying transient failures.

    Args:
        api_key: the API key, used as given after ``Basic``; defaults to
            ``$KLARNA_API_KEY``.
        base_url: ``TEST_BASE_URL`` (default) or ``LIVE_BASE_URL``; https
            only, except http on a loopback address (for the fake).
        timeout: an :class:`httpx.Timeout` or seconds; the default waits 5 s
            to connect and 65 s to read (above Klarna's 59 s idle limit).
        retry: the :class:`RetryPolicy` (default: 3 attempts within 90 s).
        transport: an httpx transport for the client this object opens
            (e.g. ``httpx.MockTransport(FakeKlarna())``).
        http_client: an :class:`httpx.Client` the caller owns and closes.

    Raises:
        ConfigurationError: no API key, a non-https remote base URL, both
            ``transport`` and ``http_client``, or a wrong argument type.
    """

    _http_class = httpx.Client
    _own_http_class = StatelessClient

    def authorize(
        self,
        *,
        partner_account_id: str,
        idempotency_key: str,
        currency: str,
        amount: int | None = None,
        reference: str | None = None,
        session_token: str | None = None,
        customer_token: str | None = None,
        correlation_id: str | None = None,
        purchase: SupplementaryPurchaseData | None = None,
        step_up: StepUpConfig | None = None,
        capture: Capture | str | None = None,
        payment_option_id: str | None = None,
        customer_token_request: CustomerTokenRequest | None = None,
        payment_request_id: str | None = None,
    ) -> AuthorizationResponse:
        """Call Payment Authorize: the initial call, the final one, or a token charge.

        Transient failures (429, 5xx, transport) are retried with the same
        idempotency key, as the :attr:`retry` policy allows.

        Args:
            partner_account_id: the partner account KRN.
            idempotency_key: the same key for every try of this call.
            currency: ISO 4217 code.
            amount: minor units, positive; with ``reference`` it sends
                ``request_payment_transaction`` (omit both for pure tokenization).
            reference: ``payment_transaction_reference``, 1..255 characters.
            session_token: ``Klarna-Network-Session-Token``: required on the
                final call, optional on the initial one; opaque, sent as
                given (1..8192 visible ASCII characters).
            customer_token: ``Klarna-Customer-Token``, to charge a stored token.
            correlation_id: sent as ``Partner-Correlation-Id``, which Klarna
                limits to 1..255 ASCII letters and digits: such a value is
                sent as is, a UUID string as its hex (``uuid.hex``).
            purchase: ``supplementary_purchase_data``.
            step_up: ``step_up_config`` (initial calls; omit on the final call).
            capture: ``NOW`` or ``LATER`` (Klarna's default).
            payment_option_id: ``request_payment_transaction.payment_option_id``.
            customer_token_request: ``request_customer_token`` (tokenization).
            payment_request_id: the completed request, on the final call.

        Returns:
            The answer: approved (with its transaction and/or customer token),
            declined, or step-up required (with the payment request).

        Raises:
            InvalidInput: a bad argument; nothing was sent.
            KlarnaAPIError: Klarna answered with an error (a subclass by status).
            KlarnaTransportError: the connection failed on the last attempt.
            KlarnaUnexpectedResponse: an answer this library cannot read.
        """
        self._check_open()
        args = AuthorizeArgs(
            partner_account_id=partner_account_id,
            idempotency_key=idempotency_key,
            currency=currency,
            amount=amount,
            reference=reference,
            session_token=session_token,
            customer_token=customer_token,
            correlation_id=correlation_id,
            purchase=purchase,
            step_up=step_up,
            capture=capture,
            payment_option_id=payment_option_id,
            customer_token_request=customer_token_request,
            payment_request_id=payment_request_id,
        )
        return self._run(prepare(self._http, self._endpoint, self._timeout, args))

    def cancel_payment_request(
        self,
        *,
        partner_account_id: str,
        payment_request_id: str,
        correlation_id: str | None = None,
    ) -> PaymentRequest:
        """Cancel an open payment request at Klarna (``DELETE .../payment/requests/{id}``).

        Klarna cancels only a ``SUBMITTED`` or ``IN_PROGRESS`` request; the
        answer is the request, ``state`` ``CANCELED``. Transient failures are
        retried (canceling twice is harmless).

        Raises:
            InvalidInput: a bad argument; nothing was sent.
            KlarnaAPIError: Klarna refused (e.g. the request is already completed).
            KlarnaTransportError, KlarnaUnexpectedResponse: as for :meth:`authorize`.
        """
        self._check_open()
        call = prepare_cancel(
            self._http,
            self._endpoint,
            self._timeout,
            partner_account_id=partner_account_id,
            payment_request_id=payment_request_id,
            correlation_id=correlation_id,
        )
        return self._run(call)

    def read_transaction(
        self,
        *,
        partner_account_id: str,
        payment_transaction_id: str,
        correlation_id: str | None = None,
    ) -> PaymentTransaction:
        """Read a payment transaction (``GET .../payment/transactions/{id}``).

        Raises:
            InvalidInput: a bad argument; nothing was sent.
            KlarnaAPIError, KlarnaTransportError, KlarnaUnexpectedResponse:
                as for :meth:`authorize`.
        """
        self._check_open()
        call = prepare_read_transaction(
            self._http,
            self._endpoint,
            self._timeout,
            partner_account_id=partner_account_id,
            payment_transaction_id=payment_transaction_id,
            correlation_id=correlation_id,
        )
        return self._run(call)

    def _run(self, call: Call[T]) -> T:
        attempts = Attempts(self._retry)
        with call_span(call):
            while True:
                attempts.begin()
                try:
                    return self._attempt(call, attempts)
                except KlarnaError as error:
                    delay = failed(call, attempts, error)
                    if delay is None:
                        raise
                time.sleep(delay)

    def _attempt(self, call: Call[T], attempts: Attempts) -> T:
        try:
            response = self._http.send(call.request)
        except httpx.HTTPError as exc:
            raise transport_error(exc, acted_before=attempts.may_have_acted) from exc
        return received(call, attempts, response)

    def close(self) -> None:
        """Close the httpx client if this object opened it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> KlarnaClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

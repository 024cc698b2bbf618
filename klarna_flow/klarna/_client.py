"""The synchronous Klarna Payment Authorize client."""

from __future__ import annotations

import time
from types import TracebackType

import httpx

from klarna_flow._errors import KlarnaError
from klarna_flow.klarna._base import ClientBase
from klarna_flow.klarna._exchange import AuthorizeCall, failed, prepare, received
from klarna_flow.klarna._failures import transport_error
from klarna_flow.klarna._retry import Attempts
from klarna_flow.klarna._wire import AuthorizationResponse

__all__ = ["KlarnaClient"]


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

    def authorize(
        self,
        *,
        partner_account_id: str,
        session_token: str,
        currency: str,
        amount: int,
        reference: str,
        idempotency_key: str,
        correlation_id: str | None = None,
    ) -> AuthorizationResponse:
        """Authorize a completed payment request (final authorization).

        Transient failures (429, 5xx, transport) are retried with the same
        idempotency key, as the :attr:`retry` policy allows.

        Args:
            partner_account_id: the partner account KRN.
            session_token: the ``klarna_network_session_token``, opaque:
                sent as given (1..8192 visible ASCII characters).
            currency: ISO 4217 code.
            amount: minor units, positive.
            reference: ``payment_transaction_reference``, 1..255 characters.
            idempotency_key: the same key for every try of this authorization.
            correlation_id: sent as ``Partner-Correlation-Id``, which Klarna
                limits to 1..255 ASCII letters and digits: such a value is
                sent as is, a UUID string as its hex (``uuid.hex``).

        Returns:
            The answer: approved (with its transaction), declined or step-up.

        Raises:
            InvalidInput: a bad argument; nothing was sent.
            KlarnaAPIError: Klarna answered with an error (a subclass by status).
            KlarnaTransportError: the connection failed on the last attempt.
            KlarnaUnexpectedResponse: an answer this library cannot read.
        """
        self._check_open()
        call = prepare(
            self._http,
            self._endpoint,
            self._timeout,
            partner_account_id=partner_account_id,
            session_token=session_token,
            currency=currency,
            amount=amount,
            reference=reference,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
        attempts = Attempts(self._retry)
        while True:
            attempts.begin()
            try:
                return self._attempt(call, attempts)
            except KlarnaError as error:
                delay = failed(call, attempts, error)
                if delay is None:
                    raise
            time.sleep(delay)

    def _attempt(self, call: AuthorizeCall, attempts: Attempts) -> AuthorizationResponse:
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

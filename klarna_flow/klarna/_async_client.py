"""The asynchronous Klarna client: the twin of :class:`KlarnaClient`."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TypeVar

import httpx

from klarna_flow._errors import KlarnaError
from klarna_flow.klarna._aiohttp_transport import default_async_transport
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
from klarna_flow.klarna._http import StatelessAsyncClient
from klarna_flow.klarna._purchase import (
    Capture,
    CustomerTokenRequest,
    StepUpConfig,
    SupplementaryPurchaseData,
)
from klarna_flow.klarna._retry import Attempts
from klarna_flow.klarna._wire import AuthorizationResponse, PaymentRequest, PaymentTransaction

__all__ = ["AsyncKlarnaClient"]

T = TypeVar("T")


class AsyncKlarnaClient(ClientBase[httpx.AsyncClient, httpx.AsyncBaseTransport]):
    """The asyncio twin of :class:`KlarnaClient`: same arguments, same rules.

    ``transport`` is an :class:`httpx.AsyncBaseTransport` and ``http_client``
    an :class:`httpx.AsyncClient`; close with ``await client.aclose()`` or
    ``async with``. Given neither, requests go through aiohttp behind
    httpx's API (same requests, answers and errors), several times faster
    than httpcore's pool with many calls in flight; with a proxy set in the
    environment the client keeps httpx's own transport, which honours it.
    """

    _http_class = httpx.AsyncClient
    _own_http_class = StatelessAsyncClient

    def _open(
        self,
        timeout: httpx.Timeout | float | None,
        transport: httpx.AsyncBaseTransport | None,
        http_client: httpx.AsyncClient | None,
    ) -> tuple[httpx.AsyncClient, bool, httpx.Timeout | None]:
        default = None
        if transport is None and http_client is None:
            transport = default = default_async_transport(self._endpoint.base_url, self._limits)
        http, owned, per_request = super()._open(timeout, transport, http_client)
        # Requests go to the default transport directly: the httpx client's
        # send would only add cookie bookkeeping (a third of its cost; Klarna
        # authenticates by header), auth and hooks this client never sets.
        self._send = http.send if default is None else default.handle_async_request
        return http, owned, per_request

    async def authorize(
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
        """Call Payment Authorize; see :meth:`KlarnaClient.authorize`."""
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
        return await self._run(prepare(self._http, self._endpoint, self._timeout, args))

    async def cancel_payment_request(
        self,
        *,
        partner_account_id: str,
        payment_request_id: str,
        correlation_id: str | None = None,
    ) -> PaymentRequest:
        """Cancel an open payment request; see :meth:`KlarnaClient.cancel_payment_request`."""
        self._check_open()
        call = prepare_cancel(
            self._http,
            self._endpoint,
            self._timeout,
            partner_account_id=partner_account_id,
            payment_request_id=payment_request_id,
            correlation_id=correlation_id,
        )
        return await self._run(call)

    async def read_transaction(
        self,
        *,
        partner_account_id: str,
        payment_transaction_id: str,
        correlation_id: str | None = None,
    ) -> PaymentTransaction:
        """Read a payment transaction; see :meth:`KlarnaClient.read_transaction`."""
        self._check_open()
        call = prepare_read_transaction(
            self._http,
            self._endpoint,
            self._timeout,
            partner_account_id=partner_account_id,
            payment_transaction_id=payment_transaction_id,
            correlation_id=correlation_id,
        )
        return await self._run(call)

    async def _run(self, call: Call[T]) -> T:
        attempts = Attempts(self._retry)
        with call_span(call):
            while True:
                attempts.begin()
                try:
                    return await self._attempt(call, attempts)
                except KlarnaError as error:
                    delay = failed(call, attempts, error)
                    if delay is None:
                        raise
                await asyncio.sleep(delay)

    async def _attempt(self, call: Call[T], attempts: Attempts) -> T:
        try:
            response = await self._send(call.request)
        except httpx.HTTPError as exc:
            raise transport_error(exc, acted_before=attempts.may_have_acted) from exc
        return received(call, attempts, response)

    async def aclose(self) -> None:
        """Close the httpx client if this object opened it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncKlarnaClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

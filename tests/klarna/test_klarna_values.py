"""The typed values of the authorize body: every bad field is a typed error naming it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from klarna_flow import (
    Address,
    Customer,
    InvalidInput,
    LineItem,
    Shipment,
    StepUpConfig,
    StepUpMethod,
    SupplementaryPurchaseData,
)
from klarna_flow.klarna import CustomerTokenRequest, CustomerTokenScope

URL = "https://shop.example/back"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"return_url": ""}, "step_up.return_url"),
        ({"return_url": "shop.example/back"}, "step_up.return_url"),
        ({"return_url": "ftp://shop.example/back"}, "step_up.return_url"),
        ({"return_url": "https://"}, "step_up.return_url"),
        ({"return_url": "https://shop.example/a b"}, "step_up.return_url"),
        ({"return_url": "https://shop.example/" + "x" * 2048}, "step_up.return_url"),
        ({"return_url": 42}, "step_up.return_url"),
        ({"app_return_url": "no-scheme"}, "step_up.app_return_url"),
        ({"method": "POPUP"}, "step_up.method"),
        ({"interaction_expiry": timedelta(minutes=14, seconds=59)}, "step_up.interaction_expiry"),
        ({"interaction_expiry": timedelta(hours=48, seconds=1)}, "step_up.interaction_expiry"),
        ({"interaction_expiry": datetime(2030, 1, 1)}, "step_up.interaction_expiry"),
        ({"interaction_expiry": 900}, "step_up.interaction_expiry"),
        ({"payment_request_reference": ""}, "step_up.payment_request_reference"),
        ({"payment_request_reference": "x" * 256}, "step_up.payment_request_reference"),
        ({"payment_request_reference": "tab\there"}, "step_up.payment_request_reference"),
    ],
    ids=repr,
)
def test_a_bad_step_up_config_is_refused(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"return_url": URL} | kwargs
    with pytest.raises(InvalidInput) as refused:
        StepUpConfig(**args)
    assert refused.value.field == field


def test_a_step_up_config_writes_klarna_s_shape_and_reads_it_back() -> None:
    config = StepUpConfig(
        return_url=URL,
        app_return_url="shop://back",
        method="SDK",
        interaction_expiry=timedelta(hours=2, minutes=5, seconds=3),
        payment_request_reference="s-1",
    )

    wire = config.to_wire()

    assert wire["customer_interaction_config"]["interaction_expiry"] == {"duration": "PT2H5M3S"}
    assert config.method is StepUpMethod.SDK
    assert StepUpConfig.from_wire(wire) == config


def test_an_absolute_expiry_is_checked_against_the_clock() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    config = StepUpConfig(return_url=URL, interaction_expiry=now + timedelta(minutes=10))
    with pytest.raises(InvalidInput, match="15 minutes"):
        config.check_expiry(now)
    StepUpConfig(return_url=URL, interaction_expiry=now + timedelta(hours=1)).check_expiry(now)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: LineItem(name="", quantity=1, total_amount=1), "line_items.name"),
        (lambda: LineItem(name="a", quantity=0, total_amount=1), "line_items.quantity"),
        (lambda: LineItem(name="a", quantity=True, total_amount=1), "line_items.quantity"),
        (lambda: LineItem(name="a", quantity=1, total_amount=-1), "line_items.total_amount"),
        (
            lambda: LineItem(name="a", quantity=1, total_amount=1, unit_price=-5),
            "line_items.unit_price",
        ),
        (
            lambda: LineItem(name="a", quantity=1, total_amount=1, extra={"name": "x"}),
            "line_items.extra",
        ),
        (
            lambda: LineItem(name="a", quantity=1, total_amount=1, extra={"f": object()}),
            "line_items.extra",
        ),
        (lambda: Customer(email="not-an-address"), "customer.email"),
        (lambda: Customer(given_name="x" * 256), "customer.given_name"),
        (lambda: Customer(address="1 Main St"), "customer.address"),  # type: ignore[arg-type]
        (lambda: Address(country="usa"), "address.country"),
        (lambda: Address(city="\x00"), "address.city"),
        (lambda: Shipment(address="Boston"), "shipping.address"),  # type: ignore[arg-type]
        (lambda: SupplementaryPurchaseData(line_items="Lamp"), "purchase.line_items"),  # type: ignore[arg-type]
        (lambda: SupplementaryPurchaseData(line_items=[{"name": "Lamp"}]), "purchase.line_items"),  # type: ignore[list-item]
        (lambda: SupplementaryPurchaseData(shipping=[Address()]), "purchase.shipping"),  # type: ignore[list-item]
        (lambda: SupplementaryPurchaseData(customer={"email": "a@b"}), "purchase.customer"),  # type: ignore[arg-type]
        (lambda: SupplementaryPurchaseData(purchase_reference=""), "purchase.purchase_reference"),
        (lambda: CustomerTokenRequest(scopes=()), "scopes"),
        (lambda: CustomerTokenRequest(scopes=("payment:anything",)), "scopes"),
        (lambda: CustomerTokenRequest(scopes="payment:customer_present"), "scopes"),
    ],
)
def test_bad_purchase_data_is_refused(build: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        build()
    assert refused.value.field == field


def test_purchase_data_round_trips_with_its_unknown_fields() -> None:
    purchase = SupplementaryPurchaseData(
        purchase_reference="p-1",
        line_items=[
            LineItem(name="Lamp", quantity=2, unit_price=5, total_amount=10, extra={"sku": "L-1"})
        ],
        customer=Customer(email="a@example.com", address=Address(country="SE", extra={"co": "x"})),
        shipping=[Shipment(recipient=Customer(given_name="Bo"), address=Address(city="Umeå"))],
        extra={"subscription": {"name": "monthly"}},
    )

    wire = purchase.to_wire()

    assert wire["line_items"] == [
        {"name": "Lamp", "quantity": 2, "unit_price": 5, "total_amount": 10, "sku": "L-1"}
    ]
    assert wire["shipping"] == [{"recipient": {"given_name": "Bo"}, "address": {"city": "Umeå"}}]
    assert wire["subscription"] == {"name": "monthly"}
    assert SupplementaryPurchaseData.from_wire(wire) == purchase


def test_scopes_are_deduplicated_and_typed() -> None:
    request = CustomerTokenRequest(
        scopes=["payment:customer_present", CustomerTokenScope.CUSTOMER_PRESENT]
    )
    assert request.scopes == (CustomerTokenScope.CUSTOMER_PRESENT,)

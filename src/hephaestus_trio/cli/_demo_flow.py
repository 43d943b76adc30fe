"""The order workflow of the demo and of ``examples/order_flow.py`` (one definition).

It lives in the package, not in ``examples/``, so that ``hephaestus-trio demo``
works wherever the package is installed; it only uses the public API, so it
reads as an example too::

    validate_order --valid--> [charge_payment, reserve_stock] --> ship_order
        --> wait (2 s, a durable timer) --> done
    validate_order --invalid--> reject_order --> done

The initial context of an order is ``{"items": int, "amount": float}`` plus
optional flags: ``"flaky_gateway": True`` makes the first charge attempt in
each process raise (the step is retried), an ``amount`` over ``CARD_LIMIT`` is
declined with ``Fail`` (the run fails), ``items == 0`` takes the reject branch.
``"pace"`` scales every step's simulated work (seconds, default 0.15).
"""

from __future__ import annotations

import secrets
from typing import Any

import trio

from hephaestus_trio import (
    Complete,
    Context,
    Done,
    Fail,
    Instance,
    RetryPolicy,
    Step,
    Unique,
    Wait,
    Workflow,
)

__all__ = [
    "CARD_LIMIT",
    "ChargePayment",
    "OrderFlow",
    "RejectOrder",
    "ReserveStock",
    "ShipOrder",
    "ValidateOrder",
    "expected_outcome",
    "new_batch_tag",
    "sample_orders",
]

CARD_LIMIT = 1000.0
"""Charges above this amount are declined (a business failure, not retried)."""

_DEFAULT_PACE = 0.15

# Process-local on purpose: a restarted engine sees a "fresh" gateway, so the
# flaky order fails once per process and is retried each time.
_gateway_calls: set[str] = set()


async def _work(context: Context, factor: float = 1.0) -> None:
    """Simulated I/O of a step: a checkpointed sleep on Trio's clock."""
    pace = float(context.initial.get("pace", _DEFAULT_PACE))
    await trio.sleep(pace * factor)


class ValidateOrder(Step):
    """Checks the order; an order without items takes the ``invalid`` branch."""

    events = ("valid", "invalid")

    async def execute(
        self, instance: Instance, config: Any, context: Context
    ) -> str | Complete | Fail:
        await _work(context, 0.5)
        if int(context.initial.get("items", 0)) <= 0:
            return Complete("invalid", updates={"reason": "no items"})
        return Complete("valid", updates={"items": context.initial["items"]})


class ChargePayment(Step):
    """Charges the card: retried on gateway errors, declined above ``CARD_LIMIT``."""

    events = ("charged",)
    retry = RetryPolicy(max_attempts=3, backoff="constant", base=0.2)

    async def execute(
        self, instance: Instance, config: Any, context: Context
    ) -> str | Complete | Fail:
        await _work(context, 1.5)
        amount = float(context.initial.get("amount", 0.0))
        if context.initial.get("flaky_gateway") and instance.run_id not in _gateway_calls:
            _gateway_calls.add(instance.run_id)
            raise ConnectionError("payment gateway timed out")
        if amount > CARD_LIMIT:
            return Fail(f"card declined: {amount:.2f} is over the {CARD_LIMIT:.0f} limit")
        return Complete("charged", updates={"charged": amount})


class ReserveStock(Step):
    """Reserves the items in the warehouse (runs concurrently with the charge)."""

    events = ("reserved",)

    async def execute(
        self, instance: Instance, config: Any, context: Context
    ) -> str | Complete | Fail:
        await _work(context, 1.0)
        return Complete("reserved", updates={"reserved": context.initial["items"]})


class ShipOrder(Step):
    """Hands the parcel to the carrier once it is both paid and reserved (a join)."""

    events = ("shipped",)

    async def execute(
        self, instance: Instance, config: Any, context: Context
    ) -> str | Complete | Fail:
        await _work(context, 1.0)
        return Complete("shipped", updates={"tracking": f"trk-{instance.id.split('::')[-1]}"})


class RejectOrder(Step):
    """Records why an invalid order was refused."""

    events = ("rejected",)

    async def execute(
        self, instance: Instance, config: Any, context: Context
    ) -> str | Complete | Fail:
        await _work(context, 0.5)
        return "rejected"


class OrderFlow(
    Workflow,
    unique=Unique(key="orderid", scope="workflow"),
    name="hephaestus_trio.demo.OrderFlow",
    tags=("orders", "demo"),
    metadata={"team": "payments"},
):
    """An order: validate, charge and reserve in parallel, ship, cool-off wait, done."""

    start_at = ValidateOrder
    transitions = {
        (ValidateOrder, "valid"): [ChargePayment, ReserveStock],
        (ValidateOrder, "invalid"): RejectOrder,
        (ChargePayment, "charged"): ShipOrder,
        (ReserveStock, "reserved"): ShipOrder,
        (ShipOrder, "shipped"): (Wait, {"duration": 2, "unit": "second"}),
        (Wait, "timeout"): Done,
        (RejectOrder, "rejected"): Done,
    }


def new_batch_tag() -> str:
    """A short random tag so each batch of orders gets fresh business ids."""
    return secrets.token_hex(2)


def sample_orders(count: int, tag: str) -> list[tuple[str, dict[str, Any]]]:
    """``count`` orders ``(business value, initial context)`` cycling through every outcome.

    The cycle is: normal, normal, invalid (rejected), flaky gateway (retried),
    normal, declined card (failed).
    """
    kinds: list[dict[str, Any]] = [
        {"items": 2, "amount": 40.0},
        {"items": 1, "amount": 15.5},
        {"items": 0, "amount": 0.0},
        {"items": 3, "amount": 120.0, "flaky_gateway": True},
        {"items": 5, "amount": 89.9},
        {"items": 1, "amount": 4200.0},
    ]
    return [(f"{tag}n{i + 1}", dict(kinds[i % len(kinds)])) for i in range(count)]


def expected_outcome(context: dict[str, Any]) -> str:
    """What ``sample_orders`` expects an order to end as: completed, rejected or failed."""
    if int(context.get("items", 0)) <= 0:
        return "rejected"
    if float(context.get("amount", 0.0)) > CARD_LIMIT:
        return "failed"
    return "completed"

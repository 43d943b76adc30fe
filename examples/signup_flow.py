"""A signup workflow whose steps call an outside billing service, safely under crashes.

    python examples/signup_flow.py [PATH]        # default: ./hephaestus-signup.db

::

    validate_signup --valid--> create_invoice --> charge_card --> wait_for_event
        --email_confirmed--> activate_account --> done
        --timeout (1 day)--> done
    validate_signup --invalid--> done

``create_invoice`` and ``charge_card`` talk to ``BILLING``, a stand-in for a
real billing API. A step may run again after a crash (its result was not
saved yet), so both pass an *idempotency key* derived from the run: asked
twice, the service answers the same invoice and the same charge. The testing
guide (``docs/testing.md``) checks this workflow with ``check_crash_safety``,
and shows what the check reports for a step that forgets the key.

``activate_account`` is a plain ``def execute``: it runs in a worker thread.
"""

from __future__ import annotations

import secrets
import sys
from typing import Any

import trio

from hephaestus_trio import (
    Complete,
    Context,
    Done,
    Fail,
    Instance,
    RetryPolicy,
    SQLiteStorage,
    Step,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
)

__all__ = [
    "BILLING",
    "ActivateAccount",
    "Billing",
    "ChargeCard",
    "CreateInvoice",
    "SignupFlow",
    "ValidateSignup",
    "main",
    "run_signup",
]

CONFIRMATION_TIMEOUT = 24 * 3600.0
"""Seconds a signup waits for its email confirmation before it lapses."""


class Billing:
    """A fake billing service: numbered invoices and charges, keyed for idempotency."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (tests call this before each run)."""
        self.invoices: dict[str, int] = {}
        self.charges: dict[str, str] = {}
        self.issued = 0

    def create_invoice(self, amount: float, *, key: str | None = None) -> int:
        """A new invoice number; the same one again for a ``key`` already seen."""
        if key is not None and key in self.invoices:
            return self.invoices[key]
        self.issued += 1
        if key is not None:
            self.invoices[key] = self.issued
        return self.issued

    def charge(self, invoice: int, amount: float, *, key: str) -> str:
        """Charge ``amount`` for ``invoice``; the same charge id again for a known ``key``."""
        return self.charges.setdefault(key, f"ch_{invoice:04d}_{len(self.charges) + 1}")


BILLING = Billing()


class ValidateSignup(Step):
    """A signup needs an email and a plan."""

    events = ("valid", "invalid")

    async def execute(self, instance: Instance, config: Any, context: Context) -> Complete:
        email = str(context.initial.get("email", ""))
        if "@" not in email:
            return Complete("invalid", {"reason": f"bad email {email!r}"})
        return Complete("valid", {"email": email, "plan": context.initial.get("plan", "basic")})


PRICES = {"basic": 5.0, "pro": 20.0}


class CreateInvoice(Step):
    """Asks billing for an invoice, keyed by the run: a re-run gets the same number."""

    events = ("invoiced",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> Complete:
        plan = context.steps["validate_signup"]["plan"]
        amount = PRICES.get(plan, PRICES["basic"])
        await trio.sleep(0.05)  # the network round trip
        number = BILLING.create_invoice(amount, key=f"invoice:{instance.run_id}")
        return Complete("invoiced", {"invoice": number, "amount": amount})


class ChargeCard(Step):
    """Charges the invoice; retried on gateway errors, keyed so a retry never charges twice."""

    events = ("charged",)
    retry = RetryPolicy(max_attempts=3, backoff="constant", base=1.0)

    async def execute(self, instance: Instance, config: Any, context: Context) -> Complete | Fail:
        invoice = context.steps["create_invoice"]
        if context.initial.get("card") == "declined":
            return Fail("card declined")
        await trio.sleep(0.1)
        charge = BILLING.charge(
            invoice["invoice"], invoice["amount"], key=f"charge:{instance.run_id}"
        )
        return Complete("charged", {"charge": charge})


class ActivateAccount(Step):
    """Turns the account on (plain ``def``: runs in a worker thread, with a timeout)."""

    events = ("activated",)
    timeout = 5.0

    def execute(self, instance: Instance, config: Any, context: Context) -> Complete:
        email = context.steps["validate_signup"]["email"]
        return Complete("activated", {"account": email.split("@")[0]})


class SignupFlow(Workflow, unique=Unique(key="signup")):
    """Validate, invoice, charge, wait for the email confirmation (a day at most), activate."""

    start_at = ValidateSignup
    transitions = {
        (ValidateSignup, "valid"): CreateInvoice,
        (ValidateSignup, "invalid"): Done,
        (CreateInvoice, "invoiced"): ChargeCard,
        (ChargeCard, "charged"): (
            WaitForEvent,
            {"event_name": "email_confirmed", "timeout": CONFIRMATION_TIMEOUT},
        ),
        (WaitForEvent, "received"): ActivateAccount,
        (WaitForEvent, "timeout"): Done,
        (ActivateAccount, "activated"): Done,
    }


async def run_signup(path: str, email: str = "ada@example.com") -> Instance:
    """Start one signup, confirm its email, and return the finished run."""
    async with open_engine(storage=SQLiteStorage(path), workflows=[SignupFlow]) as engine:
        # A fresh id each time, so running the script again on the same file works.
        iid = f"signup::{secrets.token_hex(4)}"
        await engine.start_instance(SignupFlow, {"email": email}, id=iid)
        # The user clicks the link. A resume may come before its step parks:
        # it is kept and applied once ``wait_for_event`` parks.
        await engine.resume(iid, "email_confirmed")
        return await engine.wait(iid)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    final = trio.run(run_signup, args[0] if args else "hephaestus-signup.db")
    print(f"{final.id}: {final.status.value}")
    for entry in final.execution_history:
        print(f"  {entry.step} -> {entry.event} {entry.context_updates or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

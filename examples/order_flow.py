"""Run a few orders through the order workflow on SQLite.

    python examples/order_flow.py [PATH]        # default: ./hephaestus-demo.db

The workflow itself (``OrderFlow`` and its steps) is defined once, with the
public API only, in ``hephaestus_trio/cli/_demo_flow.py``: the
``hephaestus-trio demo`` command runs the same definition, and it has to
ship inside the package to work where only the package is installed.
Read that file for how the steps and the transitions are written::

    validate_order --valid--> [charge_payment, reserve_stock] --> ship_order
        --> wait (2 s, a durable timer) --> done
    validate_order --invalid--> reject_order --> done

Each run uses fresh order ids, so running it again on the same database works.
"""

from __future__ import annotations

import sys

import trio

from hephaestus_trio import Event, SQLiteStorage, open_engine
from hephaestus_trio.cli._demo_flow import OrderFlow, new_batch_tag, sample_orders

__all__ = ["OrderFlow", "main", "run_orders"]


def print_transition(event: Event) -> None:
    """An event handler: one line per completed step."""
    meta = event.metadata
    if event.name == "step.stop" and not meta.get("failed"):
        print(f"  {meta['instance_id']}: {meta['step']} -> {meta['event']}")
    elif event.name == "step.async":
        print(f"  {meta['instance_id']}: {meta['step']} parked")


async def run_orders(path: str, count: int = 6) -> dict[str, str]:
    """Start ``count`` orders, wait for each to end; returns ``{id: status}``."""
    async with open_engine(
        storage=SQLiteStorage(path),
        workflows=[OrderFlow],
        handlers=[print_transition],
    ) as engine:
        ids = []
        for value, context in sample_orders(count, new_batch_tag()):
            # The facade finds the engine opened above; it returns "orderid::<value>".
            ids.append(await OrderFlow.start(value, context))
        results = {}
        for iid in ids:
            final = await engine.wait(iid)
            results[iid] = final.status.value + (f" ({final.error})" if final.error else "")
        return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "hephaestus-demo.db"
    results = trio.run(run_orders, path)
    for iid, status in results.items():
        print(f"{iid}: {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Rows p-s: the lean transition path, each beside its bare-Trio baseline.

(p) throughput against the number of orders in flight, (q) throughput after
many runs handled against after few, (r) draining thousands of hibernated
runs at once, (s) the engine against a skeleton of its own task structure.
The measurements are in ``_scaling.py`` and ``_skeleton.py``; repeats are
interleaved and reported as medians with their range (``_row.py``), except
row (q), whose two points follow each other in one engine's life.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Set
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from . import _measure as m
from . import _scaling as sc
from ._row import Row, interleaved, median_row
from ._skeleton import skeleton_throughput

if TYPE_CHECKING:
    from . import Sizes

__all__ = ["lean_rows"]


def lean_rows(
    sizes: Sizes, tmp: Path, wanted: Set[str], progress: Callable[[str], None]
) -> list[Row]:
    """Measure the ``wanted`` rows among p-s; the rows."""
    rows: list[Row] = []
    repeats = sizes.median_repeats
    if "p" in wanted:
        count = sizes.in_flight_orders
        for kind in ("memory", "sqlite"):
            for limit in sizes.in_flight:
                progress(f"(p) throughput, {count} orders, {limit} in flight, {kind}")
                engines, baselines = interleaved(
                    sizes.in_flight_repeats,
                    functools.partial(trio.run, sc.engine_inflight, kind, count, limit, tmp),
                    functools.partial(trio.run, sc.baseline_inflight, kind, count, limit, tmp),
                )
                rows.append(
                    median_row(
                        "p",
                        f"throughput, {count:,} orders, {limit:,} in flight, {kind}",
                        engines,
                        baselines,
                        "inst/s",
                        True,
                    )
                )

    if "q" in wanted:
        early, late, window = sizes.history_early, sizes.history_late, sizes.history_window
        progress(
            f"(q) throughput of {window} orders after {early} and after {late} runs handled,"
            " memory (one engine)"
        )
        earlier, later = trio.run(
            sc.engine_history, early, late, window, sizes.history_repeats, progress
        )
        for unit, name in (("inst/s", "wall"), ("inst/cpu-s", "CPU")):
            wall = name == "wall"
            laters = [w.per_second if wall else w.per_cpu_second for w in later]
            earliers = [w.per_second if wall else w.per_cpu_second for w in earlier]
            rows.append(
                median_row(
                    "q",
                    f"{window:,} orders after {late:,} runs handled vs after {early:,},"
                    f" memory ({name})",
                    laters,
                    earliers,
                    unit,
                    True,
                    target=">= 0.85 of earlier",
                    met=lambda ratio: ratio >= 0.85,
                    shortfall=lambda ratio: f"{ratio:.3g} of earlier",
                )
            )

    if "r" in wanted:
        count = sizes.drain
        for kind in ("memory", "sqlite"):
            progress(f"(r) drain of {count} parked runs resumed at once, {kind}")
            engines, baselines = interleaved(
                sizes.drain_repeats,
                functools.partial(trio.run, sc.engine_drain, kind, count, tmp),
                functools.partial(trio.run, sc.baseline_drain, kind, count, tmp),
            )
            memory = kind == "memory"
            rows.append(
                median_row(
                    "r",
                    f"drain of {count:,} parked runs, all resumed at once, {kind}",
                    engines,
                    baselines,
                    "s",
                    False,
                    target="<= 2x baseline" if memory else "-",
                    met=(lambda ratio: ratio <= 2.0) if memory else None,
                    shortfall=lambda ratio: f"{ratio:.3g}x baseline",
                )
            )

    if "s" in wanted:
        count = sizes.throughput
        progress(f"(s) throughput, {count} orders: engine, skeleton, bare Trio, memory")
        engines, skeletons, bares = interleaved(
            repeats,
            lambda: trio.run(m.engine_throughput, "memory", count, tmp),
            lambda: trio.run(skeleton_throughput, count),
            lambda: trio.run(functools.partial(m.baseline_throughput, "memory", count, tmp)),
        )
        rows.append(
            median_row(
                "s",
                f"throughput, {count:,} orders, memory: engine vs skeleton",
                engines,
                skeletons,
                "inst/s",
                True,
            )
        )
        rows.append(
            median_row(
                "s",
                f"throughput, {count:,} orders, memory: skeleton vs bare Trio",
                skeletons,
                bares,
                "inst/s",
                True,
            )
        )
    return rows

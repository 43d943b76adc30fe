"""``python -m bench --profile``: where the engine's time goes in row (a).

Prints cProfile's own-time shares grouped by layer for the engine's
throughput run, and the throughput of a bare-Trio program *shaped like the
engine* (row s's skeleton: a supervisor task, a cancel scope per incarnation,
a nursery and a mailbox per run, the steps run by the run's loop) with no
engine logic, which separates the cost of that task structure from the cost
of the engine's own work.
"""

from __future__ import annotations

import collections
import cProfile
import functools
import pstats
from pathlib import Path

import trio

from . import _measure as m
from ._skeleton import skeleton_throughput

__all__ = ["profile_throughput"]


def _group(filename: str, name: str) -> str:
    if "hephaestus_trio/core/_serialization" in filename or "cattr" in filename:
        return "serialization (cattrs)"
    for layer in ("core", "runtime", "storage", "observability"):
        if f"hephaestus_trio/{layer}" in filename:
            return f"hephaestus_trio.{layer}"
    if "attrs generated" in filename or "/attr/" in filename:
        return "attrs (evolve, __init__ of frozen models)"
    if "/trio/" in filename or "/outcome/" in filename or "contextlib" in filename:
        return "trio (tasks, scopes, channels, scheduler)"
    if "json" in filename:
        return "json"
    if name.startswith("<method 'poll'"):
        return "idle (epoll: waiting for SQLite threads)"
    if filename == "~":
        return "builtins called from all of the above"
    return "other"


def profile_throughput(kind: str, count: int, tmp: Path) -> str:
    """Profile one throughput run of the engine; returns the report."""
    trio.run(m.engine_throughput, kind, 50, tmp)  # warm up
    profiler = cProfile.Profile()
    profiler.enable()
    trio.run(m.engine_throughput, kind, count, tmp)
    profiler.disable()
    stats = pstats.Stats(profiler)
    groups: collections.Counter[str] = collections.Counter()
    for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        groups[_group(filename, name)] += row[2]
    total = sum(groups.values())
    lines = [f"own time by layer, engine throughput ({count:,} orders, {kind}, under cProfile):"]
    for group, seconds in groups.most_common():
        lines.append(f"  {100 * seconds / total:5.1f}%  {group}")
    shaped = max(trio.run(skeleton_throughput, count) for _ in range(3))
    plain = max(
        trio.run(functools.partial(m.baseline_throughput, "memory", count, tmp)) for _ in range(3)
    )
    engine = max(trio.run(m.engine_throughput, "memory", count, tmp) for _ in range(3))
    lines += [
        "",
        f"memory throughput, {count:,} orders (best of 3, no profiler):",
        f"  bare Trio, plain (the baseline):                   {plain:8,.0f} inst/s",
        f"  bare Trio shaped like the engine, no engine logic: {shaped:8,.0f} inst/s"
        f"  ({shaped / plain:.2f} of plain)",
        f"  hephaestus-trio:                                   {engine:8,.0f} inst/s"
        f"  ({engine / plain:.3f} of plain, {engine / shaped:.2f} of shaped)",
    ]
    if kind == "sqlite":
        durable = max(trio.run(m.engine_throughput, "sqlite", count, tmp) for _ in range(3))
        batched = max(trio.run(m.baseline_throughput, "sqlite", count, tmp) for _ in range(3))
        lines += [
            "",
            f"sqlite throughput, {count:,} orders (best of 3, no profiler):",
            f"  bare Trio + batched SQLite writer (the baseline):  {batched:8,.0f} inst/s",
            f"  hephaestus-trio on SQLiteStorage:                  {durable:8,.0f} inst/s"
            f"  ({durable / batched:.3f} of baseline, {durable / engine:.2f} of the engine "
            "in memory)",
        ]
    return "\n".join(lines)

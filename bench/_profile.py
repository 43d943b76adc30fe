"""``python -m bench --profile``: where the engine's time goes in row (a).

Prints cProfile's own-time shares grouped by layer for the engine's
throughput run, the Python calls one order costs by layer against the same
count for the baselines (a measure of work that, unlike time, the machine's
load does not move), and the throughput of a bare-Trio program *shaped like the
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import trio

from . import _measure as m
from ._skeleton import skeleton_throughput

__all__ = ["profile_throughput"]

_TRANSITIONS = 7
"""Persisted transitions of one order: create, start, the four steps, ``done``."""


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


def _profiled(run: Callable[[], object]) -> tuple[Counter[str], Counter[str]]:
    """Own seconds and calls by layer of one ``run()`` under cProfile.

    Calls count every call and every resumption of a coroutine (cProfile counts
    a coroutine once per step it runs): the unit of Python work a transition
    costs, which unlike seconds does not move with the load on the machine.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler)
    seconds: Counter[str] = collections.Counter()
    calls: Counter[str] = collections.Counter()
    for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        group = _group(filename, name)
        seconds[group] += row[2]
        calls[group] += row[1]
    return seconds, calls


def profile_throughput(kind: str, count: int, tmp: Path) -> str:
    """Profile one throughput run of the engine; returns the report."""
    trio.run(m.engine_throughput, kind, 50, tmp)  # warm up
    groups, calls = _profiled(lambda: trio.run(m.engine_throughput, kind, count, tmp))
    # What the engine's calls are compared with: its shape and plain Trio in
    # memory; the batched-SQLite program on SQLite. Either side is counted in
    # the Trio thread only (cProfile profiles one thread): the SQLite writer
    # threads' statements are not in the counts.
    if kind == "memory":
        shaped_calls = _profiled(lambda: trio.run(skeleton_throughput, count))[1]
        plain_calls = _profiled(lambda: trio.run(m.baseline_throughput, "memory", count, tmp))[1]
        baselines = [
            (shaped_calls, "bare Trio shaped like the engine"),
            (plain_calls, "bare Trio, plain"),
        ]
    else:
        batched_calls = _profiled(lambda: trio.run(m.baseline_throughput, "sqlite", count, tmp))[1]
        baselines = [(batched_calls, "bare Trio + batched SQLite writer")]
    total = sum(groups.values())
    lines = [f"own time by layer, engine throughput ({count:,} orders, {kind}, under cProfile):"]
    for group, seconds in groups.most_common():
        lines.append(f"  {100 * seconds / total:5.1f}%  {group}")
    per_order = sum(calls.values()) / count
    lines += [
        "",
        "Python calls (and coroutine resumptions) per order in the Trio thread, by layer:",
        *(f"  {n / count:7,.0f}  {group}" for group, n in calls.most_common()),
        f"  {per_order:7,.0f}  hephaestus-trio, in all ({per_order / _TRANSITIONS:,.0f} per"
        f" persisted transition, {_TRANSITIONS} per order)",
        *(f"  {sum(c.values()) / count:7,.0f}  {label}, in all" for c, label in baselines),
    ]
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

"""Benchmarks of hephaestus-trio against bare-Trio baselines measured in the same run.

Run from the repository root::

    python -m bench            # the full run (rows p-s alone take several minutes)
    python -m bench --quick    # a small smoke run (seconds)
    python -m bench --only ko  # only some rows (a-s); k-o are the PostgreSQL rows

Every row compares the engine with a baseline that runs the same DAG and the
same step code with plain Trio tasks and no engine; in durable mode the
baseline writes the same records (the run's JSON after every transition) to
SQLite with batched commits in one worker thread. The PostgreSQL rows (k-o)
start a throwaway server with ``fsync`` on and compare engines on
``PostgresStorage`` with the same writes issued by plain psycopg from Trio
with the same pool (``_postgres.py``). ``bench/README.md`` has the
definitions, the targets and the latest table.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from . import _measure as m
from ._row import Row, interleaved, median_row

__all__ = ["Row", "Sizes", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class Sizes:
    throughput: int = 2000
    repeats: int = 3
    """Best-of count of rows (d) and (j)."""
    median_repeats: int = 5
    """Interleaved repeats of the rows that report a median with its range (a, b, e, s)."""
    latency_memory: int = 300
    latency_sqlite: int = 100
    parked: int = 20_000
    week_parked: int = 100_000
    recovery: int = 10_000
    resume_memory: int = 300
    resume_sqlite: int = 100
    observed: int = 500
    observed_repeats: int = 9
    observed_kinds: tuple[str, ...] = ("memory", "sqlite")
    crash_examples: int = 100
    pg_throughput: int = 1200
    pg_repeats: int = 3
    pg_latency: int = 50
    pg_resume: int = 50
    pg_recovery: int = 10_000
    pg_parked: int = 2000
    in_flight: tuple[int, ...] = (10, 100, 1000)
    in_flight_orders: int = 2000
    in_flight_repeats: int = 3
    """Row (p)'s repeats: fewer than ``median_repeats``, as 10 in flight on SQLite takes long."""
    history_early: int = 2000
    history_late: int = 200_000
    history_window: int = 1000
    history_repeats: int = 3
    drain: int = 5000
    drain_repeats: int = 3


QUICK = Sizes(
    throughput=200,
    repeats=1,
    median_repeats=1,
    latency_memory=20,
    latency_sqlite=10,
    parked=500,
    week_parked=500,
    recovery=500,
    resume_memory=20,
    resume_sqlite=10,
    observed=50,
    observed_repeats=1,
    observed_kinds=("memory",),
    crash_examples=5,
    pg_throughput=60,
    pg_repeats=1,
    pg_latency=5,
    pg_resume=5,
    pg_recovery=200,
    pg_parked=100,
    in_flight=(10, 20, 40),
    in_flight_orders=40,
    in_flight_repeats=1,
    history_early=50,
    history_late=500,
    history_window=50,
    history_repeats=1,
    drain=100,
    drain_repeats=1,
)

LEAN_ROWS = frozenset("pqrs")
"""The rows of the lean transition path (``_lean_rows.py``): memory and SQLite."""
SQLITE_ROWS = frozenset("abcdefghij") | LEAN_ROWS
"""Every row that needs no PostgreSQL server."""
POSTGRES_ROWS = frozenset("klmno")


def _fmt(value: float, unit: str) -> str:
    if unit in ("inst/s", "inst/cpu-s"):
        return f"{value:,.0f} {unit}"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:,.0f} us"
        if value < 1.0:
            return f"{value * 1e3:,.2f} ms"
        return f"{value:,.2f} s"
    return f"{value:,.2f} {unit}"


def _fmt_spread(value: float, spread: tuple[float, float] | None, unit: str) -> str:
    """``value`` with the range of its repeats in brackets, both in the value's unit."""
    text = _fmt(value, unit)
    if spread is None or spread[0] == spread[1]:
        return text
    number, shown_unit = text.split(" ", 1)
    scale = {"us": 1e6, "ms": 1e3}.get(shown_unit, 1.0)
    decimals = len(number.split(".")[1]) if "." in number else 0
    low, high = (f"{v * scale:,.{decimals}f}" for v in spread)
    return f"{number} {shown_unit} ({low}-{high})"


def format_rows(rows: Sequence[Row]) -> str:
    headers = (
        "",
        "measurement",
        "hephaestus-trio",
        "bare-Trio baseline",
        "engine/baseline",
        "target",
        "verdict",
    )
    cells = []
    for row in rows:
        if row.met is None:
            verdict = "-"
        elif row.met:
            verdict = "met"
        else:
            verdict = f"MISSED ({row.shortfall})"
        cells.append(
            (
                row.key,
                row.label,
                _fmt_spread(row.engine, row.engine_range, row.unit),
                _fmt_spread(row.baseline, row.baseline_range, row.unit),
                f"{row.ratio:.3g}",
                row.target,
                verdict,
            )
        )
    table = [headers, *cells]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in table
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """What the numbers were measured on (no host names, no paths)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus (nproc)": str(os.cpu_count()),
        "cpu model": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "trio": trio.__version__,
        "sqlite": sqlite3.sqlite_version,
        "os": f"{platform.system()} {platform.release()}",
        "temp dir filesystem": _filesystem(tempfile.gettempdir()),
        "load average (1 min) at start": _loadavg(),
    }


def _loadavg() -> str:
    """The 1-minute load average: on a shared machine, what else the numbers measured."""
    try:
        with open("/proc/loadavg", encoding="ascii") as loadavg:
            return loadavg.read().split()[0]
    except (OSError, IndexError):
        return "unknown"


def _filesystem(path: str) -> str:
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return "unknown"
    best = ("", "unknown")
    real = os.path.realpath(path)
    for entry in entries:
        mount, kind = entry[1], entry[2]
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
            best[0]
        ):
            best = (mount, kind)
    return best[1]


# -- running ---------------------------------------------------------------------------------


def _best(repeats: int, higher: bool, measure: Callable[[], float]) -> float:
    values = [measure() for _ in range(repeats)]
    return max(values) if higher else min(values)


def _child(side: str, kind: str, count: int, tmp: Path) -> float:
    """Parked-RSS measurements run in a fresh interpreter: RSS deltas in a process that
    already allocated (and freed) memory would be too low."""
    command = [sys.executable, "-m", "bench", "--child", side, kind, str(count), str(tmp)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{result.stderr}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["value"])


def _run_child(side: str, kind: str, count: int, tmp: Path) -> None:
    function = {
        "engine": m.engine_parked_rss,
        "week": m.engine_week_parked_rss,
        "baseline": m.baseline_parked_rss,
    }[side]
    value = trio.run(function, kind, count, tmp)
    print(json.dumps({"value": value}))


def _needs(target: float, ratio: float) -> str:
    return f"{ratio:.3g} of baseline; needs {target / ratio:.1f}x faster"


def _progress(text: str, out: Any) -> None:
    print(f"  ... {text}", file=out, flush=True)


def run(
    sizes: Sizes,
    tmp: Path,
    only: set[str] | None = None,
    out: Any = None,
    cluster: Any = None,
) -> list[Row]:
    """Run the benchmarks (or the ``only`` ones: letters a to s) and return the rows.

    The PostgreSQL rows start a server of their own, or use ``cluster`` (a
    started ``PostgresCluster``) when given.
    """
    out = out or sys.stderr
    rows: list[Row] = []
    wanted = only or set(SQLITE_ROWS | POSTGRES_ROWS)
    trio.run(m.engine_throughput, "memory", 20, tmp)  # warm imports and code paths

    repeats = sizes.median_repeats
    if "a" in wanted:
        for kind, target in (("memory", 1 / 3), ("sqlite", 1 / 2)):
            _progress(f"(a) throughput, {sizes.throughput} instances, {kind}", out)
            engines, baselines = interleaved(
                repeats,
                functools.partial(trio.run, m.engine_throughput, kind, sizes.throughput, tmp),
                functools.partial(trio.run, m.baseline_throughput, kind, sizes.throughput, tmp),
            )
            rows.append(
                median_row(
                    "a",
                    f"throughput, {sizes.throughput:,} orders, {kind}",
                    engines,
                    baselines,
                    "inst/s",
                    True,
                    target=f">= {target:.2g} of baseline",
                    met=functools.partial(operator.le, target),
                    shortfall=functools.partial(_needs, target),
                )
            )

    if "b" in wanted:
        for kind, runs in (("memory", sizes.latency_memory), ("sqlite", sizes.latency_sqlite)):
            _progress(f"(b) single-instance latency, {runs} runs, {kind}", out)
            engines, baselines = interleaved(
                repeats,
                functools.partial(trio.run, m.engine_latency, kind, runs, tmp),
                functools.partial(trio.run, m.baseline_latency, kind, runs, tmp),
            )
            rows.append(
                median_row(
                    "b",
                    f"latency of one order (mean of {runs}), {kind}",
                    engines,
                    baselines,
                    "s",
                    False,
                )
            )

    if "c" in wanted:
        baseline = _child("baseline", "memory", sizes.parked, tmp)
        for kind in ("memory", "sqlite"):
            _progress(f"(c) RSS per parked instance, {sizes.parked} parked, {kind}", out)
            engine = _child("engine", kind, sizes.parked, tmp)
            rows.append(
                Row(
                    key="c",
                    label=f"RSS per parked instance ({sizes.parked:,} parked), {kind}",
                    engine=engine,
                    baseline=baseline,
                    unit="KiB",
                    higher_is_better=False,
                    target="<= 4 KiB",
                    met=engine <= 4.0,
                    shortfall=f"{engine - 4.0:.2f} KiB over",
                )
            )

    if "d" in wanted:
        _progress(f"(d) recovery of {sizes.recovery} parked instances, sqlite", out)
        path = tmp / "recovery.db"
        trio.run(m.prepare_parked_db, path, sizes.recovery)
        engine = _best(
            sizes.repeats, False, lambda: trio.run(m.engine_recovery, path, sizes.recovery)
        )
        baseline = _best(
            sizes.repeats, False, lambda: trio.run(m.baseline_recovery, path, sizes.recovery)
        )
        rows.append(
            Row(
                key="d",
                label=f"open_engine recovering {sizes.recovery:,} parked, sqlite",
                engine=engine,
                baseline=baseline,
                unit="s",
                higher_is_better=False,
                target="< 2 s",
                met=engine < 2.0,
                shortfall=f"{engine - 2.0:.2f} s over",
            )
        )

    if "e" in wanted:
        for kind, runs in (("memory", sizes.resume_memory), ("sqlite", sizes.resume_sqlite)):
            _progress(f"(e) resume-to-next-step latency, {runs} resumes, {kind}", out)
            engines, baselines = interleaved(
                repeats,
                functools.partial(trio.run, m.engine_resume_latency, kind, runs, tmp),
                functools.partial(trio.run, m.baseline_resume_latency, kind, runs, tmp),
            )
            rows.append(
                median_row(
                    "e",
                    f"resume -> next step starts (mean of {runs}), {kind}",
                    engines,
                    baselines,
                    "s",
                    False,
                )
            )
    if "f" in wanted:
        count = sizes.week_parked
        _progress(f"(f) RSS per run parked on a 7-day Wait, {count} parked, memory", out)
        untimed = _child("engine", "memory", count, tmp)
        week = _child("week", "memory", count, tmp)
        rows.append(
            Row(
                key="f",
                label=f"RSS per run on a 7-day Wait vs no timer ({count:,}), memory",
                engine=week,
                baseline=untimed,
                unit="KiB",
                higher_is_better=False,
                target="within 1 KiB",
                met=week - untimed <= 1.0,
                shortfall=f"{week - untimed:.2f} KiB more than a run with no timer",
            )
        )
    if "j" in wanted:
        from . import _crashcheck

        examples = sizes.crash_examples
        _progress(f"(j) check_crash_safety, {examples} examples of a 5-step workflow", out)
        engine = _best(sizes.repeats, False, lambda: _crashcheck.crash_check(examples))
        baseline = _best(sizes.repeats, False, lambda: _crashcheck.baseline_runs(examples))
        rows.append(
            Row(
                key="j",
                label=f"check_crash_safety, {examples} examples, 5 steps, memory (CPU)",
                engine=engine,
                baseline=baseline,
                unit="s",
                higher_is_better=False,
                target="< 1 s" if examples == 100 else "-",
                met=engine < 1.0 if examples == 100 else None,
                shortfall=f"{engine - 1.0:.2f} s over",
            )
        )
    if wanted & LEAN_ROWS:
        from ._lean_rows import lean_rows

        rows += lean_rows(sizes, tmp, wanted & LEAN_ROWS, lambda text: _progress(text, out))
    if wanted & POSTGRES_ROWS:
        from ._postgres_rows import postgres_rows

        rows += postgres_rows(
            sizes, wanted & POSTGRES_ROWS, lambda text: _progress(text, out), cluster
        )
    rows.extend(_observability_rows(sizes, tmp, wanted, out))
    return rows


def _observability_rows(sizes: Sizes, tmp: Path, wanted: set[str], out: Any) -> list[Row]:
    """(g) tracing and metrics disabled, (h) tracing on, (i) metrics on: row (a)'s workload."""
    from . import _observability as obs

    rows: list[Row] = []
    count, repeats = sizes.observed, sizes.observed_repeats
    if "g" in wanted:
        _progress(f"(g) tracing and metrics disabled, {count} instances, memory", out)
        engine, baseline = obs.compare("memory", count, tmp, repeats, "none", "unhooked")
        ratio = engine / baseline
        rows.append(
            Row(
                key="g",
                label=f"no tracing/metrics handler vs hooks removed, {count:,} orders, memory",
                engine=engine,
                baseline=baseline,
                unit="inst/cpu-s",
                higher_is_better=True,
                target=">= 0.95 of baseline",
                met=ratio >= 0.95,
                shortfall=f"{ratio:.3g} of baseline",
            )
        )
    for key, side, name in (
        ("h", "otel", "OpenTelemetryHandler"),
        ("i", "prometheus", "PrometheusHandler"),
    ):
        if key not in wanted:
            continue
        for kind in sizes.observed_kinds:
            _progress(f"({key}) {name} on, {count} instances, {kind}", out)
            engine, baseline = obs.compare(kind, count, tmp, repeats, side, "none")
            rows.append(
                Row(
                    key=key,
                    label=f"{name} vs no handler, {count:,} orders, {kind}",
                    engine=engine,
                    baseline=baseline,
                    unit="inst/cpu-s",
                    higher_is_better=True,
                )
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only",
        metavar="LETTERS",
        help="run only these rows, e.g. --only ad (a-s; k-o are PostgreSQL)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="with --quick: add the PostgreSQL rows k-o (a full run always has them)",
    )
    parser.add_argument(
        "--profile",
        choices=("memory", "sqlite"),
        help="instead of the table: where the engine's time goes in row (a)",
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--pg-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pg_child:
        from ._postgres import pg_child

        side, dsn, first, count = args.pg_child
        pg_child(side, dsn, int(first), int(count))
        return 0
    if args.child:
        side, kind, count, tmp = args.child
        _run_child(side, kind, int(count), Path(tmp))
        return 0
    if args.profile:
        from ._profile import profile_throughput

        count = QUICK.throughput if args.quick else Sizes().throughput
        with tempfile.TemporaryDirectory(prefix="hephaestus-bench-") as tmp:
            print(profile_throughput(args.profile, count, Path(tmp)))
        return 0
    sizes = QUICK if args.quick else Sizes()
    only = set(args.only) if args.only else None
    if args.quick and only is None:
        only = set(SQLITE_ROWS | (POSTGRES_ROWS if args.postgres else set()))
    if only is not None and not only <= SQLITE_ROWS | POSTGRES_ROWS:
        parser.error(f"--only takes row letters a-s, got {args.only!r}")
    print("hephaestus-trio benchmarks" + (" (--quick)" if args.quick else ""))
    for name, value in machine().items():
        print(f"  {name}: {value}")
    with tempfile.TemporaryDirectory(prefix="hephaestus-bench-") as tmp:
        rows = run(sizes, Path(tmp), only)
    print()
    print(format_rows(rows))
    print(f"\nload average (1 min) at end: {_loadavg()}")
    if args.quick:
        print("\n(--quick: sizes too small for meaningful numbers, memory rows especially)")
    return 0

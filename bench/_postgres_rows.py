"""Rows k-o: the PostgreSQL measurements, each beside its psycopg baseline.

Repeats are interleaved (engine, baseline, engine, baseline, ...: ``_row.interleaved``)
so that a change in the machine's load hits both sides alike; each row reports
the median of the repeats with their range. Every measurement runs on a fresh
database of one ``PostgresCluster`` started here with ``fsync`` on.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections.abc import Callable, Set
from typing import TYPE_CHECKING

import trio

from hephaestus_trio.testing import PostgresCluster

from . import _postgres as pg
from ._row import Row, interleaved

if TYPE_CHECKING:
    from . import Sizes

__all__ = ["postgres_rows"]

_names = itertools.count()


def _fresh(cluster: PostgresCluster) -> str:
    return cluster.create_database(f"bench_{next(_names)}")


def _interleaved(
    repeats: int, engine: Callable[[], float], baseline: Callable[[], float]
) -> tuple[list[float], list[float]]:
    engines, baselines = interleaved(repeats, engine, baseline)
    return engines, baselines


def _row(
    key: str,
    label: str,
    engines: list[float],
    baselines: list[float],
    unit: str,
    higher: bool,
    **target: object,
) -> Row:
    return Row(
        key=key,
        label=label,
        engine=statistics.median(engines),
        baseline=statistics.median(baselines),
        unit=unit,
        higher_is_better=higher,
        engine_range=(min(engines), max(engines)),
        baseline_range=(min(baselines), max(baselines)),
        **target,  # type: ignore[arg-type]
    )


def postgres_rows(
    sizes: Sizes,
    wanted: Set[str],
    progress: Callable[[str], None],
    cluster: PostgresCluster | None = None,
) -> list[Row]:
    """Measure the ``wanted`` rows among k-o on a server started here (or on ``cluster``,
    which a test passes to skip the start-up); the rows."""
    # The pools log each connection they drop when a measurement's database goes.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    if cluster is not None:
        return _measure(sizes, wanted, progress, cluster)
    with PostgresCluster(fsync=True, settings={"max_connections": "200"}) as started:
        return _measure(sizes, wanted, progress, started)


def _measure(
    sizes: Sizes, wanted: Set[str], progress: Callable[[str], None], cluster: PostgresCluster
) -> list[Row]:
    rows: list[Row] = []
    version = cluster.execute("SHOW server_version")[0][0]
    progress(f"PostgreSQL {version}, fsync {'on' if cluster.fsync else 'off'}, port {cluster.port}")
    repeats = sizes.pg_repeats

    if "k" in wanted:
        count = sizes.pg_throughput
        one_engine: list[float] = []
        for processes in (1, 2, 3):
            progress(f"(k) throughput, {count} orders, {processes} engine process(es)")
            engines, baselines = _interleaved(
                repeats,
                lambda n=processes: pg.throughput_processes("engine", _fresh(cluster), n, count),
                lambda n=processes: pg.throughput_processes("baseline", _fresh(cluster), n, count),
            )
            if processes == 1:
                one_engine = engines
                target: dict[str, object] = {
                    "target": ">= 1/2 of baseline",
                    "met": statistics.median(engines) / statistics.median(baselines) >= 0.5,
                    "shortfall": (
                        f"{statistics.median(engines) / statistics.median(baselines):.3g}"
                        " of baseline"
                    ),
                }
            else:
                single = statistics.median(one_engine)
                total = statistics.median(engines)
                target = {
                    "target": ">= 1 engine's total",
                    "met": total >= single * 0.95,  # within the noise of the repeats
                    "shortfall": f"{total / single:.2f}x one engine's total",
                }
            rows.append(
                _row(
                    "k",
                    f"throughput, {count:,} orders, {processes} engine process(es), postgres",
                    engines,
                    baselines,
                    "inst/s",
                    True,
                    **target,
                )
            )

    if "l" in wanted:
        runs = sizes.pg_latency
        progress(f"(l) single-run latency, {runs} runs, postgres")
        engines, baselines = _interleaved(
            repeats,
            lambda: trio.run(pg.engine_pg_latency, _fresh(cluster), runs),
            lambda: trio.run(pg.baseline_pg_latency, _fresh(cluster), runs),
        )
        rows.append(
            _row(
                "l",
                f"latency of one order (mean of {runs}), postgres",
                engines,
                baselines,
                "s",
                False,
            )
        )

    if "m" in wanted:
        runs = sizes.pg_resume
        progress(f"(m) resume-to-next-step latency, {runs} resumes, postgres")
        engines, baselines = _interleaved(
            repeats,
            lambda: trio.run(pg.engine_pg_resume_latency, _fresh(cluster), runs),
            lambda: trio.run(pg.baseline_pg_resume_latency, _fresh(cluster), runs),
        )
        rows.append(
            _row(
                "m",
                f"resume -> next step starts (mean of {runs}), postgres",
                engines,
                baselines,
                "s",
                False,
            )
        )

    if "n" in wanted:
        count = sizes.pg_recovery
        progress(f"(n) recovery of {count} parked runs, postgres (preparing)")
        engine_db, baseline_db = _fresh(cluster), _fresh(cluster)
        trio.run(pg.prepare_pg_parked, engine_db, count)
        trio.run(pg.prepare_pg_baseline_parked, baseline_db, count)
        progress(f"(n) recovery of {count} parked runs, postgres (measuring)")
        engines, baselines = _interleaved(
            repeats,
            lambda: trio.run(pg.engine_pg_recovery, engine_db, count),
            lambda: trio.run(pg.baseline_pg_recovery, baseline_db, count),
        )
        rows.append(
            _row(
                "n",
                f"open_engine on {count:,} hibernated runs, postgres",
                engines,
                baselines,
                "s",
                False,
                target="< 2 s",
                met=statistics.median(engines) < 2.0,
                shortfall=f"{statistics.median(engines) - 2.0:.2f} s over",
            )
        )

    if "o" in wanted:
        count = sizes.pg_parked
        progress(f"(o) database KiB per parked run, {count} parked, postgres")
        engines, baselines = _interleaved(
            1,  # sizes on disk do not vary with the load
            lambda: trio.run(pg.engine_pg_parked_kib, _fresh(cluster), count),
            lambda: trio.run(pg.baseline_pg_parked_kib, _fresh(cluster), count),
        )
        rows.append(
            _row(
                "o",
                f"database KiB per parked run ({count:,} parked), postgres",
                engines,
                baselines,
                "KiB",
                False,
            )
        )
    return rows

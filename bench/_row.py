"""``Row``: one line of the table, and the interleaved repeats most rows report.

Repeats are interleaved (engine, baseline, engine, baseline, ...) so that a
change in the machine's load hits both sides alike; a row built by
``median_row`` reports the median of the repeats with their range, which a
shared machine's bursts move far less than a best-of or a single run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import attrs

__all__ = ["Row", "interleaved", "median_row"]


@attrs.frozen
class Row:
    """One line of the table: both measurements and how they compare."""

    key: str
    label: str
    engine: float
    baseline: float
    unit: str
    higher_is_better: bool
    target: str = "-"
    met: bool | None = None
    shortfall: str = ""
    engine_range: tuple[float, float] | None = None
    """Lowest and highest of the repeats, when ``engine`` is their median."""
    baseline_range: tuple[float, float] | None = None

    @property
    def ratio(self) -> float:
        """engine / baseline."""
        return self.engine / self.baseline if self.baseline else float("inf")


def interleaved(repeats: int, *sides: Callable[[], float]) -> list[list[float]]:
    """``repeats`` rounds, each measuring every side once in the order given; per side,
    its values."""
    values: list[list[float]] = [[] for _ in sides]
    for _ in range(repeats):
        for measure, kept in zip(sides, values, strict=True):
            kept.append(measure())
    return values


def median_row(
    key: str,
    label: str,
    engines: Sequence[float],
    baselines: Sequence[float],
    unit: str,
    higher: bool,
    *,
    target: str = "-",
    met: Callable[[float], bool] | None = None,
    shortfall: Callable[[float], str] | None = None,
) -> Row:
    """A row of the medians of both sides, their ranges in brackets.

    ``met`` and ``shortfall`` get the ratio of the medians (engine / baseline).
    """
    engine, baseline = statistics.median(engines), statistics.median(baselines)
    ratio = engine / baseline if baseline else float("inf")
    return Row(
        key=key,
        label=label,
        engine=engine,
        baseline=baseline,
        unit=unit,
        higher_is_better=higher,
        target=target,
        met=None if met is None else met(ratio),
        shortfall="" if shortfall is None else shortfall(ratio),
        engine_range=(min(engines), max(engines)),
        baseline_range=(min(baselines), max(baselines)),
    )

"""``python -m bench --quick``, in-process, so the benchmarks do not rot (a few seconds)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_quick_bench_prints_every_row(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("bench")
    # Speed is the benchmarks' business: this only checks every row still runs and prints.
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "cpus (nproc):" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    keys = [line.split("|")[1].strip() for line in table[1:]]
    assert keys == [
        *("a", "a", "b", "b", "c", "c", "d", "e", "e", "f", "j"),
        *("p",) * 6,
        *("q", "q", "r", "r", "s", "s", "g", "h", "i"),
    ]
    assert "open_engine recovering 500 parked, sqlite" in out
    assert "load average (1 min) at end:" in out


def test_quick_reads_bench_prints_every_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    reads = importlib.import_module("bench.reads")
    assert reads.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    assert [cells[0].strip() for cells in rows[1:]] == [
        "summary() vs query() of every run, counted in Python",
        "keyset page of 100 at the middle vs the first page",
        "OFFSET page of 100 at the middle vs the keyset page",
        "500 creates + 2 writes each, schema 4 vs without its 2 indexes",
    ]
    ratios = [float(cells[3]) for cells in rows[1:]]
    assert all(ratio > 0 for ratio in ratios)


def test_quick_profile_prints_layers_and_calls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("bench")
    assert bench.main(["--profile", "memory", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "own time by layer" in out
    per_order = [
        line for line in out.splitlines() if line.endswith(", in all") or "in all (" in line
    ]
    # The engine, its skeleton and plain Trio: three totals, the engine's the largest.
    totals = [int(line.split()[0].replace(",", "")) for line in per_order]
    assert len(totals) == 3, per_order
    engine, shaped, plain = totals
    assert engine > shaped > plain > 0
    assert "per persisted transition" in per_order[0]

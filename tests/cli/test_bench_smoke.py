"""``python -m bench --quick``, in-process, so the benchmarks do not rot (a few seconds)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_quick_bench_prints_every_row(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("bench")
    started = time.perf_counter()
    assert bench.main(["--quick"]) == 0
    assert time.perf_counter() - started < 10
    out = capsys.readouterr().out
    assert "cpus (nproc):" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    keys = [line.split("|")[1].strip() for line in table[1:]]
    assert keys == ["a", "a", "b", "b", "c", "c", "d", "e", "e", "f", "j"]
    assert "open_engine recovering 500 parked, sqlite" in out

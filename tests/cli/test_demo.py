"""``hephaestus-trio demo`` as a user runs it: a real subprocess, a real SIGKILL.

Also the example script, which runs the same workflow definition.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hephaestus_trio.cli import main
from hephaestus_trio.cli._demo_flow import expected_outcome, sample_orders

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run_demo(cwd: Path, *args: str) -> str:
    # This tree's sources, whatever the environment's PYTHONPATH (a relative one
    # would not reach them from cwd) or installed copy: the test reads the
    # database back with this tree's code.
    path = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(
        [sys.executable, "-m", "hephaestus_trio", "demo", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def summary(out: str) -> dict[str, list[str]]:
    """The summary table: order id -> its columns."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("orderid::"):
            columns = re.split(r"\s{2,}", line.strip())
            rows[columns[0]] = columns
    return rows


def test_demo_crashes_recovers_and_finishes_every_order(tmp_path: Path) -> None:
    out = run_demo(tmp_path)  # the default database, ./hephaestus-demo.db
    assert (tmp_path / "hephaestus-demo.db").is_file()
    assert "*** simulated crash: engine 1 (pid" in out
    recovering = re.search(r"recovering (\d+) instance\(s\)", out)
    assert recovering is not None, out
    assert int(recovering.group(1)) >= 1, out
    assert "engine 2" in out
    assert "timer fired" in out
    assert "all 6 order(s) ended as expected" in out
    crash_at = out.index("simulated crash")
    assert "parked; durable timer fires" in out[:crash_at]  # some orders were parked in Wait

    rows = summary(out)
    assert len(rows) == 6
    tag = next(iter(rows)).split("::")[1][:4]
    for value, context in sample_orders(6, tag):
        columns = rows[f"orderid::{value}"]
        assert columns[1] == expected_outcome(context), out
        assert columns[4] == "yes"
    outcomes = sorted(columns[1] for columns in rows.values())
    assert outcomes == ["completed"] * 4 + ["failed", "rejected"]
    assert any("recovered" in columns[5] for columns in rows.values()), out

    # Running it again on the same database works: fresh ids, earlier runs kept.
    again = run_demo(tmp_path, "--orders", "2")
    assert "all 2 order(s) ended as expected" in again
    assert set(summary(again)).isdisjoint(rows)
    code = main(["list", "--storage", f"sqlite:///{tmp_path / 'hephaestus-demo.db'}"])
    assert code == 0


def test_example_script_runs_the_orders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "order_flow_example", ROOT / "examples" / "order_flow.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = trio.run(module.run_orders, str(tmp_path / "example.db"), 3)
    assert [status.split(" ")[0] for status in results.values()] == ["completed"] * 3
    assert "ship_order -> shipped" in capsys.readouterr().out

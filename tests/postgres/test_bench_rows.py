"""The PostgreSQL rows of ``python -m bench`` (k-o) at toy sizes, so they do not rot.

``python -m bench`` starts a server of its own with ``fsync`` on; here the
rows run on the test run's server to save the start-up. The sizes are far too
small for the numbers to mean anything: this checks that every row is produced.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import attrs
import pytest

from hephaestus_trio.testing import PostgresCluster

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_every_postgresql_row_is_measured(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    postgres_cluster: PostgresCluster,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("bench")
    sizes = attrs.evolve(
        bench.QUICK, pg_throughput=6, pg_latency=2, pg_resume=2, pg_recovery=20, pg_parked=20
    )
    rows = bench.run(sizes, tmp_path, only=set("klmno"), cluster=postgres_cluster)
    assert [row.key for row in rows] == ["k", "k", "k", "l", "m", "n", "o"]
    assert [row.label.split(", ")[2] for row in rows[:3]] == [
        "1 engine process(es)",
        "2 engine process(es)",
        "3 engine process(es)",
    ]
    for row in rows:
        assert row.engine > 0, row
        assert row.baseline > 0, row
        assert row.label.endswith("postgres")
    table = bench.format_rows(rows)
    assert "open_engine on 20 hibernated runs, postgres" in table
    assert "PostgreSQL" in capsys.readouterr().err

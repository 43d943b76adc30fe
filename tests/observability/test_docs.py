"""``docs/observability.md``: its trace example prints what the page shows, and every name
it documents exists (``tests/docs`` runs every block of every page).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hephaestus_trio
from hephaestus_trio import EVENT_NAMES, METRICS, SPAN_ATTRIBUTES, SPAN_NAMES

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)
# The scripts run elsewhere (a scratch directory) with this checkout's package.
ENV = {**os.environ, "PYTHONPATH": str(Path(hephaestus_trio.__file__).resolve().parents[1])}


def test_the_page_has_runnable_examples() -> None:
    assert len(BLOCKS) == 2


@pytest.mark.slow
def test_the_trace_example_prints_what_the_page_shows() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[0]],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    shown = TEXT.split("Prints:\n\n```text\n", 1)[1].split("```", 1)[0]
    assert result.stdout == shown


def documented(name: str) -> bool:
    return f"`{name}`" in TEXT


def test_every_span_attribute_metric_and_new_event_is_documented() -> None:
    missing = [name for name in (*SPAN_NAMES, *SPAN_ATTRIBUTES, *METRICS) if not documented(name)]
    assert missing == []
    for name in ("incarnation.start", "incarnation.stop", "storage.commit"):
        assert name in EVENT_NAMES
        assert documented(name)
    for labels in {labels for _, labels in METRICS.values()}:
        for label in labels:
            assert documented(label), label

"""``examples/metrics_server.py``: started on a free port, it serves live metrics."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "metrics_server.py"


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def completed_orders(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('hephaestus_runs_completed_total{workflow="'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
async def test_the_example_serves_metrics_on_a_free_port() -> None:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with trio.fail_after(30):  # real time: a real process and a real socket
            line = await trio.to_thread.run_sync(process.stdout.readline)
            assert line.startswith("serving http://127.0.0.1:"), (line, process.stderr)
            url = line.split()[1]
            text = ""
            while completed_orders(text) < 2:
                status, content_type, text = await trio.to_thread.run_sync(fetch, url)
                assert status == 200
                assert content_type.startswith("text/plain; version=")
                await trio.sleep(0.1)
            assert 'hephaestus_runs_started_total{workflow="order"}' in text
            assert "hephaestus_step_duration_seconds_bucket" in text
            assert "hephaestus_live_runs " in text
            status, _, body = await trio.to_thread.run_sync(fetch, url.replace("/metrics", "/"))
            assert (status, body) == (404, "try /metrics\n")
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()

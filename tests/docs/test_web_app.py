"""The web-app page's ``app.py`` under Hypercorn with two worker processes on one SQLite file.

Real processes and real time: every wait has a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ._snippets import ROOT, page_snippets

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = json.dumps(body) if body is not None else None
        connection.request(method, path, body=payload)
        response = connection.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            raise AssertionError(f"{method} {path}: {response.status} {raw!r}") from None
    finally:
        connection.close()


def test_two_workers_share_one_database(tmp_path: Path) -> None:
    [app] = [s for s in page_snippets(ROOT / "docs" / "web-app.md") if s.module == "app.py"]
    (tmp_path / "app.py").write_text(app.code)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(tmp_path)]),
        "APP_DATABASE": str(tmp_path / "app.db"),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--workers", "2",
         "--bind", f"127.0.0.1:{port}", "app:app"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = _call(port, "GET", "/signups/signup::nobody")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert status == 404
        names = ["ada", "bob", "cy", "dee", "eve", "fay"]
        for name in names:
            status, body = _call(port, "POST", "/signups", {"name": name, "email": f"{name}@x.io"})
            assert status == 202, body
        for name in names:
            path = f"/signups/signup::{name}/confirm"
            status, body = _call(port, "POST", path, {"token": f"t-{name}"})
            assert status == 202, body
            # The same token again: a no-op while the run waits, refused once it moved on.
            status, body = _call(port, "POST", path, {"token": f"t-{name}"})
            assert status in (202, 409), body
        pending = set(names)
        while pending:
            assert time.monotonic() < deadline, f"not completed: {pending}"
            for name in sorted(pending):
                status, body = _call(port, "GET", f"/signups/signup::{name}")
                if body["status"] == "completed":
                    assert body["steps"]["register"] == {"email": f"{name}@x.io"}
                    pending.discard(name)
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert "Traceback" not in output, output

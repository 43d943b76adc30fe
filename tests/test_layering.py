"""Layers import downward only (STYLE rule 3).

* The pure core and the built-in steps never import Trio (nor a database
  driver). The check loads ``hephaestus_trio.core`` and ``hephaestus_trio.steps``
  in a fresh interpreter; the front door ``hephaestus_trio/__init__.py`` is
  replaced by an empty package there, so the check is about the two layers
  themselves, whatever the front door re-exports from ``runtime``.
* Only ``runtime/`` opens nurseries, memory channels and cancel scopes.
  ``testing/`` is exempt too: it is test tooling for users' test suites (like
  ``trio.testing``), and the storage conformance checks race tasks on purpose.
  So is the one module of the PostgreSQL driver that must: a cancelled query
  is stopped from a *shielded* cancel scope (an unshielded await there would
  itself be cancelled and leave the query running), the thread-free LISTEN
  wait races the socket against a local doorbell in a nursery, and NOTIFY
  hints are sent by a system task off the callers' path.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import hephaestus_trio

PACKAGE = Path(hephaestus_trio.__file__).resolve().parent
FORBIDDEN = re.compile(r"\b(open_nursery|open_memory_channel|CancelScope)\b")


def test_core_and_steps_do_not_import_trio() -> None:
    code = textwrap.dedent(
        f"""
        import sys, types
        root = types.ModuleType("hephaestus_trio")
        root.__path__ = [{str(PACKAGE)!r}]
        sys.modules["hephaestus_trio"] = root
        import hephaestus_trio.core._engine, hephaestus_trio.core._serialization
        import hephaestus_trio.core._render, hephaestus_trio.core._policies
        import hephaestus_trio.engine, hephaestus_trio.serialization
        import hephaestus_trio.steps
        assert "hephaestus_trio.core._workflow" in sys.modules
        assert "hephaestus_trio.steps._wait" in sys.modules
        loaded = sorted(
            m for m in sys.modules
            if m.split(".")[0] in ("trio", "trio_util", "sqlite3", "psycopg", "hypothesis")
            or m.startswith(("hephaestus_trio.runtime", "hephaestus_trio.storage"))
        )
        assert loaded == [], loaded
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_import_check_would_notice_trio() -> None:
    # Guard against a check that passes vacuously: importing trio is detected.
    code = "import sys, trio; assert 'trio' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


EXEMPT_MODULES = {Path("storage/_postgres_io.py")}


def library_files() -> list[Path]:
    exempt = {"runtime", "testing"}
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if not exempt & set(p.relative_to(PACKAGE).parts)
        and p.relative_to(PACKAGE) not in EXEMPT_MODULES
    )


def test_the_exempt_modules_exist() -> None:
    # An exemption for a file that moved would silently exempt nothing.
    assert all((PACKAGE / module).is_file() for module in EXEMPT_MODULES)


def test_only_runtime_opens_nurseries_channels_and_cancel_scopes() -> None:
    files = library_files()
    assert any(p.parts[-2] == "core" for p in files)
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == []


def test_the_grep_would_notice_a_nursery() -> None:
    assert FORBIDDEN.search("async with trio.open_nursery() as nursery:")
    assert FORBIDDEN.search("with trio.CancelScope() as scope:")
    assert FORBIDDEN.search("send, receive = trio.open_memory_channel(0)")
    assert not FORBIDDEN.search("trio.to_thread.run_sync(fn)")

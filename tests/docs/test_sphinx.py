"""The documentation builds with warnings as errors, and its API reference is complete."""

from __future__ import annotations

import inspect
import os
import posixpath
import subprocess
import sys
import types
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

import hephaestus_trio
import hephaestus_trio.engine
import hephaestus_trio.serialization
import hephaestus_trio.testing
import hephaestus_trio.testing.pytest_plugin

from ._snippets import ROOT

PUBLIC = [
    hephaestus_trio,
    hephaestus_trio.engine,
    hephaestus_trio.serialization,
    hephaestus_trio.testing,
    hephaestus_trio.testing.pytest_plugin,
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "docs"), str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.mark.slow
def test_the_docs_build_without_warnings(built: Path) -> None:
    for page in ("index", "getting-started", "testing", "web-app", "routes", "api"):
        assert (built / f"{page}.html").is_file(), page


@pytest.mark.slow
def test_every_public_name_is_in_the_api_reference(built: Path) -> None:
    with (built / "objects.inv").open("rb") as f:
        inventory = InventoryFile.load(f, "", posixpath.join)
    documented = {name for entries in inventory.values() for name in entries}
    missing = [
        f"{module.__name__}.{name}"
        for module in PUBLIC
        for name in module.__all__
        if f"{module.__name__}.{name}" not in documented
    ]
    assert missing == [], missing


def test_every_public_class_and_function_has_a_docstring() -> None:
    undocumented = []
    for module in PUBLIC:
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) or inspect.isclass(obj) or inspect.isroutine(obj):
                if not (inspect.getdoc(obj) or "").strip():
                    undocumented.append(f"{module.__name__}.{name}")
    assert undocumented == []

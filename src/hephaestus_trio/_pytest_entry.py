"""Entry point of the pytest plugin (``pytest11``): loads the fixtures if they can work.

Why a separate module: the fixtures live in ``hephaestus_trio.testing``,
which needs Hypothesis and pytest-trio (the ``test`` extra). pytest loads
every installed entry point at startup, so importing the fixtures
unconditionally would break the test suite of any project that installed
hephaestus-trio without that extra. Here they are loaded only when both are
importable; otherwise the plugin does nothing.
"""

from __future__ import annotations

import importlib.util

__all__ = ["pytest_plugins"]

_NEEDS = ("hypothesis", "pytest_trio")

pytest_plugins: list[str] = (
    ["hephaestus_trio.testing.pytest_plugin"]
    if all(importlib.util.find_spec(name) is not None for name in _NEEDS)
    else []
)

"""Both handlers import without their extras and say which extra to install when used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hephaestus_trio import HephaestusError, MissingExtra

WITHOUT_EXTRAS = textwrap.dedent(
    """
    import sys
    sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
    sys.modules["prometheus_client"] = None
    import hephaestus_trio
    from hephaestus_trio import MissingExtra, OpenTelemetryHandler, PrometheusHandler
    for make in (OpenTelemetryHandler, PrometheusHandler):
        try:
            make()
        except MissingExtra as exc:
            print(type(exc).__name__, exc.extra, exc.package, "|", exc)
        else:
            raise SystemExit(f"{make.__name__} was created without its extra")
    """
)


def test_using_a_handler_without_its_extra_names_the_extra() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "MissingExtra otel opentelemetry-api | OpenTelemetryHandler needs the "
        "'opentelemetry-api' package, which is not installed; install the extra with: "
        "pip install 'hephaestus-trio[otel]'",
        "MissingExtra prometheus prometheus-client | PrometheusHandler needs the "
        "'prometheus-client' package, which is not installed; install the extra with: "
        "pip install 'hephaestus-trio[prometheus]'",
    ]


def test_missing_extra_is_ours_and_an_import_error() -> None:
    error = MissingExtra("PrometheusHandler", "prometheus", "prometheus-client")
    assert isinstance(error, HephaestusError)
    assert isinstance(error, ImportError)
    with pytest.raises(MissingExtra, match=r"hephaestus-trio\[prometheus\]"):
        raise error

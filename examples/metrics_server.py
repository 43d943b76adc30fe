"""Serve Prometheus metrics of a running engine from a Trio app.

    pip install 'hephaestus-trio[prometheus]'
    python examples/metrics_server.py [--port 9464]     # 0 picks a free port
    curl http://127.0.0.1:9464/metrics

The app starts a small order workflow every few tenths of a second and serves
``/metrics`` on ``trio.serve_tcp`` with a few lines of HTTP: no thread and no
web framework, so a scrape reads the engine's gauges from the same Trio
thread that drives the runs. In an application that already has a web server,
serve ``generate_latest(registry)`` from one of its routes instead.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from hephaestus_trio import Done, PrometheusHandler, Step, Unique, Workflow, open_engine

__all__ = ["Order", "main", "run_app", "serve_metrics"]

_MAX_REQUEST = 64 * 1024


class Pack(Step):
    """Pretends to pack an order."""

    events = ("packed",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(0.05)
        return "packed"


class Order(Workflow, name="order", unique=Unique(key="order")):
    """pack --packed--> done."""

    start_at = Pack
    transitions = {(Pack, "packed"): Done}


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    request = b""
    with trio.move_on_after(5):  # a client that never finishes its request is dropped
        while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
            chunk = await stream.receive_some()
            if not chunk:
                break
            request += chunk
    parts = request.split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
        reply = _response("200 OK", generate_latest(registry), CONTENT_TYPE_LATEST)
    else:
        reply = _response("404 Not Found", b"try /metrics\n", "text/plain; charset=utf-8")
    try:
        await stream.send_all(reply)
    finally:
        await stream.aclose()


async def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    *,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` from ``registry`` on ``host:port``; reports the bound port."""

    async def handler(stream: trio.SocketStream) -> None:
        await _answer(stream, registry)

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)


async def run_app(
    port: int, *, every: float = 0.2, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run an engine that starts an order every ``every`` seconds, and serve its metrics."""
    registry = CollectorRegistry()
    async with (
        open_engine(workflows=[Order], handlers=[PrometheusHandler(registry)]) as engine,
        trio.open_nursery() as nursery,
    ):
        bound = await nursery.start(serve_metrics, registry, port)
        task_status.started(bound)
        for number in itertools.count(1):
            await engine.start_instance(Order, id=f"order::{number}")
            await trio.sleep(every)


def main(argv: list[str] | None = None) -> None:
    """Parse ``--port`` and run until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9464, help="0 picks a free port")
    args = parser.parse_args(argv)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_app, args.port)
            print(f"serving http://127.0.0.1:{bound}/metrics", flush=True)

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

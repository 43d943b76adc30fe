"""The commands ``graph``, ``resume`` and ``cancel``, and the helpers every command shares.

The read commands (``list``, ``show``, ``stats``) are in ``_inspect.py``.
``resume`` and ``cancel`` run no engine and never execute step code: they
validate against the stored run and add a wakeup row, which the engine that
owns the run applies (an application's engine running on the same storage
notices it within its poll interval). A cancel of a run nobody owns is applied here, with one fenced
write under a lease of the command's own.

The commands share their argument handling, error translation and storage
opening, which live here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

from .._errors import (
    AmbiguousInstance,
    HephaestusError,
    InstanceNotFound,
    NotCancellable,
    UnknownWorkflow,
)
from ..core._instance import Instance, Status
from ..core._json import check_json_safe
from ..core._workflow import Workflow, get_workflow
from ..runtime._calls import cancel_directly, request_cancel, resume_run
from ..storage import SQLiteStorage, Storage, storage_from_url
from ._progress import Progress

__all__ = [
    "CLIError",
    "cmd_cancel",
    "cmd_graph",
    "cmd_resume",
    "find_run",
    "format_table",
    "import_module",
    "open_storage",
    "short_workflow",
]


class CLIError(HephaestusError):
    """A user error the command line reports in one line (exit status 2)."""


# -- helpers ---------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned plain-text columns separated by two spaces."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def short_workflow(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _matches_workflow(instance: Instance, workflow: str | None) -> bool:
    return workflow is None or workflow in (instance.workflow, short_workflow(instance.workflow))


def import_module(spec: str) -> ModuleType:
    """Import ``spec``: a dotted module name (the current directory is importable)
    or a path to a ``.py`` file (imported under its file name).

    Raises:
        CLIError: the import failed (the message names the error).
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if spec.endswith(".py"):
            path = Path(spec)
            if not path.is_file():
                raise CLIError(f"cannot import {spec!r}: no such file")
            name = path.stem
            if name in sys.modules:
                if getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
                    return sys.modules[name]
                raise CLIError(
                    f"cannot import {spec!r}: another module named {name!r} is already "
                    "imported; import the file by its dotted module name instead"
                )
            loader_spec = importlib.util.spec_from_file_location(name, path.resolve())
            if loader_spec is None or loader_spec.loader is None:
                raise CLIError(f"cannot import {spec!r}: not a Python module")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        return importlib.import_module(spec)
    except CLIError:
        raise
    except Exception as exc:
        raise CLIError(f"cannot import {spec!r}: {type(exc).__name__}: {exc}") from exc


def import_workflows(modules: Sequence[str]) -> None:
    """Import every ``--workflow-module`` (their workflow classes register themselves)."""
    from . import _demo_flow  # noqa: F401  (the demo's OrderFlow is always known)

    for spec in modules:
        import_module(spec)


def open_storage(url: str, *, read_only: bool = False) -> Storage:
    """An unopened storage for ``url``; an SQLite file must already exist.

    With ``read_only`` (``list`` and ``show``) an SQLite file is opened
    read-only, so that it can be inspected on read-only media or without
    write permission, and is never migrated or otherwise written.

    Raises:
        CLIError: the URL is bad, or names a missing SQLite file (inspecting must
            not create an empty database by accident).
    """
    try:
        storage = storage_from_url(url)
    except Exception as exc:
        raise CLIError(str(exc)) from exc
    if isinstance(storage, SQLiteStorage) and not os.path.isfile(storage.path):
        raise CLIError(
            f"no SQLite database at {storage.path!r} (from {url!r}); "
            "run 'hephaestus-trio demo' to create the demo's, or pass --storage"
        )
    if read_only and isinstance(storage, SQLiteStorage):
        storage = SQLiteStorage(storage.path, read_only=True)
    return storage


async def find_run(storage: Storage, id: str, workflow: str | None) -> tuple[Instance, int]:
    """(the live run of ``id``, else its latest, number of runs); ``id`` may be a run id."""
    runs = [i for i in await storage.query(id=id) if _matches_workflow(i, workflow)]
    if not runs:
        by_run_id = await storage.get(id)
        if by_run_id is not None and _matches_workflow(by_run_id, workflow):
            return by_run_id, 1
        raise InstanceNotFound(id)
    live = [i for i in runs if i.status.is_live]
    if len(live) > 1:
        raise AmbiguousInstance(id, tuple(sorted(i.workflow for i in live)))
    return (live[0] if live else runs[-1]), len(runs)


def _describe(instance: Instance) -> str:
    """One line: where a run stands."""
    parts = [f"{instance.id} is {instance.status.value}"]
    running = sorted(instance.running_steps)
    if running:
        parts.append(f"running {', '.join(running)}")
    if instance.waiting_steps:
        parked = []
        for key in sorted(instance.waiting_steps):
            timers = [t for t in instance.timers if t.step == key]
            when = f" (timer {timers[0].event!r} at {_stamp(timers[0].fire_at)})" if timers else ""
            parked.append(key + when)
        parts.append(f"parked: {', '.join(parked)}")
    if instance.error is not None:
        parts.append(f"error: {instance.error}")
    return "; ".join(parts)


# -- graph ---------------------------------------------------------------------------


def cmd_graph(args: argparse.Namespace) -> int:
    """Print ``MODULE:Workflow`` as ASCII, Mermaid or (``--json``) its steps and edges."""
    module_name, colon, attribute = str(args.target).rpartition(":")
    if not colon or not module_name or not attribute:
        raise CLIError(
            f"expected MODULE:Workflow (e.g. examples.order_flow:OrderFlow), got {args.target!r}"
        )
    module = import_module(module_name)
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, Workflow)):
        raise CLIError(f"{args.target!r} is {obj!r}, not a Workflow class")
    if args.json:
        from ._views import graph_view

        print(json.dumps(graph_view(obj), indent=2))
        return 0
    text = obj.to_mermaid() if args.format == "mermaid" else obj.to_ascii()
    sys.stdout.write(text)
    return 0


# -- resume / cancel -------------------------------------------------------------------


def _workflow_of(instance: Instance) -> type[Workflow]:
    try:
        return get_workflow(instance.workflow)
    except UnknownWorkflow:
        raise CLIError(
            f"run {instance.id!r} uses workflow {instance.workflow!r}, which is not loaded; "
            "pass --workflow-module MODULE (the module that defines it)"
        ) from None


async def _watch(
    storage: Storage, run_id: str, seconds: float, done: Callable[[Instance, list[Any]], bool]
) -> Instance | None:
    """Re-read run ``run_id`` until ``done(run, wakeups)`` or ``seconds`` pass; the last read."""
    last: Instance | None = None
    with trio.move_on_after(seconds):
        while True:
            last = await storage.get(run_id)
            if last is None or done(last, await storage.wakeups(run_id)):
                return last
            await trio.sleep(0.1)
    return last


async def cmd_resume(args: argparse.Namespace) -> int:
    """Record a resume for a run; the engine that owns it applies it (no step runs here)."""
    import_workflows(args.workflow_modules)
    payload = _payload(args.payload)
    progress = Progress()
    progress.source = "resume"
    async with open_storage(args.storage) as storage:
        run, _ = await find_run(storage, args.id, args.workflow)
        now = datetime.now(UTC)
        recorded, _ = await resume_run(
            storage,
            _workflow_of,
            args.id,
            args.event,
            payload,
            step=args.step,
            workflow=args.workflow,
            dedup_key=args.dedup_key,
            now=now,
            max_pending=None,
        )
        if recorded is None:
            progress.say(f"dedup key {args.dedup_key!r} was already recorded: nothing to do")
            return 0
        how = " (recorded durably)" if storage.durable else ""
        progress.say(f"resume {args.event!r} accepted{how}", subject=args.id)

        def applied(current: Instance, wakeups: list[Any]) -> bool:
            return current.is_terminal or all(w.seq != recorded.seq for w in wakeups)

        after = await _watch(storage, run.run_id, args.wait, applied)
        still = after is not None and not applied(after, await storage.wakeups(run.run_id))
    if after is not None:
        print(_describe(after))
    if still:
        print(
            f"the resume is recorded and not applied yet after {args.wait:g}s: an engine "
            "running this workflow applies it when it claims the run"
        )
    return 0


def _payload(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CLIError(f"--payload is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CLIError(f"--payload must be a JSON object, got {type(value).__name__}")
    try:
        check_json_safe(value, "payload")
    except TypeError as exc:
        raise CLIError(str(exc)) from None
    return value


async def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a live run: a request its owner applies, or one direct write if it has none."""
    import_workflows(args.workflow_modules)
    async with open_storage(args.storage) as storage:
        run, _ = await find_run(storage, args.id, args.workflow)
        if not run.status.is_live:
            raise NotCancellable(run.id, run.status.value)
        now = datetime.now(UTC)
        await request_cancel(storage, run, now=now)
        # Nobody owns it (no engine runs, or it hibernates): apply it here with
        # one fenced write under a lease of our own. No step code runs.
        for lease in await storage.claim(
            f"cli-{uuid.uuid4()}", now=now, ttl=30.0, workflows=None, limit=1, run_ids=[run.run_id]
        ):
            await cancel_directly(storage, lease, now=datetime.now(UTC))
        after = await _watch(storage, run.run_id, args.wait, lambda r, _: r.is_terminal)
    if after is None or not after.is_terminal:
        print(
            f"cancel of {run.id} is recorded; the engine that owns the run has not applied "
            f"it after {args.wait:g}s (it will, within one poll interval of noticing)"
        )
        return 0
    if after.status is not Status.CANCELLED:
        raise NotCancellable(after.id, after.status.value)
    print(f"cancelled {after.id} (run {after.run_id}; it was {run.status.value})")
    return 0

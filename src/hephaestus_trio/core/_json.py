"""JSON-safety: what may go into a context so that it round-trips unchanged."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

__all__ = ["MAX_DEPTH", "check_json_safe"]

MAX_DEPTH = 100
"""Deepest nesting of dicts and lists a JSON-safe value may have (the value itself is level 1).

Why a bound at all: ``json.dumps``/``json.loads`` and the cattrs converter
recurse once (or more) per level, so data nested a few hundred levels deep
fails the *save* with ``RecursionError`` after the check let it through, and
data deeper still cannot be checked recursively either. Why 100: it is far
beyond any real context (a handful of levels), yet far below where
``json``/cattrs give up under Python's default recursion limit of 1000 (on
CPython 3.11 the round trip of a persisted instance fails between 300 and 400
levels, from an empty stack): a margin of three or more for the levels the
persisted document wraps around the value (instance, context, steps) and for
the caller's own frames (Trio, the engine) already on the stack.
"""

_Where = tuple[Any, str] | None
"""A key path as a linked list: ``(parent path, "[key]")``, or ``None`` for the root."""


# A refused path longer than this many levels is shown as its head and its tail.
_PATH_HEAD = 8
_PATH_TAIL = 4


def check_json_safe(value: Any, path: str = "value") -> None:
    """Raise ``TypeError`` naming the key path if ``value`` would not round-trip.

    Allowed: dicts with string keys, lists, strings, ints, finite floats, bools
    and ``None``, nested at most ``MAX_DEPTH`` dicts/lists deep (deeper data,
    including a container that contains itself, is refused). Tuples are refused
    (they would come back as lists) and so are NaN and infinities (not JSON).

    The walk is iterative, so any input, however deep, gets ``TypeError`` and
    never ``RecursionError``; it stops at the first problem, in document order.
    """
    # Depth-first in document order, with a stack of child iterators instead of
    # the call stack. A path is a linked list (parent, step), turned into text
    # only when an error needs it.
    frames: list[tuple[Iterator[tuple[str, Any]], _Where, int]] = []
    item, where, depth = value, None, 1
    while True:
        children = _children(item, path, where, depth)
        if children is not None:
            frames.append((children, where, depth))
        while frames:
            children, parent, parent_depth = frames[-1]
            following = next(children, None)
            if following is not None:
                step, item = following
                where, depth = (parent, step), parent_depth + 1
                break
            frames.pop()
        else:
            return


def _children(item: Any, root: str, where: _Where, depth: int) -> Iterator[tuple[str, Any]] | None:
    """``None`` for a JSON-safe scalar, an iterator of ``(step, child)`` for a container.

    Raises:
        TypeError: ``item`` is not JSON-safe, or is a container nested too deep.
    """
    if item is None or isinstance(item, str | bool | int):
        return None
    if isinstance(item, float):
        if not math.isfinite(item):
            at = _render(root, where)
            raise TypeError(f"{at} is {item!r}: NaN and infinities are not JSON-safe")
        return None
    if isinstance(item, dict | list):
        if depth > MAX_DEPTH:
            raise TypeError(
                f"{_render(root, where)} is nested {depth} levels deep: JSON-safe data "
                f"nests at most {MAX_DEPTH} levels of dicts and lists"
            )
        if isinstance(item, list):
            return ((f"[{index}]", child) for index, child in enumerate(item))
        return _dict_children(item, root, where)
    hint = " (use a list)" if isinstance(item, tuple | set | frozenset) else ""
    raise TypeError(
        f"{_render(root, where)} is a {type(item).__name__}, which is not JSON-safe{hint}; "
        "contexts hold only dict, list, str, int, float, bool and None"
    )


def _dict_children(item: dict[Any, Any], root: str, where: _Where) -> Iterator[tuple[str, Any]]:
    for key, child in item.items():
        if not isinstance(key, str):
            raise TypeError(
                f"{_render(root, where)} has key {key!r} of type {type(key).__name__}: "
                "only string keys are JSON-safe"
            )
        yield f"[{key!r}]", child


def _render(root: str, where: _Where) -> str:
    """``root`` followed by the steps of ``where``; a very long path keeps its head and tail."""
    steps: list[str] = []
    while where is not None:
        where, step = where
        steps.append(step)
    steps.reverse()
    if len(steps) > _PATH_HEAD + _PATH_TAIL:
        hidden = len(steps) - _PATH_HEAD - _PATH_TAIL
        steps = [*steps[:_PATH_HEAD], f"...({hidden} more levels)...", *steps[-_PATH_TAIL:]]
    return root + "".join(steps)

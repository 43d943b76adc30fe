"""Deeply nested data: refused by the JSON-safety check with TypeError, never RecursionError.

Randomized fault injection found contexts nested ~400 levels deep that passed
the check and then crashed the save inside ``json.dumps``. The check now
refuses more than ``MAX_DEPTH`` levels of dicts and lists, and walks the value
without recursion, so even 100,000 levels give the documented ``TypeError``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from hephaestus_trio import Instance
from hephaestus_trio.core._json import MAX_DEPTH
from hephaestus_trio.serialization import check_json_safe, dumps, loads


def nested_lists(levels: int, leaf: Any = 1) -> Any:
    """``levels`` lists, one inside the other, around ``leaf`` (built without recursion)."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def nested_dicts(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"k": value}
    return value


def test_the_bound_is_documented_and_far_below_what_json_handles() -> None:
    assert MAX_DEPTH == 100
    # The deepest accepted context round-trips through the persisted document.
    instance = Instance.new("tests.Deep", {"a": nested_lists(MAX_DEPTH - 1)}, id="deep::ok")
    assert loads(dumps(instance)) == instance


@pytest.mark.parametrize("build", [nested_lists, nested_dicts])
@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, MAX_DEPTH])
def test_up_to_max_depth_levels_are_accepted(build: Any, levels: int) -> None:
    check_json_safe(build(levels))
    check_json_safe(build(levels, leaf=None))


@pytest.mark.parametrize("build", [nested_lists, nested_dicts])
def test_one_level_more_is_refused_naming_the_path(build: Any) -> None:
    with pytest.raises(TypeError) as caught:
        check_json_safe(build(MAX_DEPTH + 1), "payload")
    message = str(caught.value)
    assert "nested 101 levels deep" in message
    assert "at most 100 levels" in message
    step = r"\[0\]" if build is nested_lists else r"\['k'\]"
    # The 101st container sits 100 steps below the root: head, elision, tail.
    assert re.match(rf"payload({step}){{8}}\.\.\.\(88 more levels\)\.\.\.({step}){{4}} is", message)


def test_scalars_at_the_deepest_level_do_not_count_as_a_level() -> None:
    check_json_safe(nested_lists(MAX_DEPTH, leaf="text"))
    with pytest.raises(TypeError, match="nested 101 levels"):
        check_json_safe(nested_lists(MAX_DEPTH, leaf=[]))


@pytest.mark.parametrize("build", [nested_lists, nested_dicts])
def test_a_hundred_thousand_levels_give_type_error_not_recursion_error(build: Any) -> None:
    deep = build(100_000)
    with pytest.raises(TypeError, match=r"^context\[.*more levels.* is nested 101 levels deep"):
        check_json_safe(deep, "context")


def test_a_short_path_is_shown_whole() -> None:
    value: Any = {"orders": [{"lines": nested_lists(MAX_DEPTH - 2)}]}
    with pytest.raises(TypeError) as caught:
        check_json_safe(value)
    message = str(caught.value)
    assert message.startswith("value['orders'][0]['lines'][0]")
    assert "more levels" in message  # 101 steps: elided
    shallow: Any = {"a": [1, {"b": (1,)}]}
    with pytest.raises(TypeError, match=r"^value\['a'\]\[1\]\['b'\] is a tuple"):
        check_json_safe(shallow)


def test_a_container_holding_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="levels deep"):
        check_json_safe(loop)
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(TypeError, match="levels deep"):
        check_json_safe(cycle)


def test_errors_are_still_reported_in_document_order() -> None:
    # The first problem met depth-first wins, exactly as the recursive check did.
    with pytest.raises(TypeError, match=r"^value\['a'\]\[0\] is a tuple"):
        check_json_safe({"a": [(1,)], 2: "bad key", "c": float("nan")})
    with pytest.raises(TypeError, match="has key 2 of type int"):
        check_json_safe({"a": [1], 2: "bad key", "c": float("nan")})
    with pytest.raises(TypeError, match=r"value\['c'\] is nan"):
        check_json_safe({"a": [1], "c": float("nan"), "d": nested_lists(500)})


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 400, 100_000])
def test_instance_new_refuses_a_deep_context(levels: int) -> None:
    with pytest.raises(TypeError, match=r"^context\['a'\].* levels deep"):
        Instance.new("tests.Deep", {"a": nested_dicts(levels)}, id="deep::x")
    with pytest.raises(TypeError, match=r"^telemetry_metadata\['t'\].* levels deep"):
        Instance.new("tests.Deep", {}, id="deep::x", telemetry_metadata={"t": nested_lists(levels)})


def test_instance_new_accepts_a_context_at_the_bound() -> None:
    # The context dict itself is level 1, so its value may nest MAX_DEPTH - 1 more.
    Instance.new("tests.Deep", {"a": nested_dicts(MAX_DEPTH - 1)}, id="deep::x")
    with pytest.raises(TypeError, match="nested 101 levels"):
        Instance.new("tests.Deep", {"a": nested_dicts(MAX_DEPTH)}, id="deep::x")

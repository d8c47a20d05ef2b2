"""JSON equality stays exact however it is computed: against a definition by canonical forms."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.values import Aside, is_empty, same, same_except

EMPTY = ("empty",)


def canonical(value: object) -> object:
    """Equal JSON values have equal forms: empty members dropped, key order gone, booleans apart from numbers."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)  # 1 == 1.0, and they hash alike
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("list", tuple(canonical(item) for item in value)) if value else EMPTY
    if isinstance(value, dict):
        members = frozenset((key, form) for key, item in value.items() if (form := canonical(item)) != EMPTY)
        return ("map", members) if members else EMPTY
    assert value is None
    return EMPTY


def same_except_by_definition(a: object, b: object, aside: dict) -> bool:
    a = {} if canonical(a) == EMPTY else a
    b = {} if canonical(b) == EMPTY else b
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return canonical(a) == canonical(b)
    for key in a.keys() | b.keys():
        if key in aside:
            if aside[key] is not None and not same_except_by_definition(a.get(key), b.get(key), aside[key]):
                return False
        elif canonical(a.get(key)) != canonical(b.get(key)):
            return False
    return True


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, 2**64, float(2**64), 1e300, float("inf"), "", "true", "\ud800"]),
    st.floats(allow_nan=False), st.text(max_size=3),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.sampled_from("abc"), inner, max_size=3)),
                      max_leaves=15)
ASIDE = {"a": None, "b": {"a": None, "c": {"b": None}}}


@st.composite
def near(draw, value):
    """A value that is often the same JSON as `value`, written differently, or differs in one small way."""
    if isinstance(value, dict):
        keys = list(value)
        if draw(st.booleans()):
            keys.reverse()
        out = {key: draw(near(value[key])) for key in keys if draw(st.integers(0, 9))}
        if not draw(st.integers(0, 4)):
            out[draw(st.sampled_from("abcd"))] = draw(st.sampled_from([None, {}, [], 0, False]))
        return out
    if isinstance(value, list):
        return [draw(near(item)) for item in value] if draw(st.integers(0, 8)) else value[:-1]
    return draw(st.sampled_from([value, copy.deepcopy(value), None, {}, []] + (
        [float(value), value == 1] if type(value) is int and abs(value) < 2**53 else [])))


TRICKY = [  # where Python's == or the JSON text alone would be wrong
    ([1], [True]), ({"a": 0}, {"a": False}), ([1.0], [True]), ({"a": float("inf")}, {"a": None}),
    ([float("inf")], [None]), ({"a": 1}, {"a": 1.0}), ({"a": -0.0}, {"a": 0}), ([2**64 + 1], [2**64 + 1]),
    ([2**64 + 1], [2**64 + 2]), ({"a": 1, "b": 2}, {"b": 2, "a": 1}), ({"a": None}, {}), ({"a": []}, {"b": {}}),
    ([None], [{}]), ([[]], []), (["\ud800"], ["\ud800"]), ({"a": {"b": [1, {"c": None}]}}, {"a": {"b": [1, {}]}}),
]


@pytest.mark.parametrize("a, b", TRICKY)
def test_same_where_python_or_the_text_would_be_wrong(a, b):
    for x, y in ((a, b), (b, a)):
        assert same(x, y) == (canonical(x) == canonical(y))
        assert same_except({"x": x}, {"x": y}, Aside.of(ASIDE)) == same_except_by_definition({"x": x}, {"x": y}, ASIDE)


@settings(max_examples=400, deadline=None)
@given(values, st.data())
def test_same_is_json_equality(a, data):
    b = data.draw(near(a)) if data.draw(st.booleans()) else data.draw(values)
    for x, y in ((a, b), (b, a), (a, copy.deepcopy(a))):
        assert same(x, y) == (canonical(x) == canonical(y)), (x, y)
        assert is_empty(x) == (canonical(x) == EMPTY), x


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_same_except_ignores_exactly_what_is_set_aside(a, data):
    b = data.draw(near(a))
    for x, y in ((a, b), ({"b": a, "c": b}, {"b": b, "c": b}), ({"a": a, "b": {"c": {"b": a}}}, {"b": {"c": {}}})):
        assert same_except(x, y, Aside.of(ASIDE)) == same_except_by_definition(x, y, ASIDE), (x, y)


def test_the_walk_takes_every_depth_the_parser_accepts():
    """Compiled (setup.py), the walk recurses on the C stack, with no recursion limit of its own: what bounds it
    is the parser (orjson stops at 1024 levels, json at the interpreter's recursion limit). Both hold here, and
    the deepest document they accept compares in a thread, as a worker's threads compare it."""
    from concurrent.futures import ThreadPoolExecutor

    from webhook import jsoncodec

    with pytest.raises((RecursionError, ValueError)):
        jsoncodec.loads(b"[" * 1100 + b"]" * 1100)
    deepest = b"[" * 1024 + b"]" * 1024
    a, b = jsoncodec.loads(deepest), jsoncodec.loads(deepest.replace(b"[]", b"[1]"))
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(same, a, a).result() and not pool.submit(same, a, b).result()
        assert pool.submit(same_except, {"x": a}, {"x": b}, Aside.of({"x": None})).result()

"""JSON value semantics for the decision: equality as the apiserver means it, and summaries for people.

Key order never matters and list order does; an absent member, `null`, and an empty map or list are the
same value; `true` is not `1` (Python's `==` says it is).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

_NUMBER: Final[tuple[type, ...]] = (int, float)
_WORD_START: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PLURAL: Final = re.compile(r"(ses|s)$")
_WORDS: Final[dict[tuple[str, int], str]] = {}  # (key, count) -> its words, see `_words`
_REMEMBERED: Final = 1024


def is_empty(value: object) -> bool:
    if value is None:
        return True
    if type(value) is list:
        return not value
    if type(value) is not dict:
        return False
    for inner in value.values():
        if inner is None:
            continue
        if type(inner) is list:
            if inner:
                return False
        elif type(inner) is not dict or not is_empty(inner):
            return False
    return True


def same(a: object, b: object) -> bool:
    """JSON equality with absent == null == {} == []: a walk of both values side by side (compiled, see setup.py;
    a 1 MiB status compares in about 2 ms)."""
    if a is b:
        return True
    if type(a) is dict and type(b) is dict:
        shared = 0  # keys of `a` that `b` has: when they are all of b's, b has nothing more to look at
        for key, va in a.items():
            vb = b.get(key)
            if vb is not None or key in b:
                shared += 1
            kind = type(va)
            if kind is type(vb) and kind is not dict and kind is not list:
                if va is not vb and va != vb:
                    return False
            elif not same(va, vb):
                return False
        if shared == len(b):
            return True
        for key, vb in b.items():
            if key not in a and not is_empty(vb):
                return False
        return True
    if type(a) is list and type(b) is list:
        if len(a) != len(b):
            return False
        for va, vb in zip(a, b):
            if not same(va, vb):
                return False
        return True
    if type(a) is type(b):
        return a == b
    empty_a, empty_b = is_empty(a), is_empty(b)
    if empty_a or empty_b:
        return empty_a and empty_b
    return type(a) in _NUMBER and type(b) in _NUMBER and a == b


class Aside(NamedTuple):
    """Members a comparison leaves out, from a tree of key -> subtree of what to leave out, or None for all of it:
    `{"status": None, "metadata": {"labels": {"a": None}}}`. Made once per configuration, for `same_except`."""

    members: frozenset[str]  # every key the tree names: none of them is compared as a whole
    inside: tuple[tuple[str, Aside], ...]  # the keys whose values are compared except for some of their own

    @classmethod
    def of(cls, tree: dict) -> Aside:
        return cls(frozenset(tree), tuple((key, cls.of(inner)) for key, inner in tree.items() if inner is not None))


def same_except(a: object, b: object, aside: Aside) -> bool:
    """`same`, ignoring the members `aside` names.

    Runs on every examined write: walks both maps side by side rather than comparing copies without those
    members (the copies cost more than the comparison)."""
    if type(a) is not dict or type(b) is not dict:
        return same(_without(a, aside), _without(b, aside))
    members = aside.members
    for key, inner in aside.inside:
        if not same_except(a.get(key), b.get(key), inner):
            return False
    shared = 0  # as in `same`
    for key, va in a.items():
        if key in members:
            if key in b:
                shared += 1
            continue
        vb = b.get(key)
        if vb is not None or key in b:
            shared += 1
        kind = type(va)
        if kind is type(vb) and kind is not dict and kind is not list:
            if va is not vb and va != vb:
                return False
        elif not same(va, vb):
            return False
    if shared == len(b):
        return True
    for key, vb in b.items():
        if key not in a and key not in members and not is_empty(vb):
            return False
    return True


def _without(value: object, aside: Aside) -> object:
    """A copy of the maps along `aside` without the members it names (the rest is shared, not copied)."""
    if type(value) is not dict:
        return value
    kept = {key: inner for key, inner in value.items() if key not in aside.members}
    for key, inner_aside in aside.inside:
        if key in value:
            kept[key] = _without(value[key], inner_aside)
    return kept


def lookup(obj: object, keys: tuple[str, ...]) -> object:
    """The value at a path of map keys, None when any step is missing or not a map."""
    for key in keys:
        if type(obj) is not dict:
            return None
        obj = obj.get(key)
    return obj


def json_pointer(keys: tuple[str, ...]) -> str:
    """The RFC 6901 JSON Pointer to a path of map keys, escaped, as a JSON Patch names a member."""
    return "".join(["/" + key.replace("~", "~0").replace("/", "~1") for key in keys])


def _words(key: str, count: int) -> str:
    """`nodeStatuses`, 3 -> `3 node statuses`; `conditions`, 1 -> `1 condition`. A status has few keys, and the
    same ones in every review: the words are remembered (for short keys, and up to `_REMEMBERED` of them)."""
    words = _WORDS.get((key, count))
    if words is None:
        words = _WORD_START.sub(" ", key).lower()
        if count == 1:
            words = _PLURAL.sub(lambda m: "s" if m.group(1) == "ses" else "", words)
        words = f"{count} {words}"
        if len(key) <= 64 and len(_WORDS) < _REMEMBERED:
            _WORDS[key, count] = words
    return words


def _contents(value: dict) -> str:
    """The members of a map that hold something, lists and maps counted: `7 conditions, imageID`."""
    parts = []
    for key, inner in value.items():
        kind = type(inner)
        if kind is list:
            if inner:
                parts.append(_words(key, len(inner)))
        elif kind is dict:
            if not is_empty(inner):
                parts.append(_words(key, len(inner)))
        elif inner is not None:
            parts.append(key)
    return ", ".join(parts)


def describe(path: object, old: object, new: object) -> str:
    """What a person loses when `old` becomes `new` at `path`: `status: 7 conditions, 3 node statuses, upgradeLog`."""
    empty_old, empty_new = is_empty(old), is_empty(new)
    if empty_new and not empty_old and isinstance(old, dict):
        return f"{path}: {_contents(old)}"
    if empty_new or type(old) is not dict or type(new) is not dict:
        if empty_old:
            return f"{path} (set where there was none)"
        return f"{path}" if empty_new else f"{path} (changed)"
    changed = [key for key in old.keys() | new.keys() if not same(old.get(key), new.get(key))]
    return f"{path} (changed: {', '.join(sorted(changed))})"

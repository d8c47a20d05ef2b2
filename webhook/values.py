"""JSON value semantics for the decision: equality as the apiserver means it, and summaries for people.

Key order never matters and list order does; an absent member, `null`, and an empty map or list are the
same value; `true` is not `1` (Python's `==` says it is).
"""

from __future__ import annotations

import re

_NUMBER = (int, float)


def is_empty(value: object) -> bool:
    if value is None:
        return True
    kind = type(value)
    if kind is dict:
        return all(is_empty(v) for v in value.values())
    return kind is list and not value


def same(a: object, b: object) -> bool:
    """JSON equality with absent == null == {} == []."""
    if a is b:
        return True
    ta, tb = type(a), type(b)
    if ta is dict and tb is dict:
        for key, va in a.items():
            if not same(va, b.get(key)):
                return False
        return all(key in a or is_empty(vb) for key, vb in b.items())
    if ta is list and tb is list:
        return len(a) == len(b) and all(map(same, a, b))
    if ta is tb:
        return a == b
    if is_empty(a) or is_empty(b):
        return is_empty(a) and is_empty(b)
    return ta in _NUMBER and tb in _NUMBER and a == b


def same_except(a: object, b: object, aside: dict) -> bool:
    """`same`, ignoring the members named in `aside` (key -> subtree of what to ignore, or None for all)."""
    if is_empty(a):
        a = {}
    if is_empty(b):
        b = {}
    if type(a) is not dict or type(b) is not dict:
        return same(a, b)
    for key in a.keys() | b.keys():
        if key in aside:
            inner = aside[key]
            if inner is not None and not same_except(a.get(key), b.get(key), inner):
                return False
        elif not same(a.get(key), b.get(key)):
            return False
    return True


def lookup(obj: object, keys: tuple[str, ...]) -> object:
    """The value at a path of map keys, None when any step is missing or not a map."""
    for key in keys:
        if type(obj) is not dict:
            return None
        obj = obj.get(key)
    return obj


def _words(key: str, count: int) -> str:
    """`nodeStatuses`, 3 -> `3 node statuses`; `conditions`, 1 -> `1 condition`."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).lower()
    if count == 1:
        words = re.sub(r"(ses|s)$", lambda m: "s" if m.group(1) == "ses" else "", words)
    return f"{count} {words}"


def _contents(value: dict) -> str:
    parts = []
    for key, inner in value.items():
        if is_empty(inner):
            continue
        parts.append(_words(key, len(inner)) if isinstance(inner, (dict, list)) else key)
    return ", ".join(parts)


def describe(path: object, old: object, new: object) -> str:
    """What a person loses when `old` becomes `new` at `path`: `status: 7 conditions, 3 node statuses, upgradeLog`."""
    if is_empty(new) and isinstance(old, dict) and not is_empty(old):
        return f"{path}: {_contents(old)}"
    if is_empty(new) or type(old) is not dict or type(new) is not dict:
        if is_empty(old):
            return f"{path} (set where there was none)"
        return f"{path}" if is_empty(new) else f"{path} (changed)"
    changed = [key for key in old.keys() | new.keys() if not same(old.get(key), new.get(key))]
    return f"{path} (changed: {', '.join(sorted(changed))})"

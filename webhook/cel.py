"""The guard's rule in CEL, written for kube-apiserver from the same `Config` that `decide` reads.

- `match_conditions`: when the apiserver calls the webhooks at all. Default mode: a non-exempt writer changes the
  read-message label; strict mode: a non-exempt writer changes a protected field. Every write the guard could
  object to passes them, so the guard never misses one; every other write never waits on it.
- `policy`: the whole decision, for a ValidatingAdmissionPolicy (no webhook).

Standard CEL only (`has()`, `in`, `type()`, `all`, `exists`, the `object`, `oldObject`, `request` and, in a
policy, `variables` names), and null-safe: a CEL error counts as a failed webhook call, so no expression may fail
on an object without metadata, without labels, or with `null` where a map is expected.
"""

from __future__ import annotations

import json
import re

from webhook.config import Config

_IDENTIFIER = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_RESERVED = frozenset({"as", "break", "const", "continue", "else", "false", "for", "function", "if", "import", "in",
                       "let", "loop", "package", "namespace", "null", "return", "true", "var", "void", "while"})
_AND = "\n&& "


def literal(text: str) -> str:
    """A CEL string literal (JSON's escapes are CEL's; non-ASCII is written as is, never as surrogate pairs)."""
    return json.dumps(text, ensure_ascii=False)


def _strings(items) -> str:
    return "[" + ", ".join(literal(i) for i in sorted(items)) + "]"


def _plain(key: str) -> bool:
    return bool(_IDENTIFIER.fullmatch(key)) and key not in _RESERVED


def _select(base: str, key: str) -> str:
    return f"{base}.{key}" if _plain(key) else f"{base}[{literal(key)}]"


def _has(base: str, key: str) -> str:
    return f"has({base}.{key})" if _plain(key) else f"{literal(key)} in {base}"


def _reach(var: str, keys: tuple[str, ...]) -> tuple[list[str], str]:
    """The tests that make `var.keys...` safe to read (every step below the object a map that has the next key),
    and the read. The object itself is a map: the rules send UPDATEs only, which carry both."""
    tests, expr = [], var
    for depth, key in enumerate(keys):
        tests += ([f"type({expr}) == map"] if depth else []) + [_has(expr, key)]
        expr = _select(expr, key)
    return tests, expr


def value_at(var: str, keys: tuple[str, ...]) -> str:
    """The value at a path, `null` when any step is missing or not a map."""
    tests, expr = _reach(var, keys)
    return f"({' && '.join(tests)} ? {expr} : null)" if tests else expr


def map_at(var: str, keys: tuple[str, ...]) -> str:
    """The map at a path, `{}` when it is missing or not a map."""
    tests, expr = _reach(var, keys)
    return f"({' && '.join(tests + [f'type({expr}) == map'])} ? {expr} : {{}})"


def empty(expr: str) -> str:
    return f"({expr} == null || {expr} == {{}} || {expr} == [])"


def same(a: str, b: str) -> str:
    """JSON equality with absent == null == {} == [] at the top (not inside: see the README)."""
    return f"({a} == {b} || {empty(a)} && {empty(b)})"


def not_exempt(config: Config) -> str:
    tests = []
    if config.exempt_users:
        tests.append(f"!(has(request.userInfo.username)"
                     f" && request.userInfo.username in {_strings(config.exempt_users)})")
    if config.exempt_groups:
        tests.append(f"!(has(request.userInfo.groups)"
                     f" && request.userInfo.groups.exists(g, g in {_strings(config.exempt_groups)}))")
    return _AND.join(tests) or "true"


def label_changed(config: Config) -> str:
    keys = ("metadata", "labels", config.label)
    return f"{value_at('object', keys)}\n!= {value_at('oldObject', keys)}"


def protected_changed(config: Config) -> str:
    """Plain `!=`: it may also send a write that only turns an absent field into an empty one; the guard allows it."""
    return "\n|| ".join(f"{value_at('object', p.keys)} != {value_at('oldObject', p.keys)}" for p in config.protected)


def match_conditions(config: Config) -> list[dict]:
    """The exempt-writer test is a condition of its own, so an apiserver's metrics and audit name what let a write
    skip the guard."""
    conditions = [{"name": "not-exempt-writer", "expression": not_exempt(config)}]
    if config.strict:
        conditions.append({"name": "protected-field-changed", "expression": protected_changed(config)})
    else:
        conditions.append({"name": "read-message-label-changed", "expression": label_changed(config)})
    return conditions


class _Variables:
    """A policy's `variables`, named for the paths they read, so each value is computed once and the expressions
    that use them stay readable."""

    def __init__(self) -> None:
        self.declared: list[dict] = []

    def add(self, name: str, expression: str) -> str:
        taken = {v["name"] for v in self.declared}
        unique = next(f"{name}{n or ''}" for n in range(len(taken) + 1) if f"{name}{n or ''}" not in taken)
        self.declared.append({"name": unique, "expression": expression})
        return f"variables.{unique}"

    def at(self, side: str, keys: tuple[str, ...], reader) -> str:
        words = [re.sub(r"[^A-Za-z0-9]+", "_", key) for key in keys]
        var = "object" if side == "new" else "oldObject"
        return self.add(side + "".join(w[:1].upper() + w[1:] for w in words), reader(var, keys))


def _unchanged_except(variables: _Variables, path: tuple[str, ...], aside: dict) -> list[str]:
    """The maps at `path` in object and oldObject agree on every member not in `aside` (recursing where `aside`
    names a subtree); as `values.same_except`, with emptiness read one level deep."""
    new = variables.at("new", path, map_at) if path else "object"
    old = variables.at("old", path, map_at) if path else "oldObject"
    skip = _strings(aside)
    tests = [
        f"{new}.all(k, k in {skip} || (k in {old} ? {same(f'{new}[k]', f'{old}[k]')} : {empty(f'{new}[k]')}))",
        f"{old}.all(k, k in {skip} || k in {new} || {empty(f'{old}[k]')})",
    ]
    for key, inner in aside.items():
        if inner is not None:
            tests += _unchanged_except(variables, path + (key,), inner)
    return tests


def policy(config: Config) -> dict:
    """A ValidatingAdmissionPolicy's `variables` and `validations`, to follow the webhooks' matchConditions.

    Variables: the maps and values read more than once, then `labelOnly` (default mode: the write changes nothing
    but the label, the apiserver's bookkeeping and the protected fields) and `lost` (the protected fields it
    changes, each after a space; "" when none)."""
    variables = _Variables()
    why = ("the Upgrade CRD has no status subresource, so a saved object without them wipes the upgrade's history "
           "and the controller restarts it")
    if config.strict:
        why = "strict mode: only exempt writers may change protected fields"
        advice = ("Leave these fields out of the write (kubectl label, annotate and patch keep them as stored); "
                  "an admin who must edit them by hand needs an exempt user or group.")
        advice_expression = literal(advice)
        expression = 'variables.lost == ""'
    else:
        variables.add("labelOnly", _AND.join(_unchanged_except(variables, (), config.set_aside)))
        advice = (f"To make the same change safely, change the label only: kubectl -n NAMESPACE label upgrade NAME "
                  f"{config.label}=VALUE (or {config.label}- to remove it).")
        label = variables.add("newLabel", value_at("object", ("metadata", "labels", config.label)))
        advice_expression = (f'"To make the same change safely, change the label only: kubectl -n "'
                             f' + request.namespace + " label upgrade " + request.name + " "'
                             f'\n+ {literal(config.label)} + ({label} == null ? "-" : "=" + string({label}))')
        expression = '!variables.labelOnly || variables.lost == ""'
    lost = []
    for path in config.protected:
        new, old = variables.at("new", path.keys, value_at), variables.at("old", path.keys, value_at)
        lost.append(f"({same(new, old)} ? \"\" : {literal(' ' + str(path))})")
    variables.add("lost", "\n+ ".join(lost))
    return {"variables": variables.declared, "validations": [{
        "expression": expression,
        "message": f"This write would lose protected fields ({why}). {advice}",
        "messageExpression": (f'"This write to Upgrade " + request.namespace + "/" + request.name + " would lose"'
                              f' + variables.lost + {literal(f" ({why}). ")}\n+ {advice_expression}'),
        "reason": "Forbidden",
    }]}

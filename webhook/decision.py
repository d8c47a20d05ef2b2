"""The decision: given the stored and the written Upgrade, who writes, and the config, allow or find a violation.

Pure: no I/O, no web framework, no globals. Everything the guard promises is decided here.
"""

from __future__ import annotations

from typing import Any, Final, cast

from webhook.config import Config, FieldPath
from webhook.values import describe, json_pointer, lookup, same, same_except

GROUP: Final = "harvesterhci.io"
KIND: Final = "Upgrade"
MISSING: Final = object()
Labels = tuple[object, object]  # the read-message label's value in the stored and in the written object, or MISSING


class Request:
    """The parts of an admission request the decision needs, already taken out of the review.

    A plain class, as Decision: compiled (setup.py), one is made for every review at C speed, where a named
    tuple's constructor is Python the interpreter runs."""

    operation: str
    group: str
    kind: str
    subresource: str
    namespace: str
    name: str
    user: str
    groups: tuple[str, ...]
    old: Any  # the stored and the written object: any JSON value as sent (`examined` wants two maps)
    new: Any
    dry_run: bool

    def __init__(self, operation: str, group: str, kind: str, subresource: str, namespace: str, name: str,
                 user: str, groups: tuple[str, ...], old: Any, new: Any, dry_run: bool = False) -> None:
        self.operation, self.group, self.kind, self.subresource = operation, group, kind, subresource
        self.namespace, self.name, self.user, self.groups = namespace, name, user, groups
        self.old, self.new, self.dry_run = old, new, dry_run


class Change:
    """A protected field the write would change. What would be lost and the operation that puts the stored value
    back are worked out when asked for: a denial needs only the words, a restore only the operation."""

    __slots__ = ("after", "before", "new", "old", "path")

    def __init__(self, path: FieldPath, old: dict, new: dict, before: object, after: object):
        self.path = path
        self.old = old  # the stored object
        self.new = new  # the written object
        self.before = before  # the field's value in each (None when absent), as the decision compared them
        self.after = after

    def __repr__(self) -> str:
        return f"Change({self.path})"

    @property
    def summary(self) -> str:
        """What would be lost, for a person."""
        return describe(self.path.text, self.before, self.after)

    @property
    def restore(self) -> dict:
        """The JSON Patch operation that puts the stored value back."""
        return restore_op(self.path, self.old, self.new)


class Decision:
    violation: bool
    reason: str  # one short phrase, for logs
    changes: tuple[Change, ...]
    fields: tuple[str, ...]  # the changes' paths, as logs, metrics and audit annotations name them
    request: Request | None  # a violation's, for its words
    config: Config | None
    labels: Labels

    def __init__(self, violation: bool, reason: str, changes: tuple[Change, ...] = (), request: Request | None = None,
                 config: Config | None = None, labels: Labels = (MISSING, MISSING)) -> None:
        self.violation, self.reason, self.changes = violation, reason, changes
        self.fields = tuple([change.path.text for change in changes])
        self.request, self.config, self.labels = request, config, labels

    def __repr__(self) -> str:
        return f"Decision({self.violation}, {self.reason!r}, {self.fields})"

    @property
    def dismissal(self) -> bool:
        """The write sets, changes or removes the read-message label."""
        return self.labels[0] != self.labels[1]

    @property
    def patch(self) -> list[dict]:
        return [c.restore for c in self.changes]

    @property
    def message(self) -> str:
        """The denial a person reads ("" when allowed)."""
        if self.request is None or self.config is None:
            return ""
        return denial_message(self.request, self.config, self.changes, self.labels)

    @property
    def warning(self) -> str:
        """What a restore did, under 256 characters ("" when allowed)."""
        return "" if self.request is None else restore_warning(self.request, self.changes)


def _allow(reason: str, labels: Labels = (MISSING, MISSING)) -> Decision:
    return Decision(violation=False, reason=reason, labels=labels)


def examined(req: Request) -> str | None:
    """Why the guard leaves this request alone, or None when the rule applies to it."""
    if req.operation != "UPDATE":
        return f"operation {req.operation or 'unknown'} is not examined"
    if req.group != GROUP or req.kind != KIND:
        return "not a harvesterhci.io Upgrade"
    if req.subresource:
        return f"subresource {req.subresource} is not examined"
    if not isinstance(req.old, dict) or not isinstance(req.new, dict):
        return "object or oldObject is not an object"
    return None


def label_value(obj: dict, key: str) -> object:
    """The label's value, MISSING when absent or null. Read on every examined write: written out, not a `lookup`."""
    metadata = obj.get("metadata")
    labels = metadata.get("labels") if type(metadata) is dict else None
    value = labels.get(key) if type(labels) is dict else None
    return MISSING if value is None else value


def decide(req: Request, config: Config) -> Decision:
    skipped = examined(req)
    if skipped:
        return _allow(skipped)
    if config.is_exempt(req.user, req.groups):
        return _allow("exempt writer")
    old, new = cast(dict, req.old), cast(dict, req.new)  # maps: `examined` said so
    labels = label_value(old, config.label), label_value(new, config.label)
    changes = []
    for path in config.protected:
        before, after = lookup(old, path.keys), lookup(new, path.keys)
        if not same(before, after):
            changes.append(Change(path, old, new, before, after))
    if not changes:
        return _allow("protected fields unchanged", labels)
    if not config.strict:
        if labels[0] == labels[1]:
            return _allow("not a dismissal", labels)
        if not same_except(old, new, config.aside):
            return _allow("dismissal with other changes", labels)
    return Decision(
        True,
        "strict: protected field changed" if config.strict else "dismissal would change protected fields",
        tuple(changes),
        req,
        config,
        labels,
    )


def restore_op(path: FieldPath, old: dict, new: dict) -> dict:
    """One whole-field operation that makes `new` hold exactly old's value at `path` (no `test`: it could fail)."""
    keys = path.keys
    present, old_value = _member(old, keys)
    if not present:
        return {"op": "remove", "path": path.pointer}
    # `add` needs the parent to exist as a map in the written object; build what is missing around the value.
    node, depth = new, 0
    while depth < len(keys) - 1 and isinstance(node.get(keys[depth]), dict):
        node = node[keys[depth]]
        depth += 1
    value = old_value
    for key in reversed(keys[depth + 1:]):
        value = {key: value}
    return {"op": "add", "path": path.pointer if depth == len(keys) - 1 else json_pointer(keys[: depth + 1]),
            "value": value}


def _member(obj: object, keys: tuple[str, ...]) -> tuple[bool, object]:
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return False, None
        obj = obj[key]
    return True, obj


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_way(req: Request, config: Config, labels: Labels) -> str:
    """How to make the write's change without losing anything; `labels` as `Decision.labels`."""
    stored, written = labels
    target = f"kubectl -n {req.namespace} label upgrade {req.name} {config.label}"
    if stored != written:  # a dismissal
        if written is MISSING:
            return f"To make the same change safely, remove the label only: {target}-"
        overwrite = " --overwrite" if stored is not MISSING else ""
        return f"To make the same change safely, set the label only: {target}={written}{overwrite}"
    return ("Leave these fields out of the write (kubectl label, annotate and patch keep them as stored); "
            "an admin who must edit them by hand needs an exempt user or group.")


def denial_message(req: Request, config: Config, changes: tuple[Change, ...], labels: Labels) -> str:
    lost = _clip("; ".join(c.summary for c in changes), 400)
    why = ("the Upgrade CRD has no status subresource, so a saved object without them wipes the upgrade's "
           "history and the controller restarts it")
    if config.strict and labels[0] == labels[1]:  # not a dismissal
        why = "strict mode: only exempt writers may change protected fields"
    return (f"This write to Upgrade {req.namespace}/{req.name} would lose {lost} ({why}). "
            f"{safe_way(req, config, labels)}")


def restore_warning(req: Request, changes: tuple[Change, ...]) -> str:
    fields = ", ".join(c.path.text for c in changes)
    text = (f"upgrade-guard restored {fields} of Upgrade {req.namespace}/{req.name}: the write would have "
            f"lost them; the rest of it was kept")
    return _clip(text, 250)

"""What the guard protects and whom it trusts: one value shared by `serve`, `check` and the manifests."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from webhook.values import Aside, json_pointer

READ_MESSAGE_LABEL = "harvesterhci.io/read-message"
UPGRADE_CONTROLLER = "system:serviceaccount:harvester-system:harvester"
DEFAULT_PROTECTED = ("status", "metadata.finalizers")

# Fields the apiserver owns. A client's PUT may omit or carry stale copies of them; they are never intent.
BOOKKEEPING = (
    "resourceVersion",
    "generation",
    "managedFields",
    "uid",
    "creationTimestamp",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


@dataclass(frozen=True)
class FieldPath:
    """A protected field: a path of map keys from the object's root."""

    keys: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> FieldPath:
        """`status`, `metadata.finalizers`, or a JSON Pointer (`/metadata/annotations/a~1b`) for keys with dots."""
        text = text.strip()
        if text.startswith("/"):
            keys = tuple(k.replace("~1", "/").replace("~0", "~") for k in text[1:].split("/"))
        else:
            keys = tuple(text.split("."))
        if not keys or any(k == "" for k in keys):
            raise ValueError(f"not a field path: {text!r} (use dots, or a JSON Pointer starting with /)")
        return cls(keys)

    @cached_property
    def pointer(self) -> str:
        """RFC 6901 pointer, escaped, as a JSON Patch needs it."""
        return json_pointer(self.keys)

    def __str__(self) -> str:
        return self.text

    @cached_property
    def text(self) -> str:
        """Dotted, or the pointer when a key holds a dot or a slash."""
        if any("." in k or "/" in k for k in self.keys):
            return self.pointer
        return ".".join(self.keys)

    def covers(self, other: FieldPath) -> bool:
        return other.keys[: len(self.keys)] == self.keys


def _outermost(paths: tuple[FieldPath, ...]) -> tuple[FieldPath, ...]:
    """Drop duplicates and paths inside another protected path: restoring the outer one restores them."""
    kept: list[FieldPath] = []
    for path in sorted(set(paths), key=lambda p: len(p.keys)):
        if not any(outer.covers(path) for outer in kept):
            kept.append(path)
    return tuple(sorted(kept, key=lambda p: paths.index(p)))


@dataclass(frozen=True)
class Config:
    label: str = READ_MESSAGE_LABEL
    exempt_users: frozenset[str] = frozenset({UPGRADE_CONTROLLER})
    exempt_groups: frozenset[str] = frozenset()
    protected: tuple[FieldPath, ...] = field(
        default_factory=lambda: tuple(FieldPath.parse(p) for p in DEFAULT_PROTECTED)
    )
    strict: bool = False

    def __post_init__(self) -> None:
        if not self.label:
            raise ValueError("the read-message label key must not be empty")
        if not self.protected:
            raise ValueError("at least one protected field is needed")
        object.__setattr__(self, "protected", _outermost(tuple(self.protected)))
        object.__setattr__(self, "exempt_users", frozenset(self.exempt_users))
        object.__setattr__(self, "exempt_groups", frozenset(self.exempt_groups))

    @cached_property
    def set_aside(self) -> dict:
        """Fields ignored when asking "is the label the only change?", as a tree: key -> subtree, None = all of it."""
        tree: dict = {"metadata": {key: None for key in BOOKKEEPING}}
        tree["metadata"]["labels"] = {self.label: None}
        for path in self.protected:
            node = tree
            for key in path.keys[:-1]:
                child = node.get(key, {})
                if child is None:
                    break
                node[key] = child
                node = child
            else:
                node[path.keys[-1]] = None
        return tree

    @cached_property
    def aside(self) -> Aside:
        """`set_aside`, made ready once for the comparison every examined write runs."""
        return Aside.of(self.set_aside)

    def is_exempt(self, user: str, groups: tuple[str, ...]) -> bool:
        return user in self.exempt_users or not self.exempt_groups.isdisjoint(groups)

"""The hardening figures the tests measure (inputs tried, faults survived, cases checked), printed at the end.

README's `## Hardening` quotes them; `pytest` shows them under "hardening figures".
"""

from __future__ import annotations


class Figures:
    def __init__(self) -> None:
        self.counts: dict[str, set[str]] = {}
        self.values: dict[str, object] = {}

    def add(self, name: str, item: str) -> None:
        """Count `item` once under `name`, however often a test reports it."""
        self.counts.setdefault(name, set()).add(item)

    def set(self, name: str, value: object) -> None:
        self.values[name] = value

    def lines(self) -> list[str]:
        return [f"{name}: {len(items)}" for name, items in self.counts.items()] + \
               [f"{name}: {value}" for name, value in self.values.items()]


FIGURES = Figures()

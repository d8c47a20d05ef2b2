"""How much the long-running tests do: short by default, the full amounts with UPGRADE_GUARD_LONG_TESTS=1.

Each amount can also be set alone through its own variable (which wins over the switch).
"""

from __future__ import annotations

import os

LONG = os.environ.get("UPGRADE_GUARD_LONG_TESTS") == "1"


def amount(variable: str, short: float, long: float) -> float:
    """`variable` if set, else the long or the short amount."""
    return float(os.environ.get(variable, long if LONG else short))

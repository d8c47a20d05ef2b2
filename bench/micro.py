"""In-process microbenchmark: the guard's own work on one review, without HTTP or TLS, by object size.

Shows that the cost grows linearly with the stored object (constant microseconds per KiB).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from bench.workloads import body, nodes_for, object_size, stored_upgrade
from tests.upgrades import dashboard_put, kubectl_label, review
from webhook.admission import respond
from webhook.config import Config
from webhook.review import Review

SIZES = (10 * 1024, 100 * 1024, 1024 * 1024)


def timed(action: Callable[[], object], budget: float = 0.3, rounds: int = 7) -> float:
    """Median seconds per call over `rounds` rounds, each long enough to be timed well."""
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < budget / rounds or calls < 1:
        action()
        calls += 1
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            action()
        results.append((time.perf_counter() - start) / calls)
    return statistics.median(results)


def measure(size: int, config: Config, budget: float) -> dict:
    stored = stored_upgrade(nodes_for(size, object_size))
    dismissal_body = body(review(stored, dashboard_put(stored)))
    dismissal = Review.parse(dismissal_body)
    label = Review.parse(body(review(stored, kubectl_label(stored))))
    answer, decision = respond("mutate", dismissal, config)
    assert decision.violation and "patch" in answer["response"], "the dismissal must be restored"
    assert not respond("validate", label, config)[1].violation, "kubectl label must pass"
    return {
        "object_bytes": len(body(stored)),
        "nodes": len(stored["status"]["nodeStatuses"]),
        "dismissal_patch_s": timed(lambda: respond("mutate", dismissal, config), budget),
        "label_decision_s": timed(lambda: respond("validate", label, config), budget),
        "parse_s": timed(lambda: Review.parse(dismissal_body), budget),
    }


def run(sizes: tuple[int, ...] = SIZES, budget: float = 0.3) -> list[dict]:
    config = Config()
    return [measure(size, config, budget) for size in sizes]

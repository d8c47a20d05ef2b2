"""Prometheus metrics: what the guard decided, how long it took, what it kept, when its certificate ends.

A thin WSGI layer around the app (`instrument`) counts every review and serves `GET /metrics`; the app only
leaves its decision in the WSGI environ, so counting costs a few additions into shared memory per review and
never touches an object. Each worker counts into its own file (see `tally`), so whichever worker
answers a scrape reports the sums of all of them; prometheus-client writes the exposition.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from itertools import accumulate
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from webhook.config import Config
from webhook.endpoint import WSGIApp
from webhook.instrument import Instrumented
from webhook.tally import BUCKETS, IN_FLIGHT, SUM, Layout, Tally, totals


class CertificateExpiry(Collector):
    """notAfter of the certificate this worker serves, read at scrape time (it follows file changes)."""

    def __init__(self, not_after: Callable[[], dt.datetime | None]):
        self.not_after = not_after

    def collect(self) -> Iterable[Metric]:
        not_after = self.not_after()
        if not_after is None:
            return []
        return [GaugeMetricFamily("upgrade_guard_certificate_expiry_timestamp_seconds",
                                  "notAfter of the served certificate, in seconds since the epoch",
                                  value=not_after.timestamp())]


def _workers(master: int) -> list[int]:
    try:
        with open(f"/proc/{master}/task/{master}/children") as children:
            return [int(pid) for pid in children.read().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: at least the worker that answers
        return [os.getpid()]


class GuardProcesses(Collector):
    """The usual process_* metrics for the master and every worker, labelled by role and pid.

    One process alone would say little (a scrape lands on any worker); summed they are the guard's CPU and
    memory: `sum(process_resident_memory_bytes)`.
    """

    def collect(self) -> Iterable[Metric]:
        master = os.getppid()
        merged: dict[str, Metric] = {}
        for pid, role in [(master, "master")] + [(pid, "worker") for pid in _workers(master)]:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "role": role, "pid": str(pid)}, sample.value)
        return merged.values()


class ReviewFigures(Collector):
    """The review metrics, summed over every worker's tally at scrape time (see `tally`)."""

    def __init__(self, directory: Path, layout: Layout):
        self.directory = directory
        self.layout = layout

    def collect(self) -> Iterable[Metric]:
        layout, sums = self.layout, totals(self.directory, self.layout)
        reviews = CounterMetricFamily("upgrade_guard_reviews", "AdmissionReviews answered, by webhook and decision "
                                      "(error: no decision could be given)", labels=["webhook", "decision"])
        for labels, slot in layout.reviews.items():
            reviews.add_metric(labels, sums[slot])
        duration = HistogramMetricFamily("upgrade_guard_review_duration_seconds", "Time to answer an AdmissionReview",
                                         labels=["webhook"])
        for webhook, first in layout.durations.items():
            counts = accumulate(sums[first:first + SUM])
            buckets = [(floatToGoString(b), n) for b, n in zip(BUCKETS + (math.inf,), counts, strict=True)]
            duration.add_metric([webhook], buckets, sum_value=sums[first + SUM])
        changes = CounterMetricFamily("upgrade_guard_protected_field_changes", "Protected fields a write would have "
                                      "changed, by field and what the guard did (denied the write or restored the "
                                      "field)", labels=["field", "action"])
        for labels, slot in layout.changes.items():
            changes.add_metric(labels, sums[slot])
        in_flight = GaugeMetricFamily("upgrade_guard_requests_in_flight", "AdmissionReviews being answered now",
                                      value=sums[IN_FLIGHT])
        return [reviews, duration, changes, in_flight]


def instrumented(app: WSGIApp, config: Config, not_after: Callable[[], dt.datetime | None],
                 directory: Path) -> Instrumented:
    """`app` with every review counted into this worker's tally in `directory`, and `/metrics` served beside it."""
    layout = Layout(tuple(str(path) for path in config.protected))
    registry = CollectorRegistry()
    registry.register(ReviewFigures(directory, layout))
    registry.register(CertificateExpiry(not_after))
    registry.register(GuardProcesses())
    PlatformCollector(registry=registry)
    return Instrumented(app, Tally(directory, os.getpid(), layout), make_wsgi_app(registry))

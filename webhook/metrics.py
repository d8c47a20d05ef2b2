"""Prometheus metrics: what the guard decided, how long it took, what it kept, when its certificate ends.

A thin WSGI layer around the app counts every review and serves `GET /metrics`; the app only leaves its
decision in the WSGI environ (`REVIEW_OUTCOME`), so counting costs a few memory-mapped writes per review
and never touches an object. Values live in prometheus-client's multiprocess files (see `multiproc`), so
whichever worker answers a scrape reports the sums of all of them. Imported in the workers only, after the
master has exported the directory: the library picks its storage when it is first imported.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from webhook.app import REVIEW_ERROR, REVIEW_OUTCOME
from webhook.config import Config
from webhook.multiproc import ENV

log = logging.getLogger("upgrade_guard.review")

PATH = "/metrics"
DECISIONS = {"validate": ("allowed", "denied", "error"), "mutate": ("allowed", "restored", "error")}
# Reviews take well under a millisecond to a few; the apiserver gives up after timeoutSeconds (at most 30).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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


class Instrumented:
    """The app, with every review counted and timed, and `/metrics` served beside it."""

    def __init__(self, app: Callable, config: Config, not_after: Callable[[], dt.datetime | None]):
        if values.ValueClass is values.MutexValue:
            raise RuntimeError(f"prometheus_client was imported before {ENV} was set: metrics would be per worker")
        self.app = app
        reviews = Counter("upgrade_guard_reviews", "AdmissionReviews answered, by webhook and decision "
                          "(error: no decision could be given)", ["webhook", "decision"], registry=None)
        duration = Histogram("upgrade_guard_review_duration_seconds", "Time to answer an AdmissionReview",
                             ["webhook"], buckets=BUCKETS, registry=None)
        self._changes = Counter("upgrade_guard_protected_field_changes", "Protected fields a write would have "
                                "changed, by field and what the guard did (denied the write or restored the field)",
                                ["field", "action"], registry=None)
        self._in_flight = Gauge("upgrade_guard_requests_in_flight", "AdmissionReviews being answered now",
                                multiprocess_mode="livesum", registry=None)
        # Children made up front: no label lookup per request, and every series exists from the start,
        # so rate() and alerts see a 0 rather than nothing.
        self._reviews = {(webhook, decision): reviews.labels(webhook, decision)
                         for webhook, decisions in DECISIONS.items() for decision in decisions}
        self._duration = {webhook: duration.labels(webhook) for webhook in DECISIONS}
        self._changed = {(str(path), action): self._changes.labels(str(path), action)
                         for path in config.protected for action in ("denied", "restored")}
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(CertificateExpiry(not_after))
        registry.register(GuardProcesses())
        PlatformCollector(registry=registry)
        self.exposition = make_wsgi_app(registry)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == PATH:
            return self.exposition(environ, start_response)
        webhook = path[1:]
        if webhook not in self._duration or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        started = time.perf_counter()
        counted = self._guarded(self._in_flight.inc)
        try:
            return self.app(environ, start_response)
        finally:
            self._guarded(self._record, webhook, environ, started, counted)

    def _record(self, webhook: str, environ: dict, started: float, counted: bool) -> None:
        seconds = time.perf_counter() - started
        if counted:
            self._in_flight.dec()
        decision, fields = environ.get(REVIEW_OUTCOME) or ("error", ())
        self._reviews[webhook, decision].inc()
        self._duration[webhook].observe(seconds)
        for field in fields:
            (self._changed.get((field, decision)) or self._changes.labels(field, decision)).inc()
        if decision == "error":
            status, message = environ.get(REVIEW_ERROR) or (500, "no answer")
            log.warning("review failed", extra={"webhook": webhook, "decision": decision, "status": status,
                                                "error": message, "duration_ms": round(seconds * 1000, 3)})

    @staticmethod
    def _guarded(action: Callable, *args) -> bool:
        """Metrics must never fail a write to the cluster: a broken metrics file is logged, the answer stands."""
        try:
            action(*args)
        except Exception:
            log.exception("metrics not recorded")
            return False
        return True

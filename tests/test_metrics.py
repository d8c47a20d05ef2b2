"""The metrics layer in process: what each review adds, how workers' figures add up, and that counting never
fails a review. test_observability checks the same figures on a running multi-worker guard."""

from __future__ import annotations

import logging
import types

import pytest
from prometheus_client.parser import text_string_to_metric_families

from webhook.config import Config
from webhook.endpoint import REVIEW_ERROR, REVIEW_OUTCOME
from webhook.instrument import Instrumented
from webhook.metrics import instrumented
from webhook.multiproc import MetricsDirectory
from webhook.tally import BUCKETS, IN_FLIGHT, Layout, Tally, path_of, totals

FIELDS = ("status", "metadata.finalizers")


def test_every_figure_has_a_slot_of_its_own():
    layout = Layout(FIELDS)
    slots = [IN_FLIGHT, *layout.reviews.values(), *layout.changes.values()]
    for first in layout.durations.values():
        slots += range(first, first + len(BUCKETS) + 2)
    assert sorted(slots) == list(range(layout.size))
    assert set(layout.reviews) == {("validate", "allowed"), ("validate", "denied"), ("validate", "error"),
                                   ("mutate", "allowed"), ("mutate", "restored"), ("mutate", "error")}
    assert set(layout.changes) == {(f, a) for f in FIELDS for a in ("denied", "restored")}


def test_workers_figures_add_up(tmp_path):
    layout = Layout(FIELDS)
    one, two = Tally(tmp_path, 101, layout), Tally(tmp_path, 102, layout)
    for tally in (one, two, two):
        tally.started()
        tally.answered("validate", "denied", FIELDS, 0.002, started=True)
    two.started()  # still being answered
    one.answered("mutate", "error", (), 0.1, started=False)  # its start could not be counted
    sums = totals(tmp_path, layout)
    assert sums[IN_FLIGHT] == 1
    assert sums[layout.reviews["validate", "denied"]] == 3
    assert sums[layout.reviews["mutate", "error"]] == 1
    assert sums[layout.changes["status", "denied"]] == 3 and sums[layout.changes["status", "restored"]] == 0
    first = layout.durations["validate"]
    assert sums[first + BUCKETS.index(0.0025)] == 3
    assert sums[first + len(BUCKETS) + 1] == pytest.approx(0.006)


@pytest.mark.parametrize(("seconds", "bucket"), [(0.0, 0.0005), (0.0005, 0.0005), (0.00051, 0.001), (30.0, 30.0),
                                                 (30.5, None)])
def test_a_duration_lands_in_the_first_bucket_it_fits(tmp_path, seconds, bucket):
    """Prometheus buckets are `le`: a duration equal to a bound belongs to it; beyond the last, only +Inf."""
    layout = Layout(())
    Tally(tmp_path, 1, layout).answered("mutate", "allowed", (), seconds, started=False)
    first = layout.durations["mutate"]
    counts = totals(tmp_path, layout)[first:first + len(BUCKETS) + 1]
    assert counts.index(1) == (len(BUCKETS) if bucket is None else BUCKETS.index(bucket))
    assert sum(counts) == 1


def test_a_worker_whose_pid_comes_round_again_carries_on_from_the_dead_ones_counts(tmp_path):
    layout = Layout(FIELDS)
    Tally(tmp_path, 5, layout).answered("validate", "allowed", (), 0.001, started=False)
    Tally(tmp_path, 5, layout).answered("validate", "allowed", (), 0.001, started=False)
    assert totals(tmp_path, layout)[layout.reviews["validate", "allowed"]] == 2


def test_a_file_being_made_counts_nothing_and_others_still_count(tmp_path):
    layout = Layout(FIELDS)
    Tally(tmp_path, 7, layout).answered("validate", "allowed", (), 0.001, started=False)
    path_of(tmp_path, 8).write_bytes(b"\0" * 8)  # a worker between creating its file and sizing it
    (tmp_path / "unrelated.txt").write_text("x")
    assert totals(tmp_path, layout)[layout.reviews["validate", "allowed"]] == 1


def test_a_dead_workers_requests_leave_the_in_flight_count_and_its_counts_stay(tmp_path):
    """The master's child_exit hook (wired in GuardServer.run): a killed worker's reviews never end."""
    layout = Layout(FIELDS)
    dead, alive = Tally(tmp_path, 201, layout), Tally(tmp_path, 202, layout)
    dead.answered("validate", "denied", FIELDS, 0.001, started=False)
    dead.started()
    dead.started()
    alive.started()
    metrics = MetricsDirectory(tmp_path, private=False)
    metrics.worker_exited(None, types.SimpleNamespace(pid=201))
    metrics.worker_exited(None, types.SimpleNamespace(pid=999))  # died before it made its file: nothing to do
    sums = totals(tmp_path, layout)
    assert sums[IN_FLIGHT] == 1
    assert sums[layout.reviews["validate", "denied"]] == 1
    assert not path_of(tmp_path, 999).exists()


def _recording(outcome: tuple | None, error: tuple | None = None):
    def app(environ, start_response):
        if outcome:
            environ[REVIEW_OUTCOME] = outcome
        if error:
            environ[REVIEW_ERROR] = error
        start_response("200 OK", [])
        return [b"answer"]
    return app


def _call(app, path: str, method: str = "POST") -> bytes:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "guard",
               "SERVER_PORT": "8443", "wsgi.url_scheme": "https"}
    return b"".join(app(environ, lambda status, headers, exc_info=None: None))


def _scrape(layer: Instrumented) -> dict[str, float]:
    text = _call(layer, "/metrics", "GET").decode()
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_reviews_are_counted_timed_and_served(tmp_path):
    config = Config()
    denying = instrumented(_recording(("denied", FIELDS)), config, lambda: None, tmp_path)
    assert _call(denying, "/validate") == b"answer"
    _call(denying, "/validate")
    _call(instrumented(_recording(("restored", FIELDS)), config, lambda: None, tmp_path), "/mutate")
    _call(denying, "/healthz", "GET")  # not a review: passed on, not counted
    _call(denying, "/validate", "GET")
    samples = _scrape(denying)
    assert samples["upgrade_guard_reviews_total[('decision', 'denied'), ('webhook', 'validate')]"] == 2
    assert samples["upgrade_guard_reviews_total[('decision', 'restored'), ('webhook', 'mutate')]"] == 1
    assert samples["upgrade_guard_reviews_total[('decision', 'allowed'), ('webhook', 'validate')]"] == 0
    assert not [key for key in samples if "('decision', 'restored'), ('webhook', 'validate')" in key]
    assert samples["upgrade_guard_protected_field_changes_total[('action', 'denied'), ('field', 'status')]"] == 2
    assert samples["upgrade_guard_protected_field_changes_total[('action', 'restored'), "
                   "('field', 'metadata.finalizers')]"] == 1
    assert samples["upgrade_guard_requests_in_flight[]"] == 0
    buckets = [samples[f"upgrade_guard_review_duration_seconds_bucket[('le', '{le}'), ('webhook', 'validate')]"]
               for le in [*map(str, BUCKETS), "+Inf"]]
    assert buckets == sorted(buckets) and buckets[-1] == 2  # cumulative, as Prometheus reads them
    assert samples["upgrade_guard_review_duration_seconds_count[('webhook', 'validate')]"] == 2
    assert 0 < samples["upgrade_guard_review_duration_seconds_sum[('webhook', 'validate')]"] < 1


def test_a_review_without_a_decision_is_an_error_and_logged(tmp_path, caplog):
    layer = instrumented(_recording(None, (413, "too big")), Config(), lambda: None, tmp_path)
    with caplog.at_level(logging.WARNING, "upgrade_guard.review"):
        _call(layer, "/mutate")
    assert _scrape(layer)["upgrade_guard_reviews_total[('decision', 'error'), ('webhook', 'mutate')]"] == 1
    [failed] = [r for r in caplog.records if r.getMessage() == "review failed"]
    assert (failed.webhook, failed.status, failed.error) == ("mutate", 413, "too big")


def test_counting_that_fails_never_fails_the_review(tmp_path, caplog):
    layer = instrumented(_recording(("denied", FIELDS)), Config(), lambda: None, tmp_path)
    layer.tally._values.release()  # every write now raises, as a broken mapping would
    with caplog.at_level(logging.ERROR, "upgrade_guard.review"):
        assert _call(layer, "/validate") == b"answer"
    assert [r.getMessage() for r in caplog.records] == ["metrics not recorded", "metrics not recorded"]


def test_in_flight_goes_down_only_when_it_went_up(tmp_path):
    """A start that could not be counted is not taken back when the review ends."""
    working = []

    def repairing(environ, start_response):  # the figures can be written again by the time the review ends
        layer.tally._values = working[0]
        return _recording(("allowed", ()))(environ, start_response)

    layer = instrumented(repairing, Config(), lambda: None, tmp_path)
    working.append(layer.tally._values)
    broken = memoryview(bytearray(8)).cast("d")
    broken.release()
    layer.tally._values = broken  # the increment fails, the decrement must not happen
    _call(layer, "/validate")
    assert _scrape(layer)["upgrade_guard_requests_in_flight[]"] == 0
    assert _scrape(layer)["upgrade_guard_reviews_total[('decision', 'allowed'), ('webhook', 'validate')]"] == 1

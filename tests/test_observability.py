"""Metrics and logs of a real `upgrade-guard serve` with two workers, after a known set of reviews."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.guard import Guard, command
from tests.upgrades import dashboard_put, finished_upgrade, kubectl_label, review

DOCS = Path(__file__).resolve().parent.parent / "docs"
STORED = finished_upgrade()
SECRET_BITS = ("repoInfo", "minUpgradableVersion", "nodeStatuses", "harvester-node-0", "lastUpdateTime",
               "wrangler.cattle.io/harvester-upgrade-controller", "image-cleanup-plan-completed")

# What the exercised guard is sent: (path, review or raw body, content type, expected decision)
SENT = (
    [("/validate", review(STORED, dashboard_put(STORED), uid=f"deny-{i}"), "denied") for i in range(3)]
    + [("/mutate", review(STORED, dashboard_put(STORED), uid=f"restore-{i}"), "restored") for i in range(3)]
    + [("/validate", review(STORED, kubectl_label(STORED), uid=f"label-v-{i}"), "allowed") for i in range(2)]
    + [("/mutate", review(STORED, kubectl_label(STORED), uid=f"label-m-{i}"), "allowed") for i in range(2)]
    + [("/validate", review(STORED, dashboard_put(STORED), uid="dry-run", dry_run=True), "denied")]
    + [("/mutate", b"this is not json", "error"), ("/validate", b'{"apiVersion": 1}', "error")]
)


def scrape(guard: Guard) -> dict[str, list]:
    """name -> samples, from GET /metrics as Prometheus reads it."""
    connection = guard.connect()
    status, body = connection.get("/metrics")
    connection.close()
    assert status == 200
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def value(samples: dict, name: str, **labels: str) -> float:
    found = [s.value for family in samples.values() for s in family
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def send_all(guard: Guard, connections: int = 4) -> None:
    """Each review on one of several keep-alive connections, so the workers share them."""
    pool = [guard.connect() for _ in range(connections)]
    for i, (path, document, _) in enumerate(SENT):
        status, _, _ = pool[i % connections].review(path, document)
        assert status in (200, 400)
    for connection in pool:
        connection.close()


def workers(guard: Guard) -> list[int]:
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", "\n".join(guard.lines))]


def log_lines(guard: Guard) -> list[dict]:
    return [json.loads(line) for line in guard.lines]


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def exercised(cert_dir, tmp_path_factory):
    """A guard with two workers and a metrics dir of its own, after SENT; stopped at the end of the module."""
    metrics_dir = tmp_path_factory.mktemp("metrics")
    guard = Guard(cert_dir, "--workers", "2", "--metrics-dir", str(metrics_dir)).start()
    try:
        wait_for(lambda: len(workers(guard)) == 2)
        send_all(guard)
        guard.metrics_dir = metrics_dir
        guard.first_scrape = scrape(guard)
        guard.first_workers = workers(guard)
        yield guard
    finally:
        guard.stop()


def test_reviews_are_counted_by_webhook_and_decision(exercised):
    samples = exercised.first_scrape
    for webhook in ("validate", "mutate"):
        for decision in ("allowed", "denied", "restored", "error"):
            expected = sum(1 for path, _, d in SENT if path == f"/{webhook}" and d == decision)
            if (webhook, decision) in (("validate", "restored"), ("mutate", "denied")):
                assert not [s for s in samples["upgrade_guard_reviews"] if s.labels == {"webhook": webhook,
                                                                                        "decision": decision}]
                continue
            assert value(samples, "upgrade_guard_reviews_total", webhook=webhook, decision=decision) == expected
        answered = sum(1 for path, _, _ in SENT if path == f"/{webhook}")
        assert value(samples, "upgrade_guard_review_duration_seconds_count", webhook=webhook) == answered
        assert value(samples, "upgrade_guard_review_duration_seconds_bucket", webhook=webhook, le="+Inf") == answered
        assert 0 < value(samples, "upgrade_guard_review_duration_seconds_sum", webhook=webhook) < answered * 5


def test_protected_fields_are_counted_by_action(exercised):
    samples = exercised.first_scrape
    for field in ("status", "metadata.finalizers"):
        assert value(samples, "upgrade_guard_protected_field_changes_total", field=field, action="denied") == 4
        assert value(samples, "upgrade_guard_protected_field_changes_total", field=field, action="restored") == 3


def test_in_flight_and_certificate_expiry(exercised, cert_dir):
    samples = exercised.first_scrape
    assert value(samples, "upgrade_guard_requests_in_flight") == 0
    served = x509.load_pem_x509_certificate((cert_dir / "tls.crt").read_bytes())
    expiry = value(samples, "upgrade_guard_certificate_expiry_timestamp_seconds")
    assert expiry == served.not_valid_after_utc.timestamp()


def test_process_metrics_cover_the_master_and_every_worker(exercised):
    samples = exercised.first_scrape
    rss = {(s.labels["role"], int(s.labels["pid"])): s.value for s in samples["process_resident_memory_bytes"]}
    assert {pid for role, pid in rss if role == "worker"} == set(exercised.first_workers)
    assert [role for role, _ in rss].count("master") == 1
    assert all(v > 1_000_000 for v in rss.values())


def test_documented_metrics_exist_with_their_labels(exercised):
    """Every row of the metrics table in docs/observability.md, against what the guard serves."""
    text = (DOCS / "observability.md").read_text()
    table = text[text.index("<!-- metrics table"):text.index("<!-- end of metrics table")]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|([^|]*)\|", table, re.MULTILINE)
    assert len(rows) >= 12
    samples = exercised.first_scrape
    for name, kind, labels in rows:
        family = re.sub(r"_total$", "", name)
        assert family in samples, f"{name} is documented but not served"
        served = {k for s in samples[family] for k in s.labels} - {"le"}
        assert served == set(re.findall(r"`(\w+)`", labels)), name
    required = {"upgrade_guard_reviews_total", "upgrade_guard_review_duration_seconds",
                "upgrade_guard_protected_field_changes_total", "upgrade_guard_certificate_expiry_timestamp_seconds",
                "upgrade_guard_requests_in_flight", "process_resident_memory_bytes", "process_cpu_seconds_total"}
    assert required <= {name for name, _, _ in rows}


def test_counts_survive_dead_workers_and_add_up_across_processes(exercised):
    """Kill every worker that answered SENT: the new ones, which answered nothing, still report all of it."""
    before = exercised.first_workers
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(workers(exercised)) >= 2 * len(before))
    exercised.wait_ready()
    samples = scrape(exercised)
    assert value(samples, "upgrade_guard_reviews_total", webhook="validate", decision="denied") == 4
    assert value(samples, "upgrade_guard_reviews_total", webhook="mutate", decision="error") == 1
    assert value(samples, "upgrade_guard_requests_in_flight") == 0
    left = {p.name for p in exercised.metrics_dir.iterdir()}
    assert {f"reviews_{pid}.db" for pid in before} < left  # the dead workers' counts, kept


def test_every_line_is_json_and_reviews_are_logged_without_objects(exercised):
    lines = log_lines(exercised)
    assert all({"time", "level", "logger", "msg"} <= set(line) for line in lines)
    messages = {line["msg"] for line in lines}
    assert {"starting", "certificate loaded", "metrics directory ready"} <= messages
    assert any(line["logger"] == "gunicorn.error" and line["msg"].startswith("Listening at") for line in lines)
    reviews = {line["uid"]: line for line in lines if line["msg"] == "review"}
    for path, document, decision in SENT:
        if decision == "error":
            continue
        line = reviews[document["request"]["uid"]]
        assert line["webhook"] == path[1:] and line["decision"] == decision
        assert line["user"] == "admin" and line["object"] == "harvester-system/hvst-upgrade-8fnwl"
        assert line["fields"] == ([] if decision == "allowed" else ["status", "metadata.finalizers"])
        assert line["dry_run"] is (document["request"]["uid"] == "dry-run")
        assert line["duration_ms"] >= 0
        dt.datetime.fromisoformat(line["time"])
    failed = [line for line in lines if line["msg"] == "review failed"]
    assert sorted((f["webhook"], f["status"]) for f in failed) == [("mutate", 400), ("validate", 400)]
    assert all(f["level"] == "warning" and f["decision"] == "error" and f["error"] for f in failed)
    for bit in SECRET_BITS:
        assert not [line for line in exercised.lines if bit in line], f"{bit} leaked into the log"


def test_a_restart_on_the_same_metrics_dir_starts_from_zero(exercised, cert_dir):
    """An emptyDir outlives a container restart: the old files must not count again."""
    exercised.stop()
    assert any(line["msg"] == "Shutting down: Master" for line in log_lines(exercised))
    assert list(exercised.metrics_dir.glob("reviews_*.db"))
    with Guard(cert_dir, "--workers", "1", "--metrics-dir", str(exercised.metrics_dir),
               "--log-level", "debug") as again:
        send_all(again, connections=1)
        samples = scrape(again)
        assert value(samples, "upgrade_guard_reviews_total", webhook="validate", decision="denied") == 4
        assert value(samples, "upgrade_guard_reviews_total", webhook="mutate", decision="restored") == 3
    lines = log_lines(again)
    assert any(line["level"] == "debug" and line["logger"] == "gunicorn.error" for line in lines)


LEVELS = """
import logging, logging.config
from webhook.logs import logging_dict
logging.config.dictConfig(logging_dict("warning"))
for name in ("upgrade_guard.review", "gunicorn.error", "upgrade_guard.tls"):
    logging.getLogger(name).info("quiet")
    logging.getLogger(name).warning("loud", extra={"n": 1})
"""


def test_log_level_warning_keeps_only_warnings_of_every_logger():
    done = subprocess.run([sys.executable, "-c", LEVELS], capture_output=True, text=True, timeout=30)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["msg"], line["n"]) for line in lines] == [
        ("upgrade_guard.review", "loud", 1), ("gunicorn.error", "loud", 1), ("upgrade_guard.tls", "loud", 1)]


def test_the_private_metrics_dir_is_made_for_the_run_and_removed(cert_dir):
    with Guard(cert_dir, "--workers", "1") as running:
        ready = next(json.loads(line) for line in running.lines if "metrics directory ready" in line)
        path = Path(ready["path"])
        assert ready["private"] is True and path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        if os.access("/dev/shm", os.W_OK):
            assert path.parent == Path("/dev/shm")
        assert scrape(running)["upgrade_guard_reviews"]
    assert not path.exists()


def test_an_unusable_metrics_dir_is_a_setting_error(cert_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = subprocess.run([*command(), "serve", "--cert-dir", str(cert_dir), "--bind", "127.0.0.1:0",
                           "--metrics-dir", str(blocker / "metrics")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--metrics-dir / UPGRADE_GUARD_METRICS_DIR" in done.stderr

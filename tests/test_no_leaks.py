"""Nothing leaks: logs never hold whole objects, Secret data or private keys; client errors carry no stack
traces or file paths."""

from __future__ import annotations

import base64
import json
import shutil
import time

from tests.corpus import TRACES
from tests.figures import FIGURES
from tests.guard import Guard
from tests.upgrades import broken_config, dashboard_put, finished_upgrade, kubectl_label, review

MARKER = "leak-marker-7f3a9c"  # put into every object and bad body; must never reach a log line
ENCODED = base64.b64encode(MARKER.encode()).decode()


def _marked_upgrade() -> dict:
    upgrade = finished_upgrade()
    upgrade["metadata"]["annotations"]["example.com/note"] = MARKER
    upgrade["status"]["repoInfo"] = f"release: {MARKER}"
    return upgrade


def _secret_review() -> dict:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "harvester-system"},
              "data": {"password": ENCODED}, "stringData": {"token": MARKER}}
    document = review(None, secret, operation="CREATE")
    document["request"]["kind"] = {"group": "", "version": "v1", "kind": "Secret"}
    return document


def test_logs_hold_no_objects_secrets_or_keys(cert_dir, tmp_path):
    certs = tmp_path / "certs"
    shutil.copytree(cert_dir, certs)
    key_pem = (certs / "tls.key").read_text()
    stored = _marked_upgrade()
    with Guard(certs, "--workers", "1", "--log-level", "debug") as guard:
        connection = guard.connect()
        for path in ("/validate", "/mutate"):
            for document in (review(stored, dashboard_put(stored)), review(stored, kubectl_label(stored)),
                             _secret_review()):
                assert connection.review(path, document)[0] == 200
            for bad in (f'{{"apiVersion": "{MARKER}"'.encode(), json.dumps({"kind": MARKER}).encode()):
                assert connection.review(path, bad)[0] == 400
        connection.close()
        # a broken key on disk: the reload fails and is logged, the old certificate stays in use
        (certs / "tls.key").write_text(key_pem.replace("A", "B", 5))
        deadline = time.monotonic() + 10
        while not any("certificate not loaded" in line for line in guard.lines):
            assert time.monotonic() < deadline, "the failed reload was not logged"
            probe = guard.connect()
            probe.get("/readyz")
            probe.close()
            time.sleep(0.2)
    lines = guard.lines
    key_body = [line for line in key_pem.splitlines() if line and not line.startswith("-----")]
    for line in lines:
        assert MARKER not in line and ENCODED not in line, line
        assert "PRIVATE KEY" not in line and not any(chunk in line for chunk in key_body), line
        json.loads(line)  # every line is one JSON object, so nothing is smeared across lines
    FIGURES.set("log lines checked for leaks", len(lines))


def test_an_unexpected_error_tells_the_client_nothing(caplog):
    from webhook.app import create_app

    client = create_app(broken_config(ValueError(f"/srv/webhook/decision.py line 9: {MARKER}"))).test_client()
    stored = finished_upgrade()
    answer = client.post("/validate", json=review(stored, dashboard_put(stored)))
    body = answer.get_data(as_text=True)
    assert answer.status_code == 500 and json.loads(body)["kind"] == "Status"
    assert MARKER not in body and not any(trace in body for trace in TRACES), body
    assert any(record.exc_info for record in caplog.records)  # the operator's log has it

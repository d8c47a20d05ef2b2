"""End to end: a real `upgrade-guard serve` over TLS, called the way kube-apiserver calls it."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time

import jsonpatch
import pytest

from tests.guard import ApiserverConnection, Guard
from tests.upgrades import dashboard_put, finished_upgrade, kubectl_label, review
from webhook.settings import SERVE

STORED = finished_upgrade()


def test_dismissal_on_one_keep_alive_connection(guard):
    connection = guard.connect()
    sockets = set()
    for _ in range(3):
        status, _, answer = connection.review("/validate", review(STORED, dashboard_put(STORED), uid="u-1"))
        sockets.add(id(connection.sock))
        assert status == 200
        assert answer["response"]["uid"] == "u-1" and answer["response"]["allowed"] is False
        assert answer["response"]["status"]["code"] == 403
        status, _, answer = connection.review("/mutate", review(STORED, dashboard_put(STORED), uid="u-2"))
        sockets.add(id(connection.sock))
        assert answer["response"]["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(answer["response"]["patch"]))
        restored = jsonpatch.apply_patch(dashboard_put(STORED), patch)
        assert restored["status"] == STORED["status"]
        assert restored["metadata"]["labels"]["harvesterhci.io/read-message"] == "true"
    assert len(sockets) == 1, "the connection was not kept alive"
    connection.close()


def test_kubectl_label_passes(guard):
    connection = guard.connect()
    for path in ("/validate", "/mutate"):
        status, _, answer = connection.review(path, review(STORED, kubectl_label(STORED)))
        assert status == 200 and answer["response"] == {"uid": answer["response"]["uid"], "allowed": True}
    connection.close()


def test_health_and_readiness(guard):
    connection = guard.connect()
    assert connection.get("/healthz")[0] == 200
    assert connection.get("/readyz")[0] == 200
    connection.close()


def test_wrong_service_name_fails_verification(guard):
    with pytest.raises(ssl.SSLCertVerificationError):
        guard.connect(server_name="someone-else.default.svc").get("/healthz")


def _tls12(guard, ciphers: str) -> ApiserverConnection:
    connection = guard.connect()
    connection._context.maximum_version = ssl.TLSVersion.TLSv1_2
    connection._context.set_ciphers(ciphers)
    return connection


def test_tls12_negotiates_forward_secret_aead(guard):
    connection = _tls12(guard, "ALL:@SECLEVEL=0")
    assert connection.get("/healthz")[0] == 200
    name, version, _ = connection.sock.cipher()
    assert version == "TLSv1.2" and name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
    connection.close()


@pytest.mark.parametrize("ciphers", ["ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA",
                                     "AES128-GCM-SHA256:AES256-GCM-SHA384"])
def test_tls12_without_forward_secret_aead_is_refused(guard, ciphers):
    with pytest.raises(ssl.SSLError):
        _tls12(guard, ciphers).get("/healthz")


def test_plain_http_is_not_served(guard):
    with socket.create_connection(("127.0.0.1", guard.port), timeout=5) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = raw.recv(100)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/1.1 200")


def test_strict_mode_from_the_environment(cert_dir):
    updating = finished_upgrade()
    updating["status"]["conditions"][0]["status"] = "Unknown"
    with Guard(cert_dir, "--workers", "1", env={"UPGRADE_GUARD_STRICT": "true"}) as strict:
        status, _, answer = strict.connect().review("/validate", review(STORED, updating))
        assert status == 200 and answer["response"]["allowed"] is False
        assert "strict mode" in answer["response"]["status"]["message"]


def test_sigterm_stops_it_cleanly(cert_dir):
    running = Guard(cert_dir, "--workers", "1").start()
    assert running.stop() == 0


def _children(pid: int) -> list[int]:
    from pathlib import Path
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


def test_serve_is_the_master_and_its_children_are_the_workers(guard):
    default = next(setting.default for setting in SERVE if setting.name == "workers")
    assert len(_children(guard.process.pid)) == default


def test_dev_generates_certificates_for_localhost(tmp_path):
    with Guard(tmp_path / "dev", "--dev", "--workers", "1") as dev:
        assert {"ca.crt", "ca.key", "tls.crt", "tls.key"} <= {p.name for p in (tmp_path / "dev").iterdir()}
        for name in ("localhost", "127.0.0.1", "upgrade-guard.harvester-system.svc"):
            connection = dev.connect(server_name=name)
            assert connection.get("/readyz")[0] == 200
            connection.close()


def test_idle_connections_outlive_the_apiserver_s_and_then_close(cert_dir):
    """The apiserver drops idle connections after 90 s; the guard keeps them 120 s by default, so it is
    never the side that closes first. Shown here with short keepalives, and the default read from the config."""
    from webhook.config import Config
    from webhook.server import GuardServer
    server = GuardServer(Config(), cert_dir=cert_dir, bind="127.0.0.1:0", workers=1, threads=1,
                         max_body=1024, keepalive=120, log_level="info")
    from gunicorn.workers.gthread import ThreadWorker
    assert server.cfg.keepalive == 120 > 90 and issubclass(server.cfg.worker_class, ThreadWorker)
    with Guard(cert_dir, "--workers", "1", "--keepalive", "2") as short:
        connection = short.connect()
        assert connection.get("/healthz")[0] == 200
        time.sleep(1)  # idle, but inside the keepalive: the same connection still answers
        assert connection.get("/healthz")[0] == 200
        first = connection.sock
        deadline = time.monotonic() + 10
        first.settimeout(10)
        assert first.recv(1) == b""  # the server closes it once idle for 2 s
        assert time.monotonic() < deadline


def test_a_chunked_body_is_held_to_the_limit(cert_dir):
    """Chunked framing (valid HTTP/1.1, though the apiserver sends a Content-Length): within --max-body the review
    is answered, a byte past it is a 413, as with a Content-Length; never cut at the limit and read as less."""
    document = json.dumps(review(STORED, dashboard_put(STORED))).encode()
    limit = len(document) + 100
    with Guard(cert_dir, "--workers", "1", "--max-body", str(limit)) as small:
        for size, expected in ((limit, 200), (limit + 1, 413)):
            body = document + b" " * (size - len(document))  # whitespace after the document: the same review
            connection = small.connect()
            connection.request("POST", "/validate", body=iter([body[i:i + 1000] for i in range(0, size, 1000)]),
                               headers={"Content-Type": "application/json"}, encode_chunked=True)
            answer = connection.getresponse()
            document_back = json.loads(answer.read())
            connection.close()
            assert answer.status == expected, document_back
            if expected == 200:
                assert document_back["response"]["allowed"] is False
            else:
                assert document_back["reason"] == "RequestEntityTooLarge"

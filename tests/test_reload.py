"""Hot reload in file mode (cert-manager or a manual Secret, mounted by kubelet): new certificates reach new
connections without a restart, readiness follows the certificate, expiry is logged, and swapping
certificates while requests flow fails none of them.

The cert dir is laid out and updated exactly as kubelet does it for a Secret volume (files are symlinks
through `..data`, which is swapped to a new timestamped directory in one rename).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.guard import SERVICE_HOST, Guard
from tests.upgrades import dashboard_put, finished_upgrade, review
from webhook import certdir, certs
from webhook.tls import ServingCertificate

STORED = finished_upgrade()
NAMES = certs.service_names() + ["127.0.0.1"]
SWAPS = int(os.environ.get("UPGRADE_GUARD_TEST_SWAPS", "4"))  # raise it for a longer rotation soak


@pytest.fixture(scope="module")
def authority() -> certs.Pair:
    return certs.make_ca()


def secret_files(ca: certs.Pair, days: float = 365, start: dt.datetime | None = None) -> dict[str, bytes]:
    serving = certs.make_serving(ca, NAMES, days, start)
    return {"tls.crt": serving.cert_pem, "tls.key": serving.key_pem, "ca.crt": ca.cert_pem}


@pytest.fixture
def mounted(tmp_path, authority):
    """A Secret volume as kubelet mounts it."""
    directory = tmp_path / "secret-volume"
    certdir.publish(directory, secret_files(authority))
    return directory


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def served(port: int) -> bytes:
    """The certificate a new connection gets (not verified: that is the point of looking)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=SERVICE_HOST) as tls:
            return tls.getpeercert(binary_form=True)


def probe(port: int) -> tuple[int, str]:
    """/readyz as kubelet probes it: HTTPS without verifying the certificate."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=SERVICE_HOST) as tls:
            tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: guard\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def unready(guard: Guard, why: str) -> bool:
    status, body = probe(guard.port)
    return status == 503 and why in body


def wait_for(condition, timeout: float = 10) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def loaded_lines(guard: Guard) -> list[dict]:
    found = []
    for line in guard.lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "certificate loaded":
            found.append(record)
    return found


def test_the_cert_dir_is_laid_out_as_kubelet_does(mounted):
    assert os.readlink(mounted / "tls.crt") == "..data/tls.crt"
    version = os.readlink(mounted / "..data")
    assert version.startswith("..") and (mounted / version).is_dir()
    certdir.publish(mounted, secret_files(certs.make_ca()))
    assert os.readlink(mounted / "..data") != version and not (mounted / version).exists()


def test_kubelet_swap_reaches_new_connections_within_10_seconds(mounted, authority):
    with Guard(mounted, "--workers", "2") as guard:
        kept = guard.connect()
        assert kept.review("/validate", review(STORED, dashboard_put(STORED)))[0] == 200
        first = loaded_lines(guard)
        assert len(first) == 1 and first[0]["days_left"] == pytest.approx(365, abs=0.1)  # logged at start
        renewed = secret_files(authority, days=200)
        certdir.publish(mounted, renewed)
        took = wait_for(lambda: all(served(guard.port) == der(renewed["tls.crt"]) for _ in range(6)))
        assert took < 10
        assert kept.review("/validate", review(STORED, dashboard_put(STORED)))[0] == 200  # kept alive throughout
        kept.close()
        after = loaded_lines(guard)[1:]
        assert after and {round(r["days_left"]) for r in after} == {200}  # logged again, by each worker that loaded it


def test_readiness_follows_the_certificate(mounted, authority):
    with Guard(mounted, "--workers", "1") as guard:
        assert probe(guard.port)[0] == 200

        for name in ("tls.crt", "tls.key"):
            os.unlink(mounted / name)
        wait_for(lambda: unready(guard, "missing"))
        connection = guard.connect()  # still served with the certificate it had
        assert connection.review("/validate", review(STORED, dashboard_put(STORED)))[0] == 200
        connection.close()

        certdir.publish(mounted, secret_files(authority))
        wait_for(lambda: probe(guard.port)[0] == 200)

        broken = {**secret_files(authority),
                  "tls.crt": b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"}
        certdir.publish(mounted, broken)
        wait_for(lambda: unready(guard, "cannot load"))

        expired = secret_files(authority, days=1, start=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
        certdir.publish(mounted, expired)
        wait_for(lambda: unready(guard, "the certificate expired"))

        certdir.publish(mounted, secret_files(authority))
        wait_for(lambda: probe(guard.port)[0] == 200)
        errors = [json.loads(line) for line in guard.lines if '"certificate not loaded' in line]
        assert len(errors) == 1, "a broken file is logged once, not every second"


def test_rotation_under_load_fails_no_request(mounted, authority):
    """Clients connect, review and disconnect as fast as they can while the certificate is swapped."""
    with Guard(mounted, "--workers", "2", "--threads", "4") as guard:
        stop, failures, seen, done = threading.Event(), [], set(), [0]
        lock = threading.Lock()

        def client():
            while not stop.is_set():
                try:
                    connection = guard.connect()  # verifies the CA and the Service name, as the apiserver does
                    for _ in range(3):
                        status, _, answer = connection.review("/validate", review(STORED, dashboard_put(STORED)))
                        assert status == 200 and answer["response"]["allowed"] is False
                    with lock:
                        seen.add(connection.sock.getpeercert(binary_form=True))
                        done[0] += 3
                    connection.close()
                except Exception as err:  # noqa: BLE001 - every failure is the finding
                    failures.append(repr(err))
        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            for _ in range(SWAPS):
                renewed = der((files := secret_files(authority))["tls.crt"])
                certdir.publish(mounted, files)
                wait_for(lambda: renewed in seen)  # the clients really met it before the next swap
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
        assert failures == []
        assert done[0] > 50 and len(seen) == SWAPS + 1


def test_a_new_pair_read_mid_swap_is_read_again(tmp_path, authority, monkeypatch, caplog):
    """The certificate is read, then the directory swaps, then the key: the mismatch is read again, not logged."""
    directory = tmp_path / "certs"
    certdir.publish(directory, secret_files(authority))
    certificate = ServingCertificate(directory, interval=0)
    assert certificate.problem() == ""
    import webhook.tls as tls

    real, swapped = tls.server_context, []

    def swap_between_the_reads(cert_file, key_file, client_ca=None):
        if not swapped:
            swapped.append(True)
            old_cert = (directory / "tls.crt").read_bytes()
            certdir.publish(directory, secret_files(authority, days=100))
            (tmp_path / "old.crt").write_bytes(old_cert)
            return real(tmp_path / "old.crt", key_file, client_ca)  # old certificate, new key
        return real(cert_file, key_file, client_ca)
    monkeypatch.setattr(tls, "server_context", swap_between_the_reads)
    certdir.publish(directory, secret_files(authority, days=50))
    with caplog.at_level(logging.INFO, "upgrade_guard.tls"):
        assert certificate.problem() == ""
    assert round((certificate.refresh().not_after - dt.datetime.now(dt.timezone.utc)).days) in (99, 100)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_files_missing_for_a_moment_and_back_are_ready_again(tmp_path, authority):
    directory = tmp_path / "certs"
    certdir.publish(directory, secret_files(authority))
    certificate = ServingCertificate(directory, interval=0)
    assert certificate.problem() == ""
    os.rename(directory / "tls.crt", tmp_path / "aside")
    assert "missing" in certificate.problem()
    assert certificate.context() is not None  # new connections still get the certificate it had
    os.rename(tmp_path / "aside", directory / "tls.crt")
    assert certificate.problem() == ""


def test_file_mode_never_loads_the_kubernetes_client():
    """Plain `serve` stays lean (no client, no token needed): only self-managed, register and doctor import it."""
    import subprocess
    import sys

    code = ("import sys, webhook.cli, webhook.server, webhook.app, webhook.tls, webhook.certdir; "
            "sys.exit('kubernetes' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0

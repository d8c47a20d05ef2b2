"""The shutdown that loses nothing: SIGTERM drains first, then in-flight requests finish, then the guard exits."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time

import pytest

from tests.guard import SERVICE_HOST, Guard
from tests.upgrades import dashboard_put, finished_upgrade, review
from webhook import manifests
from webhook.cli import main

STORED = finished_upgrade()
DRAIN = 1.5
GRACE = manifests.tree()["base/deployment.yaml"][0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def _dismissal() -> dict:
    return review(STORED, dashboard_put(STORED))


def _closed_by_server(connection, timeout: float) -> bool:
    """True once the server has closed this idle connection (EOF, close_notify or reset)."""
    connection.sock.settimeout(timeout)
    try:
        return connection.sock.recv(1) == b""
    except (ssl.SSLEOFError, ConnectionResetError, ssl.SSLZeroReturnError):
        return True
    except TimeoutError:
        return False


def _start_slow_review(guard: Guard, document: dict) -> tuple[ssl.SSLSocket, bytes]:
    """A POST whose headers and first half of the body are sent now; returns the socket and the rest of the body."""
    body = json.dumps(document).encode()
    context = ssl.create_default_context(cafile=str(guard.cert_dir / "ca.crt"))
    raw = socket.create_connection(("127.0.0.1", guard.port), timeout=20)
    tls = context.wrap_socket(raw, server_hostname=SERVICE_HOST)
    head = (f"POST /validate?timeout=5s HTTP/1.1\r\nHost: {SERVICE_HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    half = len(body) // 2
    tls.sendall(head + body[:half])
    return tls, body[half:]


def _read_answer(tls: ssl.SSLSocket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += tls.recv(65536)
    return int(head.split()[1]), json.loads(body)


def test_sigterm_keeps_answering_then_finishes_in_flight_requests(cert_dir):
    guard = Guard(cert_dir, "--workers", "2", "--drain", str(DRAIN)).start()
    try:
        idle = guard.connect()  # a kept-alive connection the client never uses again
        assert idle.review("/validate", _dismissal())[0] == 200
        reused = guard.connect()  # a kept-alive connection the client sends on during the drain
        assert reused.review("/validate", _dismissal())[0] == 200
        slow, rest = _start_slow_review(guard, _dismissal())  # in flight across the whole shutdown

        started = time.monotonic()
        guard.process.send_signal(signal.SIGTERM)
        guard.wait_for_line("draining for")

        status, headers, answer = reused.review("/validate", _dismissal())
        assert status == 200 and answer["response"]["allowed"] is False
        assert headers["Connection"] == "close", "a kept-alive client is not told to reconnect"

        fresh = guard.connect()
        status, body = fresh.get("/readyz")
        assert status == 503 and b"shutting down" in body
        assert fresh.sock is None, "the answer did not say Connection: close"  # http.client let go of it
        status, headers, answer = guard.connect().review("/mutate", _dismissal())
        assert status == 200 and answer["response"]["patchType"] == "JSONPatch"
        assert headers["Connection"] == "close"
        assert guard.process.poll() is None, "the guard stopped before its drain was over"

        guard.wait_for_line("drain over")
        assert time.monotonic() - started >= DRAIN
        slow.sendall(rest)
        status, answer = _read_answer(slow)
        assert status == 200 and answer["response"]["allowed"] is False, "an in-flight request was cut"
        slow.close()

        assert _closed_by_server(idle, 10), "an idle kept-alive connection was left open"
        assert guard.process.wait(15) == 0
        # about DRAIN + 2 s (gunicorn keeps idle connections 2 s after its stop); "well inside" the pod's grace
        assert time.monotonic() - started < GRACE / 2, "the guard took too long to exit after its drain"
    finally:
        guard.stop()


def test_a_second_sigterm_ends_the_drain(cert_dir):
    guard = Guard(cert_dir, "--workers", "1", "--drain", "60").start()
    try:
        started = time.monotonic()
        guard.process.send_signal(signal.SIGTERM)
        guard.wait_for_line("draining for")
        guard.process.send_signal(signal.SIGTERM)
        assert guard.process.wait(15) == 0
        assert time.monotonic() - started < 15
    finally:
        guard.stop()


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_a_bad_drain_is_refused(value, cert_dir, capsys):
    assert main(["serve", "--cert-dir", str(cert_dir), "--drain", value]) == 2
    assert "--drain" in capsys.readouterr().err

"""Slow and idle clients against a real `upgrade-guard serve`: they cannot use up its workers.

A request must arrive whole within --request-timeout of its first byte, however steadily it trickles; idle
kept-alive connections stay open (the apiserver keeps them up to 90 s); --max-connections caps what one
worker holds; and an honest client is answered quickly all along.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time

import pytest

from tests import corpus
from tests.figures import FIGURES
from tests.guard import SERVICE_HOST, Guard
from tests.switches import amount
from tests.upgrades import dashboard_put, finished_upgrade, review

STORED = finished_upgrade()
REQUEST_TIMEOUT = 1.0
# The promise itself (idle for longer than the apiserver's 90 s) takes a while: with UPGRADE_GUARD_LONG_TESTS=1.
IDLE = amount("UPGRADE_GUARD_IDLE_SECONDS", REQUEST_TIMEOUT * 2 + 1, 95)


def _tls(guard: Guard) -> ssl.SSLSocket:
    return corpus.connect(guard.port, guard.cert_dir / "ca.crt", SERVICE_HOST, timeout=10)


def _closed(sock: ssl.SSLSocket) -> bytes | None:
    """What the server sent before closing, or None while the connection is still open."""
    sock.setblocking(False)
    try:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data
    except (ssl.SSLWantReadError, BlockingIOError):
        return None
    except OSError:
        return b""
    finally:
        sock.setblocking(True)


def test_trickling_requests_are_closed_and_others_served(cert_dir):
    """Three slow clients per thread, each sending a header line every 0.1 s or so: none of them gets a thread."""
    with Guard(cert_dir, "--workers", "1", "--threads", "2", "--request-timeout", str(REQUEST_TIMEOUT)) as guard:
        slow = [_tls(guard) for _ in range(6)]
        started = time.monotonic()
        for sock in slow:
            sock.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        closed_after: dict[int, float] = {}
        answers: dict[int, bytes] = {}
        latencies: list[float] = []
        honest = guard.connect()
        while len(closed_after) < len(slow) and time.monotonic() - started < REQUEST_TIMEOUT + 5:
            for i, sock in enumerate(slow):
                if i in closed_after:
                    continue
                try:
                    sock.sendall(b"X-Slow: still-coming\r\n")
                except OSError:
                    pass
                seen = _closed(sock)
                if seen is not None:
                    closed_after[i], answers[i] = time.monotonic() - started, seen
            before = time.monotonic()
            status, _, answer = honest.review("/validate", review(STORED, dashboard_put(STORED)))
            latencies.append(time.monotonic() - before)
            assert status == 200 and answer["response"]["allowed"] is False
            time.sleep(0.1)
        honest.close()
        for sock in slow:
            sock.close()
    assert len(closed_after) == len(slow), "a trickling request was never closed"
    assert all(REQUEST_TIMEOUT - 0.1 <= t <= REQUEST_TIMEOUT + 2 for t in closed_after.values()), closed_after
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers.values()), answers
    assert len(latencies) >= 5 and max(latencies) < 0.5, latencies
    FIGURES.add("faults survived", "slow clients (6 trickling requests on 2 threads)")


def test_a_body_that_stops_is_closed_by_the_request_timeout(cert_dir):
    with Guard(cert_dir, "--workers", "1", "--threads", "1", "--request-timeout", str(REQUEST_TIMEOUT)) as guard:
        stalled = _tls(guard)
        stalled.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"apiVersion\":")
        honest = guard.connect()  # the only thread is free for it
        assert honest.review("/validate", review(STORED, dashboard_put(STORED)))[0] == 200
        stalled.settimeout(REQUEST_TIMEOUT + 5)
        started = time.monotonic()
        answer = stalled.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started <= REQUEST_TIMEOUT + 2
        honest.close()
        stalled.close()


def test_idle_keep_alive_outlives_the_request_timeout(cert_dir):
    """Idle between requests is not "slow": the connection waits for its next request up to --keepalive."""
    idle = IDLE
    with Guard(cert_dir, "--workers", "1", "--request-timeout", str(REQUEST_TIMEOUT)) as guard:
        connection = guard.connect(timeout=idle + 10)
        assert connection.review("/validate", review(STORED, dashboard_put(STORED)))[0] == 200
        first = connection.sock
        time.sleep(idle)  # the idleness under test: nothing to wait on
        assert connection.review("/validate", review(STORED, dashboard_put(STORED)))[0] == 200
        assert connection.sock is first, "the idle connection was closed"
        connection.close()
    FIGURES.set("idle keep-alive kept (s)", idle)


def test_connections_per_worker_are_capped(cert_dir):
    with Guard(cert_dir, "--workers", "1", "--threads", "1", "--max-connections", "3",
               "--request-timeout", "20") as guard:
        held = [_tls(guard) for _ in range(3)]
        waiting = socket.create_connection(("127.0.0.1", guard.port), timeout=1.5)
        context = ssl.create_default_context(cafile=str(guard.cert_dir / "ca.crt"))
        with pytest.raises(TimeoutError):  # accepted by the kernel, not by the worker: no handshake
            context.wrap_socket(waiting, server_hostname=SERVICE_HOST)
        waiting.close()
        held.pop().close()
        connection = guard.connect(timeout=5)  # a place is free again
        assert connection.get("/healthz")[0] == 200
        connection.close()
        for sock in held:
            sock.close()


def test_clients_that_vanish_are_counted_out_once(cert_dir):
    """A client gone before its answer is written (wrk at the end of a run, an apiserver timing out) frees its
    place once: counted out twice, the worker would take connections beyond --max-connections."""
    body = json.dumps(review(STORED, dashboard_put(STORED))).encode()
    request = (b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    with Guard(cert_dir, "--workers", "1", "--threads", "1", "--max-connections", "3") as guard:
        for _ in range(20):
            sock = _tls(guard)
            sock.sendall(request)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, no goodbye
            sock.close()
        guard.until_connections(0)  # the worker saw them all go
        held = [_tls(guard) for _ in range(3)]
        waiting = socket.create_connection(("127.0.0.1", guard.port), timeout=1.5)
        context = ssl.create_default_context(cafile=str(guard.cert_dir / "ca.crt"))
        with pytest.raises(TimeoutError):  # the cap holds: accepted by the kernel only
            context.wrap_socket(waiting, server_hostname=SERVICE_HOST)
        waiting.close()
        for sock in held:
            sock.close()

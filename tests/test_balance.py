"""Connections shared out among the workers: the apiserver opens several at once and keeps them, and the guard
must not leave them all to the worker that happened to wake first (one process, one core, for every review)."""

from __future__ import annotations

import socket

from tests.guard import Guard

CONNECTIONS = 8
ROUNDS = 3


def test_bursts_of_connections_are_shared_among_the_workers(cert_dir):
    """All at once, as a load generator (or an apiserver with writes waiting) opens them. Left to the kernel, a
    burst mostly lands on one worker (8 and 0, 7 and 1); here each worker takes about its half."""
    with Guard(cert_dir, "--workers", "2") as guard:
        guard.settle(2)
        for _ in range(ROUNDS):
            burst = [socket.create_connection(("127.0.0.1", guard.port), timeout=10) for _ in range(CONNECTIONS)]
            guard.until_connections(CONNECTIONS)  # every one accepted
            held = guard.connections()
            for sock in burst:
                sock.close()
            assert sum(held) == CONNECTIONS
            assert min(held) >= CONNECTIONS // 2 - 2, f"connections per worker: {held}"
            guard.until_connections(0)  # the workers saw them closed

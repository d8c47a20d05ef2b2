"""Connections shared out among the workers: the apiserver opens several at once and keeps them, and the guard
must not leave them all to the worker that happened to wake first (one process, one core, for every review)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from tests.guard import Guard

CONNECTIONS = 8
ROUNDS = 3


def _held(guard: Guard) -> list[int]:
    """How many established connections to the guard's port each worker holds, as /proc says."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == guard.port and fields[3] == "01":
            established.add(f"socket:[{fields[9]}]")
    held = []
    for pid in guard.workers():
        descriptors = Path(f"/proc/{pid}/fd")
        held.append(sum(os.readlink(descriptors / fd) in established for fd in os.listdir(descriptors)))
    return held


def _until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_bursts_of_connections_are_shared_among_the_workers(cert_dir):
    """All at once, as a load generator (or an apiserver with writes waiting) opens them. Left to the kernel, a
    burst mostly lands on one worker (8 and 0, 7 and 1); here each worker takes about its half."""
    with Guard(cert_dir, "--workers", "2") as guard:
        guard.settle(2)
        for _ in range(ROUNDS):
            burst = [socket.create_connection(("127.0.0.1", guard.port), timeout=10) for _ in range(CONNECTIONS)]
            _until(lambda: sum(_held(guard)) == CONNECTIONS)  # every one accepted
            held = _held(guard)
            for sock in burst:
                sock.close()
            assert sum(held) == CONNECTIONS
            assert min(held) >= CONNECTIONS // 2 - 2, f"connections per worker: {held}"
            _until(lambda: sum(_held(guard)) == 0)  # the workers saw them closed

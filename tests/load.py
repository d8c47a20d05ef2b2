"""Bounded load on a running guard, from a few client threads, each request's fate recorded.

A request ends one of four ways: answered right (`ok`), a connection refused before anything was sent
(`refused`: the server is gone, the apiserver tries another replica), a failed TLS handshake
(`handshake`), or sent and then not answered (`cut`: what an apiserver sees as a failed call).
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.guard import ApiserverConnection, Guard
from tests.upgrades import dashboard_put, finished_upgrade, kubectl_label, review

STORED = finished_upgrade()
# (path, review, whether the answer allows it)
REQUESTS = (("/validate", review(STORED, dashboard_put(STORED)), False),
            ("/mutate", review(STORED, dashboard_put(STORED)), True),
            ("/validate", review(STORED, kubectl_label(STORED)), True))


@dataclass
class Client:
    owner: int = 0  # the worker that served this client's first connection
    ok: int = 0
    refused: int = 0
    failures: list[tuple[float, str, str]] = field(default_factory=list)  # (when, kind, what)
    reconnects: int = 0
    serials: set[int] = field(default_factory=set)  # serving certificates seen


class Load:
    def __init__(self, guard: Guard, clients: int = 4, fresh_connections: bool = False,
                 ca_file: Path | None = None):
        self.guard = guard
        self.fresh = fresh_connections  # a new connection (and handshake) for every request
        self.ca_file = ca_file or guard.cert_dir / "ca.crt"
        self.clients = [Client() for _ in range(clients)]
        self._stop = threading.Event()
        self._connections: dict[int, ApiserverConnection] = {}
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def spread(self) -> None:
        """Before starting: connect the clients so that every worker serves some of them (round robin)."""
        workers = sorted(self.guard.workers())
        for i, client in enumerate(self.clients):
            for _ in range(100):
                connection = self._connect(client)
                if connection is not None and client.owner == workers[i % len(workers)]:
                    self._connections[i] = connection
                    break
                client.owner = 0
                if connection is not None:
                    connection.close()
            else:
                raise AssertionError(f"no connection to worker {workers[i % len(workers)]} in 100 tries")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def wait_for(self, requests: int, timeout: float = 20) -> None:
        """Until every client has had `requests` answers: the load is really on."""
        deadline = time.monotonic() + timeout
        while any(c.ok < requests for c in self.clients):
            if time.monotonic() > deadline:
                raise AssertionError(f"the load did not get going: {self.clients}")
            time.sleep(0.02)

    @property
    def ok(self) -> int:
        return sum(c.ok for c in self.clients)

    def failures(self, kind: str | None = None) -> list[tuple[float, str, str]]:
        return [f for c in self.clients for f in c.failures if kind is None or f[1] == kind]

    def _connect(self, client: Client) -> ApiserverConnection | None:
        connection = ApiserverConnection(self.guard.port, self.ca_file)
        try:
            connection.connect()
        except ConnectionRefusedError:
            client.refused += 1
            return None
        except (OSError, ssl.SSLError) as err:
            client.failures.append((time.monotonic(), "handshake", repr(err)))
            return None
        client.serials.add(int(connection.sock.getpeercert()["serialNumber"], 16))
        if not client.owner:
            client.owner = owner(self.guard, connection.sock.getsockname()[1])
        return connection

    def _run(self, index: int) -> None:
        client = self.clients[index]
        connection = self._connections.pop(index, None)
        turn = 0
        while not self._stop.is_set():
            if connection is None or connection.sock is None:
                connection = self._connect(client)
                if connection is None:
                    time.sleep(0.05)
                    continue
                client.reconnects += 1
            path, document, allowed = REQUESTS[turn % len(REQUESTS)]
            turn += 1
            try:
                status, _, answer = connection.review(path, document)
            except (OSError, http.client.HTTPException) as err:
                client.failures.append((time.monotonic(), "cut", repr(err)))
                connection.close()
                connection = None
                continue
            if status != 200 or answer["response"]["allowed"] is not allowed:
                client.failures.append((time.monotonic(), "wrong", f"{status} {answer!r:.200}"))
            else:
                client.ok += 1
            if self.fresh:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()


def owner(guard: Guard, client_port: int) -> int:
    """The worker holding the server side of the loopback connection from `client_port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == guard.port and int(remote.split(":")[1], 16) == client_port:
            inodes.add(f"socket:[{fields[9]}]")
    for pid in guard.workers():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return 0

"""Run a real `upgrade-guard serve` and talk to it as kube-apiserver does (TLS, SNI, keep-alive)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

SERVICE_HOST = "upgrade-guard.harvester-system.svc"


def command() -> list[str]:
    """The installed console script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("upgrade-guard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "webhook"]


class ApiserverConnection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 but verifies the certificate for the Service name, with SNI, like the apiserver."""

    def __init__(self, port: int, ca_file: str | Path, server_name: str = SERVICE_HOST, timeout: float = 10,
                 client_cert: tuple[str, str] | None = None):
        context = ssl.create_default_context(cafile=str(ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        if client_cert:
            context.load_cert_chain(*client_cert)
        super().__init__("127.0.0.1", port, timeout=timeout, context=context)
        self.server_name = server_name
        self._context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's net/http does
        self.sock = self._context.wrap_socket(raw, server_hostname=self.server_name)

    def review(self, path: str, document: dict | bytes, headers: dict | None = None) -> tuple[int, dict, dict | bytes]:
        """POST as the apiserver does; returns status, headers and the decoded JSON answer (bytes if not JSON)."""
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        sent = {"Content-Type": "application/json", "Accept": "application/json, */*",
                "User-Agent": "kube-apiserver-admission", **(headers or {})}
        self.request("POST", f"{path}?timeout=5s", body=body, headers=sent)
        response = self.getresponse()
        data = response.read()
        try:
            data = json.loads(data)
        except ValueError:
            pass
        return response.status, dict(response.getheaders()), data

    def get(self, path: str) -> tuple[int, bytes]:
        self.request("GET", path)
        response = self.getresponse()
        return response.status, response.read()


class Guard:
    """One `upgrade-guard serve` process on a port the OS picked; always stopped by `stop()`.

    `program` runs instead of the installed `upgrade-guard` (the benchmark's ceiling reference takes the same
    `serve` arguments). With `output`, the guard writes its lines to that file, as a container runtime keeps
    them, and `lines` holds only those up to "Listening at": a Python thread reading every line of a pipe
    would take CPU from the guard under load (the benchmark's case)."""

    def __init__(self, cert_dir: str | Path, *args: str, env: dict | None = None, program: list[str] | None = None,
                 output: Path | None = None):
        self.cert_dir = Path(cert_dir)
        self.program = program or command()
        self.args = args
        self.output = output
        # No drain unless a test asks for one: stopping a test's guard should not wait for load balancers.
        self.env = {**os.environ, "UPGRADE_GUARD_DRAIN": "0", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._new_line = threading.Condition()

    def start(self, timeout: float = 20) -> Guard:
        command_line = [*self.program, "serve", "--cert-dir", str(self.cert_dir), "--bind", "127.0.0.1:0", *self.args]
        if self.output is None:
            self.process = subprocess.Popen(command_line, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True, env=self.env)
            threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        else:
            with open(self.output, "w") as written:
                self.process = subprocess.Popen(command_line, stdout=written, stderr=subprocess.STDOUT, env=self.env)
            threading.Thread(target=self._read, args=(self._until_listening(),), daemon=True).start()
        if not self._listening.wait(timeout):
            self.stop()
            raise RuntimeError("the guard did not start listening:\n" + "\n".join(self.lines[-20:]))
        self.wait_ready(timeout)
        return self

    def _until_listening(self) -> Iterator[str]:
        """The output file's lines as they are written, until the port is known or the process is gone."""
        assert self.process and self.output
        with open(self.output, "rb") as written:
            line = b""
            while not self._listening.is_set():
                line += written.readline()
                if line.endswith(b"\n"):
                    yield line.decode(errors="replace")
                    line = b""
                elif self.process.poll() is not None:
                    return
                else:
                    time.sleep(0.02)

    def _read(self, source: Iterable[str]) -> None:
        for line in source:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
            found = re.search(r"Listening at: https://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                self._listening.set()

    def wait_for_line(self, pattern: str, timeout: float = 20) -> str:
        """The first output line matching `pattern`, waiting for it to be written."""
        found: list[str] = []

        def seen() -> bool:
            found.extend(line for line in self.lines if re.search(pattern, line))
            return bool(found)

        with self._new_line:
            if not self._new_line.wait_for(seen, timeout):
                raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines[-20:]))
        return found[0]

    def connect(self, **kwargs) -> ApiserverConnection:
        return ApiserverConnection(self.port, self.cert_dir / "ca.crt", **kwargs)

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                connection = self.connect(timeout=2)
                status, _ = connection.get("/readyz")
                connection.close()
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                raise RuntimeError("the guard did not become ready:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)

    def workers(self) -> list[int]:
        """The worker processes' ids, as the kernel lists the master's children."""
        assert self.process
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def wait_workers(self, count: int, timeout: float = 20, other_than: tuple[int, ...] = ()) -> list[int]:
        """Wait until `count` workers run (none of them in `other_than`) and each has said it booted."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.workers()
            booted = {int(m) for line in self.lines for m in re.findall(r"Booting worker with pid: (\d+)", line)}
            if len(pids) == count and not set(pids) & set(other_than) and set(pids) <= booted:
                return pids
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers are {pids}, not {count} new ones:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)

    def connections(self) -> list[int]:
        """How many established connections to the guard's port each worker holds, as /proc says."""
        established = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == self.port and fields[3] == "01":
                established.add(f"socket:[{fields[9]}]")
        held = []
        for pid in self.workers():
            descriptors = Path(f"/proc/{pid}/fd")
            held.append(sum(os.readlink(descriptors / fd) in established for fd in os.listdir(descriptors)))
        return held

    def until_connections(self, total: int, timeout: float = 10) -> None:
        """Wait until the workers hold `total` connections together (accepted, or seen closed)."""
        deadline = time.monotonic() + timeout
        while sum(self.connections()) != total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers hold {self.connections()} connections, not {total} in all")
            time.sleep(0.01)

    def worker_memory(self) -> list[int]:
        """Resident memory of each worker, in bytes."""
        sizes = []
        for pid in self.workers():
            status = Path(f"/proc/{pid}/status").read_text()
            sizes.append(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024)
        return sizes

    def memory(self) -> int:
        """Resident memory of the workers together, in bytes."""
        return sum(self.worker_memory())

    def settle(self, count: int, timeout: float = 10) -> None:
        """Wait until `count` workers run and have loaded the app: ready means one worker answers, while the
        others may still be importing (tens of MiB each). Nothing announces a loaded app, so this samples
        their memory until three readings agree."""
        deadline = time.monotonic() + timeout
        readings: list[list[int]] = []
        while time.monotonic() < deadline:
            sizes = self.worker_memory()
            readings = (readings + [sizes])[-3:] if len(sizes) == count else []
            if len(readings) == 3 and readings[0] == readings[2]:
                return
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> int | None:
        if not self.process or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> Guard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""The hostile-input corpus (`tests/hostile/*.http`): raw HTTP requests with the answer each must get.

Format (see tests/hostile/README.md): `# key: value` lines first, then the request as text. Head lines
are sent with CRLF; the body is sent as written (LF turned into CRLF with `# body: crlf`, for chunked
framing). `Content-Length` is added when the head has neither it nor `Transfer-Encoding`. Two
directives build bytes a text file cannot hold or should not: `# fill: {{NAME}} COUNT TEXT` (TEXT
repeated COUNT times, `{i}` in it numbered from 0) and `# hex: {{NAME}} HEX BYTES`.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import selectors
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

CORPUS = Path(__file__).with_name("hostile")
TRACES = ("Traceback", 'File "', ".py", "site-packages", "/usr/", "/root/", "/home/")  # never in an answer


@dataclass
class Case:
    name: str
    expect: str  # an HTTP status code, or allowed / denied / restored (200 with that AdmissionReview answer)
    why: str
    wire: bytes
    meta: dict[str, list[str]] = field(default_factory=dict)


def _expand(text: str, meta: dict[str, list[str]]) -> bytes:
    data = text.encode("utf-8")
    for spec in meta.get("fill", []):
        name, count, pattern = spec.split(" ", 2)
        filled = "".join(pattern.replace("{i}", str(i)) for i in range(int(count))) if "{i}" in pattern \
            else pattern * int(count)
        data = data.replace(name.encode(), filled.encode())
    for spec in meta.get("hex", []):
        name, hexdigits = spec.split(" ", 1)
        data = data.replace(name.encode(), bytes.fromhex(hexdigits))
    return data


def load(path: Path) -> Case:
    lines = path.read_text(encoding="utf-8").split("\n")
    meta: dict[str, list[str]] = {}
    while lines and lines[0].startswith("# "):
        key, _, value = lines.pop(0)[2:].partition(": ")
        meta.setdefault(key, []).append(value)
    blank = lines.index("")
    head, body = lines[:blank], "\n".join(lines[blank + 1:])
    if meta.get("body") == ["crlf"]:
        body = body.replace("\n", "\r\n")
    else:
        body = body.removesuffix("\n")
    body_bytes = _expand(body, meta)
    names = {line.split(":", 1)[0].strip().lower() for line in head[1:]}
    if body_bytes and not names & {"content-length", "transfer-encoding"}:
        head.append(f"Content-Length: {len(body_bytes)}")
    wire = _expand("\r\n".join(head) + "\r\n\r\n", meta) + body_bytes
    return Case(path.stem, meta["expect"][0], meta["why"][0], wire, meta)


def cases() -> list[Case]:
    return [load(p) for p in sorted(CORPUS.glob("*.http"))]


def _whole(received: bytes) -> bool:
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", received[:end])
    return length is not None and len(received) >= end + 4 + int(length.group(1))


class _Received:
    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, _mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def send(tls_socket: ssl.SSLSocket, wire: bytes, timeout: float) -> tuple[int, dict, bytes]:
    """Send while reading, so an answer that comes before the body is all sent (413) is not lost.

    One thread and a non-blocking socket: an SSL object must not be read and written from two threads.
    """
    tls_socket.setblocking(False)
    deadline = time.monotonic() + timeout
    sent, received = 0, bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(tls_socket, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while time.monotonic() < deadline:
            if sent < len(wire):
                try:
                    sent += tls_socket.send(wire[sent:sent + 65536])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except OSError:
                    sent = len(wire)  # the server answered and stopped reading; its answer is what counts
            try:
                while data := tls_socket.recv(65536):
                    received += data
                else:
                    break  # the server closed the connection
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except OSError:
                break
            if _whole(received):
                break
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(wire) else 0)
            selector.modify(tls_socket, events)
            selector.select(max(deadline - time.monotonic(), 0))
    response = http.client.HTTPResponse(_Received(bytes(received)))  # type: ignore[arg-type]
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def answer(body: bytes) -> dict | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def connect(port: int, ca_file: Path, server_name: str, timeout: float) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca_file))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(raw, server_hostname=server_name)

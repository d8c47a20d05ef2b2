"""Where an HTTP/1.1 request ends in the bytes received so far: pure, for the worker's request assembly.

The worker collects a request without a thread and hands it to gunicorn's parser only once it is all there.
This only has to know whether to keep waiting; judging the request is the parser's job. So anything it
cannot frame (no Content-Length digits, an unknown Transfer-Encoding, a broken chunk) counts as
"ready": the parser then reads it and answers 400.
"""

from __future__ import annotations

import re

HEAD_LIMIT = 64 * 1024  # request line and headers; gunicorn's own limits are lower, so it answers first
_HEADER = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:[ \t]*(.*?)[ \t]*$")


def _headers(head: bytes) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        match = _HEADER.match(line)
        if match:
            found.setdefault(match.group(1).lower(), []).append(match.group(2))
    return found


def _chunked_end(data: bytes, pos: int) -> int | None:
    """Index just past the last chunk and its trailers; None while incomplete; -1 when not chunked framing."""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None if len(data) - pos < 1024 else -1
        size = data[pos:eol].split(b";", 1)[0].strip()
        if not size or len(size) > 16 or not re.fullmatch(rb"[0-9A-Fa-f]+", size):
            return -1
        pos = eol + 2
        if int(size, 16) == 0:
            if data.startswith(b"\r\n", pos):
                return pos + 2
            end = data.find(b"\r\n\r\n", pos)
            return None if end < 0 else end + 4
        pos += int(size, 16) + 2
        if pos > len(data):
            return None


def request_ready(data: bytes, max_body: int) -> bool:
    """True when `data` holds a whole request (or more), or enough to know the parser must refuse it."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > HEAD_LIMIT
    headers = _headers(data[:end])
    body = end + 4
    if b"transfer-encoding" in headers:
        if headers[b"transfer-encoding"][-1].lower() != b"chunked" or b"content-length" in headers:
            return True
        last = _chunked_end(data, body)
        return last is not None or len(data) - body > max_body + HEAD_LIMIT
    lengths = headers.get(b"content-length", [b"0"])
    if len(set(lengths)) != 1 or not lengths[0].isdigit():
        return True
    length = int(lengths[0])
    return length > max_body or len(data) - body >= length

"""Where a request ends in the bytes so far: wait for more, or hand it to the parser."""

from __future__ import annotations

import pytest

from webhook.framing import HEAD_LIMIT, request_ready

HEAD = b"POST /validate HTTP/1.1\r\nHost: x\r\n"
LIMIT = 1000


@pytest.mark.parametrize("data, ready", [
    (b"", False),
    (b"POST /validate HTTP/1.1\r\nHost", False),
    (HEAD + b"\r\n", True),  # no body
    (HEAD + b"Content-Length: 5\r\n\r\nabc", False),
    (HEAD + b"Content-Length: 5\r\n\r\nabcde", True),
    (HEAD + b"content-length:5\r\n\r\nabcdefgh", True),  # more: a pipelined request follows
    (HEAD + b"Content-Length: 5000\r\n\r\nab", True),  # over the limit: the app answers 413 at once
    (HEAD + b"Content-Length: x\r\n\r\n", True),  # the parser answers 400
    (HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabc", True),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", False),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", True),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n", False),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n", True),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", True),  # not chunked framing: the parser says so
    (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", True),
    (HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", True),
    (b"G" * (HEAD_LIMIT + 1), True),  # a head that never ends
])
def test_request_ready(data, ready):
    assert request_ready(data, LIMIT) is ready


def test_a_chunked_body_past_the_limit_is_handed_on():
    body = b"".join(b"64\r\n" + b"a" * 100 + b"\r\n" for _ in range((LIMIT + HEAD_LIMIT) // 100 + 2))
    assert request_ready(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body, LIMIT)

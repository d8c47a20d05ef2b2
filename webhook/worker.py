"""gunicorn's gthread worker, made so that slow or broken clients cannot use up its threads.

gthread gives a connection to a thread as soon as it has a byte to read, and the thread then reads the
request blocking: a client that sends slowly holds a thread, and a few such clients hold them all. Here
the worker's main loop does the TLS handshake and collects each request with non-blocking reads; a
thread gets the connection only when the whole request is there (see `framing`). A request has
`request_timeout` seconds from its first byte (from the connection's first byte, handshake included, for
a new connection) to arrive and be answered, or its connection is closed, with a 408 when TLS is up.
Idle kept-alive connections are gthread's own: they wait in the poller up to `keepalive` seconds.
`worker_connections` caps the connections of one worker, collected requests included.

Connections are shared out among the workers: after each accept a worker leaves the listening socket to the
others for a moment, longer the more connections it holds, so the least busy worker takes the next one. Left
to the kernel, whichever worker wakes first takes a whole burst (the apiserver opens its connections together
and keeps them), and one process, one core, then answers everything while the others idle.

Requests gunicorn's parser refuses get a Kubernetes Status document, like every other answer.
"""

from __future__ import annotations

import errno
import json
import selectors
import ssl
import time
from functools import partial

from gunicorn import http, sock, util
from gunicorn.http.errors import (ConfigurationProblem, ExpectationFailed, InvalidResponseHeader,
                                  InvalidResponseHeaderName, LimitRequestHeaders, LimitRequestLine,
                                  ParseException)
from gunicorn.workers.gthread import ThreadWorker, TConn

from webhook.framing import request_ready
from webhook.review import status_document

RECV_SIZE = 256 * 1024
MIN_IO_TIMEOUT = 0.5  # what a thread may still wait on the socket when the request's time is (almost) up
ACCEPT_PAUSE = 0.002  # seconds a worker leaves new connections to the others, per connection it holds

# What the parser refuses and the 4xx the guard answers (everything else it refuses is a 400). gunicorn
# answers a transfer coding it does not know with 501; a webhook is only ever sent identity or chunked
# bodies, so here that is a bad request too.
_REFUSALS = ((LimitRequestLine, 414, "RequestURITooLong"),
             (LimitRequestHeaders, 431, "RequestHeaderFieldsTooLarge"),
             (ExpectationFailed, 417, "ExpectationFailed"))
_SERVER_FAULTS = (ConfigurationProblem, InvalidResponseHeader, InvalidResponseHeaderName)


def error_answer(code: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, with a Status document as its body."""
    body = json.dumps(status_document(code, reason, message), separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {code} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


class GuardConnection(TConn):
    """A client connection, and the request being collected on it."""

    def __init__(self, cfg, client_sock, client, server):
        super().__init__(cfg, client_sock, client, server)
        self.initialized = True  # wrapped and handshaken by the main loop, not by gthread's thread
        self.handshaken = False
        self.received = bytearray()
        self.deadline = 0.0

    def init(self) -> None:
        """gthread calls this in the thread right before parsing: bound what is left to read and write."""
        self.sock.settimeout(max(self.deadline - time.monotonic(), MIN_IO_TIMEOUT))

    def close(self, graceful: bool = False) -> None:
        """Never raises. gthread counts a connection out, closes it, and counts it out again if closing raised:
        a graceful close of a socket already closed (a client gone mid-answer) raises, and the worker would
        then hold connections beyond --max-connections, and take more than its share (`accept`)."""
        try:
            super().close(graceful)
        except OSError:
            util.close(self.sock)


class GuardWorker(ThreadWorker):
    """Configured by the GuardServer that forks it: `request_timeout` and `max_body` come from it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.request_timeout = self.app.request_timeout
        self.max_body = self.app.max_body
        self.collecting: dict[GuardConnection, None] = {}  # an ordered set
        self.resume_accepting = 0.0  # until then (monotonic), new connections are left to the other workers

    def accept(self, listener) -> bool:
        """Take one waiting connection; False when none was waiting."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return False
        self.nr_conns += 1
        self._collect(GuardConnection(self.cfg, client_sock, client_addr, listener.getsockname()))
        if self.alive and self.cfg.workers > 1:
            self.resume_accepting = time.monotonic() + ACCEPT_PAUSE * self.nr_conns
            self.set_accept_enabled(False)
        return True

    def set_accept_enabled(self, enabled: bool) -> None:
        """When the worker stops: take (and answer, with Connection: close) what already waits in the listen
        queue, then close its copy of the listening socket. Once every process has, a new connection is
        refused at once rather than queued and reset when the last worker exits.
        Not before `resume_accepting`: gthread's loop asks again when its wait ends (`wait_for_and_dispatch_events`)."""
        if enabled and time.monotonic() < self.resume_accepting:
            return
        super().set_accept_enabled(enabled)
        if enabled or self.alive:
            return  # the connection cap was reached: accepting resumes later
        for listener in self.sockets:
            while self.accept(listener):
                pass
            listener.close()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's wait, cut short when this worker is to take connections again before it ends."""
        pause = self.resume_accepting - time.monotonic()
        super().wait_for_and_dispatch_events(min(timeout, pause) if pause > 0 else timeout)

    def on_client_socket_readable(self, conn, client) -> None:
        """A kept-alive connection has the next request's first bytes (or its end)."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._collect(conn)

    def finish_request(self, conn, fs) -> None:
        """Bytes already read past the answered request are the next one's: they are collected like any."""
        if not fs.cancelled() and fs.exception() is None and fs.result() and (
                conn.parser.unreader.buf.getvalue() or conn.sock.pending()):
            self._collect(conn, conn.parser.unreader.take_buffered())
            return
        super().finish_request(conn, fs)

    def _collect(self, conn: GuardConnection, received: bytes = b"") -> None:
        conn.received = bytearray(received)
        conn.deadline = time.monotonic() + self.request_timeout
        conn.sock.setblocking(False)
        self.collecting[conn] = None
        self._advance(conn)

    def _advance(self, conn: GuardConnection, _ready=None) -> None:
        """Handshake and read what has arrived, without blocking; hand the request on once it is whole."""
        if _ready is not None:
            self.poller.unregister(conn.sock)
        try:
            if not conn.handshaken:
                if not isinstance(conn.sock, ssl.SSLSocket):
                    conn.sock = sock.ssl_context(self.cfg).wrap_socket(
                        conn.sock, server_side=True, do_handshake_on_connect=False,
                        suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
                conn.sock.do_handshake()
                conn.handshaken = True
            while not request_ready(conn.received, self.max_body):
                data = conn.sock.recv(RECV_SIZE)
                if not data:
                    self._drop(conn)
                    return
                conn.received += data
        except ssl.SSLWantReadError:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._advance, conn))
            return
        except ssl.SSLWantWriteError:
            self.poller.register(conn.sock, selectors.EVENT_WRITE, partial(self._advance, conn))
            return
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError: a failed handshake, a reset
            self.log.debug("connection dropped while its request was collected: %s", err)
            self._drop(conn)
            return
        self._dispatch(conn)

    def _dispatch(self, conn: GuardConnection) -> None:
        del self.collecting[conn]
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(conn.received))
        conn.received = bytearray()
        self.enqueue_req(conn)

    def _drop(self, conn: GuardConnection, answer: bytes = b"") -> None:
        del self.collecting[conn]
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError):
            pass  # it was not waiting
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass  # the client is gone or not reading: closing is all that is left
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Called by gthread's main loop about once a second: also close requests past their time."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.collecting if c.deadline <= now]:
            late = error_answer(408, "RequestTimeout",
                                f"the request did not arrive whole within {self.request_timeout:g} s")
            self._drop(conn, late if conn.handshaken else b"")

    def handle_error(self, req, client, addr, exc) -> None:
        if not isinstance(exc, ParseException) or isinstance(exc, _SERVER_FAULTS):
            super().handle_error(req, client, addr, exc)
            return
        code, reason = next(((c, r) for kind, c, r in _REFUSALS if isinstance(exc, kind)), (400, "BadRequest"))
        message = f"not a valid HTTP/1.1 request: {type(exc).__name__}: {exc}"[:300]
        self.log.info("request refused by the HTTP parser", extra={"code": code, "error": message})
        try:
            util.write_nonblock(client, error_answer(code, reason, message))
        except OSError:
            self.log.debug("the refusal could not be sent")


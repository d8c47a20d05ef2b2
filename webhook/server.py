"""`serve`: gunicorn, started in this process (it becomes the master), serving the app over TLS only."""

from __future__ import annotations

import os
from pathlib import Path

from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import BadRequest, ClientDisconnected, RequestTimeout

from webhook.app import create_app
from webhook.config import Config
from webhook.logs import logging_dict
from webhook.tls import CERT_FILE, KEY_FILE, ServingCertificate
from webhook.worker import GuardWorker


def _tmp_dir() -> str | None:
    """Worker heartbeat files: /dev/shm is writable under a read-only root file system and never hits disk."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class _Body:
    """gunicorn's request body, where what goes wrong while reading it is the client's fault: a 4xx, not a 500.

    gunicorn parses a chunked body only as the app reads it, so a broken chunk surfaces inside the app, as
    does a body that stops coming (the worker's socket timeout) or a client that goes away.
    """

    def __init__(self, body):
        self._body = body

    def _read(self, method, *args):
        try:
            return method(*args)
        except ParseException as err:
            raise BadRequest(f"the request body is not valid HTTP/1.1 framing: {type(err).__name__}") from None
        except TimeoutError:
            raise RequestTimeout("the request body did not arrive in time") from None
        except OSError:
            raise ClientDisconnected() from None

    def read(self, *args):
        return self._read(self._body.read, *args)

    def readline(self, *args):
        return self._read(self._body.readline, *args)

    def readlines(self, *args):
        return self._read(self._body.readlines, *args)

    def __iter__(self):
        return iter(self.readline, b"")


def _for_the_app(app):
    """gunicorn's environ as the app expects it: the body as `_Body`, and mod_ssl's SSL_CLIENT_VERIFY read
    from the TLS socket gunicorn puts in the environ.

    The context verifies a certificate the client presents (or fails the handshake), so one that is
    there is verified.
    """
    def adapted(environ, start_response):
        environ["SSL_CLIENT_VERIFY"] = "SUCCESS" if environ["gunicorn.socket"].getpeercert() else "NONE"
        environ["wsgi.input"] = _Body(environ["wsgi.input"])
        return app(environ, start_response)
    return adapted


class GuardServer(BaseApplication):
    def __init__(self, config: Config, *, cert_dir: str | Path, bind: str, workers: int, threads: int,
                 max_body: int, keepalive: int, log_level: str, request_timeout: float = 10.0,
                 max_connections: int = 250, client_ca: str | Path | None = None):
        self.config = config
        self.cert_dir = Path(cert_dir)
        self.certificate = ServingCertificate(self.cert_dir, client_ca)
        self.certificate.refresh()  # load (and log the expiry) once before the workers fork
        self.max_body = max_body
        self.request_timeout = request_timeout  # read by GuardWorker
        self.client_cert_required = client_ca is not None
        self.options = {
            "bind": [bind],
            "workers": workers,
            "worker_class": GuardWorker,  # gthread (keeps connections alive) that slow clients cannot block
            "threads": threads,
            "worker_connections": max_connections,
            "keepalive": keepalive,
            "timeout": 30,
            "graceful_timeout": 20,
            "certfile": str(self.cert_dir / CERT_FILE),
            "keyfile": str(self.cert_dir / KEY_FILE),
            "ssl_context": self._ssl_context,
            "http_protocols": "h1",
            "logconfig_dict": logging_dict(log_level),
            "loglevel": log_level,
            "accesslog": None,
            "worker_tmp_dir": _tmp_dir(),
            "control_socket_disable": True,  # it would write under $HOME, which is read-only in the pod
            "proc_name": "upgrade-guard",
        }
        super().__init__()

    def _ssl_context(self, _conf, _default_factory):
        return self.certificate.context()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self):
        return _for_the_app(create_app(self.config, self.certificate.problem, self.max_body,
                                           self.client_cert_required))

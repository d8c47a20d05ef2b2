"""`serve`: gunicorn, started in this process (it becomes the master), serving the app over TLS only."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from webhook.app import create_app
from webhook.config import Config
from webhook.logs import logging_dict
from webhook.tls import CERT_FILE, KEY_FILE, ServingCertificate


def _tmp_dir() -> str | None:
    """Worker heartbeat files: /dev/shm is writable under a read-only root file system and never hits disk."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _settled(_worker) -> None:
    """The app is loaded and lives as long as the worker: out of the garbage collector's sight, a collection walks
    only what requests allocate, not every module and object of Flask, gunicorn and the guard."""
    gc.freeze()


class GuardLogger(glogging.Logger):
    """gunicorn's logger, minus the access line it would build for every request only for the access logger's
    level (warning, see logs.py) to drop it: each review has its own line from the app."""

    def access(self, resp, req, environ, request_time) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


class GuardServer(BaseApplication):
    def __init__(self, config: Config, *, cert_dir: str | Path, bind: str, workers: int, threads: int,
                 max_body: int, keepalive: int, log_level: str):
        self.config = config
        self.cert_dir = Path(cert_dir)
        self.certificate = ServingCertificate(self.cert_dir)
        self.certificate.refresh()  # load (and log the expiry) once before the workers fork
        self.max_body = max_body
        self.options = {
            "bind": [bind],
            "workers": workers,
            "worker_class": "gthread",  # keeps connections alive, as the apiserver expects
            "threads": threads,
            "keepalive": keepalive,
            "timeout": 30,
            "graceful_timeout": 20,
            "certfile": str(self.cert_dir / CERT_FILE),
            "keyfile": str(self.cert_dir / KEY_FILE),
            "ssl_context": self._ssl_context,
            "http_protocols": "h1",
            "logconfig_dict": logging_dict(log_level),
            "logger_class": GuardLogger,
            "post_worker_init": _settled,
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
        return create_app(self.config, self.certificate.problem, self.max_body)

"""`serve`: gunicorn, started in this process (it becomes the master), serving the app over TLS only.

Shutdown drains: kube-apiserver keeps idle connections to a pod and keeps sending on them after the pod is told to
stop, and kube-proxy routes new ones to it until the endpoint removal has spread. So on SIGTERM the master first
keeps everything running for `drain` seconds while every worker answers `/readyz` with 503 and closes each
connection after its answer (`Connection: close`, so clients reconnect to a replica that stays); only then does it
stop as gunicorn does: close the listener, let the workers finish what is in flight, exit.
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
import sys
import time
from pathlib import Path

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from webhook.app import create_app
from webhook.config import Config
from webhook.gunicorn_environ import for_the_app
from webhook.logs import logging_dict
from webhook.metrics import instrumented
from webhook.multiproc import MetricsDirectory
from webhook.tls import CERT_FILE, KEY_FILE, ServingCertificate
from webhook.worker import GuardWorker


GRACEFUL_TIMEOUT = 20  # seconds the workers get to finish in-flight requests once the drain is over


class DrainFlag:
    """Set by the master on SIGTERM, read by every worker: one byte of shared memory, inherited across fork, so a
    worker forked during the drain sees it too and no signal can reach a worker before its handler exists."""

    def __init__(self) -> None:
        self._byte = mmap.mmap(-1, 1)

    def set(self) -> None:
        self._byte[0] = 1

    def __bool__(self) -> bool:
        return self._byte[0] == 1


class DrainingArbiter(Arbiter):
    """gunicorn's master, with a drain before its graceful stop. A second SIGTERM ends the drain at once."""

    drain_until: float | None = None

    def handle_term(self) -> None:
        if self.drain_until is not None or self.app.drain <= 0:
            raise StopIteration  # gunicorn's graceful stop
        self.app.draining.set()
        self.drain_until = time.monotonic() + self.app.drain
        self.log.info("draining for %s s before stopping", self.app.drain)

    def wait_for_signals(self, timeout: float = 1.0) -> list:
        if self.drain_until is not None:
            left = self.drain_until - time.monotonic()
            if left <= 0:
                self.log.info("drain over: closing the listener, finishing in-flight requests")
                raise StopIteration
            timeout = min(timeout, left)
        return super().wait_for_signals(timeout)


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
                 max_body: int, keepalive: int, log_level: str, metrics_dir: str = "", drain: float = 0.0,
                 request_timeout: float = 10.0, max_connections: int = 250, client_ca: str | Path | None = None,
                 keeper=None):
        self.config = config
        self.drain = drain
        self.draining = DrainFlag()
        self.cert_dir = Path(cert_dir)
        self.certificate = ServingCertificate(self.cert_dir, client_ca)
        self.certificate.refresh()  # load (and log the expiry) once before the workers fork
        self.max_body = max_body
        self.metrics_dir = metrics_dir
        self.metrics: MetricsDirectory | None = None  # made by `run`, in the master; the workers inherit it
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
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "pre_request": self._pre_request,
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
        if keeper is not None:  # self-managed: the keeper's loop is a thread of this process, the master
            self.options["when_ready"] = lambda _arbiter: keeper.start()
            self.options["on_exit"] = lambda _arbiter: keeper.stop(10)
        super().__init__()

    def _pre_request(self, _worker, req) -> None:
        if self.draining:
            req.force_close()  # the answer says `Connection: close`, and the worker closes after it

    def _problem(self) -> str:
        return "shutting down" if self.draining else self.certificate.problem()

    def _ssl_context(self, _conf, _default_factory):
        return self.certificate.context()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)

    def run(self) -> None:
        """Serve until stopped, with the metrics directory made first, in the master, before any worker starts."""
        metrics = self.metrics = MetricsDirectory.open(self.metrics_dir)
        self.cfg.set("child_exit", metrics.worker_exited)
        master = os.getpid()
        try:
            DrainingArbiter(self).run()
        except RuntimeError as err:  # as gunicorn's own BaseApplication.run reports a failed start
            print(f"\nError: {err}\n", file=sys.stderr)
            sys.exit(1)
        finally:
            if os.getpid() == master:  # a worker leaves through here too, and must not remove it
                metrics.close()

    def _not_after(self):
        loaded = self.certificate.refresh()
        return loaded.not_after if loaded else None

    def load(self):
        assert self.metrics is not None, "the app is loaded by workers, which `run` starts"
        app = create_app(self.config, self._problem, self.max_body, self.client_cert_required)
        # The endpoint in front of Flask, without Flask's __call__ (which only calls it) between them.
        counted = instrumented(app.wsgi_app, self.config, self._not_after, self.metrics.path)
        return for_the_app(counted, self.client_cert_required)

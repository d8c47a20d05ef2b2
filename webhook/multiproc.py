"""The directory where every gunicorn worker keeps its metrics, so `/metrics` adds them all up.

prometheus-client's multiprocess mode has each process write its values to memory-mapped files named by
its pid, and reads them all at scrape time. The master owns the directory: it makes a fresh private one
(under /dev/shm, writable and in memory even on a read-only root file system) or empties the configured
one (an emptyDir outlives a container restart, and stale files would count old requests again), tells
the workers where it is through PROMETHEUS_MULTIPROC_DIR before they import the library, drops a dead
worker's live gauges (requests in flight) and removes a directory it made when it exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from webhook.settings import ENV_PREFIX, SettingError

log = logging.getLogger("upgrade_guard.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
SHM = "/dev/shm"


class MetricsDirectory:
    def __init__(self, path: Path, private: bool):
        self.path = path
        self.private = private  # made by us, so removed by us

    @classmethod
    def open(cls, configured: str = "") -> MetricsDirectory:
        """Make or empty the directory and export it to the workers."""
        try:
            if configured:
                path = Path(configured)
                path.mkdir(parents=True, exist_ok=True)
                for stale in path.glob("*.db"):
                    stale.unlink()
                directory = cls(path, private=False)
            else:
                parent = SHM if os.access(SHM, os.W_OK) else None  # None: the system's temporary directory
                directory = cls(Path(tempfile.mkdtemp(prefix="upgrade-guard-metrics-", dir=parent)), private=True)
        except OSError as err:
            raise SettingError(f"cannot use a metrics directory ({err}): give --metrics-dir / {ENV_PREFIX}METRICS_DIR "
                               f"a writable directory") from None
        os.environ[ENV] = str(directory.path)
        log.info("metrics directory ready", extra={"path": str(directory.path), "private": directory.private})
        return directory

    def worker_exited(self, _server, worker) -> None:
        """gunicorn's child_exit hook: a dead worker's requests are no longer in flight (its counts stay)."""
        from prometheus_client import multiprocess  # imported once the directory is exported

        multiprocess.mark_process_dead(worker.pid, str(self.path))

    def close(self) -> None:
        """When the master exits."""
        if self.private:
            shutil.rmtree(self.path, ignore_errors=True)

"""The directory where every gunicorn worker keeps its metrics, so `/metrics` adds them all up.

Each worker counts its reviews into a memory-mapped file named by its pid (see `tally`), and a scrape adds
them all up. The master owns the directory: it makes a fresh private one (under /dev/shm, writable and in
memory even on a read-only root file system) or empties the configured one (an emptyDir outlives a
container restart, and stale files would count old requests again), forgets a dead worker's requests in
flight, and removes a directory it made when it exits. The workers learn its path as they are forked.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from webhook.settings import ENV_PREFIX, SettingError
from webhook.tally import forget_in_flight

log = logging.getLogger("upgrade_guard.metrics")

SHM = "/dev/shm"


class MetricsDirectory:
    def __init__(self, path: Path, private: bool):
        self.path = path
        self.private = private  # made by us, so removed by us

    @classmethod
    def open(cls, configured: str = "") -> MetricsDirectory:
        """Make or empty the directory."""
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
        log.info("metrics directory ready", extra={"path": str(directory.path), "private": directory.private})
        return directory

    def worker_exited(self, _server, worker) -> None:
        """gunicorn's child_exit hook: a dead worker's requests are no longer in flight (its counts stay)."""
        forget_in_flight(self.path, worker.pid)

    def close(self) -> None:
        """When the master exits."""
        if self.private:
            shutil.rmtree(self.path, ignore_errors=True)

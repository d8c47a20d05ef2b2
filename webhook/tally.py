"""The review figures every worker keeps, in shared memory, and their sums over all workers at scrape time.

A scrape lands on any worker, so each worker counts into a small file of its own, memory-mapped, and the
worker that answers a scrape adds up every file in the metrics directory. prometheus-client's multiprocess
mode works the same way, but each of its writes takes a lock, asks the kernel for the pid and goes through
several Python calls: seven of them per denied review cost as much as the guard's decision (bench.layers).
Here a review's figures are a few additions into one array of doubles under one lock, and stay exact.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path
from typing import Final

# Reviews take well under a millisecond to a few; the apiserver gives up after timeoutSeconds (at most 30).
BUCKETS: Final[tuple[float, ...]] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                     10.0, 30.0)
DECISIONS: Final = {"validate": ("allowed", "denied", "error"), "mutate": ("allowed", "restored", "error")}
ACTIONS: Final[tuple[str, ...]] = ("denied", "restored")
IN_FLIGHT: Final = 0  # the slot of the reviews being answered now, the same in every layout (see forget_in_flight)
_DOUBLE: Final = 8
SUM: Final = len(BUCKETS) + 1  # after a webhook's first duration slot: its buckets, +Inf, then the sum


class Layout:
    """Which slot of a worker's array holds which figure. It follows the protected fields, the same in every
    worker of a guard (the master empties the directory when it starts)."""

    def __init__(self, fields: tuple[str, ...]):
        slot = IN_FLIGHT + 1
        self.reviews: dict[tuple[str, str], int] = {}
        for webhook, decisions in DECISIONS.items():
            for decision in decisions:
                self.reviews[webhook, decision], slot = slot, slot + 1
        # Per webhook: the count in each bucket (not cumulative), the +Inf bucket, then the sum of the seconds.
        self.durations: dict[str, int] = {}
        for webhook in DECISIONS:
            self.durations[webhook], slot = slot, slot + SUM + 1
        self.changes: dict[tuple[str, str], int] = {}
        for field in fields:
            for action in ACTIONS:
                self.changes[field, action], slot = slot, slot + 1
        self.size = slot
        # All a review's figures need, looked up once per review: its count, its webhook's first duration slot,
        # and the slots of the fields it changed (for a denial or a restore).
        self.slots: dict[tuple[str, str], tuple[int, int, dict[str, int]]] = {
            (webhook, decision): (review, self.durations[webhook],
                                  {field: self.changes[field, decision] for field in fields if decision in ACTIONS})
            for (webhook, decision), review in self.reviews.items()}

    def bytes(self) -> int:
        return self.size * _DOUBLE


def path_of(directory: Path, pid: int) -> Path:
    return directory / f"reviews_{pid}.db"


class Tally:
    """One worker's figures, counted into its own file as reviews are answered (by any of its threads)."""

    def __init__(self, directory: Path, pid: int, layout: Layout):
        self.layout = layout
        with open(path_of(directory, pid), "a+b") as file:
            # A file already there is a dead worker's whose pid came round again: its counts carry on.
            if file.tell() != layout.bytes():
                file.truncate(0)
                # Zeros written, not a sparse file: a full /dev/shm fails here, not as SIGBUS at some later write.
                file.write(bytes(layout.bytes()))
                file.flush()
            self._map = mmap.mmap(file.fileno(), layout.bytes())
        self._values = memoryview(self._map).cast("d")
        self._lock = threading.Lock()

    def started(self) -> None:
        with self._lock:
            self._values[IN_FLIGHT] += 1

    def answered(self, webhook: str, decision: str, fields: tuple[str, ...], seconds: float, started: bool) -> None:
        """One review done: `started` when `started()` was counted for it."""
        review, first, changes = self.layout.slots[webhook, decision]
        bucket = first  # the first bound >= seconds (`le`), else +Inf
        for bound in BUCKETS:
            if seconds <= bound:
                break
            bucket += 1
        values = self._values
        with self._lock:
            if started:
                values[IN_FLIGHT] -= 1
            values[review] += 1
            values[bucket] += 1
            values[first + SUM] += seconds
            for field in fields:
                values[changes[field]] += 1


def totals(directory: Path, layout: Layout) -> list[float]:
    """Every figure summed over the files of all workers, dead ones included (a dead worker's in-flight slot
    is zeroed by the master)."""
    sums = [0.0] * layout.size
    for path in directory.glob("reviews_*.db"):
        figures = _figures(path, layout)
        if figures is not None:
            sums = [a + b for a, b in zip(sums, figures, strict=True)]
    return sums


def _figures(path: Path, layout: Layout) -> list[float] | None:
    """One worker's figures; None for a file shorter than the layout (one being made: it holds nothing yet),
    or one gone (the directory emptied under us)."""
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size != layout.bytes():
                return None
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                # Read in place, a double at a time, as the writers store them: never half a value.
                values = memoryview(mapped).cast("d")
                figures = [float(value) for value in values]
                values.release()
                return figures
    except FileNotFoundError:
        return None


def forget_in_flight(directory: Path, pid: int) -> None:
    """A dead worker answers nothing any more; its counts stay, they are history."""
    try:
        with open(path_of(directory, pid), "r+b") as file:
            file.write(bytes(_DOUBLE))
    except FileNotFoundError:  # it died before it made its file
        pass

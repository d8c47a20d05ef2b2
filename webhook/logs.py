"""One JSON object per log line, for the guard's own records and gunicorn's alike."""

from __future__ import annotations

import logging
import time
from itertools import islice
from typing import Any, Final

from webhook import jsoncodec

_RECORD: Final = list(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_STANDARD: Final = set(_RECORD) | {"message", "asctime", "taskName"}
_MILLISECONDS: Final = tuple(f".{n:03d}+00:00".encode() for n in range(1000))  # a time ends with one of them
_HEAD: Final[tuple[str, ...]] = ("time", "level", "logger", "msg")  # every line's first members, in this order
_HEADS_REMEMBERED: Final = 256

# The lines show neither the caller nor the thread or process: spare every record looking them up (the logging
# HOWTO's "Optimization" advice). A review's line is written while the apiserver waits.
logging._srcfile = None  # type: ignore[attr-defined]
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


class JsonFormatter(logging.Formatter):
    _second: tuple[int, bytes] = (-1, b"")  # the last second written and its text: lines come many to a second

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (level, logger, message) -> the line's JSON from the end of its time to the end of its message
        self._heads: dict[tuple[str, str, str], bytes] = {}

    def format(self, record: logging.LogRecord) -> str:
        # A record's own attributes come first, in a fixed order: look for extras only after them.
        fields = {k: v for k, v in islice(vars(record).items(), len(_RECORD), None) if k not in _STANDARD}
        if record.exc_info:
            # Kept in the log for the operator; never sent to a client.
            fields["error"] = self.formatException(record.exc_info)
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields)

    def line(self, created: float, level: str, logger: str, message: str, fields: dict) -> str:
        """`{"time": ..., "level": ..., "logger": ..., "msg": ..., **fields}` as JSON. The fields are written on
        their own and joined to the rest, which repeats from line to line: no merged copy of them is made."""
        for key in _HEAD:
            if key in fields:  # an extra named like a head member takes its place, as in the merged map
                return jsoncodec.dumps({"time": self._time(created).decode(), "level": level.lower(),
                                        "logger": logger, "msg": message, **fields}, default=str).decode()
        head = self._heads.get((level, logger, message))
        if head is None:
            head = b'","level":%s,"logger":%s,"msg":%s' % (
                jsoncodec.dumps(level.lower()), jsoncodec.dumps(logger), jsoncodec.dumps(message))
            if len(self._heads) < _HEADS_REMEMBERED:  # the guard's own lines; a record's message may vary
                self._heads[level, logger, message] = head
        rest = jsoncodec.dumps(fields, default=str)
        return b"".join((b'{"time":"', self._time(created), head, b"," if len(rest) > 2 else b"",
                         rest[1:])).decode()

    def _time(self, created: float) -> bytes:
        """ISO 8601 in UTC to the millisecond: `2025-03-10T10:09:34.123+00:00`."""
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            self._second = (second, text)
        return text + _MILLISECONDS[int((created - second) * 1000)]


def info(logger: logging.Logger, message: str, fields: dict) -> None:
    """`logger.info(message, extra=fields)`, the same line, at half the cost or less when the guard's own
    configuration (`logging_dict`) handles it: a review's line is written while the apiserver waits.

    Straight to the stream of each plain stream handler with a JsonFormatter; any other handler or a filter
    on the way (a test's capture, another configuration) gets the record as logging makes it.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    writers = []
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return logger.info(message, extra=fields)
        for handler in node.handlers:
            formatter, lock = handler.formatter, handler.lock
            if (type(handler) is not logging.StreamHandler or not isinstance(formatter, JsonFormatter)
                    or lock is None or handler.filters):
                return logger.info(message, extra=fields)
            if handler.level <= logging.INFO:
                writers.append((handler, formatter, lock))
        node = node.parent if node.propagate else None
    created = time.time()
    for handler, formatter, lock in writers:
        text = formatter.line(created, "INFO", logger.name, message, fields) + handler.terminator
        with lock:
            try:
                handler.stream.write(text)
                handler.stream.flush()
            except Exception:  # as logging reports a handler that cannot write, and carries on
                handler.handleError(logging.makeLogRecord({"msg": message, "name": logger.name}))


def logging_dict(level: str) -> dict:
    """A `logging.config.dictConfig` document, given to gunicorn so its own lines are JSON too."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": handler},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        },
    }

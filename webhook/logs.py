"""One JSON object per log line, for the guard's own records and gunicorn's alike."""

from __future__ import annotations

import logging
import time
from itertools import islice

from webhook import jsoncodec

_RECORD = list(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_STANDARD = set(_RECORD) | {"message", "asctime", "taskName"}

# The lines show neither the caller nor the thread or process: spare every record looking them up (the logging
# HOWTO's "Optimization" advice). A review's line is written while the apiserver waits.
logging._srcfile = None  # type: ignore[attr-defined]
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


class JsonFormatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")  # the last second written and its text: lines come many to a second

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # A record's own attributes come first, in a fixed order: look for extras only after them.
        line.update({k: v for k, v in islice(vars(record).items(), len(_RECORD), None) if k not in _STANDARD})
        if record.exc_info:
            # Kept in the log for the operator; never sent to a client.
            line["error"] = self.formatException(record.exc_info)
        return jsoncodec.dumps(line, default=str).decode()

    def _time(self, record: logging.LogRecord) -> str:
        """ISO 8601 in UTC to the millisecond: `2025-03-10T10:09:34.123+00:00`."""
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}+00:00"


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

"""The review's log line: written without a LogRecord, yet the very line logging would write, at its level."""

from __future__ import annotations

import io
import json
import logging
import re

from webhook import logs
from webhook.logs import JsonFormatter

FIELDS = {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "webhook": "validate", "decision": "denied",
          "reason": "dismissal would change protected fields", "user": "admin", "object": "harvester-system/u",
          "fields": ["status", "metadata.finalizers"], "dry_run": False, "duration_ms": 0.125}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def review_logger(stream: io.StringIO, level: int = logging.INFO) -> logging.Logger:
    """`upgrade_guard.review` under a parent holding the guard's handler, as `logs.logging_dict` sets them up,
    outside the process's own logging tree."""
    parent = logging.Logger("upgrade_guard", level)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    parent.addHandler(handler)
    child = logging.Logger("upgrade_guard.review")
    child.parent = parent
    return child


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_quick_line_is_the_line_logging_writes():
    stream = io.StringIO()
    logger = review_logger(stream)
    logs.info(logger, "review", FIELDS)
    logger.info("review", extra=FIELDS)
    quick, made_by_logging = lines(stream)
    assert TIME.match(quick.pop("time")) and TIME.match(made_by_logging.pop("time"))
    assert quick == made_by_logging == {"level": "info", "logger": "upgrade_guard.review", "msg": "review", **FIELDS}
    assert list(quick) == list(made_by_logging), "the same keys in the same order"


def test_below_its_level_nothing_is_written():
    stream = io.StringIO()
    logs.info(review_logger(stream, logging.WARNING), "review", FIELDS)
    assert stream.getvalue() == ""


def test_any_other_handler_or_filter_gets_the_record_logging_makes():
    stream = io.StringIO()
    logger = review_logger(stream)
    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append
    logger.addHandler(collector)
    logs.info(logger, "review", FIELDS)
    assert [(r.getMessage(), r.uid, r.fields) for r in records] == [("review", FIELDS["uid"], FIELDS["fields"])]
    assert len(lines(stream)) == 1, "and the guard's handler still writes its line, once"

    logger.removeHandler(collector)
    logger.addFilter(lambda record: record.decision != "denied")
    logs.info(logger, "review", FIELDS)
    assert len(lines(stream)) == 1, "a filter is obeyed"


def test_a_line_without_fields_and_one_whose_fields_name_a_head_member():
    formatter = JsonFormatter()
    bare = json.loads(formatter.line(0.5, "INFO", "upgrade_guard", 'say "hi"', {}))
    assert bare == {"time": "1970-01-01T00:00:00.500+00:00", "level": "info", "logger": "upgrade_guard",
                    "msg": 'say "hi"'}
    # As in the merged map `{"time": ..., "level": ..., **fields}`: the field's value, in the head member's place.
    text = formatter.line(0.5, "WARNING", "upgrade_guard", "m", {"a": 1, "level": "custom"})
    assert text.count('"level"') == 1
    assert list(json.loads(text).items()) == [("time", "1970-01-01T00:00:00.500+00:00"), ("level", "custom"),
                                              ("logger", "upgrade_guard"), ("msg", "m"), ("a", 1)]

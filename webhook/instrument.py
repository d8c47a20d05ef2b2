"""The WSGI layer that counts and times every review, and serves `/metrics` beside the webhooks.

The app only leaves what a review came to in the WSGI environ (`REVIEW_OUTCOME`); this layer adds it to the
worker's tally (see `tally`). Every review passes through here (compiled, see setup.py); `metrics` builds it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Final, Iterable

from webhook.endpoint import REVIEW_ERROR, REVIEW_OUTCOME, WSGIApp
from webhook.tally import DECISIONS, Tally

log: Final = logging.getLogger("upgrade_guard.review")

PATH: Final = "/metrics"
_WEBHOOKS: Final = {f"/{webhook}": webhook for webhook in DECISIONS}  # a review's path -> its webhook
_clock: Final = time.perf_counter


class Instrumented:
    """`app`, with every review counted and timed into `tally`, and `exposition` answering `GET /metrics`.

    Metrics must never fail a write to the cluster: counting that fails is logged and the answer stands.
    """

    def __init__(self, app: WSGIApp, tally: Tally, exposition: WSGIApp) -> None:
        self.app = app
        self.tally = tally
        self.exposition = exposition

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == PATH:
            return self.exposition(environ, start_response)
        webhook = _WEBHOOKS.get(path)
        if webhook is None or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        started = _clock()
        counted = True
        try:
            self.tally.started()
        except Exception:
            log.exception("metrics not recorded")
            counted = False
        try:
            return self.app(environ, start_response)
        finally:
            try:
                self._record(webhook, environ, _clock() - started, counted)
            except Exception:
                log.exception("metrics not recorded")

    def _record(self, webhook: str, environ: dict[str, Any], seconds: float, counted: bool) -> None:
        decision, fields = environ.get(REVIEW_OUTCOME) or ("error", ())
        self.tally.answered(webhook, decision, fields, seconds, counted)
        if decision == "error":
            status, message = environ.get(REVIEW_ERROR) or (500, "no answer")
            log.warning("review failed", extra={"webhook": webhook, "decision": decision, "status": status,
                                                "error": message, "duration_ms": round(seconds * 1000, 3)})

"""The review endpoint: AdmissionReviews POSTed to /validate and /mutate, answered in plain WSGI in front of Flask.

Flask's request and response machinery alone costs more than all the guard does for a review (bench/ measures
it), and the apiserver waits on every review: reviews are answered here, everything else (other methods, other
paths, health and readiness) by the Flask app behind. The behaviour is Flask's, error documents included.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Final, Iterable

from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header
from werkzeug.wsgi import get_content_length, get_input_stream

from webhook import jsoncodec, logs
from webhook.admission import WEBHOOKS, outcome, respond
from webhook.config import Config
from webhook.review import BadReview, Review, status_document

log: Final = logging.getLogger("upgrade_guard.review")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# What a review came to, left in the WSGI environ for the metrics layer: (decision, protected fields), and
# for an error answer (HTTP status, message).
REVIEW_OUTCOME: Final = "upgrade_guard.outcome"
REVIEW_ERROR: Final = "upgrade_guard.error"

_clock: Final = time.perf_counter


def error_answer(err: Exception, path: str) -> tuple[int, dict[str, Any]]:
    """An HTTP error answered as itself; anything else logged (for the operator) and answered as a bare 500."""
    if isinstance(err, HTTPException):
        code = err.code or 500
        return code, status_document(code, type(err).__name__, err.description or err.name)
    log.exception("unexpected error while answering", extra={"path": path})
    return 500, status_document(500, "InternalError", "internal error; see the guard's log")


def read_body(environ: dict[str, Any], max_body: int) -> bytes:
    """The body as Flask reads it (werkzeug's limit, its 413), minus werkzeug's stream wrapper when the server
    already ends the stream at a Content-Length within the limit. The apiserver's Content-Length, plain digits
    without a Transfer-Encoding, is read here; werkzeug reads any other. A body without a length (chunked) that
    goes past the limit is a 413, as one with a length is."""
    header = environ.get("CONTENT_LENGTH", "")
    length: int | None
    if type(header) is str and header.isascii() and header.isdigit() and "HTTP_TRANSFER_ENCODING" not in environ:
        length = int(header)
    else:
        length = get_content_length(environ)
    if length is not None and length <= max_body and "wsgi.input_terminated" in environ:
        try:
            body: bytes = environ["wsgi.input"].read(length)
            return body
        except (OSError, ValueError) as err:  # as werkzeug's stream answers a client gone mid-body
            raise ClientDisconnected() from err
    if length is not None:  # over the limit (werkzeug's 413), or a stream the server does not end
        return get_input_stream(environ, max_content_length=max_body).read()
    # No length (a chunked body): werkzeug's stream stops at the limit without a word, so one byte more is
    # asked for, and a body that has it is too large rather than cut short.
    body = get_input_stream(environ, max_content_length=max_body + 1).read()
    if len(body) > max_body:
        raise RequestEntityTooLarge()
    return body


def is_json(content_type: str) -> bool:
    if content_type == "application/json":  # what the apiserver sends: no need to parse it
        return True
    mimetype = parse_options_header(content_type)[0].lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


# `200 OK`: the status line of every code werkzeug knows, spelt once.
_STATUS_LINES: Final = {code: f"{code} {text.upper()}" for code, text in HTTP_STATUS_CODES.items()}


class Endpoint:
    """The WSGI app a worker serves: reviews answered here, any other request passed to `behind` (Flask).

    With `client_cert_required` the webhooks answer only a client whose certificate the server verified
    (`SSL_CLIENT_VERIFY`, as mod_ssl names it); health, readiness and metrics stay open to probes.
    """

    def __init__(self, behind: WSGIApp, config: Config, max_body: int, client_cert_required: bool) -> None:
        self.behind = behind
        self.config = config
        self.max_body = max_body
        self.client_cert_required = client_cert_required
        self.paths = {f"/{name}": name for name in WEBHOOKS}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        webhook = self.paths.get(environ.get("PATH_INFO", ""))
        if webhook is None or environ.get("REQUEST_METHOD") != "POST":
            return self.behind(environ, start_response)
        try:
            code, document = self.review(webhook, environ)
        except Exception as err:  # a body over the limit, a client gone mid-body, a bug
            code, document = error_answer(err, environ["PATH_INFO"])
        if code != 200:
            environ[REVIEW_ERROR] = (code, document["message"])
        body = jsoncodec.dumps(document)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(_STATUS_LINES.get(code) or f"{code} UNKNOWN", headers)
        return [body]

    def review(self, webhook: str, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One review: its status code and document, its outcome left in the environ, its log line written."""
        if self.client_cert_required and environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            return 401, status_document(401, "Unauthorized",
                                        "a client certificate signed by the client CA is required")
        started = _clock()
        content_type = environ.get("CONTENT_TYPE", "")
        if type(content_type) is not str or not is_json(content_type):
            return 415, status_document(415, "UnsupportedMediaType",
                                        "the body must be an AdmissionReview, as application/json")
        try:
            parsed = Review.parse(read_body(environ, self.max_body))
            answer, decision = respond(webhook, parsed, self.config)
        except BadReview as err:
            return err.code, status_document(err.code, "BadRequest", str(err))
        except RecursionError:
            return 400, status_document(400, "BadRequest", "the object is nested too deeply")
        req = parsed.request
        decided, fields = outcome(webhook, decision), decision.fields
        environ[REVIEW_OUTCOME] = (decided, fields)
        logs.info(log, "review", {
            "uid": parsed.uid, "webhook": webhook, "decision": decided, "reason": decision.reason,
            "user": req.user, "object": f"{req.namespace}/{req.name}", "fields": list(fields),
            "dry_run": req.dry_run, "duration_ms": round((_clock() - started) * 1e6) / 1000,  # to the µs
        })
        return 200, answer

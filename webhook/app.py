"""The Flask app: HTTP in front of the two webhooks, health and readiness.

Every answer, error or not, is JSON; no traceback or path ever reaches a client.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from typing import Callable

from flask import Flask, Response, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header
from werkzeug.wsgi import get_content_length, get_input_stream

from webhook import jsoncodec, logs
from webhook.admission import WEBHOOKS, outcome, respond
from webhook.config import Config
from webhook.review import BadReview, Review, status_document

log = logging.getLogger("upgrade_guard.review")

DEFAULT_MAX_BODY = 8 * 1024 * 1024
# What a review came to, left in the WSGI environ for the metrics layer: (decision, protected fields), and
# for an error answer (HTTP status, message).
REVIEW_OUTCOME = "upgrade_guard.outcome"
REVIEW_ERROR = "upgrade_guard.error"


def _json(document: dict, status: int = 200) -> Response:
    return Response(jsoncodec.dumps(document), status=status, mimetype="application/json")


def _failure(code: int, reason: str, message: str) -> Response:
    return _json(status_document(code, reason, message), code)


def _error(err: Exception, path: str) -> tuple[int, dict]:
    """An HTTP error answered as itself; anything else logged (for the operator) and answered as a bare 500."""
    if isinstance(err, HTTPException):
        code = err.code or 500
        return code, status_document(code, type(err).__name__, err.description or err.name)
    log.exception("unexpected error while answering", extra={"path": path})
    return 500, status_document(500, "InternalError", "internal error; see the guard's log")


def _body(environ: dict, max_body: int) -> bytes:
    """The body as Flask reads it (werkzeug's limit, its 413), minus werkzeug's stream wrapper when the server
    already ends the stream at a Content-Length within the limit. The apiserver's Content-Length, plain digits
    without a Transfer-Encoding, is read here; werkzeug reads any other. A body without a length (chunked) that
    goes past the limit is a 413, as one with a length is."""
    header = environ.get("CONTENT_LENGTH", "")
    if header.isascii() and header.isdigit() and "HTTP_TRANSFER_ENCODING" not in environ:
        length: int | None = int(header)
    else:
        length = get_content_length(environ)
    if length is not None and length <= max_body and "wsgi.input_terminated" in environ:
        try:
            return environ["wsgi.input"].read(length)
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


def _is_json(content_type: str) -> bool:
    if content_type == "application/json":  # what the apiserver sends: no need to parse it
        return True
    mimetype = parse_options_header(content_type)[0].lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def create_app(config: Config, problem: Callable[[], str] = lambda: "", max_body: int = DEFAULT_MAX_BODY,
               client_cert_required: bool = False) -> Flask:
    """`problem()` says why the guard is not ready ("" when it is), e.g. a missing or expired certificate.

    With `client_cert_required` the webhooks answer only a client whose certificate the server verified
    (`SSL_CLIENT_VERIFY`, as mod_ssl names it); health, readiness and metrics stay open to probes.
    """
    app = Flask("upgrade_guard")
    app.config["MAX_CONTENT_LENGTH"] = max_body

    def review(webhook: str, environ: dict) -> tuple[int, dict]:
        if client_cert_required and environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            return 401, status_document(401, "Unauthorized",
                                        "a client certificate signed by the client CA is required")
        started = time.perf_counter()
        if not _is_json(environ.get("CONTENT_TYPE", "")):
            return 415, status_document(415, "UnsupportedMediaType",
                                "the body must be an AdmissionReview, as application/json")
        try:
            parsed = Review.parse(_body(environ, max_body))
            answer, decision = respond(webhook, parsed, config)
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
            "dry_run": req.dry_run, "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        })
        return 200, answer

    for name in WEBHOOKS:
        # POSTs never reach Flask (see _reviews_first); its routing still answers the other methods (405).
        app.add_url_rule(f"/{name}", name, methods=["POST"])
    app.wsgi_app = _reviews_first(app.wsgi_app, review)  # type: ignore[method-assign]

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        why = problem()
        if why:
            return _failure(503, "ServiceUnavailable", why)
        return _json({"status": "ready"})

    @app.errorhandler(Exception)
    def error(err: Exception) -> Response:
        code, document = _error(err, request.path)
        return _json(document, code)

    return app


@cache
def _status_line(code: int) -> str:
    """`200 OK`: the few codes a review is answered with, spelt once."""
    return f"{code} {HTTP_STATUS_CODES.get(code, 'unknown').upper()}"


def _reviews_first(flask: Callable, review: Callable[[str, dict], tuple[int, dict]]) -> Callable:
    """The WSGI app in front of Flask: reviews are answered here, everything else by Flask.

    Flask's request and response machinery alone costs more than all the guard does for a review (bench/
    measures it), and the apiserver waits on every review; the behaviour is Flask's, error documents included.
    """
    paths = {f"/{name}": name for name in WEBHOOKS}

    def wsgi(environ: dict, start_response: Callable) -> list[bytes]:
        webhook = paths.get(environ.get("PATH_INFO", ""))
        if webhook is None or environ.get("REQUEST_METHOD") != "POST":
            return flask(environ, start_response)
        try:
            code, document = review(webhook, environ)
        except Exception as err:  # a body over the limit, a client gone mid-body, a bug
            code, document = _error(err, environ["PATH_INFO"])
        if code != 200:
            environ[REVIEW_ERROR] = (code, document["message"])
        body = jsoncodec.dumps(document)
        start_response(_status_line(code), [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return wsgi

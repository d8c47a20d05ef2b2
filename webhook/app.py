"""The Flask app: HTTP in front of the two webhooks, health and readiness.

Every answer, error or not, is JSON; no traceback or path ever reaches a client.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

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
    return Response(json.dumps(document, separators=(",", ":")), status=status, mimetype="application/json")


def _failure(code: int, reason: str, message: str) -> Response:
    """A Kubernetes-style Status document: what kube clients expect an error body to look like."""
    request.environ[REVIEW_ERROR] = (code, message)
    return _json(status_document(code, reason, message), code)


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def create_app(config: Config, problem: Callable[[], str] = lambda: "", max_body: int = DEFAULT_MAX_BODY,
               client_cert_required: bool = False) -> Flask:
    """`problem()` says why the guard is not ready ("" when it is), e.g. a missing or expired certificate.

    With `client_cert_required` the webhooks answer only a client whose certificate the server verified
    (`SSL_CLIENT_VERIFY`, as mod_ssl names it); health, readiness and metrics stay open to probes.
    """
    app = Flask("upgrade_guard")
    app.config["MAX_CONTENT_LENGTH"] = max_body

    @app.before_request
    def authenticate() -> Response | None:
        if client_cert_required and request.endpoint in WEBHOOKS and \
                request.environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            return _failure(401, "Unauthorized", "a client certificate signed by the client CA is required")
        return None

    def review(webhook: str) -> Response:
        started = time.perf_counter()
        if not _is_json(request.mimetype):
            return _failure(415, "UnsupportedMediaType", "the body must be an AdmissionReview, as application/json")
        try:
            parsed = Review.parse(request.get_data(cache=False))
            answer, decision = respond(webhook, parsed, config)
        except BadReview as err:
            return _failure(err.code, "BadRequest", str(err))
        except RecursionError:
            return _failure(400, "BadRequest", "the object is nested too deeply")
        req = parsed.request
        request.environ[REVIEW_OUTCOME] = (outcome(webhook, decision), decision.fields)
        log.info("review", extra={
            "uid": parsed.uid, "webhook": webhook, "decision": outcome(webhook, decision),
            "reason": decision.reason, "user": req.user, "object": f"{req.namespace}/{req.name}",
            "fields": list(decision.fields), "dry_run": req.dry_run,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        })
        return _json(answer)

    for name in WEBHOOKS:
        app.add_url_rule(f"/{name}", name, lambda name=name: review(name), methods=["POST"])

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        why = problem()
        if why:
            return _failure(503, "ServiceUnavailable", why)
        return _json({"status": "ready"})

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        return _failure(err.code or 500, type(err).__name__, err.description or err.name)

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Response:
        log.exception("unexpected error while answering", extra={"path": request.path})
        return _failure(500, "InternalError", "internal error; see the guard's log")

    return app

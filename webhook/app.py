"""The Flask app: health, readiness, and HTTP for the webhooks beyond their POSTs (see endpoint.py).

Every answer, error or not, is JSON; no traceback or path ever reaches a client.
"""

from __future__ import annotations

from typing import Callable

from flask import Flask, Response, request

from webhook import jsoncodec
from webhook.admission import WEBHOOKS
from webhook.config import Config
from webhook.endpoint import Endpoint, error_answer
from webhook.review import status_document

DEFAULT_MAX_BODY = 8 * 1024 * 1024


def _json(document: dict, status: int = 200) -> Response:
    return Response(jsoncodec.dumps(document), status=status, mimetype="application/json")


def _failure(code: int, reason: str, message: str) -> Response:
    return _json(status_document(code, reason, message), code)


def create_app(config: Config, problem: Callable[[], str] = lambda: "", max_body: int = DEFAULT_MAX_BODY,
               client_cert_required: bool = False) -> Flask:
    """`problem()` says why the guard is not ready ("" when it is), e.g. a missing or expired certificate.
    Reviews are answered by the `Endpoint` in front of the app (see endpoint.py, `client_cert_required` too)."""
    app = Flask("upgrade_guard")
    app.config["MAX_CONTENT_LENGTH"] = max_body

    for name in WEBHOOKS:
        # POSTs never reach Flask (see endpoint.py); its routing still answers the other methods (405).
        app.add_url_rule(f"/{name}", name, methods=["POST"])
    app.wsgi_app = Endpoint(app.wsgi_app, config, max_body, client_cert_required)  # type: ignore[method-assign]

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
        code, document = error_answer(err, request.path)
        return _json(document, code)

    return app

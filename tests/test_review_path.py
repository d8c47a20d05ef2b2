"""Reviews are answered in front of Flask (webhook/endpoint.py, `Endpoint`): the answers must stay Flask's."""

from __future__ import annotations

import io
import json

import pytest
from werkzeug.test import Client

from tests.upgrades import broken_config, dashboard_put, finished_upgrade, review
from webhook.app import create_app
from webhook.config import Config

STORED = finished_upgrade()
DISMISSAL = json.dumps(review(STORED, dashboard_put(STORED), uid="u-1")).encode()


class GoneMidBody(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise ConnectionResetError("the client went away")


def call(environ: dict, config: Config | None = None) -> tuple[str, dict]:
    seen = []
    app = create_app(config or Config(), max_body=10_000)
    body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.append((status, headers))))
    status, headers = seen[0]
    assert dict(headers)["Content-Type"] == "application/json"
    return status, json.loads(body)


def environ(body: io.RawIOBase | io.BytesIO, length: int, terminated: bool) -> dict:
    env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/validate", "SERVER_NAME": "guard", "SERVER_PORT": "8443",
           "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "https", "wsgi.input": body,
           "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(length), "wsgi.errors": io.StringIO()}
    if terminated:  # gunicorn ends the body stream itself, and says so
        env["wsgi.input_terminated"] = True
    return env


@pytest.mark.parametrize("terminated", [True, False])
def test_a_review_is_answered_the_same_however_the_body_is_read(terminated):
    status, answer = call(environ(io.BytesIO(DISMISSAL), len(DISMISSAL), terminated))
    assert status == "200 OK" and answer["response"]["uid"] == "u-1" and answer["response"]["allowed"] is False


@pytest.mark.parametrize("terminated", [True, False])
def test_a_client_gone_mid_body_is_a_400_not_a_500(terminated):
    status, answer = call(environ(GoneMidBody(), 100, terminated))
    assert status == "400 BAD REQUEST" and answer["reason"] == "ClientDisconnected"


@pytest.mark.parametrize("terminated", [True, False])
def test_a_body_over_the_limit_is_a_413(terminated):
    status, answer = call(environ(io.BytesIO(b" " * 10_001), 10_001, terminated))
    assert status == "413 REQUEST ENTITY TOO LARGE" and answer["reason"] == "RequestEntityTooLarge"


@pytest.mark.parametrize("size", [10_000, 10_001, 50_000])
def test_a_body_without_a_length_is_held_to_the_limit(size):
    """A chunked body (gunicorn ends the stream, there is no Content-Length): the limit itself is allowed, a byte
    more is a 413, as with a length; werkzeug's own stream would cut it at the limit without a word."""
    padded = DISMISSAL + b" " * (size - len(DISMISSAL))  # whitespace after the document: still the same review
    env = environ(io.BytesIO(padded), 0, terminated=True)
    del env["CONTENT_LENGTH"]
    env["HTTP_TRANSFER_ENCODING"] = "chunked"
    status, answer = call(env)
    if size <= 10_000:
        assert status == "200 OK" and answer["response"]["allowed"] is False
    else:
        assert status == "413 REQUEST ENTITY TOO LARGE" and answer["reason"] == "RequestEntityTooLarge"


def test_other_methods_are_routed_by_flask():
    client = Client(create_app(Config()))
    answer = client.get("/validate")
    assert answer.status_code == 405 and answer.json["reason"] == "MethodNotAllowed"
    assert client.options("/mutate").headers["Allow"]
    assert client.post("/validate/", data=DISMISSAL, content_type="application/json").status_code == 404


def test_a_bug_while_answering_is_a_bare_500(caplog):
    status, answer = call(environ(io.BytesIO(DISMISSAL), len(DISMISSAL), True), broken_config(ZeroDivisionError()))
    assert status == "500 INTERNAL SERVER ERROR" and answer["message"] == "internal error; see the guard's log"
    assert "ZeroDivisionError" in caplog.text and "ZeroDivisionError" not in json.dumps(answer)

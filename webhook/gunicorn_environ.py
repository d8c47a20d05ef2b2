"""gunicorn's WSGI environ as the app expects it: a body whose read errors are the client's (4xx), and mod_ssl's
SSL_CLIENT_VERIFY when client certificates are required. Every review passes through here (compiled, see
setup.py)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from gunicorn.http.errors import ParseException
from werkzeug.exceptions import BadRequest, ClientDisconnected, RequestTimeout

from webhook.endpoint import WSGIApp


class Body:
    """gunicorn's request body, where what goes wrong while reading it is the client's fault: a 4xx, not a 500.

    gunicorn parses a chunked body only as the app reads it, so a broken chunk surfaces inside the app, as
    does a body that stops coming (the worker's socket timeout) or a client that goes away.
    """

    def __init__(self, body: Any) -> None:
        self._body = body

    def _read(self, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return method(*args)
        except ParseException as err:
            raise BadRequest(f"the request body is not valid HTTP/1.1 framing: {type(err).__name__}") from None
        except TimeoutError:
            raise RequestTimeout("the request body did not arrive in time") from None
        except OSError:
            raise ClientDisconnected() from None

    def read(self, *args: Any) -> Any:
        return self._read(self._body.read, *args)

    def readline(self, *args: Any) -> Any:
        return self._read(self._body.readline, *args)

    def readlines(self, *args: Any) -> Any:
        return self._read(self._body.readlines, *args)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.readline, b"")


def for_the_app(app: WSGIApp, client_cert_required: bool) -> WSGIApp:
    """`app` behind the adaptation of gunicorn's environ. The TLS context verifies a certificate the client
    presents (or fails the handshake), so one that is there is verified."""

    def adapted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if client_cert_required:
            environ["SSL_CLIENT_VERIFY"] = "SUCCESS" if environ["gunicorn.socket"].getpeercert() else "NONE"
        environ["wsgi.input"] = Body(environ["wsgi.input"])
        return app(environ, start_response)

    return adapted

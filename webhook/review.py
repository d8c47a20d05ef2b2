"""AdmissionReview in and out: parse what the apiserver sends, answer in its own apiVersion.

The vocabulary follows controller-runtime: a review is answered Allowed, Denied or Patched.
"""

from __future__ import annotations

import base64
import math
from typing import NamedTuple

from webhook import jsoncodec
from webhook.decision import Request

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class BadReview(ValueError):
    """Input that cannot be answered as an AdmissionReview: the HTTP layer turns it into a 4xx."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


def status_document(code: int, reason: str, message: str) -> dict:
    """A Kubernetes `Status` of failure: what kube clients expect an error body to look like."""
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason,
            "message": message}


def _reject_constant(name: str) -> float:
    raise BadReview(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number as a float; one beyond a double's range (1e400) is refused, as Go's decoder refuses it:
    it would come back as Infinity, which is not JSON, in a patch that restores it."""
    value = float(text)
    if math.isinf(value):
        raise BadReview(f"the number {text[:40]} is out of range")
    return value


def _text(r: dict, key: str) -> str:
    value = r.get(key)
    return value if type(value) is str else ""


def _map(r: dict, key: str) -> dict:
    value = r.get(key)
    return value if type(value) is dict else {}


def _request(r: dict) -> Request:
    """Leniently: a field of the wrong type reads as absent, and the decision then leaves the request alone."""
    kind = _map(r, "kind")
    user = _map(r, "userInfo")
    groups = user.get("groups")
    return Request(  # in the order of Request's fields
        _text(r, "operation"),
        _text(kind, "group"),
        _text(kind, "kind"),
        _text(r, "subResource") or _text(r, "requestSubResource"),
        _text(r, "namespace"),
        _text(r, "name") or _text(_map(_map(r, "object"), "metadata"), "name"),
        _text(user, "username"),
        tuple([g for g in groups if type(g) is str]) if type(groups) is list else (),
        r.get("oldObject"),
        r.get("object"),
        r.get("dryRun") is True,
    )


class Review(NamedTuple):
    """An AdmissionReview as sent: what it is answered with, and what the decision needs of its request.

    A named tuple: one is made for every review the apiserver waits on."""

    api_version: str
    uid: str
    request: Request

    @classmethod
    def parse(cls, body: bytes) -> Review:
        try:
            document = jsoncodec.loads(body, parse_constant=_reject_constant, parse_float=_finite)
        except BadReview:
            raise
        except RecursionError:
            raise BadReview("the JSON document is nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as err:
            raise BadReview(f"the body is not JSON: {err}") from None
        if not isinstance(document, dict):
            raise BadReview("the body is not a JSON object")
        api_version = document.get("apiVersion")
        if api_version not in API_VERSIONS:
            raise BadReview(f"apiVersion must be one of {', '.join(API_VERSIONS)}, not {api_version!r}"[:300])
        if document.get("kind") != "AdmissionReview":
            raise BadReview("kind must be AdmissionReview")
        request = document.get("request")
        if not isinstance(request, dict):
            raise BadReview("the review has no request object")
        uid = request.get("uid")
        if not isinstance(uid, str) or not uid:
            raise BadReview("request.uid must be a non-empty string")
        return cls(api_version, uid, _request(request))

    def _answer(self, response: dict) -> dict:
        return {"apiVersion": self.api_version, "kind": "AdmissionReview", "response": {"uid": self.uid, **response}}

    def allowed(self, warnings: tuple[str, ...] = ()) -> dict:
        response: dict = {"allowed": True}
        if warnings:
            response["warnings"] = list(warnings)
        return self._answer(response)

    def denied(self, message: str, audit: dict[str, str] | None = None) -> dict:
        response = {
            "allowed": False,
            "status": {"code": 403, "reason": "Forbidden", "message": message, "status": "Failure"},
        }
        if audit:
            response["auditAnnotations"] = audit
        return self._answer(response)

    def patched(self, patch: list[dict], warning: str, audit: dict[str, str]) -> dict:
        encoded = base64.b64encode(jsoncodec.dumps(patch)).decode()
        return self._answer({
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": encoded,
            "warnings": [warning],
            "auditAnnotations": audit,
        })

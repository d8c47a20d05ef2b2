"""AdmissionReview in and out: parse what the apiserver sends, answer in its own apiVersion.

The vocabulary follows controller-runtime: a review is answered Allowed, Denied or Patched.
"""

from __future__ import annotations

import binascii
import math
from typing import Final

from webhook import jsoncodec
from webhook.decision import Request

API_VERSIONS: Final[tuple[str, ...]] = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


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


_EXACT: Final = {"parse_constant": _reject_constant, "parse_float": _finite}  # for the bodies `json` parses


def _request(r: dict) -> Request:
    """Leniently: a field of the wrong type reads as absent, and the decision then leaves the request alone.

    Each field is read in line (`v if type(v := ...) is str else ""`) rather than by a helper: a call costs
    more than the check, and this runs for every review."""
    get = r.get
    kind = v if type(v := get("kind")) is dict else {}
    user = v if type(v := get("userInfo")) is dict else {}
    groups = user.get("groups")
    name = v if type(v := get("name")) is str else ""
    if not name:
        obj = get("object")
        metadata = obj.get("metadata") if type(obj) is dict else None
        name = v if type(metadata) is dict and type(v := metadata.get("name")) is str else ""
    subresource = v if type(v := get("subResource")) is str else ""
    if not subresource:
        subresource = v if type(v := get("requestSubResource")) is str else ""
    return Request(  # in the order of Request's fields
        v if type(v := get("operation")) is str else "",
        v if type(v := kind.get("group")) is str else "",
        v if type(v := kind.get("kind")) is str else "",
        subresource,
        v if type(v := get("namespace")) is str else "",
        name,
        v if type(v := user.get("username")) is str else "",
        tuple([group for group in groups if type(group) is str]) if type(groups) is list else (),
        get("oldObject"),
        get("object"),
        get("dryRun") is True,
    )


class Review:
    """An AdmissionReview as sent: what it is answered with, and what the decision needs of its request."""

    api_version: str
    uid: str
    request: Request

    def __init__(self, api_version: str, uid: str, request: Request) -> None:
        self.api_version, self.uid, self.request = api_version, uid, request

    @classmethod
    def parse(cls, body: bytes) -> Review:
        try:
            document = jsoncodec.loads(body, _EXACT)
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
        encoded = binascii.b2a_base64(jsoncodec.dumps(patch), newline=False).decode()
        return self._answer({
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": encoded,
            "warnings": [warning],
            "auditAnnotations": audit,
        })

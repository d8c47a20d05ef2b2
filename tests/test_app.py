"""The HTTP contract: AdmissionReview versions, answers the apiserver accepts, and 4xx for what it cannot answer."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from werkzeug.wsgi import get_content_length, get_input_stream

from tests.upgrades import broken_config, dashboard_put, finished_upgrade, kubectl_label, review
from webhook.app import create_app
from webhook.config import Config
from webhook.endpoint import read_body

FIXTURES = Path(__file__).parent / "fixtures"
STORED = finished_upgrade()
QUALIFIED = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@pytest.fixture
def client():
    return create_app(Config(), max_body=1024 * 1024).test_client()


def post(client, path, body, content_type="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data=data, content_type=content_type)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_reviews_written_by_other_projects_are_answered(client, fixture, path):
    document = json.loads((FIXTURES / fixture).read_text())
    response = post(client, path, document)
    assert response.status_code == 200
    assert response.get_json() == {"apiVersion": document["apiVersion"], "kind": "AdmissionReview",
                                   "response": {"uid": document["request"]["uid"], "allowed": True}}


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_answers_in_the_request_version(client, api_version):
    document = review(STORED, dashboard_put(STORED), api_version=api_version, uid="abc")
    for path in ("/validate", "/mutate"):
        answer = post(client, path, document).get_json()
        assert answer["apiVersion"] == api_version and answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == "abc"


def test_a_response_in_the_request_is_ignored(client):
    document = review(STORED, dashboard_put(STORED))
    document["response"] = {"uid": "forged", "allowed": True}
    answer = post(client, "/validate", document).get_json()
    assert answer["response"]["uid"] == document["request"]["uid"] and answer["response"]["allowed"] is False


def test_validate_denies_without_a_patch(client):
    answer = post(client, "/validate", review(STORED, dashboard_put(STORED))).get_json()["response"]
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403 and answer["status"]["reason"] == "Forbidden"
    assert "patch" not in answer and "patchType" not in answer
    assert all(QUALIFIED.fullmatch(key) and len(key) <= 63 for key in answer["auditAnnotations"])


def test_mutate_restores_with_a_padded_base64_json_patch(client):
    answer = post(client, "/mutate", review(STORED, dashboard_put(STORED))).get_json()["response"]
    assert answer["allowed"] is True and answer["patchType"] == "JSONPatch"
    raw = base64.b64decode(answer["patch"], validate=True)  # standard alphabet, padded
    assert base64.b64encode(raw).decode() == answer["patch"]
    patch = json.loads(raw)
    assert [op["op"] for op in patch] == ["add", "add"] and not any(op["op"] == "test" for op in patch)
    assert len(answer["warnings"]) == 1 and len(answer["warnings"][0]) < 256
    assert all(QUALIFIED.fullmatch(key) and len(key) <= 63 for key in answer["auditAnnotations"])
    assert answer["auditAnnotations"]["restored"] == "status,metadata.finalizers"


@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_dry_run_gets_the_same_decision(client, path):
    wet = post(client, path, review(STORED, dashboard_put(STORED), uid="x")).get_json()
    dry = post(client, path, review(STORED, dashboard_put(STORED), uid="x", dry_run=True)).get_json()
    assert wet == dry


@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_kubectl_label_is_allowed_untouched(client, path):
    answer = post(client, path, review(STORED, kubectl_label(STORED), uid="x")).get_json()
    assert answer["response"] == {"uid": "x", "allowed": True}


def _odd(change):
    document = review(STORED, dashboard_put(STORED), uid="odd")
    change(document["request"])
    return document


ODD = {
    "object is a string": (lambda r: r.update(object="text"), True),
    "oldObject is a number": (lambda r: r.update(oldObject=3), True),
    "kind is a string": (lambda r: r.update(kind="Upgrade"), True),
    "operation is a list": (lambda r: r.update(operation=["UPDATE"]), True),
    "metadata is a string": (lambda r: r["object"].update(metadata="m"), True),
    "labels is a list": (lambda r: r["object"]["metadata"].update(labels=["x"]), True),
    "userInfo missing, label only": (lambda r: (r.pop("userInfo"), r.update(object=kubectl_label(STORED))), True),
    "userInfo missing, dismissal wiping status": (lambda r: r.pop("userInfo"), False),
    "groups is a string": (lambda r: r["userInfo"].update(groups="system:masters"), False),
    "username is a number": (lambda r: r["userInfo"].update(username=7), False),
    "unknown fields": (lambda r: r.update(extra={"a": 1}), False),
}


@pytest.mark.parametrize("case", ODD, ids=list(ODD))
def test_odd_reviews_are_answered(client, case):
    change, allowed = ODD[case]
    response = post(client, "/validate", _odd(change))
    assert response.status_code == 200
    assert response.get_json()["response"]["allowed"] is allowed


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD = {
    "not JSON": ("{", 400),
    "invalid UTF-8": (b'{"a": "\xff"}', 400),
    "a JSON array": ("[]", 400),
    "a JSON string": ('"review"', 400),
    "NaN": ('{"apiVersion": NaN}', 400),
    "Infinity": ('{"kind": Infinity}', 400),
    "no request": ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, 400),
    "request is a list": ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}, 400),
    "no uid": ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}, 400),
    "uid is a number": ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 1}},
                        400),
    "empty uid": ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}, 400),
    "unknown apiVersion": ({"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview",
                            "request": {"uid": "a"}}, 400),
    "wrong kind": ({"apiVersion": "admission.k8s.io/v1", "kind": "Review", "request": {"uid": "a"}}, 400),
    "absurd nesting": ('{"apiVersion": "admission.k8s.io/v1", "x": ' + _deep(100000) + "}", 400),
    "empty body": ("", 400),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_what_cannot_be_answered_gets_a_clear_400(client, case, path):
    body, code = BAD[case]
    response = post(client, path, body)
    assert response.status_code == code
    error = response.get_json()
    assert error["kind"] == "Status" and error["code"] == code and error["message"]
    assert "Traceback" not in response.get_data(as_text=True) and "/" not in error["reason"]


def test_the_decision_survives_nesting_it_could_not_compare(client):
    """Nesting under the depth json accepts: either a clear 400 or a correct answer, never a 5xx."""
    for depth in (200, 500, 800, 950):
        deep = {"deep": json.loads(_deep(depth))}
        old, new = {**STORED, "spec": deep}, {**dashboard_put(STORED), "spec": deep}
        response = post(client, "/validate", review(old, new))
        assert response.status_code in (200, 400)
        if response.status_code == 200:
            assert response.get_json()["response"]["allowed"] is False


def test_body_over_the_limit_is_413(client):
    document = review(STORED, dashboard_put(STORED))
    document["request"]["object"]["spec"]["pad"] = "x" * (1024 * 1024)
    assert post(client, "/validate", document).status_code == 413


@pytest.mark.parametrize("transfer_encoding", [None, "chunked"])
@pytest.mark.parametrize("length", ["11", "011", "4", " 4", "4 ", "+4", "-1", "4_0", "\u0664", "", None, "99"])
def test_the_body_is_read_as_werkzeug_reads_it(length, transfer_encoding):
    """The Content-Length the apiserver sends is read without werkzeug; every other header as werkzeug reads it
    (`int` would take "+4", "4_0" and an Arabic-Indic four, werkzeug takes none of them): as many bytes as
    werkzeug's length says, or the stream as werkzeug hands it over when there is none."""
    def environ() -> dict:
        env = {"wsgi.input": io.BytesIO(b"hello world"), "wsgi.input_terminated": True}
        if length is not None:
            env["CONTENT_LENGTH"] = length
        if transfer_encoding is not None:
            env["HTTP_TRANSFER_ENCODING"] = transfer_encoding
        return env

    werkzeug_length = get_content_length(environ())
    if werkzeug_length is None:
        expected = get_input_stream(environ(), max_content_length=1024).read()
    else:
        expected = b"hello world"[:werkzeug_length]
    assert read_body(environ(), 1024) == expected


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/yaml"])
def test_wrong_content_type_is_415(client, content_type):
    response = post(client, "/validate", review(STORED, kubectl_label(STORED)), content_type=content_type)
    assert response.status_code == 415


def test_json_with_a_charset_is_json(client):
    response = post(client, "/validate", review(STORED, kubectl_label(STORED)),
                    content_type="application/json; charset=utf-8")
    assert response.status_code == 200


def test_wrong_method_and_unknown_path(client):
    assert client.get("/validate").status_code == 405
    assert client.put("/mutate", data="{}").status_code == 405
    response = client.post("/nowhere", data="{}", content_type="application/json")
    assert response.status_code == 404 and response.get_json()["code"] == 404


def test_health_and_readiness_follow_the_certificate():
    problems = iter(["", "the certificate expired"])
    client = create_app(Config(), problem=lambda: next(problems)).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and "expired" in response.get_json()["message"]


def test_an_internal_error_shows_no_traceback():
    client = create_app(broken_config(KeyError("/secret/path.py"))).test_client()
    response = post(client, "/validate", review(STORED, kubectl_label(STORED)))
    assert response.status_code == 500
    assert "secret" not in response.get_data(as_text=True) and "Traceback" not in response.get_data(as_text=True)

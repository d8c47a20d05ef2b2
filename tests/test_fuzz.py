"""Fuzzing the HTTP endpoints of a real `upgrade-guard serve` with hypothesis: no 5xx, no crash.

Three kinds of input: AdmissionReviews whose members are any JSON value (structured), arbitrary bodies,
paths, methods and content types (unstructured), and arbitrary request lines and headers (raw). The
number of examples of each is 100, or 1000 with UPGRADE_GUARD_LONG_TESTS=1 (or UPGRADE_GUARD_FUZZ_EXAMPLES=N).
"""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import corpus
from tests.figures import FIGURES
from tests.guard import SERVICE_HOST, Guard
from tests.switches import amount
from tests.upgrades import dashboard_put, finished_upgrade, kubectl_label

EXAMPLES = int(amount("UPGRADE_GUARD_FUZZ_EXAMPLES", 100, 1000))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
STORED = finished_upgrade(nodes=2)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _field(right: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the right kind of value, sometimes any JSON value, sometimes absent (None is dropped)."""
    return st.one_of(right, right, json_values)


@st.composite
def reviews(draw) -> dict:
    old = draw(st.sampled_from([STORED, dashboard_put(STORED), None]))
    new = draw(st.sampled_from([dashboard_put(STORED), kubectl_label(STORED), STORED, None]))
    request = {
        "uid": draw(_field(st.text(min_size=1, max_size=40))),
        "kind": draw(_field(st.fixed_dictionaries({"group": st.sampled_from(["harvesterhci.io", ""]),
                                                   "version": st.just("v1beta1"),
                                                   "kind": st.sampled_from(["Upgrade", "Pod"])}))),
        "operation": draw(_field(st.sampled_from(["UPDATE", "CREATE", "DELETE", "CONNECT"]))),
        "subResource": draw(_field(st.sampled_from(["", "status"]))),
        "name": draw(_field(st.text(max_size=30))),
        "namespace": draw(_field(st.text(max_size=30))),
        "userInfo": draw(_field(st.fixed_dictionaries({
            "username": st.sampled_from(["admin", "system:serviceaccount:harvester-system:harvester", ""]),
            "groups": st.lists(st.text(max_size=10), max_size=3)}))),
        "object": draw(_field(st.just(new))),
        "oldObject": draw(_field(st.just(old))),
        "dryRun": draw(_field(st.booleans())),
    }
    request = {k: v for k, v in request.items() if v is not None or draw(st.booleans())}
    return {"apiVersion": draw(_field(st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]))),
            "kind": draw(_field(st.just("AdmissionReview"))),
            "request": draw(_field(st.just(request)))}


@pytest.fixture(scope="module")
def fuzzed(cert_dir):
    with Guard(cert_dir, "--request-timeout", "1") as running:
        yield running


class Client:
    """One kept-alive connection, made again whenever the server closed it (as after a refusal)."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.connection = guard.connect()

    def send(self, method: str, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self.connection.close()
                self.connection = self.guard.connect()
        raise AssertionError("unreachable")


def _check(guard: Guard, status: int, headers: dict, body: bytes, method: str = "POST") -> dict | None:
    """Never a 5xx, the server alive, and every refusal a JSON Status document (HEAD answers have no body)."""
    assert status < 500, body[:300]
    assert guard.process.poll() is None, "the guard died"
    if status >= 400 and method != "HEAD":
        assert headers.get("content-type") == "application/json", (status, body[:300])
        assert corpus.answer(body)["kind"] == "Status"
    return corpus.answer(body)


def test_structured_reviews(fuzzed):
    client = Client(fuzzed)

    @FUZZ
    @given(document=reviews(), path=st.sampled_from(["/validate", "/mutate"]))
    def run(document, path):
        FIGURES.add("fuzz inputs sent", "structured " + json.dumps(document, sort_keys=True) + path)
        status, headers, body = client.send("POST", path, json.dumps(document).encode(),
                                            {"Content-Type": "application/json"})
        answer = _check(fuzzed, status, headers, body)
        request = document.get("request")
        valid = (document.get("apiVersion") in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
                 and document.get("kind") == "AdmissionReview" and isinstance(request, dict)
                 and isinstance(request.get("uid"), str) and request["uid"])
        if valid:
            assert status == 200 and answer["response"]["uid"] == request["uid"], body[:300]
            assert answer["apiVersion"] == document["apiVersion"]
        else:
            assert status == 400 and answer["kind"] == "Status", body[:300]

    run()
    client.connection.close()


def test_unstructured_requests(fuzzed):
    client = Client(fuzzed)

    @FUZZ
    @given(method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
           path=st.sampled_from(["/validate", "/mutate", "/healthz", "/readyz", "/"]) | st.from_regex(
               r"\A/[A-Za-z0-9._~%!$&'()*+,;=:@/-]{0,40}\Z"),
           content_type=st.sampled_from(["application/json", "text/plain", "application/merge-patch+json",
                                         "application/json; charset=utf-8", "", "multipart/form-data"]),
           body=st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
    def run(method, path, content_type, body):
        FIGURES.add("fuzz inputs sent", f"unstructured {method} {path} {content_type} {body!r}")
        headers = {"Content-Type": content_type} if content_type else {}
        status, response_headers, answer = client.send(method, path, body, headers)
        _check(fuzzed, status, response_headers, answer, method)

    run()
    client.connection.close()


def test_raw_request_heads(fuzzed):
    header_text = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))

    @FUZZ
    @given(line=header_text, headers=st.lists(st.tuples(header_text, header_text), max_size=5))
    def run(line, headers):
        FIGURES.add("fuzz inputs sent", f"raw {line!r} {headers!r}")
        wire = line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
        sock = corpus.connect(fuzzed.port, fuzzed.cert_dir / "ca.crt", SERVICE_HOST, timeout=10)
        try:
            status, response_headers, body = corpus.send(sock, wire, 10)
        finally:
            sock.close()
        _check(fuzzed, status, response_headers, body)

    run()

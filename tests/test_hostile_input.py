"""The hostile-input corpus, sent over TLS to a real `upgrade-guard serve`: each request gets its answer.

Never a 5xx, the server stays up, and its memory after the whole corpus stays within a bound.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests import corpus
from tests.figures import FIGURES
from tests.guard import SERVICE_HOST, Guard
from webhook.settings import SERVE

CASES = corpus.cases()
REQUEST_TIMEOUT = 1  # seconds; the cases that stop sending half-way are closed after it
MEMORY_GROWTH_LIMIT = 96 * 1024 * 1024  # after 76 requests, a few of them many MB large (32-58 MiB seen)
WORKERS = next(setting.default for setting in SERVE if setting.name == "workers")


@pytest.fixture(scope="module")
def hostile_guard(cert_dir):
    with Guard(cert_dir, "--request-timeout", str(REQUEST_TIMEOUT)) as running:
        running.settle(WORKERS)
        running.baseline = running.memory()
        yield running


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 40
    assert {c.expect for c in CASES} >= {"400", "413", "415", "408", "allowed", "denied", "restored"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request(hostile_guard, case):
    connection = corpus.connect(hostile_guard.port, hostile_guard.cert_dir / "ca.crt", SERVICE_HOST, timeout=10)
    try:
        status, headers, body = corpus.send(connection, case.wire, REQUEST_TIMEOUT + 10)
    finally:
        connection.close()
    FIGURES.add("bad inputs tried", case.name)
    document = corpus.answer(body)
    assert status < 500, f"{case.name}: {status} {body[:300]!r}"
    assert hostile_guard.process.poll() is None, "the guard died"
    assert headers.get("content-type") == "application/json" and document is not None, body[:300]
    assert not any(trace.encode() in body for trace in corpus.TRACES), body[:300]
    if case.expect.isdigit():
        assert status == int(case.expect), f"{case.name} ({case.why}): {status} {body[:300]!r}"
        assert document["kind"] == "Status" and document["code"] == status, document
        return
    assert status == 200, f"{case.name} ({case.why}): {status} {body[:300]!r}"
    response = document["response"]
    assert isinstance(response["uid"], str) and response["uid"]
    if "uid" in case.meta:
        assert response["uid"] == case.meta["uid"][0]
    if case.expect == "allowed":
        assert response["allowed"] is True and "patch" not in response, response
    elif case.expect == "denied":
        assert response["allowed"] is False and response["status"]["code"] == 403, response
    else:
        assert case.expect == "restored"
        assert response["allowed"] is True and response["patchType"] == "JSONPatch"
        assert isinstance(json.loads(base64.b64decode(response["patch"])), list)


def test_still_serving_and_memory_bounded(hostile_guard):
    """Runs after the corpus (same module, file order): health, and what the workers hold now."""
    connection = hostile_guard.connect()
    assert connection.get("/healthz")[0] == 200
    connection.close()
    growth = hostile_guard.memory() - hostile_guard.baseline
    FIGURES.set("memory growth after the corpus (MiB)", round(growth / 2**20, 1))
    assert growth < MEMORY_GROWTH_LIMIT, f"the workers grew by {growth / 2**20:.0f} MiB"

"""End to end as installed: the rendered manifests in a played kube-apiserver (tests/apiserver.py), real guards
started with the rendered Deployment's environment, every scenario judged by the object the apiserver stored."""

from __future__ import annotations

import copy
import signal
import socket

import pytest

from tests.apiserver import ApiError, Apiserver, CallFailed, verify_answer
from tests.guard import Guard
from tests.kustomize import find, rendered
from tests.upgrades import ADMIN, CONTROLLER, LABEL, dashboard_put, finished_upgrade

NAMESPACE, NAME = "harvester-system", "hvst-upgrade-8fnwl"
SERVICE = (NAMESPACE, "upgrade-guard")
VALIDATE, MUTATE = "validate.upgrade-guard.harvester-system.svc", "mutate.upgrade-guard.harvester-system.svc"
STORED = finished_upgrade()


def _deployment_env(objects: list[dict]) -> dict[str, str]:
    container = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def replica(objects: list[dict], cert_dir, drain: float = 0) -> Guard:
    """A guard as the install's pods run it: the Deployment's environment (the cert dir and the address given as
    flags, which win over it), and a drain only when the test wants one."""
    env = {**_deployment_env(objects), "UPGRADE_GUARD_DRAIN": str(drain)}
    return Guard(cert_dir, "--workers", "1", env=env).start()


@pytest.fixture(scope="module")
def replicas(cert_dir):
    """Two replicas of the default install."""
    started = [replica(rendered("default"), cert_dir) for _ in range(2)]
    yield started
    for guard in started:
        guard.stop()


@pytest.fixture(scope="module")
def strict_replicas(cert_dir):
    started = [replica(rendered("strict"), cert_dir)]
    yield started
    started[0].stop()


@pytest.fixture
def install(cert_dir):
    """Make an apiserver with these objects applied, the caBundle patched in as the README says, and one finished
    Upgrade stored; its connections are closed after the test."""
    made: list[Apiserver] = []

    def make(objects: list[dict], guards: list[Guard], ca: bool = True) -> Apiserver:
        api = Apiserver(objects, {SERVICE: [("127.0.0.1", g.port) for g in guards]})
        if ca:
            api.set_ca_bundle((cert_dir / "ca.crt").read_bytes())
        api.create(STORED)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


def _without(objects: list[dict], *kinds: str) -> list[dict]:
    return [o for o in objects if o["kind"] not in kinds]


def _stored(api: Apiserver) -> dict:
    return api.get(NAMESPACE, NAME)


def _progress(stored: dict, node: str, state: str) -> dict:
    """The upgrade controller's whole-object update: one node's state, the label untouched."""
    out = copy.deepcopy(stored)
    out["status"]["nodeStatuses"][node] = {"state": state}
    out["metadata"]["labels"]["harvesterhci.io/upgradeState"] = "UpgradingNodes"
    return out


def _assert_history_kept(obj: dict) -> None:
    assert obj["status"] == STORED["status"]
    assert obj["metadata"]["finalizers"] == STORED["metadata"]["finalizers"]


INSTALLS = {
    "validate and mutate": lambda: rendered("default"),
    "validate only": lambda: _without(rendered("default"), "MutatingWebhookConfiguration"),
    "mutate only": lambda: _without(rendered("default"), "ValidatingWebhookConfiguration"),
    "policy only": lambda: rendered("policy"),
}


@pytest.mark.parametrize("install_name", INSTALLS)
def test_the_old_dashboards_dismissal_never_loses_the_history(install_name, replicas, install):
    api = install(INSTALLS[install_name](), replicas)
    before = _stored(api)
    if install_name in ("validate only", "policy only"):
        with pytest.raises(ApiError) as denied:
            api.update(dashboard_put(before), ADMIN)
        assert denied.value.code == 403
        assert "would lose status" in denied.value.message
        assert "kubectl -n harvester-system label upgrade hvst-upgrade-8fnwl" in denied.value.message
        if install_name == "validate only":
            assert denied.value.message.startswith(f'admission webhook "{VALIDATE}" denied the request: ')
        assert _stored(api) == before, "a denied write changed the stored object"
        return
    admitted = api.update(dashboard_put(before), ADMIN)
    stored = _stored(api)
    _assert_history_kept(stored)
    assert stored["metadata"]["labels"][LABEL] == "true", "the dismissal itself was lost"
    assert stored["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert any("upgrade-guard restored status, metadata.finalizers" in w for w in admitted.warnings)
    assert admitted.audit == {f"{MUTATE}/restored": "status,metadata.finalizers"}
    called = [c.webhook for c in api.calls]
    assert called == ([MUTATE, VALIDATE] if install_name == "validate and mutate" else [MUTATE])
    assert not api.dropped_audit_keys


def test_kubectl_label_passes_untouched(replicas, install):
    api = install(rendered("default"), replicas)
    before = _stored(api)
    admitted = api.patch(NAMESPACE, NAME, {"metadata": {"labels": {LABEL: "true"}}}, ADMIN)
    stored = _stored(api)
    expected = copy.deepcopy(before)
    expected["metadata"]["labels"][LABEL] = "true"
    expected["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
    assert stored == expected
    assert [c.webhook for c in api.calls] == [MUTATE, VALIDATE]  # a dismissal: the guard was asked
    assert all(c.answer["response"] == {"uid": c.review["request"]["uid"], "allowed": True} for c in api.calls)
    assert not admitted.warnings and not admitted.audit


def _controller_round(api: Apiserver, relabel: bool = True) -> None:
    """A run of the controllers' writes: node progress, then (with `relabel`) the controller resetting the label
    and the UpgradeLog controller clearing the log name after a dismissal (status changes, the label set)."""
    for node, state in (("harvester-node-0", "Pre-draining"), ("harvester-node-0", "Succeeded"),
                        ("harvester-node-1", "Waiting Reboot")):
        api.update(_progress(_stored(api), node, state), CONTROLLER)
    if not relabel:
        return
    labelled = _stored(api)
    labelled["metadata"]["labels"][LABEL] = "true"
    api.update(labelled, CONTROLLER)
    cleared = _stored(api)
    cleared["status"]["upgradeLog"] = ""
    api.update(cleared, CONTROLLER)


def test_controller_updates_never_reach_the_guard(replicas, install):
    api = install(rendered("default"), replicas)
    _controller_round(api)
    stored = _stored(api)
    assert stored["status"]["nodeStatuses"]["harvester-node-1"] == {"state": "Waiting Reboot"}
    assert stored["status"]["upgradeLog"] == "" and stored["metadata"]["labels"][LABEL] == "true"
    assert api.calls == []


@pytest.fixture(scope="module")
def stopped_ports(cert_dir):
    """The ports of two replicas that were running and are stopped: what endpoints list before they update."""
    guards = [replica(rendered("default"), cert_dir) for _ in range(2)]
    ports = [g.port for g in guards]
    for guard in guards:
        assert guard.stop() == 0
    return ports


@pytest.mark.parametrize("endpoints", ["stale", "none"])
def test_with_every_replica_stopped_only_dismissals_fail(endpoints, stopped_ports, install):
    api = install(rendered("default"), [])
    api.endpoints[SERVICE] = [("127.0.0.1", p) for p in stopped_ports] if endpoints == "stale" else []
    before = _stored(api)
    with pytest.raises(ApiError) as failed:
        api.update(dashboard_put(before), ADMIN)
    assert failed.value.code == 500
    assert failed.value.message == (
        f'Internal error occurred: failed calling webhook "{MUTATE}": failed to call webhook: Post '
        '"https://upgrade-guard.harvester-system.svc:443/mutate?timeout=3s": '
        "dial tcp upgrade-guard.harvester-system.svc:443: connect: connection refused")
    assert str(failed.value).startswith("Error from server (InternalError): Internal error occurred: ")
    assert _stored(api) == before, "the status was wiped while the guard was down"
    with pytest.raises(ApiError):
        api.patch(NAMESPACE, NAME, {"metadata": {"labels": {LABEL: "true"}}}, ADMIN)  # a dismissal too
    _controller_round(api)
    assert _stored(api)["status"]["nodeStatuses"]["harvester-node-1"] == {"state": "Waiting Reboot"}
    assert [c.endpoint for c in api.calls] == [None, None], "only the two dismissals tried to call the guard"


def test_while_one_of_two_replicas_stops_the_other_answers(cert_dir, install):
    objects = rendered("default")
    stopping, staying = replica(objects, cert_dir, drain=1.0), replica(objects, cert_dir)
    try:
        api = install(objects, [stopping, staying])
        first = stopping.port, staying.port
        api.update(dashboard_put(_stored(api)), ADMIN)  # leaves a kept-alive connection to `stopping`
        assert api.calls[-1].endpoint == ("127.0.0.1", first[0])
        stopping.process.send_signal(signal.SIGTERM)
        stopping.wait_for_line("draining for")
        answered_by = []

        def dismiss_and_check() -> None:
            before = _stored(api)
            api.update(dashboard_put(before, "false" if before["metadata"]["labels"][LABEL] == "true" else "true"),
                       ADMIN)
            _assert_history_kept(_stored(api))
            answered_by.extend(c.endpoint[1] for c in api.calls[-2:])

        for _ in range(4):  # the endpoint removal has not reached kube-proxy yet: new connections still reach it
            dismiss_and_check()
        api.endpoints[SERVICE] = [("127.0.0.1", staying.port)]
        for _ in range(500):  # until its drain is over, bounded
            dismiss_and_check()
            if any("drain over" in line for line in stopping.lines):
                break
        assert stopping.process.wait(10) == 0
        dismiss_and_check()
        assert first[0] in answered_by, "the stopping replica stopped answering before its drain was over"
        assert answered_by[-2:] == [staying.port] * 2
        api.close()
    finally:
        stopping.stop()
        staying.stop()


def test_dry_run_answers_and_stores_nothing(replicas, install):
    api = install(rendered("default"), replicas)
    before = _stored(api)
    admitted = api.update(dashboard_put(before), ADMIN, dry_run=True)
    _assert_history_kept(admitted.object)
    assert admitted.object["metadata"]["labels"][LABEL] == "true"
    assert _stored(api) == before
    assert [c.review["request"]["dryRun"] for c in api.calls] == [True, True]


def test_strict_install_reverts_a_hand_edit_of_status_and_leaves_the_rest_alone(strict_replicas, install):
    api = install(rendered("strict"), strict_replicas)
    edited = _stored(api)
    edited["status"]["conditions"][0]["status"] = "Unknown"
    admitted = api.update(edited, ADMIN)
    _assert_history_kept(_stored(api))
    assert admitted.audit == {f"{MUTATE}/restored": "status"}
    calls = len(api.calls)
    api.patch(NAMESPACE, NAME, {"metadata": {"labels": {LABEL: "true"}}}, ADMIN)
    _controller_round(api)
    assert len(api.calls) == calls, "a write that keeps the protected fields, or an exempt one, reached the guard"
    assert _stored(api)["metadata"]["labels"][LABEL] == "true"


def test_legacy_install_asks_the_guard_about_everything_and_fails_open(replicas, stopped_ports, install):
    api = install(rendered("legacy"), replicas)
    api.update(dashboard_put(_stored(api)), ADMIN)
    _assert_history_kept(_stored(api))
    calls = len(api.calls)
    _controller_round(api, relabel=False)
    assert len(api.calls) == calls + 6, "without matchConditions every write waits on the guard"
    assert all(c.answer["response"]["allowed"] for c in api.calls[calls:])
    down = install(rendered("legacy"), [])
    down.endpoints[SERVICE] = [("127.0.0.1", p) for p in stopped_ports]
    admitted = down.update(dashboard_put(_stored(down)), ADMIN)
    assert "status" not in _stored(down), "legacy's trade-off: with every replica down a dismissal gets through"
    assert set(admitted.audit.values()) == {MUTATE, VALIDATE}


def test_cert_manager_install_trusts_the_injected_ca(replicas, cert_dir, install):
    objects = rendered("cert-manager")
    api = install(objects, replicas, ca=False)
    # cainjector copies the ca.crt of the Certificate's secret; `upgrade-guard certs` made this one
    assert api.inject_ca({"upgrade-guard-tls": (cert_dir / "ca.crt").read_bytes()}) == 2
    api.update(dashboard_put(_stored(api)), ADMIN)
    _assert_history_kept(_stored(api))


def test_until_the_ca_bundle_is_set_only_dismissals_fail(replicas, install):
    api = install(rendered("default"), replicas, ca=False)
    with pytest.raises(ApiError) as failed:
        api.update(dashboard_put(_stored(api)), ADMIN)
    assert "tls: failed to verify certificate: x509: " in failed.value.message
    _controller_round(api)


def test_a_webhook_that_never_answers_times_out(install):
    with socket.socket() as hung:  # accepts connections in its backlog, never speaks TLS
        hung.bind(("127.0.0.1", 0))
        hung.listen(4)
        api = install(_without(rendered("default"), "ValidatingWebhookConfiguration"), [])
        api.endpoints[SERVICE] = [hung.getsockname()]
        with pytest.raises(ApiError) as failed:
            api.update(dashboard_put(_stored(api)), ADMIN)
    assert failed.value.message.endswith(": context deadline exceeded")
    _assert_history_kept(_stored(api))


REVIEW_UID = "u-1"


@pytest.mark.parametrize("answer,mutating", [
    ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "response": {"uid": REVIEW_UID}}, True),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "other"}}, True),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
      "response": {"uid": REVIEW_UID, "allowed": True, "patchType": "JSONPatch", "patch": "W10="}}, False),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
      "response": {"uid": REVIEW_UID, "allowed": True, "patch": "W10="}}, True),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
      "response": {"uid": REVIEW_UID, "allowed": True, "patchType": "JSONPatch", "patch": "not base64!"}}, True),
], ids=["old apiVersion", "other uid", "patch from a validating webhook", "patch without patchType", "bad base64"])
def test_the_harness_refuses_answers_the_apiserver_refuses(answer, mutating):
    with pytest.raises(CallFailed):
        verify_answer(answer, REVIEW_UID, mutating)


def test_the_harness_reads_a_missing_allowed_as_a_denial():
    answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": REVIEW_UID}}
    assert verify_answer(answer, REVIEW_UID, mutating=False)["allowed"] is False

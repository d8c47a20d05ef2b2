"""End to end as installed: the rendered manifests in a played kube-apiserver (tests/apiserver.py), real guards
started with the rendered Deployment's environment, every scenario judged by the object the apiserver stored.

The plain install keeps its own certificates (`serve --self-managed`): its guards run against the in-test Kubernetes
API (tests/kubeapi.py) holding the install's webhook configurations, and the played apiserver trusts the caBundle
the keepers patched into them. Where the scenario is about admission, not certificates, the guards read files: the
manual install, whose pods and configurations are the same but for where the certificate comes from, with the CA
put in as `upgrade-guard register` does.
"""

from __future__ import annotations

import base64
import copy
import signal
import socket

import pytest

from tests.apiserver import ApiError, Apiserver, CallFailed, verify_answer
from tests.guard import Guard
from tests.kubeapi import KubeApi, route
from tests.kustomize import find, rendered
from tests.upgrades import ADMIN, CONTROLLER, LABEL, dashboard_put, finished_upgrade

NAMESPACE, NAME = "harvester-system", "hvst-upgrade-8fnwl"
ADMISSION = "admissionregistration.k8s.io"
SELF_MANAGED = "UPGRADE_GUARD_SELF_MANAGED"
KINDS = {"ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
         "MutatingWebhookConfiguration": "mutatingwebhookconfigurations"}
SERVICE = (NAMESPACE, "upgrade-guard")
VALIDATE, MUTATE = "validate.upgrade-guard.harvester-system.svc", "mutate.upgrade-guard.harvester-system.svc"
STORED = finished_upgrade()


def _deployment_env(objects: list[dict]) -> dict[str, str]:
    container = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def replica(objects: list[dict], cert_dir, drain: float = 0, kube: KubeApi | None = None, name: str = "") -> Guard:
    """A guard as the install's pods run it: the Deployment's environment (the cert dir and the address given as
    flags, which win over it), and a drain only when the test wants one. With `kube`, a self-managed install's guard
    reaches the API there as pod `name`, its cert dir empty at start as an emptyDir is. Without, the guard reads the
    certificate in `cert_dir` whatever the install says: for scenarios about admission, not certificates."""
    env = {**_deployment_env(objects), "UPGRADE_GUARD_DRAIN": str(drain)}
    if kube is None:
        env.pop(SELF_MANAGED, None)
    else:
        assert env[SELF_MANAGED] == "true" and not any(cert_dir.iterdir())
        env.update(UPGRADE_GUARD_KUBECONFIG=str(kube.kubeconfig(cert_dir.parent / f"{name}.kubeconfig")),
                   UPGRADE_GUARD_REPLICA_NAME=name)
    return Guard(cert_dir, "--workers", "1", env=env).start()


@pytest.fixture(scope="module")
def replicas(cert_dir):
    """Two replicas of the manual install (file mode)."""
    started = [replica(rendered("manual"), cert_dir) for _ in range(2)]
    yield started
    for guard in started:
        guard.stop()


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    """The Kubernetes API of a cluster where the default install's webhook configurations were applied."""
    with KubeApi(tmp_path_factory.mktemp("kubeapi")) as api:
        for configuration in rendered("default"):
            if configuration["kind"] in KINDS:
                api.put(configuration)
        yield api


@pytest.fixture(scope="module")
def self_managed(kube, tmp_path_factory):
    """A replica of the default install in a cluster without its Secrets (one: tests/test_self_managed.py has two
    start at once, and each start costs seconds of the `kubernetes` client's imports)."""
    guard = replica(rendered("default"), tmp_path_factory.mktemp("guard-a"), kube=kube, name="guard-a")
    yield [guard]
    guard.stop()


@pytest.fixture(scope="module")
def strict_replicas(cert_dir):
    started = [replica(rendered("strict"), cert_dir)]
    yield started
    started[0].stop()


def _ca_bundles(kube: KubeApi) -> dict[str, str | None]:
    """The caBundle of each webhook of the configurations as the Kubernetes API holds them (all of them, or None)."""
    bundles = {}
    for kind, plural in KINDS.items():
        configuration = kube.get(ADMISSION, plural, "", "upgrade-guard")
        for webhook in configuration["webhooks"]:
            bundles[webhook["name"]] = webhook["clientConfig"].get("caBundle")
    return bundles


@pytest.fixture
def install(cert_dir):
    """Make an apiserver with these objects applied, and one finished Upgrade stored; its connections are closed
    after the test. The caBundle: `register`ed from the CA of the file-mode guards, read back from the API where
    self-managed guards keep it (`kube`), or none."""
    made: list[Apiserver] = []

    def make(objects: list[dict], guards: list[Guard], ca: bool = True, kube: KubeApi | None = None) -> Apiserver:
        api = Apiserver(objects, {SERVICE: [("127.0.0.1", g.port) for g in guards]})
        if kube is not None:
            api.load_ca_bundles(_ca_bundles(kube))
        elif ca:
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
    "validate and mutate": lambda: rendered("manual"),
    "validate only": lambda: _without(rendered("manual"), "MutatingWebhookConfiguration"),
    "mutate only": lambda: _without(rendered("manual"), "ValidatingWebhookConfiguration"),
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
    api = install(rendered("manual"), replicas)
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
    api = install(rendered("manual"), replicas)
    _controller_round(api)
    stored = _stored(api)
    assert stored["status"]["nodeStatuses"]["harvester-node-1"] == {"state": "Waiting Reboot"}
    assert stored["status"]["upgradeLog"] == "" and stored["metadata"]["labels"][LABEL] == "true"
    assert api.calls == []


@pytest.fixture(scope="module")
def stopped_ports(cert_dir):
    """The ports of two replicas that were running and are stopped: what endpoints list before they update."""
    guards = [replica(rendered("manual"), cert_dir) for _ in range(2)]
    ports = [g.port for g in guards]
    for guard in guards:
        assert guard.stop() == 0
    return ports


@pytest.mark.parametrize("endpoints", ["stale", "none"])
def test_with_every_replica_stopped_only_dismissals_fail(endpoints, stopped_ports, install):
    api = install(rendered("manual"), [])
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
    objects = rendered("manual")
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
    api = install(rendered("manual"), replicas)
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


def test_legacy_install_asks_the_guard_about_everything_and_fails_open(self_managed, kube, stopped_ports, install):
    api = install(rendered("legacy"), self_managed, kube=kube)
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
    api = install(rendered("manual"), replicas, ca=False)
    with pytest.raises(ApiError) as failed:
        api.update(dashboard_put(_stored(api)), ADMIN)
    assert "tls: failed to verify certificate: x509: " in failed.value.message
    _controller_round(api)


def test_a_webhook_that_never_answers_times_out(install):
    with socket.socket() as hung:  # accepts connections in its backlog, never speaks TLS
        hung.bind(("127.0.0.1", 0))
        hung.listen(4)
        api = install(_without(rendered("manual"), "ValidatingWebhookConfiguration"), [])
        api.endpoints[SERVICE] = [hung.getsockname()]
        with pytest.raises(ApiError) as failed:
            api.update(dashboard_put(_stored(api)), ADMIN)
    assert failed.value.message.endswith(": context deadline exceeded")
    _assert_history_kept(_stored(api))


def _allowed(objects: list[dict], method: str, path: str) -> bool:
    """kube-apiserver's RBAC authorizer, for a request of the install's service account: some rule of a role bound to
    it (a Role in its namespace, a ClusterRole anywhere) names the verb, the resource and, if it names any, the
    object. A create names none, so a rule limited to names never allows it."""
    group, resource, namespace, name = route(path)
    verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}[method]
    pod = find(objects, "Deployment")
    account = {"kind": "ServiceAccount", "name": pod["spec"]["template"]["spec"]["serviceAccountName"],
               "namespace": pod["metadata"]["namespace"]}
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("Role", "ClusterRole")}
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        if account not in binding["subjects"] or role["metadata"].get("namespace", namespace) != namespace:
            continue  # not bound to the guard, or a Role of another namespace
        for rule in role["rules"]:
            if (group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
                    and ("resourceNames" not in rule or name in rule["resourceNames"])):
                return True
    return False


def test_the_plain_install_keeps_its_own_certificates_and_guards_the_history(self_managed, kube, install):
    """`kubectl apply -k manifests/`: the configurations arrive without a caBundle, the guard starts with an empty
    cert dir and nothing made by hand, makes its CA, puts it into both configurations, and the old dashboard's
    dismissal keeps the history; all with only the install's RBAC."""
    objects = rendered("default")
    assert not any("caBundle" in w["clientConfig"] for o in objects if o["kind"] in KINDS for w in o["webhooks"])
    bundles = _ca_bundles(kube)
    (bundle,) = set(bundles.values())
    secret = kube.get("", "secrets", NAMESPACE, "upgrade-guard-ca")
    assert bundle == secret["data"]["ca.crt"] and len(bundles) == 2
    for guard in self_managed:
        assert (guard.cert_dir / "ca.crt").read_bytes() == base64.b64decode(bundle)
    api = install(objects, self_managed, kube=kube)
    admitted = api.update(dashboard_put(_stored(api)), ADMIN)
    _assert_history_kept(_stored(api))
    assert admitted.audit == {f"{MUTATE}/restored": "status,metadata.finalizers"}
    assert [c.webhook for c in api.calls] == [MUTATE, VALIDATE]
    _controller_round(api, relabel=False)
    assert len(api.calls) == 2
    made = [(method, path) for method, path, _, _ in kube.requests]
    assert {m for m, _ in made} == {"GET", "POST", "PUT", "PATCH"}
    assert [(m, p) for m, p in made if not _allowed(objects, m, p)] == [], "a call the install's RBAC does not allow"
    assert not _allowed(objects, "GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/other"), "the check cannot fail"


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

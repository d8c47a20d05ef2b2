"""manifests/: generated from the guard's settings, rendered by kustomize, valid against the Kubernetes schemas,
with the smallest blast radius that still never stalls an upgrade."""

from __future__ import annotations

import argparse

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from tests.kustomize import (FILE_MODE, INSTALLS, MANIFESTS, SELF_MANAGED, find, render_subset, render_with_tool,
                             rendered, tool)
from webhook import manifests
from webhook.certs import service_names
from webhook.cli import main
from webhook.config import Config, FieldPath
from webhook.keeper import Plan
from webhook.server import GRACEFUL_TIMEOUT
from webhook.settings import CLUSTER, DECISION, SELF_MANAGED as KEEPER_SETTINGS, SERVE, decision_config, resolve

NEWEST = latest_version()
# Each install against the oldest Kubernetes it is for and the newest the schemas know.
SCHEMA_VERSIONS = {"default": ["1.28", NEWEST], "cert-manager": ["1.28", NEWEST], "manual": ["1.28", NEWEST],
                   "strict": ["1.28", NEWEST], "legacy": ["1.25", "1.26", "1.27"], "policy": ["1.30", NEWEST]}
WEBHOOK_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
RBAC_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
CLUSTER_WIDE = (*WEBHOOK_KINDS, "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ClusterRole",
                "ClusterRoleBinding")
SNI = service_names()[2]


# Written by hand, not derived from the guard's settings: checked against the generated base by test_monitoring.
HAND_WRITTEN = "overlays/monitoring/"


def _files_on_disk() -> dict[str, str]:
    files = {str(p.relative_to(MANIFESTS)): p.read_text() for p in MANIFESTS.rglob("*") if p.is_file()}
    return {path: text for path, text in files.items() if not path.startswith(HAND_WRITTEN)}


def test_committed_manifests_are_what_the_generator_writes():
    generated = manifests.render()
    on_disk = _files_on_disk()
    assert sorted(on_disk) == sorted(generated), "files added to or missing from manifests/"
    drifted = [path for path in generated if on_disk[path] != generated[path]]
    assert not drifted, f"{drifted} differ from the generator: run `upgrade-guard manifests` and commit"


def test_the_manifests_command_writes_the_tree_for_other_settings(tmp_path, capsys):
    assert main(["manifests", "--out", str(tmp_path), "--exempt-group", "ops", "--label", "example.com/seen",
                 "--image", "registry.example/upgrade-guard:1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(manifests.render())
    objects = render_subset(tmp_path)
    deployment = find(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/upgrade-guard:1"
    conditions = find(objects, "ValidatingWebhookConfiguration")["webhooks"][0]["matchConditions"]
    assert '["ops"]' in conditions[0]["expression"] and '"example.com/seen"' in conditions[1]["expression"]


def test_a_list_value_with_a_comma_is_refused(tmp_path, capsys):
    assert main(["manifests", "--out", str(tmp_path), "--exempt-user", "CN=a,O=b"]) == 2
    assert "comma" in capsys.readouterr().err


def _by_identity(objects: list[dict]) -> list[dict]:
    return sorted(objects, key=lambda o: (o["kind"], o["metadata"]["name"]))


@pytest.mark.skipif(tool() is None, reason="neither kubectl nor kustomize is installed")
@pytest.mark.parametrize("install", INSTALLS)
def test_the_fallback_renderer_agrees_with_kustomize(install):
    path = MANIFESTS / INSTALLS[install]
    assert _by_identity(render_subset(path)) == _by_identity(render_with_tool(path))


def _cases():
    for install, versions in SCHEMA_VERSIONS.items():
        for version in versions:
            yield pytest.param(install, version, id=f"{install}-{version}")


@pytest.mark.parametrize("install,version", list(_cases()))
def test_every_kubernetes_object_is_valid_against_the_schemas(install, version):
    checked = 0
    for obj in rendered(install):
        if obj["apiVersion"].startswith("cert-manager.io/"):
            continue  # not a Kubernetes kind: see test_cert_manager_objects_use_only_fields_of_its_api
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 2


def test_schema_validation_catches_a_mistake():
    deployment = find(rendered("default"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.28", strict=True)


# cert-manager.io/v1 fields these objects may use (from cert-manager's API reference), and those they must set.
CERT_MANAGER_SPEC = {
    "Issuer": ({"selfSigned", "ca"}, set()),
    "Certificate": ({"isCA", "commonName", "secretName", "duration", "renewBefore", "dnsNames", "privateKey",
                     "usages", "issuerRef"}, {"secretName", "issuerRef"}),
}
KEY_USAGES = {"digital signature", "key encipherment", "cert sign", "server auth", "client auth"}


def test_cert_manager_objects_use_only_fields_of_its_api():
    objects = [o for o in rendered("cert-manager") if o["apiVersion"] == "cert-manager.io/v1"]
    assert sorted(o["kind"] for o in objects) == ["Certificate", "Certificate", "Issuer", "Issuer"]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        allowed, required = CERT_MANAGER_SPEC[obj["kind"]]
        assert set(obj["spec"]) <= allowed and required <= set(obj["spec"]), obj
        if obj["kind"] == "Issuer":
            assert len(obj["spec"]) == 1, "an Issuer has exactly one kind of issuer"
            continue
        assert ("Issuer", obj["spec"]["issuerRef"]["name"]) in names
        assert set(obj["spec"]["issuerRef"]) <= {"name", "kind", "group"}
        assert set(obj["spec"]["privateKey"]) <= {"algorithm", "size", "rotationPolicy", "encoding"}
        assert set(obj["spec"].get("usages", [])) <= KEY_USAGES


@pytest.mark.parametrize("install", INSTALLS)
def test_nothing_cluster_wide_but_admission_objects_and_the_keepers_role_and_no_namespace_owned(install):
    for obj in rendered(install):
        assert obj["kind"] != "Namespace"
        if obj["kind"] in RBAC_KINDS:
            assert install in SELF_MANAGED, "RBAC in an install whose guard never calls the API"
        if obj["kind"] in CLUSTER_WIDE:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == "harvester-system"


def _pod(objects: list[dict]) -> dict:
    return find(objects, "Deployment")["spec"]["template"]["spec"]


def _env(objects: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _pod(objects)["containers"][0]["env"]}


def test_deployment_runs_two_replicas_that_may_share_a_node():
    objects = rendered("default")
    deployment = find(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    affinity = _pod(objects)["affinity"]["podAntiAffinity"]
    assert list(affinity) == ["preferredDuringSchedulingIgnoredDuringExecution"], "required anti-affinity"
    term = affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert _pod(objects)["priorityClassName"]


def test_disruption_budget_never_stalls_a_node_drain():
    budget = find(rendered("default"), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1 and budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budget["spec"]["selector"] == find(rendered("default"), "Deployment")["spec"]["selector"]


def test_pod_is_locked_down():
    pod = _pod(rendered("default"))
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] and context["runAsNonRoot"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"] == {"drop": ["ALL"]} and context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_probes_ask_the_guard_over_https_on_its_port():
    container = _pod(rendered("default"))["containers"][0]
    (port,) = container["ports"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["scheme"], get["port"]) == (path, "HTTPS", port["name"])


def _keeper_settings(objects: list[dict]) -> dict:
    """What `serve` makes of the Deployment's environment for self-managed certificates."""
    args = argparse.Namespace(**{s.dest: None for s in KEEPER_SETTINGS + CLUSTER})
    return resolve(KEEPER_SETTINGS + CLUSTER, args, environ=_env(objects))


@pytest.mark.parametrize("install", SELF_MANAGED + FILE_MODE)
def test_the_token_rbac_and_api_egress_only_where_the_guard_keeps_its_certificates(install):
    """Self-managed: the setting, the token, the RBAC, egress to the API and a writable cert dir in memory. File mode:
    none of them, and the Secret mounted read-only as the cert dir."""
    objects = rendered(install)
    self_managed = install in SELF_MANAGED
    pod = _pod(objects)
    assert _keeper_settings(objects)["self_managed"] is self_managed
    assert pod["automountServiceAccountToken"] is self_managed
    assert find(objects, "ServiceAccount")["automountServiceAccountToken"] is False, "only a pod that asks gets one"
    assert sorted(o["kind"] for o in objects if o["kind"] in RBAC_KINDS) == (sorted(RBAC_KINDS) if self_managed else [])
    policy = find(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": manifests.PORT, "protocol": "TCP"}]}]
    # The `kubernetes` Service's port, and the apiservers' own for CNIs that apply policy after translating it.
    api = [{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}]
    assert policy["egress"] == (api if self_managed else [])
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"]
                if m["mountPath"] == _env(objects)["UPGRADE_GUARD_CERT_DIR"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    if self_managed:
        assert volume == {"name": mount["name"], "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
        assert not mount.get("readOnly"), "the keeper writes the certificate files"
        return
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "upgrade-guard-tls"
    assert volume["secret"]["defaultMode"] & 0o077 == 0o040, "keys readable by the pod's group only"


@pytest.mark.parametrize("install", SELF_MANAGED)
def test_the_keeper_may_do_exactly_what_it_does_on_exactly_its_objects(install):
    """The README's RBAC, with the names the guard reads from the Deployment's environment, which are the names of
    the objects the install makes."""
    objects = rendered(install)
    deployment = find(objects, "Deployment")
    values = _keeper_settings(objects)
    assert values["namespace"] == "", "the pod's own namespace, where its Role is"
    plan = Plan.from_settings({**values, "namespace": deployment["metadata"]["namespace"]}, "/tls")
    configurations = dict(plan.configurations)
    assert configurations == {"validating": find(objects, WEBHOOK_KINDS[0])["metadata"]["name"],
                              "mutating": find(objects, WEBHOOK_KINDS[1])["metadata"]["name"]}
    assert plan.service == find(objects, "Service")["metadata"]["name"]
    role, cluster_role = find(objects, "Role"), find(objects, "ClusterRole")
    assert role["metadata"]["namespace"] == plan.namespace
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [plan.ca_secret, plan.tls_secret],
         "verbs": ["get", "update"]},
    ]
    assert cluster_role["rules"] == [{
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
        "resourceNames": sorted(set(configurations.values())), "verbs": ["get", "patch"]}]
    account = {"kind": "ServiceAccount", "name": _pod(objects)["serviceAccountName"],
               "namespace": deployment["metadata"]["namespace"]}
    assert find(objects, "ServiceAccount")["metadata"]["name"] == account["name"]
    for kind, granted in (("RoleBinding", role), ("ClusterRoleBinding", cluster_role)):
        binding = find(objects, kind)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": granted["kind"],
                                      "name": granted["metadata"]["name"]}
        assert binding["subjects"] == [account]


def test_shutdown_fits_in_the_grace_period():
    pod = _pod(rendered("default"))
    drain = float(_env(rendered("default"))["UPGRADE_GUARD_DRAIN"])
    assert 0 < drain <= 10
    assert pod["terminationGracePeriodSeconds"] > drain + GRACEFUL_TIMEOUT


def test_ports_line_up_from_webhook_to_container():
    objects = rendered("default")
    service = find(objects, "Service")
    (service_port,) = service["spec"]["ports"]
    (container_port,) = _pod(objects)["containers"][0]["ports"]
    assert service_port["targetPort"] == container_port["name"]
    assert _env(objects)["UPGRADE_GUARD_BIND"].endswith(f":{container_port['containerPort']}")
    assert service["spec"]["selector"] == find(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    policy = find(objects, "NetworkPolicy")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": container_port["containerPort"], "protocol": "TCP"}]}]
    assert policy["spec"]["podSelector"] == find(objects, "Deployment")["spec"]["selector"]
    for kind in WEBHOOK_KINDS:
        reference = find(objects, kind)["webhooks"][0]["clientConfig"]["service"]
        assert (reference["name"], reference["namespace"], reference["port"]) == (
            service["metadata"]["name"], service["metadata"]["namespace"], service_port["port"])


@pytest.mark.parametrize("kind", WEBHOOK_KINDS)
def test_webhooks_are_narrow_and_fail_closed(kind):
    (webhook,) = find(rendered("default"), kind)["webhooks"]
    assert webhook["rules"] == [{"operations": ["UPDATE"], "apiGroups": ["harvesterhci.io"],
                                 "apiVersions": ["v1beta1"], "resources": ["upgrades"], "scope": "Namespaced"}]
    assert webhook["matchPolicy"] == "Equivalent" and webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"] and webhook["timeoutSeconds"] <= 5
    assert webhook["failurePolicy"] == "Fail"
    assert [c["name"] for c in webhook["matchConditions"]] == ["not-exempt-writer", "read-message-label-changed"]
    assert "caBundle" not in webhook["clientConfig"], "the CA comes from the install, never from the repository"
    if kind == "MutatingWebhookConfiguration":
        assert webhook["reinvocationPolicy"] == "Never"  # tests/apiserver.py does not model reinvocation


def _config_the_guard_reads(env: dict[str, str], strict: bool = False) -> Config:
    """Exactly what `upgrade-guard serve` makes of the Deployment's environment."""
    args = argparse.Namespace(**{s.dest: None for s in DECISION + SERVE})
    values = resolve(DECISION, args, environ=env)
    assert values["strict"] is strict
    return decision_config(values)


@pytest.mark.parametrize("config", [
    Config(),
    Config(label="example.com/seen", exempt_users=frozenset({"a", "b"}), exempt_groups=frozenset({"ops"}),
           protected=(FieldPath.parse("status"), FieldPath.parse("/metadata/annotations/example.com~1keep"))),
    Config(exempt_users=frozenset()),
], ids=["defaults", "custom", "nobody exempt"])
def test_the_guard_and_the_cel_read_the_same_settings(config):
    files = manifests.tree(config)
    env = {e["name"]: e["value"] for e in files["base/deployment.yaml"][0]["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    assert _config_the_guard_reads(env) == config
    conditions = files["base/validatingwebhookconfiguration.yaml"][0]["webhooks"][0]["matchConditions"]
    text = "\n".join(c["expression"] for c in conditions)
    assert f'"{config.label}"' in text
    for name in config.exempt_users | config.exempt_groups:
        assert f'"{name}"' in text


def test_strict_overlay_switches_both_the_guard_and_the_cel():
    objects = rendered("strict")
    assert _config_the_guard_reads(_env(objects), strict=True).strict
    for kind in WEBHOOK_KINDS:
        (webhook,) = find(objects, kind)["webhooks"]
        assert [c["name"] for c in webhook["matchConditions"]] == ["not-exempt-writer", "protected-field-changed"]
        assert webhook["failurePolicy"] == "Fail"


def test_legacy_overlay_has_no_match_conditions_and_fails_open():
    objects = rendered("legacy")
    for kind in WEBHOOK_KINDS:
        (webhook,) = find(objects, kind)["webhooks"]
        assert "matchConditions" not in webhook and webhook["failurePolicy"] == "Ignore"
    assert "unhealthyPodEvictionPolicy" not in find(objects, "PodDisruptionBudget")["spec"]


def test_cert_manager_overlay_injects_the_ca_of_the_mounted_certificate():
    objects = rendered("cert-manager")
    secret = [v for v in _pod(objects)["volumes"] if "secret" in v][0]["secret"]["secretName"]
    for kind in WEBHOOK_KINDS:
        source = find(objects, kind)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        namespace, name = source.split("/")
        (certificate,) = [o for o in objects if o["kind"] == "Certificate" and o["metadata"]["name"] == name
                          and o["metadata"]["namespace"] == namespace]
        assert certificate["spec"]["secretName"] == secret and SNI in certificate["spec"]["dnsNames"]
        issuer = [o for o in objects if o["kind"] == "Issuer"
                  and o["metadata"]["name"] == certificate["spec"]["issuerRef"]["name"]][0]
        assert "ca" in issuer["spec"], "the serving certificate comes from a CA that outlives it"


def test_policy_binding_denies_with_the_policy():
    objects = rendered("policy")
    policy, binding = find(objects, "ValidatingAdmissionPolicy"), find(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConditions"] == find(rendered("default"), WEBHOOK_KINDS[0])["webhooks"][0][
        "matchConditions"]


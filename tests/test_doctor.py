"""`doctor` and `register` against the in-test API, with a real guard (file mode) behind the Service."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from tests import objects
from tests.kubeapi import KubeApi
from tests.upgrades import finished_upgrade
from webhook import certs, cli
from webhook.cluster import connect
from webhook.doctor import diagnose

NS = objects.NAMESPACE
ADMISSION = "admissionregistration.k8s.io"
NAME = objects.CONFIGURATION


@pytest.fixture
def kube(tmp_path, guard, cert_dir):
    """An install done by hand: caBundle registered, one ready pod, which is the shared running guard."""
    with KubeApi(tmp_path) as api:
        bundle = base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode()
        for configuration in objects.configurations():
            configuration["webhooks"][0]["clientConfig"]["caBundle"] = bundle
            api.put(configuration)
        for document in (objects.service(), objects.pod("guard-a"), objects.endpoint_slice({"guard-a": True})):
            api.put(document)
        api.pod_ports[(NS, "guard-a", 8443)] = guard.port
        yield api


def doctor(kube: KubeApi, tmp_path, now: dt.datetime | None = None) -> tuple[int, str]:
    lines: list[str] = []
    code = diagnose(connect(str(kube.kubeconfig(tmp_path / "kubeconfig"))), NAME, NAME, lines.append, now)
    return code, "\n".join(lines)


def edit(kube: KubeApi, kind: str, change) -> None:
    found = kube.get(ADMISSION, f"{kind}webhookconfigurations", "", NAME)
    change(found)
    kube.put(found)


def test_a_healthy_install(kube, tmp_path):
    code, out = doctor(kube, tmp_path)
    assert code == 0, out
    assert "[FAIL]" not in out
    assert "[ ok ] ValidatingWebhookConfiguration upgrade-guard, webhook deny.upgrade-guard.harvesterhci.io: calls " \
           "harvester-system/upgrade-guard:443/validate; caBundle holds 1 CA(s)" in out
    assert "[ ok ] Service harvester-system/upgrade-guard has 1 ready endpoint(s): guard-a" in out
    assert "caBundle verifies pod guard-a's certificate for upgrade-guard.harvester-system.svc" in out
    assert "[ ok ] 0 Upgrade object(s), none with a wiped status" in out
    assert out.endswith("no problem found")


def test_a_caBundle_that_does_not_verify_the_served_certificate(kube, tmp_path):
    stranger = base64.b64encode(certs.make_ca().cert_pem).decode()
    edit(kube, "validating", lambda c: c["webhooks"][0]["clientConfig"].update(caBundle=stranger))
    code, out = doctor(kube, tmp_path)
    assert code == 1
    assert "[FAIL] ValidatingWebhookConfiguration upgrade-guard, webhook deny.upgrade-guard.harvesterhci.io: its " \
           "caBundle does not verify what pod guard-a serves for upgrade-guard.harvester-system.svc" in out
    assert "MutatingWebhookConfiguration upgrade-guard, webhook restore.upgrade-guard.harvesterhci.io: caBundle " \
           "verifies" in out
    assert out.endswith("1 problem(s) found")


def test_a_missing_caBundle(kube, tmp_path):
    edit(kube, "mutating", lambda c: c["webhooks"][0]["clientConfig"].pop("caBundle"))
    code, out = doctor(kube, tmp_path)
    assert code == 1 and "restore.upgrade-guard.harvesterhci.io: no usable caBundle" in out


def test_no_ready_endpoint(kube, tmp_path):
    kube.put(objects.endpoint_slice({"guard-a": False}))
    code, out = doctor(kube, tmp_path)
    assert code == 1
    assert "[FAIL] Service harvester-system/upgrade-guard has no ready endpoints (1 not ready): every call fails" in out


def test_a_missing_service_and_configuration(kube, tmp_path):
    kube.delete("", "services", NS, objects.SERVICE)
    kube.delete(ADMISSION, "mutatingwebhookconfigurations", "", NAME)
    code, out = doctor(kube, tmp_path)
    assert code == 1
    assert "[FAIL] MutatingWebhookConfiguration upgrade-guard not found" in out
    assert "[FAIL] Service harvester-system/upgrade-guard not found" in out


def test_a_pod_that_cannot_be_reached(kube, tmp_path):
    del kube.pod_ports[(NS, "guard-a", 8443)]
    code, out = doctor(kube, tmp_path)
    assert code == 1
    assert "[FAIL] pod guard-a: no TLS answer on port 8443: error forwarding port 8443 to pod guard-a" in out


def test_certificates_close_to_expiry(kube, tmp_path):
    code, out = doctor(kube, tmp_path, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=355))
    assert code == 1
    assert "[FAIL] pod guard-a serves CN=upgrade-guard expires" in out and "(10 days)" in out


def test_upgrades_whose_status_looks_wiped(kube, tmp_path):
    just_created = objects.without_status(finished_upgrade(name="hvst-upgrade-new"))
    just_created["metadata"]["labels"] = {}
    just_created["metadata"]["creationTimestamp"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    old_and_empty = objects.without_status(finished_upgrade(name="hvst-upgrade-old"))
    old_and_empty["metadata"]["labels"] = {"harvesterhci.io/upgradeState": "UpgradingNodes"}
    for upgrade in (finished_upgrade(), just_created, old_and_empty):
        kube.put(upgrade)
    code, out = doctor(kube, tmp_path)
    assert code == 1
    assert "[FAIL] Upgrade harvester-system/hvst-upgrade-old has no status at all" in out
    assert "hvst-upgrade-new" not in out and "hvst-upgrade-8fnwl" not in out


def test_the_api_unreachable_is_a_problem(kube, tmp_path):
    with kube.outage():
        code, out = doctor(kube, tmp_path)
    assert code == 1 and "[FAIL] the Kubernetes API: the Kubernetes API is unreachable" in out


def register(api: KubeApi, tmp_path, ca_file) -> int:
    return cli.main(["register", "--ca-file", str(ca_file), "--kubeconfig", str(api.kubeconfig(tmp_path / "kc"))])


def test_register_sets_both_caBundles(bare_api, tmp_path, cert_dir, capsys):
    assert register(bare_api, tmp_path, cert_dir / "ca.crt") == 0
    expected = base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode()
    for kind in ("validating", "mutating"):
        found = bare_api.get(ADMISSION, f"{kind}webhookconfigurations", "", NAME)
        assert [w["clientConfig"]["caBundle"] for w in found["webhooks"]] == [expected]
    assert capsys.readouterr().out.splitlines() == [
        "ValidatingWebhookConfiguration upgrade-guard: caBundle set on 1 webhook(s)",
        "MutatingWebhookConfiguration upgrade-guard: caBundle set on 1 webhook(s)"]
    assert register(bare_api, tmp_path, cert_dir / "ca.crt") == 0
    assert "already holds this CA" in capsys.readouterr().out


def test_register_without_a_configuration_fails(bare_api, tmp_path, cert_dir, capsys):
    bare_api.delete(ADMISSION, "mutatingwebhookconfigurations", "", NAME)
    assert register(bare_api, tmp_path, cert_dir / "ca.crt") == 1
    assert "MutatingWebhookConfiguration upgrade-guard: not found" in capsys.readouterr().out


def test_register_refuses_a_file_without_a_certificate(bare_api, tmp_path, cert_dir, capsys):
    assert register(bare_api, tmp_path, cert_dir / "ca.key") == 2
    assert "no PEM certificate" in capsys.readouterr().err
    assert bare_api.answered("GET", NAME) == []


def test_register_with_the_api_unreachable(bare_api, tmp_path, cert_dir, capsys):
    with bare_api.outage():
        assert register(bare_api, tmp_path, cert_dir / "ca.crt") == 1
    assert "unreachable" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["doctor"], ["register", "--ca-file", "ca.crt"]])
def test_an_unusable_kubeconfig_is_bad_input(tmp_path, command, capsys):
    (tmp_path / "ca.crt").write_bytes(certs.make_ca().cert_pem)
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    command = [str(tmp_path / part) if part == "ca.crt" else part for part in command]
    assert cli.main([*command, "--kubeconfig", str(tmp_path / "kubeconfig")]) == 2
    assert "no usable Kubernetes configuration" in capsys.readouterr().err

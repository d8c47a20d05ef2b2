"""End to end: two `serve --self-managed` replicas, `doctor` and `register`, against the in-test API.

The guards are real processes (gunicorn master + workers) that talk HTTPS to the in-test API with the
kubeconfig they are given; the apiserver's side is played by connections that trust exactly the caBundle
found in the webhook configurations, and `doctor` reaches the pods by port-forwarding through the API.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import objects
from tests.guard import ApiserverConnection, Guard, command
from tests.kubeapi import KubeApi
from tests.upgrades import dashboard_put, finished_upgrade, review

NS = objects.NAMESPACE
ADMISSION = "admissionregistration.k8s.io"
STORED = finished_upgrade()


def ca_bundle(kube: KubeApi, kind: str) -> bytes | None:
    found = kube.get(ADMISSION, f"{kind}webhookconfigurations", "", objects.CONFIGURATION)
    value = found and found["webhooks"][0]["clientConfig"].get("caBundle")
    return base64.b64decode(value) if value else None


def apiserver(kube: KubeApi, guard: Guard, tmp_path, kind: str = "validating") -> ApiserverConnection:
    """A connection that trusts what the apiserver trusts: the configuration's caBundle, nothing else."""
    trusted = tmp_path / f"{kind}-bundle.pem"
    trusted.write_bytes(ca_bundle(kube, kind))
    return ApiserverConnection(guard.port, trusted)


def wait_for(condition, timeout: float = 20, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*command(), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The API with the configurations, the Service, and two replicas started at the same moment."""
    tmp = tmp_path_factory.mktemp("cluster")
    with KubeApi(tmp) as kube:
        for document in [*objects.configurations(), objects.service(), objects.pod("guard-a"), objects.pod("guard-b"),
                         objects.endpoint_slice({"guard-a": True, "guard-b": True})]:
            kube.put(document)
        kubeconfig = kube.kubeconfig(tmp / "kubeconfig")
        guards = [Guard(tmp / name, "--self-managed", "--kubeconfig", str(kubeconfig), "--replica-name", name,
                        "--namespace", NS, "--workers", "1", "--sync-interval", "0.5")
                  for name in ("guard-a", "guard-b")]
        starting = [threading.Thread(target=g.start) for g in guards]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join(60)
        try:
            assert all(g.port for g in guards), "\n".join(guards[0].lines + guards[1].lines)
            for name, guard in zip(("guard-a", "guard-b"), guards):
                kube.pod_ports[(NS, name, 8443)] = guard.port
            yield kube, guards, kubeconfig, tmp
        finally:
            for guard in guards:
                guard.stop()


def test_replicas_started_together_serve_one_certificate_the_apiserver_trusts(cluster):
    kube, guards, _, tmp = cluster
    assert sorted(kube.answered("POST", "/secrets"))[:2] == [201, 201]  # one CA Secret, one serving Secret
    assert ca_bundle(kube, "validating") == ca_bundle(kube, "mutating")
    served = set()
    for guard in guards:
        connection = apiserver(kube, guard, tmp)
        status, _, answer = connection.review("/validate", review(STORED, dashboard_put(STORED)))
        assert status == 200 and answer["response"]["allowed"] is False
        served.add(connection.sock.getpeercert(binary_form=True))
        connection.close()
    assert len(served) == 1


def test_doctor_finds_nothing_wrong(cluster):
    _, _, kubeconfig, _ = cluster
    result = run("doctor", "--kubeconfig", str(kubeconfig))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[ ok ] pod guard-a serves CN=upgrade-guard" in out and "[ ok ] pod guard-b serves" in out
    assert out.count("caBundle verifies pod") == 4  # two configurations x two pods
    assert "2 ready endpoint(s)" in out and out.rstrip().endswith("no problem found")


def test_configuration_deleted_by_hand_is_reported_and_restored(cluster):
    kube, _, kubeconfig, _ = cluster
    kube.delete(ADMISSION, "mutatingwebhookconfigurations", "", objects.CONFIGURATION)
    result = run("doctor", "--kubeconfig", str(kubeconfig))
    assert result.returncode == 1
    assert "[FAIL] MutatingWebhookConfiguration upgrade-guard not found" in result.stdout
    kube.put(objects.configurations()[1])  # re-applied from the manifests: no caBundle
    wait_for(lambda: ca_bundle(kube, "mutating") == ca_bundle(kube, "validating"))
    assert run("doctor", "--kubeconfig", str(kubeconfig)).returncode == 0


def test_a_wiped_upgrade_is_a_problem(cluster):
    kube, guards, kubeconfig, _ = cluster
    wiped = objects.without_status(finished_upgrade(name="hvst-upgrade-wiped"))
    kube.put(wiped)
    kube.put(finished_upgrade(name="hvst-upgrade-fine"))
    try:
        result = run("doctor", "--kubeconfig", str(kubeconfig))
        assert result.returncode == 1
        assert ("[FAIL] Upgrade harvester-system/hvst-upgrade-wiped labelled harvesterhci.io/upgradeState=Succeeded "
                "but has no Completed condition: its status looks wiped") in result.stdout
        assert "hvst-upgrade-fine" not in result.stdout
    finally:
        kube.delete("harvesterhci.io", "upgrades", NS, "hvst-upgrade-wiped")


def test_api_unreachable_for_a_while_the_guards_keep_serving(cluster):
    kube, guards, _, tmp = cluster
    connections = [apiserver(kube, guard, tmp) for guard in guards]
    with kube.outage():
        dropped = kube.dropped
        wait_for(lambda: kube.dropped >= dropped + 4)  # both keepers failed rounds (and retried)
        for guard, connection in zip(guards, connections):
            status, _, answer = connection.review("/mutate", review(STORED, dashboard_put(STORED)))
            assert status == 200 and answer["response"]["patchType"] == "JSONPatch"
            assert connection.get("/readyz")[0] == 200
            assert any("certificate sync failed; serving the certificate already in place" in line
                       for line in guard.lines)
    for guard in guards:
        wait_for(lambda: any("certificate sync works again" in line for line in guard.lines))
    for connection in connections:
        connection.close()


def test_a_worker_respawned_beside_the_keeper_thread_serves(cluster):
    """gunicorn forks a new worker while the keeper thread runs rounds every 0.5 s: the fork guard holds."""
    kube, guards, _, tmp = cluster
    guard = guards[0]

    def workers() -> set[str]:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and fields[1] == str(guard.process.pid):
                found.add(stat.parent.name)
        return found
    for _ in range(3):
        current = workers()
        assert len(current) == 1
        old = current.pop()
        os.kill(int(old), signal.SIGKILL)
        wait_for(lambda: (lambda now: len(now) == 1 and old not in now)(workers()))
        connection = apiserver(kube, guard, tmp)  # waits in the listen backlog until the new worker accepts
        status, _, answer = connection.review("/validate", review(STORED, dashboard_put(STORED)))
        assert status == 200 and answer["response"]["allowed"] is False
        connection.close()


@pytest.mark.parametrize("args, message", [
    (["--kubeconfig", "/nonexistent/kubeconfig"], "no usable Kubernetes configuration"),
    (["--dev"], "--dev and --self-managed exclude each other"),
])
def test_self_managed_refuses_to_start_without_what_it_needs(tmp_path, args, message):
    result = run("serve", "--self-managed", "--cert-dir", str(tmp_path), "--bind", "127.0.0.1:0", *args)
    assert result.returncode == 2 and message in result.stderr

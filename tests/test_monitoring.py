"""manifests/overlays/monitoring: the ServiceMonitor finds the guard, and the alerts fire when they should."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml

from webhook import certs

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "manifests" / "overlays" / "monitoring"
DOCS = ROOT / "docs" / "observability.md"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "monitoring" / "alerts.promtool.yaml"
# Series that come from elsewhere than the guard: the apiserver, and Prometheus itself.
FOREIGN = {"up", "apiserver_admission_webhook_rejection_count", "apiserver_admission_webhook_fail_open_count"}


def load(name: str) -> dict:
    return yaml.safe_load((OVERLAY / name).read_text())


def rules() -> list[dict]:
    return [rule for group in load("prometheusrule.yaml")["spec"]["groups"] for rule in group["rules"]]


def selectors(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(\w+)` \|", DOCS.read_text(), re.MULTILINE))


def test_kustomization_holds_only_the_monitoring_objects():
    """Applied beside any install variant; a base of ../../ would be a cycle kustomize refuses."""
    assert load("kustomization.yaml")["resources"] == ["servicemonitor.yaml", "prometheusrule.yaml"]


def test_service_monitor_scrapes_metrics_over_verified_tls():
    monitor = load("servicemonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == certs.NAMESPACE
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [certs.NAMESPACE]}
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": certs.SERVICE}
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    assert endpoint["tlsConfig"]["serverName"] == f"{certs.SERVICE}.{certs.NAMESPACE}.svc"
    assert "insecureSkipVerify" not in endpoint["tlsConfig"]


def test_every_alert_parses_uses_served_metrics_and_explains_itself():
    rule = load("prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    served = documented_metrics()  # tests/test_observability.py checks these against a running guard
    alerts = rules()
    assert {a["alert"] for a in alerts} >= {"UpgradeGuardCertificateExpiresSoon", "UpgradeGuardErrors",
                                            "UpgradeGuardActed"}
    for alert in alerts:
        names = selectors(alert["expr"])
        assert names and names <= served | FOREIGN, (alert["alert"], names - served - FOREIGN)
        assert alert["labels"]["severity"] in ("info", "warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert {a["alert"]: a["labels"]["severity"] for a in alerts}["UpgradeGuardActed"] == "info"


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("UPGRADE_GUARD_PROMTOOL") != "1" or not shutil.which("apt-get"):
        pytest.skip("promtool is not installed; UPGRADE_GUARD_PROMTOOL=1 installs Debian's prometheus package")
    for step in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]):
        subprocess.run(step, check=True, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       timeout=300)
    return shutil.which("promtool") or pytest.fail("prometheus was installed without promtool")


def test_alerts_fire_when_they_should(tmp_path):
    """promtool: the rules check (templates included), then the unit tests (annotations left out)."""
    tool = promtool()
    spec = load("prometheusrule.yaml")["spec"]
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(spec))
    checked = subprocess.run([tool, "check", "rules", str(tmp_path / "full.yaml")], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(PROMTOOL_TESTS, tmp_path)
    tested = subprocess.run([tool, "test", "rules", PROMTOOL_TESTS.name], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return [o for o in yaml.safe_load_all(rendered.stdout) if o]


def test_overlay_renders():
    objects = kustomize(OVERLAY)
    assert sorted(o["kind"] for o in objects) == ["PrometheusRule", "ServiceMonitor"]
    assert {o["metadata"]["namespace"] for o in objects} == {certs.NAMESPACE}


def test_service_monitor_selects_the_installed_service():
    """Against the plain install's rendered Service: exactly one selected, with the port the monitor names."""
    if not (ROOT / "manifests" / "kustomization.yaml").exists():
        pytest.skip("manifests/ has no kustomization yet")
    monitor = load("servicemonitor.yaml")
    services = [o for o in kustomize(ROOT / "manifests") if o["kind"] == "Service"
                and o["metadata"].get("namespace") in monitor["spec"]["namespaceSelector"]["matchNames"]
                and monitor["spec"]["selector"]["matchLabels"].items() <= o["metadata"].get("labels", {}).items()]
    assert len(services) == 1, "the ServiceMonitor must select exactly the guard's Service"
    ports = {port.get("name") for port in services[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports

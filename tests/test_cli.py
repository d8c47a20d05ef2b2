"""The command line: `certs`, `check`, and `serve`'s settings, run as a user runs them."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import stat
import subprocess

import pytest
import yaml
from cryptography import x509

from tests.guard import command
from tests.upgrades import ADMIN, CONTROLLER, dashboard_put, finished_upgrade, kubectl_label
from webhook.settings import DECISION, SERVE

STORED = finished_upgrade()


def run(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*command(), *args], capture_output=True, text=True, timeout=60, env=env, **kwargs)


@pytest.fixture
def pair(tmp_path):
    def write(old, new, suffix=".yaml"):
        paths = tmp_path / f"old{suffix}", tmp_path / f"new{suffix}"
        for path, obj in zip(paths, (old, new)):
            path.write_text(yaml.safe_dump(obj) if isinstance(obj, dict) else obj)
        return [str(p) for p in paths]
    return write


def test_check_finds_the_dashboard_put(pair):
    result = run("check", *pair(STORED, dashboard_put(STORED)), "--user", ADMIN)
    assert result.returncode == 1, result.stderr
    assert "violation" in result.stdout and "status: 7 conditions" in result.stdout
    patch = json.loads(result.stdout[result.stdout.index("["):])
    assert [op["path"] for op in patch] == ["/status", "/metadata/finalizers"]


def test_check_allows_kubectl_label_and_exempt_writers(pair):
    assert run("check", *pair(STORED, kubectl_label(STORED))).returncode == 0
    assert run("check", *pair(STORED, dashboard_put(STORED)), "--user", CONTROLLER).returncode == 0
    assert run("check", *pair(STORED, dashboard_put(STORED)), "--group", "ops", "--exempt-group", "ops") \
        .returncode == 0


def test_check_reads_json_and_unquoted_timestamps(pair, tmp_path):
    old_yaml = yaml.safe_dump(STORED).replace("'2025-03-10T09:40:00Z'", "2025-03-10T09:40:00Z")
    assert "creationTimestamp: 2025-03-10T09:40:00Z" in old_yaml
    paths = pair(old_yaml, json.dumps(dashboard_put(STORED)))
    result = run("check", *paths)
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_check_strict_mode_and_settings_from_the_environment(pair):
    updating = finished_upgrade()
    updating["status"]["conditions"][0]["status"] = "Unknown"
    paths = pair(STORED, updating)
    assert run("check", *paths).returncode == 0
    assert run("check", *paths, "--strict").returncode == 1
    assert run("check", *paths, env={**os.environ, "UPGRADE_GUARD_STRICT": "yes"}).returncode == 1
    assert run("check", *paths, env={**os.environ, "UPGRADE_GUARD_STRICT": "maybe"}).returncode == 2


@pytest.mark.parametrize("bad", [
    ("{not: yaml: [",), ("- a list\n",), ("",),
])
def test_check_bad_input_is_exit_2(pair, bad):
    result = run("check", *pair(bad[0], dashboard_put(STORED)))
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.startswith("upgrade-guard:")


def test_check_missing_file_and_bad_setting_are_exit_2(pair, tmp_path):
    paths = pair(STORED, dashboard_put(STORED))
    assert run("check", str(tmp_path / "absent.yaml"), paths[1]).returncode == 2
    assert run("check", *paths, "--protect", "a..b").returncode == 2
    assert run("check", *paths, "--label", "").returncode == 2
    assert run("check", *paths, "--no-such-flag").returncode == 2


def test_certs_makes_a_ca_and_a_serving_certificate(tmp_path):
    result = run("certs", "--out", str(tmp_path), "--san", "10.0.0.7", "--san", "guard.example", "--days", "30")
    assert result.returncode == 0, result.stderr
    ca_pem = (tmp_path / "ca.crt").read_bytes()
    assert base64.b64decode(result.stdout.strip()) == ca_pem
    for key in ("ca.key", "tls.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(ca_pem)
    served = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "upgrade-guard", "upgrade-guard.harvester-system", "upgrade-guard.harvester-system.svc",
        "upgrade-guard.harvester-system.svc.cluster.local", "guard.example"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    served.verify_directly_issued_by(ca)
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = served.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert ski == aki
    assert (served.not_valid_after_utc - served.not_valid_before_utc).days in (29, 30)


def test_each_ca_has_its_own_subject(tmp_path):
    run("certs", "--out", str(tmp_path / "a"))
    run("certs", "--out", str(tmp_path / "b"), "--service", "guard", "--namespace", "other")
    subjects = {x509.load_pem_x509_certificate((tmp_path / d / "ca.crt").read_bytes()).subject for d in "ab"}
    assert len(subjects) == 2
    served = x509.load_pem_x509_certificate((tmp_path / "b" / "tls.crt").read_bytes())
    dns = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "guard.other.svc" in dns.get_values_for_type(x509.DNSName)


def test_serve_without_certificates_says_how_to_get_them(tmp_path):
    result = run("serve", "--cert-dir", str(tmp_path / "none"), "--bind", "127.0.0.1:0")
    assert result.returncode == 2 and "--dev" in result.stderr


def test_serve_refuses_a_bad_setting_before_starting(tmp_path):
    result = run("serve", "--cert-dir", str(tmp_path), env={**os.environ, "UPGRADE_GUARD_WORKERS": "zero"})
    assert result.returncode == 2 and "UPGRADE_GUARD_WORKERS" in result.stderr


def test_help_documents_every_setting_and_its_variable():
    text = " ".join(run("serve", "--help").stdout.split())
    for setting in SERVE + DECISION:
        assert setting.flag in text and setting.env in text

"""--client-ca: the webhooks answer only the apiserver's verified client certificate; probes need none."""

from __future__ import annotations

import datetime as dt
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.figures import FIGURES
from tests.guard import Guard
from tests.upgrades import dashboard_put, finished_upgrade, review
from webhook import certs

STORED = finished_upgrade()


def client_certificate(ca: certs.Pair, directory, name: str = "kube-apiserver") -> tuple[str, str]:
    """A client certificate as a cluster's PKI issues the apiserver's (clientAuth), written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    pair = certs.Pair(cert, key)
    (directory / f"{name}.crt").write_bytes(pair.cert_pem)
    (directory / f"{name}.key").write_bytes(pair.key_pem)
    return str(directory / f"{name}.crt"), str(directory / f"{name}.key")


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("client-pki")
    ca = certs.make_ca()
    (directory / "client-ca.crt").write_bytes(ca.cert_pem)
    stranger = certs.make_ca()
    return {"ca_file": directory / "client-ca.crt",
            "apiserver": client_certificate(ca, directory),
            "stranger": client_certificate(stranger, directory, "stranger")}


@pytest.fixture(scope="module")
def verifying_guard(cert_dir, client_pki):
    with Guard(cert_dir, "--workers", "1", "--client-ca", str(client_pki["ca_file"])) as running:
        yield running


def test_webhooks_answer_the_apiserver_certificate(verifying_guard, client_pki):
    connection = verifying_guard.connect(client_cert=client_pki["apiserver"])
    for path in ("/validate", "/mutate"):
        status, _, answer = connection.review(path, review(STORED, dashboard_put(STORED)))
        assert status == 200 and answer["kind"] == "AdmissionReview"
    connection.close()
    FIGURES.add("client-ca cases", "apiserver certificate")


@pytest.mark.parametrize("path", ["/validate", "/mutate"])
def test_webhooks_refuse_a_client_without_certificate(verifying_guard, path):
    connection = verifying_guard.connect()
    status, _, answer = connection.review(path, review(STORED, dashboard_put(STORED)))
    assert status == 401 and answer["kind"] == "Status" and answer["reason"] == "Unauthorized"
    connection.close()
    FIGURES.add("client-ca cases", f"no certificate on {path}")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_need_no_certificate(verifying_guard, path):
    connection = verifying_guard.connect()
    status, body = connection.get(path)
    assert status == 200
    if path == "/metrics":
        assert b"upgrade_guard_reviews_total" in body
    connection.close()
    FIGURES.add("client-ca cases", f"probe {path}")


def test_a_certificate_from_another_ca_fails_the_handshake(verifying_guard, client_pki):
    connection = verifying_guard.connect(client_cert=client_pki["stranger"])
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        connection.review("/validate", review(STORED, dashboard_put(STORED)))
    connection.close()
    # and the guard goes on serving
    assert verifying_guard.connect(client_cert=client_pki["apiserver"]).get("/healthz")[0] == 200
    FIGURES.add("client-ca cases", "certificate from another CA")


def test_without_client_ca_no_certificate_is_needed(guard, client_pki):
    for client_cert in (None, client_pki["stranger"]):
        connection = guard.connect(client_cert=client_cert)
        status, _, answer = connection.review("/validate", review(STORED, dashboard_put(STORED)))
        assert status == 200 and answer["response"]["allowed"] is False
        connection.close()
    FIGURES.add("client-ca cases", "no --client-ca")


def test_a_missing_client_ca_file_stops_serve(cert_dir, tmp_path):
    from webhook.cli import main

    assert main(["serve", "--cert-dir", str(cert_dir), "--client-ca", str(tmp_path / "absent.crt")]) == 2


def test_a_rotated_client_ca_is_trusted_without_a_restart(cert_dir, tmp_path):
    """The cluster's client CA changes (a new apiserver PKI): the file is replaced, and new connections are
    verified against the new CA within seconds; certificates of the old one no longer pass. No restart."""
    old, new = certs.make_ca(), certs.make_ca()
    ca_file = tmp_path / "client-ca.crt"
    ca_file.write_bytes(old.cert_pem)
    issued = {"old": client_certificate(old, tmp_path, "old-apiserver"),
              "new": client_certificate(new, tmp_path, "new-apiserver")}

    def answers(which: str) -> bool:
        connection = running.connect(client_cert=issued[which])
        try:
            status, _, _ = connection.review("/validate", review(STORED, dashboard_put(STORED)))
            return status == 200
        except (ssl.SSLError, ConnectionResetError):
            return False
        finally:
            connection.close()

    with Guard(cert_dir, "--workers", "1", "--client-ca", str(ca_file)) as running:
        assert answers("old") and not answers("new")
        staged = tmp_path / "client-ca.crt.new"
        staged.write_bytes(new.cert_pem)
        staged.replace(ca_file)  # swapped at once, as kubelet swaps a mounted ConfigMap
        deadline = time.monotonic() + 10
        while not answers("new"):
            assert time.monotonic() < deadline, "the new client CA was not trusted within 10 s"
            time.sleep(0.2)
        assert not answers("old")
    FIGURES.add("client-ca cases", "client CA rotated without a restart")

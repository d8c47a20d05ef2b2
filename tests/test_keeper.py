"""Self-managed certificates against the in-test Kubernetes API: the real `kubernetes` client, real HTTPS,
real 404/409/conflict answers. Rounds are driven one by one with a clock the test moves; the invariant
checked after every step is the one that keeps the cluster up: the certificate every replica serves
verifies against the caBundle of both webhook configurations.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading

import pytest
from cryptography import x509
from cryptography.x509 import verification

from tests import objects
from tests.kubeapi import KubeApi
from webhook import certdir, certs
from webhook.cluster import connect, set_ca_bundle
from webhook.keeper import SERVED_BY, CertificateKeeper, Plan, read_authority

NS = objects.NAMESPACE
HOST = "upgrade-guard.harvester-system.svc"
ADMISSION = "admissionregistration.k8s.io"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"


class Clock:
    def __init__(self):
        self.now = dt.datetime.now(dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def kube(bare_api):
    return bare_api


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def replica(kube, tmp_path, clock):
    """A replica's keeper: its own client, its own cert dir, the shared API and clock."""
    kubeconfig = str(kube.kubeconfig(tmp_path / "kubeconfig"))

    def make(name: str, **plan) -> CertificateKeeper:
        plan = Plan(cert_dir=tmp_path / name, namespace=NS, replica=name, **plan)
        return CertificateKeeper(connect(kubeconfig), plan, clock)
    return make


def configuration(kube: KubeApi, kind: str) -> dict | None:
    return kube.get(ADMISSION, f"{kind}webhookconfigurations", "", objects.CONFIGURATION)


def bundle(kube: KubeApi, kind: str) -> list[x509.Certificate]:
    found = {w["clientConfig"].get("caBundle") for w in configuration(kube, kind)["webhooks"]}
    assert len(found) == 1 and None not in found, found
    return certs.load_certificates(base64.b64decode(found.pop()))


def secret(kube: KubeApi, name: str) -> dict | None:
    return kube.get("", "secrets", NS, name)


def served(keeper: CertificateKeeper) -> x509.Certificate:
    return x509.load_pem_x509_certificate((keeper.plan.cert_dir / "tls.crt").read_bytes())


def assert_trusted(kube: KubeApi, keepers: list[CertificateKeeper], now: dt.datetime) -> None:
    """What the apiserver does with each replica: verify its certificate for the Service name by the caBundle."""
    for kind in ("validating", "mutating"):
        store = verification.Store(bundle(kube, kind))
        verifier = verification.PolicyBuilder().store(store).time(now).build_server_verifier(verification.DNSName(HOST))
        for keeper in keepers:
            verifier.verify(served(keeper), [])


def test_first_replica_creates_the_secrets_files_and_caBundle(kube, replica, clock):
    keeper = replica("guard-a")
    keeper.sync()
    ca, tls = secret(kube, "upgrade-guard-ca"), secret(kube, "upgrade-guard-tls")
    assert ca["type"] == "Opaque" and set(ca["data"]) == {"ca.crt", "ca.key"}
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    authority = read_authority(ca)
    assert bundle(kube, "validating") == bundle(kube, "mutating") == [authority.ca.cert]
    assert_trusted(kube, [keeper], clock.now)
    cert = served(keeper)
    assert certs.names_of(cert) >= set(certs.service_names())
    assert round(certs.days_left(cert, clock.now)) == 365
    assert (keeper.plan.cert_dir / "tls.key").stat().st_mode & 0o777 == 0o600
    assert json.loads(tls["metadata"]["annotations"][SERVED_BY])["guard-a"]["cert"] == certs.fingerprint(cert)
    patches = [r for r in kube.requests if r[0] == "PATCH"]
    assert {r[2] for r in patches} == {"application/strategic-merge-patch+json"} and len(patches) == 2


def test_a_second_round_writes_nothing(kube, replica):
    keeper = replica("guard-a")
    keeper.sync()
    before = len(kube.requests)
    keeper.sync()
    assert {r[0] for r in kube.requests[before:]} == {"GET"}


def test_two_replicas_bootstrapping_at_once_converge_on_one_ca(kube, replica, clock):
    a, b = replica("guard-a"), replica("guard-b")
    # Both read "not found" before either creates: the race the API must settle.
    kube.gate("GET", f"{SECRETS}/upgrade-guard-ca", 2)
    kube.gate("GET", f"{SECRETS}/upgrade-guard-tls", 2)
    errors = []

    def run(keeper):
        try:
            keeper.sync()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=run, args=(k,)) for k in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    creates = kube.answered("POST", "/secrets")
    assert creates.count(201) == 2 and 409 in creates, kube.requests  # one winner per Secret, the loser adopted it
    assert served(a) == served(b)
    assert_trusted(kube, [a, b], clock.now)
    a.sync(), b.sync()  # a report that lost a race lands in the next round
    record = json.loads(secret(kube, "upgrade-guard-tls")["metadata"]["annotations"][SERVED_BY])
    assert set(record) == {"guard-a", "guard-b"}


def test_existing_secrets_are_adopted(kube, replica):
    ca = certs.make_ca()
    serving = certs.make_serving(ca, certs.service_names(), 90)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    kube.put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "upgrade-guard-ca", "namespace": NS},
              "data": {"ca.crt": b64(ca.cert_pem), "ca.key": b64(ca.key_pem), "note": b64(b"kept")}})
    kube.put({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "upgrade-guard-tls", "namespace": NS},
              "data": {"tls.crt": b64(serving.cert_pem), "tls.key": b64(serving.key_pem), "ca.crt": b64(ca.cert_pem)}})
    keeper = replica("guard-a")
    keeper.sync()
    assert kube.answered("POST", "/secrets") == []
    assert served(keeper) == serving.cert
    assert bundle(kube, "validating") == [ca.cert]
    assert secret(kube, "upgrade-guard-ca")["data"]["note"] == b64(b"kept")


def test_an_unusable_ca_secret_is_replaced_in_place(kube, replica):
    kube.put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "upgrade-guard-ca", "namespace": NS, "labels": {"team": "x"}},
              "data": {"ca.crt": base64.b64encode(b"not a certificate").decode()}})
    keeper = replica("guard-a")
    keeper.sync()
    stored = secret(kube, "upgrade-guard-ca")
    assert read_authority(stored) is not None and stored["metadata"]["labels"] == {"team": "x"}
    assert kube.answered("PUT", "/secrets/upgrade-guard-ca")[0] == 200


def test_renewal_at_two_thirds_of_the_lifetime(kube, replica, clock):
    a, b = replica("guard-a"), replica("guard-b")
    a.sync(), b.sync()
    first = served(a)
    clock.advance(days=240)
    a.sync()
    assert served(a) == first, "renewed too early"
    clock.advance(days=5)  # past 2/3 of 365 days
    a.sync()
    renewed = served(a)
    assert renewed != first and certs.days_left(renewed, clock.now) > 360
    assert read_authority(secret(kube, "upgrade-guard-ca")).ca.cert.issuer == renewed.issuer  # same CA
    b.sync()
    assert served(b) == renewed
    assert_trusted(kube, [a, b], clock.now)


def test_ca_rotation_keeps_old_and_new_until_every_replica_serves_the_new(kube, replica, clock):
    a, b = replica("guard-a", ca_days=30, cert_days=10), replica("guard-b", ca_days=30, cert_days=10)
    a.sync(), b.sync()
    old_ca = read_authority(secret(kube, "upgrade-guard-ca")).ca.cert
    for days in (7, 7):  # the serving certificate is renewed twice on the way
        clock.advance(days=days)
        a.sync(), b.sync()
        assert_trusted(kube, [a, b], clock.now)
    assert read_authority(secret(kube, "upgrade-guard-ca")).ca.cert == old_ca
    clock.advance(days=6.1)  # the CA is past 2/3 of its 30 days
    a.sync()  # rotation: a new CA, both in the caBundle, the certificates still from the old one
    new_ca = read_authority(secret(kube, "upgrade-guard-ca")).ca.cert
    assert new_ca != old_ca
    assert bundle(kube, "validating") == bundle(kube, "mutating") == [new_ca, old_ca]
    assert certs.issued_by(served(a), old_ca)
    b.sync()
    assert certs.issued_by(served(b), old_ca)
    assert_trusted(kube, [a, b], clock.now)

    clock.advance(seconds=121)  # the new CA has been in the caBundle for two rounds
    a.sync()  # a re-issues from the new CA; b still serves the old one, so the old CA stays
    assert certs.issued_by(served(a), new_ca) and certs.issued_by(served(b), old_ca)
    assert bundle(kube, "validating") == bundle(kube, "mutating") == [new_ca, old_ca]
    assert_trusted(kube, [a, b], clock.now)

    b.sync()  # b serves the new one too: now the old CA goes
    assert served(b) == served(a)
    assert bundle(kube, "validating") == bundle(kube, "mutating") == [new_ca]
    assert "previous-ca.crt" not in secret(kube, "upgrade-guard-ca")["data"]
    a.sync()
    assert_trusted(kube, [a, b], clock.now)
    assert base64.b64decode(secret(kube, "upgrade-guard-tls")["data"]["ca.crt"]) == certs.pem([new_ca])
    assert (a.plan.cert_dir / "ca.crt").read_bytes() == certs.pem([new_ca])


def test_a_replica_that_is_gone_stops_holding_the_old_ca_after_a_while(kube, replica, clock):
    a, gone = replica("guard-a", ca_days=30, cert_days=10), replica("guard-gone", ca_days=30, cert_days=10)
    for days in (0, 7, 7, 6.1):
        clock.advance(days=days)
        a.sync(), gone.sync()
    assert len(bundle(kube, "validating")) == 2  # rotated
    clock.advance(seconds=121)
    a.sync()
    assert len(bundle(kube, "validating")) == 2, "guard-gone still reports the old certificate"
    clock.advance(minutes=31)  # 30 rounds without a word from guard-gone: it is gone
    a.sync()
    assert len(bundle(kube, "validating")) == 1


def test_configuration_deleted_by_hand_and_restored(kube, replica, clock, caplog):
    keeper = replica("guard-a")
    keeper.sync()
    kube.delete(ADMISSION, "validatingwebhookconfigurations", "", objects.CONFIGURATION)
    keeper.sync()
    keeper.sync()
    assert [r.message for r in caplog.records].count(
        "webhook configuration not found; its caBundle is set once it exists") == 1
    kube.put(objects.configurations()[0])  # `kubectl apply -k` again: no caBundle in the manifests
    keeper.sync()
    assert bundle(kube, "validating") == bundle(kube, "mutating")
    assert_trusted(kube, [keeper], clock.now)


def test_api_unreachable_keeps_serving_what_it_has(kube, replica):
    keeper = replica("guard-a")
    keeper.sync()
    files = certdir.read(keeper.plan.cert_dir, ("tls.crt", "tls.key", "ca.crt"))
    with kube.outage():
        assert keeper.attempt() is False
        assert keeper.attempt() is False
        assert kube.dropped >= 2
    assert certdir.read(keeper.plan.cert_dir, ("tls.crt", "tls.key", "ca.crt")) == files
    assert keeper.attempt() is True


def test_bootstrap_waits_for_the_api_then_writes_the_files(kube, replica):
    keeper = replica("guard-a")
    with kube.outage():
        thread = threading.Thread(target=keeper.bootstrap, daemon=True)
        thread.start()
        while kube.dropped == 0 and thread.is_alive():
            thread.join(0.01)
        assert not keeper.have_files()
    thread.join(15)
    assert not thread.is_alive() and keeper.have_files()


def test_a_stale_resource_version_is_read_again(kube, replica):
    """Someone edits the configuration between our read and our patch: 409, read again, patch again."""
    cluster = replica("guard-a").cluster
    read = cluster.get_configuration

    def read_then_someone_edits(kind, name):
        found = read(kind, name)
        if len(kube.answered("PATCH", f"{kind}webhookconfigurations/{name}")) == 0:
            edited = configuration(kube, kind)
            edited["metadata"]["labels"]["edited"] = "by-hand"
            kube.put(edited)
        return found
    cluster.get_configuration = read_then_someone_edits
    assert set_ca_bundle(cluster, "validating", objects.CONFIGURATION, "QUJD") == 1
    assert kube.answered("PATCH", "validatingwebhookconfigurations/upgrade-guard") == [409, 200]
    stored = configuration(kube, "validating")
    assert stored["metadata"]["labels"]["edited"] == "by-hand"
    assert stored["webhooks"][0]["clientConfig"]["caBundle"] == "QUJD"
    assert stored["webhooks"][0]["clientConfig"]["service"]["path"] == "/validate"  # merged, not replaced


def test_the_loop_runs_in_a_thread_and_stops(kube, replica):
    keeper = replica("guard-a", interval=0.05)
    keeper.start()
    try:
        while not keeper.have_files():
            keeper._thread.join(0.01)
    finally:
        keeper.stop(10)
    assert not keeper._thread.is_alive()


def test_a_fork_waits_for_the_keeper_to_leave_the_api():
    """gunicorn forks workers from the master while the keeper thread may be mid-call: the fork waits."""
    from webhook.keeper import FORK_GUARD

    inside, leave = threading.Event(), threading.Event()

    def call_in_flight():
        with FORK_GUARD:
            inside.set()
            leave.wait(10)
    keeper_thread = threading.Thread(target=call_in_flight)
    keeper_thread.start()
    inside.wait(10)
    threading.Timer(0.2, leave.set).start()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert leave.is_set(), "forked while the keeper was inside an API call"
    os.waitpid(pid, 0)
    keeper_thread.join(10)

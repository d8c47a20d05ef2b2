"""`upgrade-guard doctor`: what an admin runs when something looks wrong. It only reads.

It checks what the apiserver depends on, the way the apiserver does it: both configurations exist and carry
a caBundle; that caBundle verifies the certificate each ready pod behind the Service really serves (reached
through the API with a port-forward, TLS with SNI `<service>.<namespace>.svc`, verified for that name);
the Service has ready endpoints; no certificate is expired or close to it. Then it lists Upgrade objects
whose status looks wiped. One line per finding; exit 1 when anything is a problem.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from dataclasses import dataclass, field
from typing import Callable

from cryptography import x509
from cryptography.x509 import verification

from webhook import certs
from webhook.cluster import KIND_NAMES, Cluster, ClusterError

EXPIRY_WARNING = 30  # days: a self-managed certificate is renewed long before; this close means renewal fails
WIPED_AFTER = dt.timedelta(minutes=10)  # a new Upgrade has no status until the controller's first pass
STATE_LABEL = "harvesterhci.io/upgradeState"


@dataclass
class Report:
    out: Callable[[str], None] = print
    problems: int = 0

    def ok(self, text: str) -> None:
        self.out(f"[ ok ] {text}")

    def note(self, text: str) -> None:
        self.out(f"[note] {text}")

    def problem(self, text: str, hint: str = "") -> None:
        self.problems += 1
        self.out(f"[FAIL] {text}")
        if hint:
            self.out(f"       {hint}")


@dataclass
class Target:
    """A Service port that webhooks call, and the caBundles they verify it with."""

    namespace: str
    name: str
    port: int
    bundles: dict[str, list[x509.Certificate]] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"{self.name}.{self.namespace}.svc"


def _days(cert: x509.Certificate, now: dt.datetime) -> str:
    return f"expires {cert.not_valid_after_utc:%Y-%m-%d} ({certs.days_left(cert, now):.0f} days)"


def _expiry(report: Report, what: str, cert: x509.Certificate, now: dt.datetime) -> bool:
    """A problem line when `cert` is expired or close to it; True when it is fine."""
    left = certs.days_left(cert, now)
    if left <= 0:
        report.problem(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    elif left < EXPIRY_WARNING:
        report.problem(f"{what} {_days(cert, now)}",
                       "self-managed: the guard renews at 2/3 of the lifetime, see its log; otherwise renew it now")
    return left >= EXPIRY_WARNING


def _configuration(report: Report, cluster: Cluster, kind: str, name: str, targets: dict, now: dt.datetime) -> None:
    label = f"{KIND_NAMES[kind]} {name}"
    found = cluster.get_configuration(kind, name)
    if found is None:
        report.problem(f"{label} not found: the apiserver does not call the guard through it",
                       "apply the manifests again (kubectl apply -k ...)")
        return
    webhooks = found.get("webhooks") or []
    if not webhooks:
        report.problem(f"{label} has no webhooks")
    for webhook in webhooks:
        what = f"{label}, webhook {webhook.get('name')}"
        client = webhook.get("clientConfig") or {}
        try:
            cas = certs.load_certificates(base64.b64decode(client.get("caBundle") or "", validate=True))
        except ValueError:
            report.problem(f"{what}: no usable caBundle, so every call fails TLS verification",
                           "self-managed: check the guard's log; manual install: upgrade-guard register --ca-file CA")
            cas = []
        fine = all([_expiry(report, f"{what}: caBundle CA {ca.subject.rfc4514_string()}", ca, now) for ca in cas])
        service = client.get("service")
        if not service:
            report.note(f"{what} calls {client.get('url')} directly; only Service references are checked")
            continue
        key = (service.get("namespace"), service.get("name"), int(service.get("port") or 443))
        target = targets.setdefault(key, Target(*key))
        if cas:
            target.bundles[what] = cas
            if fine:
                report.ok(f"{what}: calls {target.namespace}/{target.name}:{target.port}{service.get('path') or ''}; "
                          f"caBundle holds {len(cas)} CA(s), the first {_days(cas[0], now)}")


def _endpoints(report: Report, cluster: Cluster, target: Target) -> list[tuple[str, int]]:
    """The ready pods behind the Service port, with the port they listen on."""
    where = f"Service {target.namespace}/{target.name}"
    service = cluster.get_service(target.namespace, target.name)
    if service is None:
        report.problem(f"{where} not found: calls fail", "apply the manifests again")
        return []
    port = next((p for p in (service.get("spec") or {}).get("ports") or [] if p.get("port") == target.port), None)
    if port is None:
        report.problem(f"{where} has no port {target.port}, which the webhooks call")
        return []
    ready, not_ready = [], 0
    for piece in cluster.endpoint_slices(target.namespace, target.name):
        number = next((p.get("port") for p in piece.get("ports") or [] if p.get("name", "") == port.get("name", "")),
                      None)
        for endpoint in piece.get("endpoints") or []:
            ref = endpoint.get("targetRef") or {}
            if (endpoint.get("conditions") or {}).get("ready") is False or number is None or ref.get("kind") != "Pod":
                not_ready += 1
            else:
                ready.append((ref.get("name"), number))
    if not ready:
        report.problem(f"{where} has no ready endpoints ({not_ready} not ready): every call fails",
                       f"kubectl -n {target.namespace} get pods,endpointslices -l app.kubernetes.io/name={target.name}")
    else:
        report.ok(f"{where} has {len(ready)} ready endpoint(s): {', '.join(pod for pod, _ in ready)}"
                  + (f" ({not_ready} not ready)" if not_ready else ""))
    return ready


def served_certificate(sock, host: str) -> x509.Certificate:
    """The certificate a TLS server presents to a client asking for `host` (SNI), over any socket-like object."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified below, against the caBundle, the way the apiserver does
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the connection closed during the TLS handshake") from None
            incoming.write(data)
    return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def verify(cert: x509.Certificate, cas: list[x509.Certificate], host: str, now: dt.datetime) -> str:
    """"" when `cas` verify `cert` for `host` at `now`, else why not."""
    if not any(certs.issued_by(cert, ca) for ca in cas):
        return f"it is signed by {cert.issuer.rfc4514_string()}, which is not among the caBundle's {len(cas)} CA(s)"
    store = verification.Store(cas)
    verifier = verification.PolicyBuilder().store(store).time(now).build_server_verifier(verification.DNSName(host))
    try:
        verifier.verify(cert, [])
    except verification.VerificationError as err:
        return str(err)
    return ""


def _served(report: Report, cluster: Cluster, target: Target, pod: str, port: int, now: dt.datetime) -> None:
    try:
        forward = cluster.port_forward(target.namespace, pod, port)
    except ClusterError as err:
        report.problem(f"pod {pod}: {err}",
                       "doctor reaches the pods through the API: it needs create on pods/portforward")
        return
    tunnel = forward.socket(port)
    tunnel.settimeout(10)
    try:
        cert = served_certificate(tunnel, target.host)
    except (OSError, ssl.SSLError, ValueError) as err:
        report.problem(f"pod {pod}: no TLS answer on port {port}: {forward.error(port) or err}")
        return
    finally:
        forward.close()
    what = f"pod {pod} serves {cert.subject.rfc4514_string()}"
    if _expiry(report, what, cert, now):
        report.ok(f"{what}, {_days(cert, now)}")
    for source, cas in target.bundles.items():
        why = verify(cert, cas, target.host, now)
        if why:
            report.problem(f"{source}: its caBundle does not verify what pod {pod} serves for {target.host}: {why}",
                           "the apiserver rejects every call to this pod; self-managed: see the guard's log; "
                           "manual: upgrade-guard register --ca-file CA")
        else:
            report.ok(f"{source}: caBundle verifies pod {pod}'s certificate for {target.host}")


def _upgrades(report: Report, cluster: Cluster, now: dt.datetime) -> None:
    upgrades = cluster.upgrades()
    if upgrades is None:
        report.note("no Upgrade resource (harvesterhci.io/v1beta1) in this cluster")
        return
    wiped = 0
    for upgrade in upgrades:
        meta = upgrade.get("metadata") or {}
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        status = upgrade.get("status")
        types = {c.get("type") for c in (status or {}).get("conditions") or [] if isinstance(c, dict)}
        state = (meta.get("labels") or {}).get(STATE_LABEL)
        try:
            age = now - dt.datetime.fromisoformat(str(meta.get("creationTimestamp")).replace("Z", "+00:00"))
        except ValueError:
            age = dt.timedelta(0)
        if state == "Succeeded" and "Completed" not in types:
            why = f"labelled {STATE_LABEL}=Succeeded but has no Completed condition"
        elif not status and age > WIPED_AFTER:
            why = f"has no status at all, {age.days} days after it was created"
        else:
            continue
        wiped += 1
        report.problem(f"Upgrade {name} {why}: its status looks wiped",
                       "the upgrade controller re-initialises such an Upgrade; see harvester/harvester#7791")
    if not wiped:
        report.ok(f"{len(upgrades)} Upgrade object(s), none with a wiped status")


def diagnose(cluster: Cluster, validating: str, mutating: str, out: Callable[[str], None] = print,
             now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.timezone.utc)
    report = Report(out)
    try:
        targets: dict[tuple, Target] = {}
        _configuration(report, cluster, "validating", validating, targets, now)
        _configuration(report, cluster, "mutating", mutating, targets, now)
        for target in targets.values():
            for pod, port in _endpoints(report, cluster, target):
                _served(report, cluster, target, pod, port, now)
        _upgrades(report, cluster, now)
    except ClusterError as err:
        report.problem(f"the Kubernetes API: {err}")
    out(f"{report.problems} problem(s) found" if report.problems else "no problem found")
    return 1 if report.problems else 0

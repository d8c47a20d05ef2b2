"""Self-managed certificates (`serve --self-managed`): a CA Secret and a serving Secret in the guard's
namespace, the files the server reads, and the caBundle of both webhook configurations.

Every replica runs the same idempotent round (`sync`); every write is a create or a PUT carrying the
resourceVersion it was computed from, so when replicas race exactly one write lands, the others get a 409,
read again and adopt what won. A round:

1. the CA: created when missing, adopted when present, replaced when unusable, rotated when 2/3 of its life
   has passed. Rotation keeps the old CA certificate in the Secret (`previous-ca.crt`): the caBundle holds
   both until every replica serves a certificate from the new one.
2. the caBundle (current + previous CA) patched into both webhook configurations, when they exist.
3. the serving certificate: issued when missing or unusable, renewed at 2/3 of its life, re-issued from
   the new CA once that CA has been in the caBundle for a while (two rounds, so the apiservers have it).
4. the files in the cert dir, swapped atomically (`webhook.certdir`); the workers reload them within 1 s.
5. this replica reports, in the serving Secret's `upgrade-guard/served-by` annotation, which certificate it
   serves; an entry not refreshed for 30 rounds belongs to a replica that is gone and no longer counts.
6. when every replica reports the certificate from the new CA, the old CA leaves the Secret and the
   caBundle.

Where the loop runs: a thread of the gunicorn master (`start`, from the `when_ready` hook). The master
serves no request, so a slow or unreachable API can never delay a review; the workers only read files.
It is one loop per pod whatever the worker count, it stops with the master, and there is no second
process to supervise (gunicorn's SIGCHLD handler reaps every child, so a sidecar-like child would need its
own supervisor). The price is that the master imports the `kubernetes` client before forking workers; in
file mode nothing here is imported. A thread in a process that forks could leave a worker holding a lock
it inherited mid-operation, so the keeper holds FORK_GUARD around every API call and key generation and
`os.fork` waits for it (at most one call, bounded by the client's timeouts).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography import x509

from webhook import certdir, certs
from webhook.cluster import KIND_NAMES, Cluster, ClusterError, Conflict, set_ca_bundle
from webhook.names import CA_SECRET, CONFIGURATION, NAMESPACE, SERVICE, TLS_SECRET
from webhook.tls import CERT_FILE, KEY_FILE

log = logging.getLogger("upgrade_guard.keeper")

CA_CERT, CA_KEY, PREVIOUS_CA, BUNDLE = "ca.crt", "ca.key", "previous-ca.crt", "ca.crt"
CA_SINCE = "upgrade-guard/ca-since"
SERVED_BY = "upgrade-guard/served-by"
LABELS = {"app.kubernetes.io/name": SERVICE, "app.kubernetes.io/managed-by": SERVICE}
ATTEMPTS = 5  # reads and writes per object in one round before giving up until the next one

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

FORK_GUARD = threading.Lock()
os.register_at_fork(before=FORK_GUARD.acquire, after_in_parent=FORK_GUARD.release,
                    after_in_child=FORK_GUARD.release)


def pod_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or NAMESPACE
    except OSError:
        return NAMESPACE


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Plan:
    """What to keep, and where."""

    cert_dir: Path
    namespace: str
    service: str = SERVICE
    ca_secret: str = CA_SECRET
    tls_secret: str = TLS_SECRET
    configurations: tuple[tuple[str, str], ...] = (("validating", CONFIGURATION), ("mutating", CONFIGURATION))
    ca_days: float = 3650
    cert_days: float = 365
    interval: float = 60
    replica: str = field(default_factory=socket.gethostname)

    @classmethod
    def from_settings(cls, values: dict, cert_dir: str | Path) -> Plan:
        """From the resolved SELF_MANAGED and CLUSTER settings."""
        return cls(cert_dir=Path(cert_dir), namespace=values["namespace"] or pod_namespace(),
                   service=values["service"], ca_secret=values["ca_secret"], tls_secret=values["tls_secret"],
                   configurations=(("validating", values["validating_configuration"]),
                                   ("mutating", values["mutating_configuration"])),
                   ca_days=values["ca_days"], cert_days=values["cert_days"], interval=values["sync_interval"],
                   replica=values["replica_name"] or socket.gethostname())

    @property
    def names(self) -> list[str]:
        return certs.service_names(self.service, self.namespace)

    @property
    def settle(self) -> dt.timedelta:
        """How long a new CA sits in the caBundle before certificates from it are served."""
        return dt.timedelta(seconds=2 * self.interval)

    @property
    def heartbeat(self) -> dt.timedelta:
        return dt.timedelta(seconds=10 * self.interval)

    @property
    def stale(self) -> dt.timedelta:
        return dt.timedelta(seconds=30 * self.interval)


@dataclass(frozen=True)
class Authority:
    """The CA that signs, and the CA certificates that are still trusted beside it."""

    ca: certs.Pair
    previous: tuple[x509.Certificate, ...]
    since: dt.datetime

    @property
    def bundle(self) -> bytes:
        return certs.pem([self.ca.cert, *self.previous])

    def trusts(self, cert: x509.Certificate) -> bool:
        return any(certs.issued_by(cert, ca) for ca in (self.ca.cert, *self.previous))


def _data(secret: dict | None, key: str) -> bytes:
    try:
        return base64.b64decode(((secret or {}).get("data") or {}).get(key) or "", validate=True)
    except ValueError:
        return b""


def _encode(content: bytes) -> str:
    return base64.b64encode(content).decode()


def _time(text: object) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def read_authority(secret: dict | None) -> Authority | None:
    """The CA a Secret holds (ours, or one we adopt: `ca.crt` and `ca.key`); None when it holds no usable one."""
    try:
        ca = certs.load_pair(_data(secret, CA_CERT), _data(secret, CA_KEY))
    except (ValueError, TypeError):
        return None
    if not _is_ca(ca.cert):
        return None
    try:
        previous = tuple(certs.load_certificates(_data(secret, PREVIOUS_CA))) if _data(secret, PREVIOUS_CA) else ()
    except ValueError:
        previous = ()
    since = ((secret or {}).get("metadata") or {}).get("annotations", {}).get(CA_SINCE)
    return Authority(ca, previous, _time(since) if since else ca.cert.not_valid_before_utc + certs.SKEW)


def served_by(secret: dict | None) -> dict[str, dict]:
    """The serving Secret's record of which replica serves which certificate (fingerprint) since when."""
    text = (((secret or {}).get("metadata") or {}).get("annotations") or {}).get(SERVED_BY) or "{}"
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return {k: v for k, v in record.items() if isinstance(v, dict)} if isinstance(record, dict) else {}


def serving_pair(secret: dict | None) -> certs.Pair | None:
    try:
        return certs.load_pair(_data(secret, CERT_FILE), _data(secret, KEY_FILE))
    except (ValueError, TypeError):
        return None


class CertificateKeeper:
    def __init__(self, cluster: Cluster, plan: Plan, clock: Callable[[], dt.datetime] = utc_now):
        self.cluster = cluster
        self.plan = plan
        self.clock = clock
        self._missing: set[tuple[str, str]] = set()
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round -------------------------------------------------------------------------------------

    def sync(self) -> None:
        """One round (see the module's docstring); raises ClusterError when the API fails midway."""
        now = self.clock()
        authority = self._authority(now)
        trusted_everywhere = self._publish(authority)
        settled = trusted_everywhere and now - authority.since >= self.plan.settle
        serving = self._serving(authority, settled, now)
        self._write(serving, authority)
        serving = self._report(serving, now)
        if self._retire(authority, serving, now):
            self.sync()

    def _authority(self, now: dt.datetime) -> Authority:
        plan = self.plan
        for _ in range(ATTEMPTS):
            secret = self.cluster.get_secret(plan.namespace, plan.ca_secret)
            current = read_authority(secret)
            wanted, why = self._next_authority(current, now)
            if not why:
                return current
            try:
                if secret is None:
                    self.cluster.create_secret(plan.namespace, self._ca_document(None, wanted))
                else:
                    self.cluster.replace_secret(plan.namespace, plan.ca_secret, self._ca_document(secret, wanted))
            except Conflict:
                continue  # another replica wrote first: read what won and judge again
            log.info("CA secret written", extra={"secret": plan.ca_secret, "reason": why,
                                                 "ca": wanted.ca.cert.subject.rfc4514_string(),
                                                 "not_after": wanted.ca.cert.not_valid_after_utc.isoformat(),
                                                 "trusted_cas": 1 + len(wanted.previous)})
            return wanted
        raise ClusterError(f"Secret {plan.ca_secret} kept changing under this replica")

    def _next_authority(self, current: Authority | None, now: dt.datetime) -> tuple[Authority | None, str]:
        """What the CA Secret should hold, and why it must change ("" when it is fine as it is)."""
        if current is None:
            return self._new_authority(now, ()), "no usable CA"
        if now >= current.ca.cert.not_valid_after_utc:
            return self._new_authority(now, ()), "the CA expired"
        if not current.previous and certs.renewal_due(current.ca.cert, now):
            return self._new_authority(now, (current.ca.cert,)), "CA rotation: 2/3 of its life has passed"
        alive = tuple(c for c in current.previous if c.not_valid_after_utc > now)
        if alive != current.previous:
            return Authority(current.ca, alive, current.since), "a previous CA expired"
        return current, ""

    def _new_authority(self, now: dt.datetime, previous: tuple[x509.Certificate, ...]) -> Authority:
        with FORK_GUARD:
            return Authority(certs.make_ca(self.plan.ca_days, start=now), previous, now)

    def _ca_document(self, secret: dict | None, authority: Authority) -> dict:
        document = copy.deepcopy(secret) if secret else {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": self.plan.ca_secret, "namespace": self.plan.namespace, "labels": LABELS},
        }
        data = dict(document.get("data") or {})
        data[CA_CERT] = _encode(authority.ca.cert_pem)
        data[CA_KEY] = _encode(authority.ca.key_pem)
        if authority.previous:
            data[PREVIOUS_CA] = _encode(certs.pem(list(authority.previous)))
        else:
            data.pop(PREVIOUS_CA, None)
        document["data"] = data
        annotations = document["metadata"].get("annotations") or {}
        document["metadata"]["annotations"] = {**annotations, CA_SINCE: authority.since.isoformat()}
        return document

    def _publish(self, authority: Authority) -> bool:
        """Patch the caBundle into the configurations that exist; True when none refused it."""
        bundle = _encode(authority.bundle)
        everywhere = True
        for kind, name in self.plan.configurations:
            try:
                changed = set_ca_bundle(self.cluster, kind, name, bundle)
            except Conflict as err:
                log.warning("caBundle not set this round", extra={"error": str(err)})
                everywhere = False
                continue
            if changed is None:
                if (kind, name) not in self._missing:
                    log.warning("webhook configuration not found; its caBundle is set once it exists",
                                extra={"configuration": f"{KIND_NAMES[kind]}/{name}"})
                self._missing.add((kind, name))
                continue
            self._missing.discard((kind, name))
            if changed:
                log.info("caBundle set", extra={"configuration": f"{KIND_NAMES[kind]}/{name}", "webhooks": changed,
                                                "trusted_cas": 1 + len(authority.previous)})
        return everywhere

    def _serving_problem(self, secret: dict | None, authority: Authority, settled: bool,
                         now: dt.datetime) -> str:
        """Why the serving certificate must be re-issued; "" to keep it.

        Only a missing, broken, expired or untrusted one is re-issued from a CA that has not `settled` (been
        in every caBundle for a while); anything else waits for it.
        """
        pair = serving_pair(secret)
        if pair is None:
            return "no usable serving certificate"
        if now >= pair.cert.not_valid_after_utc or not authority.trusts(pair.cert):
            return "the serving certificate is expired or not from a trusted CA"
        if not settled:
            return ""
        if not certs.issued_by(pair.cert, authority.ca.cert):
            return "CA rotation: re-issued from the new CA"
        if certs.renewal_due(pair.cert, now):
            return "renewal: 2/3 of its life has passed"
        missing = set(self.plan.names) - certs.names_of(pair.cert)
        if missing:
            return f"the certificate lacks {', '.join(sorted(missing))}"
        return ""

    def _serving(self, authority: Authority, settled: bool, now: dt.datetime) -> dict:
        plan = self.plan
        for _ in range(ATTEMPTS):
            secret = self.cluster.get_secret(plan.namespace, plan.tls_secret)
            why = self._serving_problem(secret, authority, settled, now)
            if not why and _data(secret, BUNDLE) == authority.bundle:
                return secret
            document = self._serving_document(secret, authority, now if why else None)
            try:
                if secret is None:
                    written = self.cluster.create_secret(plan.namespace, document)
                else:
                    written = self.cluster.replace_secret(plan.namespace, plan.tls_secret, document)
            except Conflict:
                continue
            cert = x509.load_pem_x509_certificate(_data(written, CERT_FILE))
            log.info("serving secret written", extra={"secret": plan.tls_secret, "reason": why or "caBundle changed",
                                                      "not_after": cert.not_valid_after_utc.isoformat()})
            return written
        raise ClusterError(f"Secret {plan.tls_secret} kept changing under this replica")

    def _serving_document(self, secret: dict | None, authority: Authority, issue_at: dt.datetime | None) -> dict:
        document = copy.deepcopy(secret) if secret else {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": self.plan.tls_secret, "namespace": self.plan.namespace, "labels": LABELS},
        }
        data = dict(document.get("data") or {})
        if issue_at is not None:
            ca_left = certs.days_left(authority.ca.cert, issue_at)
            with FORK_GUARD:
                pair = certs.make_serving(authority.ca, self.plan.names, min(self.plan.cert_days, ca_left),
                                          start=issue_at)
            data[CERT_FILE] = _encode(pair.cert_pem)
            data[KEY_FILE] = _encode(pair.key_pem)
        data[BUNDLE] = _encode(authority.bundle)
        document["data"] = data
        return document

    def _write(self, serving: dict, authority: Authority) -> None:
        files = {CERT_FILE: _data(serving, CERT_FILE), KEY_FILE: _data(serving, KEY_FILE), BUNDLE: authority.bundle}
        if certdir.read(self.plan.cert_dir, tuple(files)) == files:
            return
        certdir.publish(self.plan.cert_dir, files)
        cert = x509.load_pem_x509_certificate(files[CERT_FILE])
        log.info("certificate files written", extra={"cert_dir": str(self.plan.cert_dir),
                                                     "fingerprint": certs.fingerprint(cert)[:16],
                                                     "not_after": cert.not_valid_after_utc.isoformat()})

    def _report(self, serving: dict, now: dt.datetime) -> dict:
        """Record in the serving Secret that this replica serves its certificate (refreshed now and then)."""
        plan = self.plan
        pair = serving_pair(serving)
        fingerprint = certs.fingerprint(pair.cert)
        for _ in range(ATTEMPTS):
            record = served_by(serving)
            mine = record.get(plan.replica) or {}
            if mine.get("cert") == fingerprint and now - _time(mine.get("at")) < plan.heartbeat:
                return serving
            record = {k: v for k, v in record.items() if now - _time(v.get("at")) < plan.stale}
            record[plan.replica] = {"cert": fingerprint, "at": now.isoformat()}
            document = copy.deepcopy(serving)
            annotations = document["metadata"].get("annotations") or {}
            document["metadata"]["annotations"] = {**annotations, SERVED_BY: json.dumps(record, sort_keys=True)}
            try:
                return self.cluster.replace_secret(plan.namespace, plan.tls_secret, document)
            except Conflict:
                latest = self.cluster.get_secret(plan.namespace, plan.tls_secret)
                if _data(latest, CERT_FILE) != _data(serving, CERT_FILE):
                    return serving  # a new certificate: the next round writes it out, then reports it
                serving = latest
        return serving

    def _retire(self, authority: Authority, serving: dict, now: dt.datetime) -> bool:
        """Drop the previous CA once every live replica reports serving a certificate from the current one."""
        pair = serving_pair(serving)
        if not authority.previous or not certs.issued_by(pair.cert, authority.ca.cert):
            return False
        fingerprint = certs.fingerprint(pair.cert)
        live = {k: v for k, v in served_by(serving).items() if now - _time(v.get("at")) < self.plan.stale}
        if not live or any(v.get("cert") != fingerprint for v in live.values()):
            return False
        secret = self.cluster.get_secret(self.plan.namespace, self.plan.ca_secret)
        current = read_authority(secret)
        if current is None or current.ca.cert != authority.ca.cert or not current.previous:
            return False
        try:
            self.cluster.replace_secret(self.plan.namespace, self.plan.ca_secret,
                                        self._ca_document(secret, Authority(current.ca, (), current.since)))
        except Conflict:
            return False
        log.info("previous CA retired: every replica serves a certificate from the current CA",
                 extra={"replicas": sorted(live)})
        return True

    # -- the loop --------------------------------------------------------------------------------------

    def attempt(self) -> bool:
        """One round that never raises: on failure the files stay as they are, and so does serving."""
        try:
            self.sync()
        except ClusterError as err:
            log.warning("certificate sync failed; serving the certificate already in place",
                        extra={"error": str(err)})
            self._failing = True
            return False
        except Exception:
            log.exception("certificate sync failed unexpectedly; serving the certificate already in place")
            self._failing = True
            return False
        if self._failing:
            log.info("certificate sync works again")
            self._failing = False
        return True

    def have_files(self) -> bool:
        return certdir.read(self.plan.cert_dir, (CERT_FILE, KEY_FILE)) is not None

    def bootstrap(self) -> None:
        """Before serving: return once the cert dir holds a certificate (at once when it still has one)."""
        delay = 1.0
        while not self.have_files():
            if not self.attempt():
                time.sleep(delay)
                delay = min(delay * 2, self.plan.interval)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="certificate-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.attempt()
            if self._stop.wait(self.plan.interval):
                return

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

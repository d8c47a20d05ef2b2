"""Certificates: a CA and a serving certificate for the webhook Service, made with `cryptography`."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.names import NAMESPACE, SERVICE

SKEW = dt.timedelta(minutes=5)
RENEW_AT = 2 / 3  # of the lifetime, as cert-manager does by default: a third of it is left to retry in


def service_names(service: str = SERVICE, namespace: str = NAMESPACE) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


@dataclass(frozen=True)
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: float,
             start: dt.datetime | None = None) -> x509.CertificateBuilder:
    now = start or dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)  # tolerate clock skew between nodes
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(days: float = 3650, start: dt.datetime | None = None) -> Pair:
    """A CA with a unique subject, so an old and a new CA can sit side by side in one caBundle."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "upgrade-guard"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"upgrade-guard-ca-{secrets.token_hex(6)}"),
    ])
    cert = (
        _builder(name, name, key.public_key(), days, start)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Pair(cert, key)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_serving(ca: Pair, names: list[str], days: float = 365, start: dt.datetime | None = None) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        _builder(subject, ca.cert.subject, key.public_key(), days, start)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in dict.fromkeys(names)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Pair(cert, key)


def load_pair(cert_pem: bytes, key_pem: bytes) -> Pair:
    """A certificate and its key, read back; ValueError when either is unreadable or they do not belong together."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if key.public_key().public_bytes(*_SPKI) != cert.public_key().public_bytes(*_SPKI):
        raise ValueError("the key does not belong to the certificate")
    return Pair(cert, key)


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a caBundle); ValueError when there is none or one is broken."""
    return x509.load_pem_x509_certificates(pem)


def pem(certificates: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renewal_due(cert: x509.Certificate, now: dt.datetime) -> bool:
    """True once RENEW_AT of the certificate's lifetime (counted from its real start, not the skew) has passed."""
    start = cert.not_valid_before_utc + SKEW
    return now >= start + (cert.not_valid_after_utc - start) * RENEW_AT


def names_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def days_left(cert: x509.Certificate, now: dt.datetime) -> float:
    return (cert.not_valid_after_utc - now).total_seconds() / 86400


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write beside the target, then rename over it: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_bundle(out: str | Path, names: list[str], days: int = 365) -> str:
    """Make a CA and a serving certificate in `out`; return the base64 caBundle."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    serving = make_serving(ca, names, days)
    _write(out / "ca.key", ca.key_pem, 0o600)
    _write(out / "ca.crt", ca.cert_pem, 0o644)
    _write(out / "tls.key", serving.key_pem, 0o600)
    _write(out / "tls.crt", serving.cert_pem, 0o644)
    return base64.b64encode(ca.cert_pem).decode()

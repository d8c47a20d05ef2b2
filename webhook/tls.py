"""The serving certificate: TLS settings, and a context that follows the files in the cert dir.

gunicorn asks for an SSLContext for every new connection; we hand out one cached context and rebuild it
when `tls.crt`/`tls.key` or the client CA change (including kubelet's atomic swap of a mounted Secret's
`..data` link), keeping the last good one while the files are half-written or broken.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

log = logging.getLogger("upgrade_guard.tls")

# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites all are both).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


def server_context(cert_file: str | Path, key_file: str | Path, client_ca: str | Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])  # the apiserver talks HTTP/1.1 to webhooks
    context.load_cert_chain(str(cert_file), str(key_file))
    if client_ca:
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


@dataclass(frozen=True)
class Loaded:
    context: ssl.SSLContext
    not_after: dt.datetime
    subject: str


class ServingCertificate:
    """`DIR/tls.crt` and `DIR/tls.key`, and the client CA when there is one, reloaded when any of them changes
    (checked at most every `interval` s): a rotated client CA is trusted without a restart, as a new pair is."""

    def __init__(self, cert_dir: str | Path, client_ca: str | Path | None = None, interval: float = 1.0):
        self.cert_file = Path(cert_dir) / CERT_FILE
        self.key_file = Path(cert_dir) / KEY_FILE
        self.client_ca = client_ca
        self._files = (self.cert_file, self.key_file) + ((Path(client_ca),) if client_ca else ())
        self.interval = interval
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None
        self._signature: tuple | None = None
        self._failed: tuple | None = None  # files that would not load: logged once, not every second
        self._checked = float("-inf")
        self.error = "not loaded yet"

    def _stat_signature(self) -> tuple | None:
        try:
            return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, self._files))
        except OSError:
            return None

    def refresh(self) -> Loaded | None:
        """Reload if the files changed since the last look; the current certificate either way."""
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self._loaded
        with self._lock:
            if now - self._checked < self.interval:
                return self._loaded
            self._checked = now
            signature = self._stat_signature()
            if signature is None:
                self.error = f"{' or '.join(map(str, self._files))} is missing"
                return self._loaded
            if signature == self._signature:
                self.error = ""  # the files being served are back (after a moment of being missing)
            elif signature != self._failed:
                self._load(signature)
            return self._loaded

    def _load(self, signature: tuple) -> None:
        for _ in range(3):
            try:
                context = server_context(self.cert_file, self.key_file, self.client_ca)
                cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
            except (OSError, ValueError, ssl.SSLError) as err:
                now = self._stat_signature()
                if now is not None and now != signature:
                    signature = now  # swapped while being read (new cert, old key): read the new pair
                    continue
                self._failed = signature
                self.error = f"cannot load {' and '.join(map(str, self._files))}: {err}"
                log.error("certificate not loaded, keeping the previous one", extra={"error": self.error})
                return
            break
        else:
            return  # still changing: the next look tries again
        self._signature, self._failed = signature, None
        self._loaded = Loaded(context, cert.not_valid_after_utc, cert.subject.rfc4514_string())
        self.error = ""
        log.info("certificate loaded", extra={"subject": self._loaded.subject,
                                              "not_after": self._loaded.not_after.isoformat(),
                                              "days_left": round(self._days_left(), 1)})

    def _days_left(self) -> float:
        return (self._loaded.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400

    def context(self) -> ssl.SSLContext:
        loaded = self.refresh()
        if loaded is None:
            raise ssl.SSLError(f"no serving certificate: {self.error}")
        return loaded.context

    def problem(self) -> str:
        """Why the guard should not be ready, or "" when a valid certificate is being served."""
        loaded = self.refresh()
        if loaded is None:
            return self.error
        if dt.datetime.now(dt.timezone.utc) >= loaded.not_after:
            return f"the certificate expired at {loaded.not_after.isoformat()}"
        return self.error and f"serving the previous certificate: {self.error}"

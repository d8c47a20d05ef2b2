"""Every setting of the command line: its flag, its environment variable, its default, in one table.

The decision settings are shared by `serve` and `check`, so both read the same configuration.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from webhook.config import DEFAULT_PROTECTED, READ_MESSAGE_LABEL, UPGRADE_CONTROLLER, Config, FieldPath
from webhook.names import CA_SECRET, CONFIGURATION, SERVICE, TLS_SECRET

ENV_PREFIX = "UPGRADE_GUARD_"


class SettingError(ValueError):
    """A setting with a value that cannot be used: the command line says so and exits 2."""


def _flag(text: str) -> bool:
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
             "off": False, "": False}
    if text.strip().lower() not in words:
        raise ValueError(f"not a boolean: {text!r}")
    return words[text.strip().lower()]


def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kmg]i?)?b?", text.strip(), re.IGNORECASE)
    if not match or int(match.group(1)) <= 0:
        raise ValueError("not a positive size (like 8388608, 8Mi or 8M)")
    unit = (match.group(2) or "").lower()
    return int(match.group(1)) * (1024 if unit.endswith("i") else 1000) ** " kmg".index(unit[:1] or " ")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise ValueError(f"choose one of {', '.join(options)}")
        return text.lower()
    return parse


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError("must be positive")
        return value
    return parse


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError("not a number of seconds, 0 or more")
    return value


@dataclass(frozen=True)
class Setting:
    name: str  # flag without dashes; the env variable is UPGRADE_GUARD_<NAME>
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    many: bool = False  # a repeatable flag; comma-separated in the environment
    switch: bool = False  # a flag without a value
    env_name: str = ""  # when the variable is not simply the flag's name (plural for lists)

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + (self.env_name or self.name).upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        shown = ", ".join(self.default) if self.many else self.default
        text = f"{self.help} [env {self.env}; default: {shown if shown not in (None, '') else 'none'}]"
        if self.switch:
            parser.add_argument(self.flag, dest=self.dest, action="store_const", const=True, default=None, help=text)
        elif self.many:
            parser.add_argument(self.flag, dest=self.dest, action="append", default=None, metavar="VALUE", help=text)
        else:
            parser.add_argument(self.flag, dest=self.dest, default=None, metavar="VALUE", help=text)

    def value(self, args: argparse.Namespace, environ: dict[str, str]) -> Any:
        """The flag if given, else the environment variable, else the default."""
        given = getattr(args, self.dest)
        if given is None and self.env in environ:
            given = environ[self.env]
            given = [part for part in given.split(",") if part.strip()] if self.many else given
        if given is None:
            return self.default
        parse = _flag if self.switch else self.parse
        try:
            if given is True:
                return True
            if self.many:
                return tuple(parse(part.strip()) for part in given if part.strip())
            return parse(given)
        except (ValueError, KeyError, IndexError) as err:
            raise SettingError(f"{self.flag} / {self.env}: bad value {given!r}: {err}") from None


DECISION = (
    Setting("label", "the read-message label a dismissal changes", READ_MESSAGE_LABEL),
    Setting("exempt-user", "a user never examined (repeatable; an empty value exempts nobody)",
            (UPGRADE_CONTROLLER,), many=True, env_name="exempt-users"),
    Setting("exempt-group", "a group whose members are never examined (repeatable)", (), many=True,
            env_name="exempt-groups"),
    Setting("protect", "a protected field: dotted path or JSON Pointer (repeatable)", DEFAULT_PROTECTED, many=True,
            env_name="protected"),
    Setting("strict", "treat every non-exempt write that changes a protected field as a violation", False,
            switch=True),
)

SERVE = (
    Setting("cert-dir", "directory holding tls.crt and tls.key", "certs"),
    Setting("bind", "HOST:PORT to listen on", "0.0.0.0:8443"),
    Setting("workers", "worker processes (Python runs one thread at a time in each: processes, not threads, "
            "use the cores; more processes than cores only take turns, slower)", 2, _positive(int)),
    Setting("threads", "threads per worker (connections beyond them wait, kept alive, in the poller)", 2,
            _positive(int)),
    Setting("max-body", "largest AdmissionReview accepted, in bytes (suffixes Ki, Mi)", 8 * 1024**2, _size),
    Setting("keepalive", "seconds an idle connection stays open; above the apiserver's 90 s so it closes first",
            120, _positive(int)),
    Setting("log-level", "debug, info, warning or error", "info", _choice("debug", "info", "warning", "error")),
    Setting("metrics-dir", "directory where the workers keep their metrics, emptied at start (an emptyDir); "
            "none: a fresh private directory under /dev/shm, removed at exit", ""),
    Setting("dev", "generate development certificates into the cert dir when it has none", False, switch=True),
    Setting("drain", "seconds to keep answering after SIGTERM (readiness 503, every answer Connection: close) "
            "before finishing in-flight requests and exiting; 0 stops at once", 5.0, _seconds),
    Setting("request-timeout", "seconds a request has, from its first byte, to arrive and be answered; a slower "
            "connection is closed (idle kept-alive ones wait up to --keepalive)", 10.0, _positive(float)),
    Setting("max-connections", "open connections per worker, idle kept-alive ones included; more wait to be "
            "accepted", 250, _positive(int)),
    Setting("client-ca", "CA file: /validate and /mutate then require a client certificate it verifies (the "
            "apiserver's); /healthz, /readyz and /metrics never do", None),
)


# The Kubernetes API: `serve --self-managed`, `register` and `doctor`.
CLUSTER = (
    Setting("kubeconfig", "kubeconfig file for the Kubernetes API (empty: $KUBECONFIG or ~/.kube/config, else the "
            "pod's service account)", ""),
    Setting("validating-configuration", "name of the ValidatingWebhookConfiguration", CONFIGURATION),
    Setting("mutating-configuration", "name of the MutatingWebhookConfiguration", CONFIGURATION),
)

SELF_MANAGED = (
    Setting("self-managed", "keep a CA and a serving certificate in Secrets through the Kubernetes API, write them "
            "into the cert dir (an emptyDir) and set the caBundle of both configurations", False, switch=True),
    Setting("namespace", "namespace of the Secrets and the Service (empty: the pod's own)", ""),
    Setting("service", "the webhook Service; the certificate is for its names", SERVICE),
    Setting("ca-secret", "Secret holding the CA", CA_SECRET),
    Setting("tls-secret", "Secret holding the serving certificate", TLS_SECRET),
    Setting("ca-days", "lifetime of a new CA in days; rotated at 2/3 of it", 3650, _positive(float)),
    Setting("cert-days", "lifetime of a serving certificate in days; renewed at 2/3 of it", 365, _positive(float)),
    Setting("sync-interval", "seconds between two rounds of the certificate keeper", 60, _positive(float)),
    Setting("replica-name", "this replica's name in the serving Secret's served-by record (empty: the host name, "
            "which is the pod's name)", ""),
)


def resolve(settings: tuple[Setting, ...], args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict:
    environ = os.environ if environ is None else environ
    return {s.dest: s.value(args, environ) for s in settings}


def decision_config(values: dict) -> Config:
    try:
        return Config(
            label=values["label"],
            exempt_users=frozenset(values["exempt_user"]),
            exempt_groups=frozenset(values["exempt_group"]),
            protected=tuple(FieldPath.parse(p) for p in values["protect"]),
            strict=values["strict"],
        )
    except ValueError as err:
        raise SettingError(str(err)) from None


# Every group of settings and the commands that read it: the generated table in docs/settings.md says so.
USED_BY = ((SERVE, "serve"), (DECISION, "serve, check"), (SELF_MANAGED, "serve"),
           (CLUSTER, "serve --self-managed, register, doctor"))

"""The `upgrade-guard` command: certs, serve, check, manifests, register, doctor."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import logging.config
import sys
from pathlib import Path

import yaml

from webhook import certs
from webhook.logs import logging_dict
from webhook.settings import CLUSTER, DECISION, SELF_MANAGED, SERVE, SettingError, decision_config, resolve

log = logging.getLogger("upgrade_guard")

# Strict mode is not a setting of the manifests: they hold both modes (the base and overlays/strict).
MANIFEST_SETTINGS = tuple(s for s in DECISION if s.name != "strict")


class _JsonYamlLoader(yaml.SafeLoader):
    """YAML as JSON sees it: timestamps stay strings, as the apiserver would send them."""


_JsonYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _command(commands, name: str, help: str, description: str | None = None, settings=()) -> argparse.ArgumentParser:
    """A subcommand, with the flags (and environment variables) of its settings."""
    parser = commands.add_parser(name, help=help, description=description)
    for setting in settings:
        setting.add_to(parser)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upgrade-guard",
        description="Admission webhook that keeps Harvester Upgrade status from being wiped.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    make = _command(commands, "certs", "make a CA and a serving certificate; print the caBundle")
    make.add_argument("--out", required=True, help="directory to write ca.crt, ca.key, tls.crt, tls.key into")
    make.add_argument("--service", default=certs.SERVICE, help="webhook Service name [default: %(default)s]")
    make.add_argument("--namespace", default=certs.NAMESPACE, help="its namespace [default: %(default)s]")
    make.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP", help="another name (repeatable)")
    make.add_argument("--days", type=int, default=365, help="serving certificate lifetime [default: %(default)s]")

    _command(commands, "serve", "serve /validate and /mutate over TLS",
             "Every setting can also come from its environment variable; a flag wins over it.",
             SERVE + DECISION + SELF_MANAGED + CLUSTER)

    check = _command(commands, "check", "decide offline whether an update from OLD to NEW would be a violation",
                     "Exit 0 when allowed, 1 on a violation, 2 on bad input.", DECISION)
    check.add_argument("old", help="the stored Upgrade (YAML or JSON)")
    check.add_argument("new", help="the written Upgrade (YAML or JSON)")
    check.add_argument("--user", default="", help="who writes [default: an unnamed user]")
    check.add_argument("--group", action="append", default=[], help="a group of the writer (repeatable)")

    manifests = _command(
        commands, "manifests", "write the Kubernetes manifests (kustomize) for these settings",
        "The label, exempt users and groups and protected fields go into both the webhooks' CEL matchConditions "
        "and the Deployment's environment; strict mode is the overlays/strict variant.", MANIFEST_SETTINGS)
    manifests.add_argument("--out", default="manifests", help="directory to write into [default: %(default)s]")
    manifests.add_argument("--image", default=None, help="the guard's image [default: upgrade-guard:VERSION]")

    register = _command(commands, "register", "put a CA into the caBundle of both webhook configurations "
                        "(manual installs)", "Exit 0 when both configurations hold the CA, 1 when one is missing "
                        "or the API refused, 2 on bad input.", CLUSTER)
    register.add_argument("--ca-file", required=True, help="PEM file with the CA certificate(s) to trust")

    _command(commands, "doctor", "check the installed guard: configurations, certificates, endpoints, wiped "
             "Upgrades", "Read-only. Exit 0 when nothing is wrong, 1 when a problem was found, 2 on bad input.",
             CLUSTER)
    return parser


def _certs(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise SettingError("--days must be positive")
    names = certs.service_names(args.service, args.namespace) + args.san
    print(certs.write_bundle(args.out, names, args.days))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from webhook.server import GuardServer  # gunicorn only where it is used

    values = resolve(SERVE + DECISION, args)
    config = decision_config(values)
    logging.config.dictConfig(logging_dict(values["log_level"]))
    cert_dir = Path(values["cert_dir"])
    managed = resolve(SELF_MANAGED + CLUSTER, args)
    keeper = _keeper(managed, cert_dir, values["dev"]) if managed["self_managed"] else None
    if values["dev"] and not (cert_dir / "tls.crt").exists():
        certs.write_bundle(cert_dir, ["localhost", "127.0.0.1", "::1"] + certs.service_names())
        log.info("development certificates written", extra={"cert_dir": str(cert_dir)})
    if not (cert_dir / "tls.crt").exists() or not (cert_dir / "tls.key").exists():
        raise SettingError(f"no tls.crt and tls.key in {cert_dir}: pass --dev, or make them with "
                           f"`upgrade-guard certs --out {cert_dir}`")
    if values["client_ca"] and not Path(values["client_ca"]).is_file():
        raise SettingError(f"--client-ca {values['client_ca']}: no such file")
    log.info("starting", extra={"bind": values["bind"], "workers": values["workers"], "strict": config.strict,
                                "label": config.label, "protected": [str(p) for p in config.protected],
                                "exempt_users": sorted(config.exempt_users),
                                "exempt_groups": sorted(config.exempt_groups)})
    GuardServer(config, cert_dir=cert_dir, bind=values["bind"], workers=values["workers"],
                threads=values["threads"], max_body=values["max_body"], keepalive=values["keepalive"],
                log_level=values["log_level"], metrics_dir=values["metrics_dir"], drain=values["drain"],
                request_timeout=values["request_timeout"], max_connections=values["max_connections"],
                client_ca=values["client_ca"], keeper=keeper).run()
    return 0


def _connect(kubeconfig: str, guard=None):
    """A client for the API; a kubeconfig that cannot be used is bad input (exit 2)."""
    from webhook.cluster import ClusterError, connect

    try:
        return connect(kubeconfig, guard)
    except ClusterError as err:
        raise SettingError(str(err)) from None


def _keeper(values: dict, cert_dir: Path, dev: bool):
    """Self-managed mode: connect, and wait until the cert dir holds a certificate (kept fresh from then on)."""
    from webhook.keeper import FORK_GUARD, CertificateKeeper, Plan

    if dev:
        raise SettingError("--dev and --self-managed exclude each other: the keeper writes the certificates")
    keeper = CertificateKeeper(_connect(values["kubeconfig"], FORK_GUARD), Plan.from_settings(values, cert_dir))
    log.info("self-managed certificates", extra={"namespace": keeper.plan.namespace, "replica": keeper.plan.replica,
                                                 "secrets": [keeper.plan.ca_secret, keeper.plan.tls_secret]})
    keeper.bootstrap()
    return keeper


def _load(path: str) -> dict:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        document = yaml.load(text, Loader=_JsonYamlLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise SettingError(f"cannot read {path}: {err}") from None
    if not isinstance(document, dict):
        raise SettingError(f"{path} does not hold one object")
    return document


def _check(args: argparse.Namespace) -> int:
    from webhook.decision import Request, decide

    config = decision_config(resolve(DECISION, args))
    old, new = _load(args.old), _load(args.new)
    metadata = new.get("metadata") if isinstance(new.get("metadata"), dict) else {}
    api_version = new.get("apiVersion") if isinstance(new.get("apiVersion"), str) else ""
    request = Request(
        operation="UPDATE",
        group=api_version.rpartition("/")[0],
        kind=new.get("kind") if isinstance(new.get("kind"), str) else "",
        subresource="",
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        user=args.user,
        groups=tuple(args.group),
        old=old,
        new=new,
    )
    decision = decide(request, config)
    if not decision.violation:
        print(f"allowed: {decision.reason}")
        return 0
    print(f"violation: {decision.reason}")
    print(f"/validate denies it: {decision.message}")
    print(f"/mutate restores {', '.join(decision.fields)} with this JSON Patch:")
    print(json.dumps(decision.patch, indent=2))
    return 1


def _manifests(args: argparse.Namespace) -> int:
    from webhook import manifests

    config = decision_config({**resolve(MANIFEST_SETTINGS, args), "strict": False})
    try:
        written = manifests.write(args.out, config, args.image)
    except ValueError as err:
        raise SettingError(str(err)) from None
    for path in written:
        print(path)
    return 0


def _register(args: argparse.Namespace) -> int:
    from webhook.cluster import KIND_NAMES, ClusterError, set_ca_bundle

    values = resolve(CLUSTER, args)
    try:
        pem_bytes = Path(args.ca_file).read_bytes()
        cas = certs.load_certificates(pem_bytes)
    except (OSError, ValueError) as err:
        raise SettingError(f"--ca-file {args.ca_file}: no PEM certificate in it ({err})") from None
    bundle = base64.b64encode(certs.pem(cas)).decode()
    cluster = _connect(values["kubeconfig"])
    failed = 0
    try:
        for kind in KIND_NAMES:
            name = values[f"{kind}_configuration"]
            changed = set_ca_bundle(cluster, kind, name, bundle)
            if changed is None:
                print(f"{KIND_NAMES[kind]} {name}: not found (apply the manifests first)")
                failed += 1
            else:
                print(f"{KIND_NAMES[kind]} {name}: caBundle " +
                      (f"set on {changed} webhook(s)" if changed else "already holds this CA"))
    except ClusterError as err:
        print(f"upgrade-guard: {err}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _doctor(args: argparse.Namespace) -> int:
    from webhook.doctor import diagnose

    values = resolve(CLUSTER, args)
    return diagnose(_connect(values["kubeconfig"]), values["validating_configuration"],
                    values["mutating_configuration"])


COMMANDS = {"certs": _certs, "serve": _serve, "check": _check, "manifests": _manifests,
            "register": _register, "doctor": _doctor}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SettingError as err:
        print(f"upgrade-guard: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # an unexpected failure is exit 2, never 1 (which means "violation")
        print(f"upgrade-guard: unexpected error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

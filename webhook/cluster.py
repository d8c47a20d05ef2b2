"""The few Kubernetes API calls the guard makes, through the official `kubernetes` client.

Imported only by `serve --self-managed`, `register` and `doctor`: plain `serve` (file mode) never loads the
client. Objects travel as plain dicts (`_preload_content=False`), exactly as the API sends them, so a field
the client's models do not know yet is kept, not dropped. Every failure becomes a ClusterError (Conflict
for 409) with the API's own message; a missing object is None.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, ContextManager

import urllib3
from kubernetes import client, config
from kubernetes.client import ApiException

TIMEOUT = (5, 10)  # connect, read (s): a round never hangs on an unreachable API
KIND_NAMES = {"validating": "ValidatingWebhookConfiguration", "mutating": "MutatingWebhookConfiguration"}
UPGRADES = ("harvesterhci.io", "v1beta1", "upgrades")


class ClusterError(Exception):
    """The API could not be reached or refused the call; the caller keeps what it has."""


class Conflict(ClusterError):
    """409: the object exists already (create) or changed since it was read (stale resourceVersion)."""


def connect(kubeconfig: str = "", guard: ContextManager | None = None) -> Cluster:
    """kubectl's order: the given file, else $KUBECONFIG or ~/.kube/config, else the pod's service account."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        elif os.environ.get("KUBECONFIG") or Path("~/.kube/config").expanduser().exists():
            config.load_kube_config(client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError, TypeError, KeyError) as err:
        raise ClusterError(f"no usable Kubernetes configuration: {err}") from None
    configuration.retries = False  # the caller's loop retries; urllib3's own retries would stretch a round
    return Cluster(client.ApiClient(configuration), guard)


def _message(err: ApiException) -> str:
    try:
        status = json.loads(err.body)
        return f"{err.status} {status.get('reason') or err.reason}: {status.get('message')}"
    except (TypeError, ValueError, AttributeError):
        return f"{err.status} {err.reason}"


class Cluster:
    def __init__(self, api_client: client.ApiClient, guard: ContextManager | None = None):
        self.core = client.CoreV1Api(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)
        self.discovery = client.DiscoveryV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        # Held around every call: the self-managed keeper uses it to keep gunicorn from forking mid-call.
        self._guard = guard or contextlib.nullcontext()

    def _call(self, method: Callable, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        try:
            with self._guard:
                response = method(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
                return json.loads(response.data)
        except ApiException as err:
            if err.status == 404 and missing_ok:
                return None
            if err.status == 409:
                raise Conflict(_message(err)) from None
            if not err.status:
                raise ClusterError(f"the Kubernetes API is unreachable: {err.reason}") from None
            raise ClusterError(_message(err)) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ClusterError(f"the Kubernetes API is unreachable: {err}") from None
        except ValueError as err:
            raise ClusterError(f"the Kubernetes API answered something that is not JSON: {err}") from None

    def get_secret(self, namespace: str, name: str) -> dict | None:
        return self._call(self.core.read_namespaced_secret, name, namespace, missing_ok=True)

    def create_secret(self, namespace: str, body: dict) -> dict:
        return self._call(self.core.create_namespaced_secret, namespace, body)

    def replace_secret(self, namespace: str, name: str, body: dict) -> dict:
        """PUT with the resourceVersion the body carries: a Conflict when someone wrote in between."""
        return self._call(self.core.replace_namespaced_secret, name, namespace, body)

    def get_configuration(self, kind: str, name: str) -> dict | None:
        read = getattr(self.admission, f"read_{kind}_webhook_configuration")
        return self._call(read, name, missing_ok=True)

    def patch_configuration(self, kind: str, name: str, patch: dict) -> dict:
        """A strategic merge patch: the client sends a dict body to a built-in API as one (webhooks merge by name)."""
        update = getattr(self.admission, f"patch_{kind}_webhook_configuration")
        return self._call(update, name, patch)

    def get_service(self, namespace: str, name: str) -> dict | None:
        return self._call(self.core.read_namespaced_service, name, namespace, missing_ok=True)

    def endpoint_slices(self, namespace: str, service: str) -> list[dict]:
        found = self._call(self.discovery.list_namespaced_endpoint_slice, namespace,
                           label_selector=f"kubernetes.io/service-name={service}")
        return found.get("items") or []

    def upgrades(self) -> list[dict] | None:
        """Every Harvester Upgrade; None when the cluster has no such resource."""
        found = self._call(self.custom.list_cluster_custom_object, *UPGRADES, missing_ok=True)
        return None if found is None else found.get("items") or []

    def port_forward(self, namespace: str, pod: str, port: int):
        """A tunnel to `port` of the pod through the API, as `kubectl port-forward` makes: `.socket(port)` is
        the connection, `.error(port)` what the kubelet said when it could not connect."""
        from kubernetes.stream import portforward

        try:
            with self._guard:
                forward = portforward(self.core.connect_get_namespaced_pod_portforward, pod, namespace,
                                      ports=str(port), _request_timeout=TIMEOUT)
        except ApiException as err:
            raise ClusterError(f"cannot port-forward to {namespace}/{pod}: {err.reason or _message(err)}") from None
        return forward


def set_ca_bundle(cluster: Cluster, kind: str, name: str, bundle: str, attempts: int = 5) -> int | None:
    """Put `bundle` (base64 PEM) into every webhook of a configuration.

    How many webhooks changed (0: all had it); None when the configuration does not exist. The patch carries
    the resourceVersion it was computed from, so two writers never interleave: the later one gets a
    Conflict, reads again and finds nothing left to do.
    """
    for _ in range(attempts):
        configuration = cluster.get_configuration(kind, name)
        if configuration is None:
            return None
        stale = [w.get("name") for w in configuration.get("webhooks") or []
                 if (w.get("clientConfig") or {}).get("caBundle") != bundle]
        if not stale:
            return 0
        patch = {"metadata": {"resourceVersion": configuration["metadata"]["resourceVersion"]},
                 "webhooks": [{"name": webhook, "clientConfig": {"caBundle": bundle}} for webhook in stale]}
        try:
            cluster.patch_configuration(kind, name, patch)
            return len(stale)
        except Conflict:
            continue
    raise Conflict(f"{KIND_NAMES[kind]} {name} kept changing while its caBundle was being set")

"""Cluster objects as an install of the guard leaves them (as the API returns them), for the in-test API."""

from __future__ import annotations

import copy

NAMESPACE = "harvester-system"
SERVICE = "upgrade-guard"
CONFIGURATION = "upgrade-guard"
RULES = [{"apiGroups": ["harvesterhci.io"], "apiVersions": ["v1beta1"], "operations": ["UPDATE"],
          "resources": ["upgrades"], "scope": "Namespaced"}]


def _webhook(name: str, path: str, failure_policy: str) -> dict:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": {"service": {"namespace": NAMESPACE, "name": SERVICE, "path": path, "port": 443}},
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "namespaceSelector": {},
        "objectSelector": {},
        "rules": RULES,
        "sideEffects": "None",
        "timeoutSeconds": 5,
    }


def configurations() -> list[dict]:
    """Both configurations without caBundle, as the plain manifests apply them."""
    mutating = _webhook("restore.upgrade-guard.harvesterhci.io", "/mutate", "Ignore")
    mutating["reinvocationPolicy"] = "Never"
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": CONFIGURATION, "labels": {"app.kubernetes.io/name": "upgrade-guard"}},
         "webhooks": [_webhook("deny.upgrade-guard.harvesterhci.io", "/validate", "Fail")]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": CONFIGURATION, "labels": {"app.kubernetes.io/name": "upgrade-guard"}},
         "webhooks": [mutating]},
    ]


def service() -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"type": "ClusterIP", "clusterIP": "10.53.7.21", "selector": {"app.kubernetes.io/name": SERVICE},
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https"}]}}


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE,
                                                            "labels": {"app.kubernetes.io/name": SERVICE}},
            "spec": {"containers": [{"name": "guard", "image": "upgrade-guard",
                                     "ports": [{"name": "https", "containerPort": 8443}]}]},
            "status": {"phase": "Running"}}


def endpoint_slice(pods: dict[str, bool]) -> dict:
    """The slice the endpoints controller keeps for the Service: pod name -> ready."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": f"{SERVICE}-x7k2p", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": SERVICE,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "endpoints": [{"addresses": [f"10.52.0.{10 + i}"], "conditions": {"ready": ready, "serving": ready,
                                                                           "terminating": False},
                       "targetRef": {"kind": "Pod", "name": name, "namespace": NAMESPACE}}
                      for i, (name, ready) in enumerate(pods.items())],
        "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}],
    }


def without_status(upgrade: dict) -> dict:
    wiped = copy.deepcopy(upgrade)
    wiped.pop("status", None)
    return wiped

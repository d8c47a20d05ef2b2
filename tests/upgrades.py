"""Builders for Upgrade objects and the writes real clients make to them (see shared/reference)."""

from __future__ import annotations

import copy
import uuid

from webhook.config import Config

LABEL = "harvesterhci.io/read-message"
CONTROLLER = "system:serviceaccount:harvester-system:harvester"
ADMIN = "admin"  # what Rancher's Steve proxy impersonates: the logged-in user
CONDITIONS = ("Completed", "LogReady", "ImageReady", "RepoReady", "NodesPrepared", "SystemServicesUpgraded",
              "NodesUpgraded")
REPO_INFO = """release:
  harvester: v1.4.3
  harvesterChart: 1.4.3
  os: Harvester v1.4.3
  kubernetes: v1.30.7+rke2r1
  rancher: v2.10.1
  monitoringChart: 103.1.1+up45.31.1
  minUpgradableVersion: v1.4.2
"""


def finished_upgrade(nodes: int = 3, name: str = "hvst-upgrade-8fnwl") -> dict:
    """A finished Upgrade as stored: every condition True, one Succeeded entry per node."""
    return {
        "apiVersion": "harvesterhci.io/v1beta1",
        "kind": "Upgrade",
        "metadata": {
            "name": name,
            "namespace": "harvester-system",
            "generateName": "hvst-upgrade-",
            "generation": 16,
            "resourceVersion": "4817",
            "uid": "6c3cbb5e-8a7b-4f0e-9a53-1c6f0b8d0e11",
            "creationTimestamp": "2025-03-10T09:40:00Z",
            "annotations": {"harvesterhci.io/image-cleanup-plan-completed": "true"},
            "finalizers": ["wrangler.cattle.io/harvester-upgrade-controller"],
            "labels": {"harvesterhci.io/latestUpgrade": "true", "harvesterhci.io/upgradeState": "Succeeded"},
            "managedFields": [{"manager": "harvester", "operation": "Update", "apiVersion": "harvesterhci.io/v1beta1",
                               "time": "2025-03-10T10:09:34Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:status": {".": {}, "f:conditions": {}}}}],
        },
        "spec": {"image": "", "logEnabled": True, "version": "v1.4.3"},
        "status": {
            "conditions": [{"type": t, "status": "True", "lastUpdateTime": f"2025-03-10T10:0{i}:00Z"}
                           for i, t in enumerate(CONDITIONS)],
            "imageID": f"harvester-system/{name}",
            "previousVersion": "v1.4.2",
            "repoInfo": REPO_INFO,
            "upgradeLog": f"{name}-upgradelog",
            "nodeStatuses": {f"harvester-node-{i}": {"state": "Succeeded"} for i in range(nodes)},
        },
    }


def labelled(obj: dict, value: str | None = "true", key: str = LABEL) -> dict:
    """The same object with the read-message label set (or removed, with None)."""
    out = copy.deepcopy(obj)
    labels = out["metadata"].setdefault("labels", {})
    if value is None:
        labels.pop(key, None)
    else:
        labels[key] = value
    return out


def dashboard_put(stored: dict, value: str | None = "true") -> dict:
    """The old UI's "Dismiss it": the label set, and the fields the dashboard never saves dropped."""
    out = labelled(stored, value)
    out.pop("status", None)
    for key in ("finalizers", "creationTimestamp", "generation", "managedFields", "uid", "deletionTimestamp",
                "selfLink"):
        out["metadata"].pop(key, None)
    return out


def kubectl_label(stored: dict, value: str | None = "true") -> dict:
    """`kubectl label`: a patch, so the apiserver hands the webhook the whole stored object plus the label."""
    out = labelled(stored, value)
    out["metadata"]["managedFields"] = out["metadata"].get("managedFields", []) + [
        {"manager": "kubectl-label", "operation": "Update", "time": "2025-03-11T08:00:00Z"}]
    return out


def review(old: dict | None, new: dict | None, *, user: str = ADMIN, groups: tuple[str, ...] = (),
           operation: str = "UPDATE", subresource: str = "", api_version: str = "admission.k8s.io/v1",
           dry_run: bool = False, uid: str | None = None) -> dict:
    """An AdmissionReview as kube-apiserver sends it for a write to an Upgrade."""
    meta = (new or old or {}).get("metadata", {})
    request = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": "harvesterhci.io", "version": "v1beta1", "kind": "Upgrade"},
        "resource": {"group": "harvesterhci.io", "version": "v1beta1", "resource": "upgrades"},
        "requestKind": {"group": "harvesterhci.io", "version": "v1beta1", "kind": "Upgrade"},
        "requestResource": {"group": "harvesterhci.io", "version": "v1beta1", "resource": "upgrades"},
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
        "operation": operation,
        "userInfo": {"username": user, "uid": "u-1", "groups": list(groups) + ["system:authenticated"]},
        "object": new,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"},
    }
    if subresource:
        request["subResource"] = subresource
        request["requestSubResource"] = subresource
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": request}


def broken_config(error: Exception) -> Config:
    """A configuration the decision breaks on for every write it examines: how a test stands for a bug in it."""

    class Broken(Config):
        def is_exempt(self, user: str, groups: tuple[str, ...]) -> bool:
            raise error

    return Broken()

"""What the benchmark sends: AdmissionReviews for the writes real clients make, at realistic sizes.

Stored Upgrades carry what the apiserver keeps on a real one: each condition's transition time and reason,
and `managedFields` that name every status field the controller owns, per node. That is most of a stored
object's bytes, and it grows with the cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from tests.upgrades import dashboard_put, finished_upgrade, kubectl_label, review


def stored_upgrade(nodes: int) -> dict:
    """A finished Upgrade of a cluster of `nodes` nodes, as `kubectl get -o json` shows it."""
    obj = finished_upgrade(nodes)
    for condition in obj["status"]["conditions"]:
        condition.update(lastTransitionTime=condition["lastUpdateTime"], reason="Succeeded",
                         message="")
    for node in obj["status"]["nodeStatuses"].values():
        node.update(reason="Upgraded", message="node upgraded to v1.4.3; images preloaded, drained, rebooted")
    owned_status = {".": {}, "f:conditions": {}, "f:imageID": {}, "f:previousVersion": {}, "f:repoInfo": {},
                    "f:upgradeLog": {},
                    "f:nodeStatuses": {".": {}, **{f"f:{name}": {".": {}, "f:state": {}, "f:reason": {},
                                                                  "f:message": {}}
                                                   for name in obj["status"]["nodeStatuses"]}}}
    obj["metadata"]["managedFields"] = [
        {"manager": "harvester", "operation": "Update", "apiVersion": "harvesterhci.io/v1beta1",
         "time": "2025-03-10T10:09:34Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:finalizers": {".": {}, 'v:"wrangler.cattle.io/harvester-upgrade-controller"':
                                                      {}},
                                     "f:labels": {".": {}, "f:harvesterhci.io/latestUpgrade": {},
                                                  "f:harvesterhci.io/upgradeState": {}}},
                      "f:status": owned_status}},
        {"manager": "harvester-webhook", "operation": "Update", "apiVersion": "harvesterhci.io/v1beta1",
         "time": "2025-03-10T09:40:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:generateName": {}}, "f:spec": {".": {}, "f:image": {}, "f:logEnabled": {},
                                                                        "f:version": {}}}},
    ]
    return obj


def body(document: dict) -> bytes:
    """Compact, as kube-apiserver's encoder writes it."""
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Workload:
    name: str
    path: str  # /validate or /mutate
    body: bytes
    allowed: bool  # the answer a correct guard gives
    patched: bool = False  # /mutate restores: the answer carries a JSON Patch

    @property
    def size(self) -> int:
        return len(self.body)


def dismissal_size(nodes: int) -> int:
    stored = stored_upgrade(nodes)
    return len(body(review(stored, dashboard_put(stored))))


def object_size(nodes: int) -> int:
    return len(body(stored_upgrade(nodes)))


def nodes_for(size: int, measured: Callable[[int], int] = dismissal_size) -> int:
    """How many nodes make `measured` (by default the dismissal review's size) at least `size` bytes."""
    small = measured(10)
    per_node = (measured(110) - small) / 100
    nodes = max(1, 10 + int((size - small) / per_node))
    while measured(nodes) < size:
        nodes += max(1, int((size - measured(nodes)) / per_node))
    return nodes


def workloads(small_nodes: int = 4, big_size: int = 1024 * 1024) -> list[Workload]:
    stored = stored_upgrade(small_nodes)
    big = stored_upgrade(nodes_for(big_size))
    dismissal = body(review(stored, dashboard_put(stored), uid="bench-dismissal"))
    label = body(review(stored, kubectl_label(stored), uid="bench-label"))
    big_dismissal = body(review(big, dashboard_put(big), uid="bench-big-dismissal"))
    big_label = body(review(big, kubectl_label(big), uid="bench-big-label"))
    return [
        Workload("dismissal, /validate (denied)", "/validate", dismissal, allowed=False),
        Workload("dismissal, /mutate (restored)", "/mutate", dismissal, allowed=True, patched=True),
        Workload("kubectl label, /validate (allowed)", "/validate", label, allowed=True),
        Workload("big cluster dismissal, /mutate (restored)", "/mutate", big_dismissal, allowed=True,
                 patched=True),
        Workload("big cluster kubectl label, /validate (allowed)", "/validate", big_label, allowed=True),
    ]

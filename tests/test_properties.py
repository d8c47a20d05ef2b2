"""Property tests: random Upgrades, random edits, checked through the HTTP app against an oracle of intent.

The oracle knows which edits a write made (only the label, protected fields, bookkeeping, or something
else), so it does not borrow the guard's own comparison to say what the answer should be.
"""

from __future__ import annotations

import base64
import copy
import json

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.upgrades import CONDITIONS, CONTROLLER, LABEL, review
from webhook.app import create_app
from webhook.config import Config

CLIENTS = {strict: create_app(Config(strict=strict, exempt_groups={"upgrade-admins"})).test_client()
           for strict in (False, True)}
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def upgrades(draw) -> dict:
    name = "hvst-upgrade-" + draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=5, max_size=5))
    labels = draw(st.dictionaries(st.sampled_from(["harvesterhci.io/upgradeState", "harvesterhci.io/latestUpgrade",
                                                   LABEL, "team"]), st.sampled_from(["true", "false", "Succeeded"])))
    metadata = {"name": name, "namespace": "harvester-system", "generation": draw(st.integers(1, 20)),
                "resourceVersion": str(draw(st.integers(1, 10**6))), "uid": "u-" + name,
                "creationTimestamp": "2025-03-10T09:40:00Z"}
    if labels or draw(st.booleans()):
        metadata["labels"] = labels
    if draw(st.booleans()):
        metadata["finalizers"] = ["wrangler.cattle.io/harvester-upgrade-controller"]
    if draw(st.booleans()):
        metadata["annotations"] = {"harvesterhci.io/skip-version-check": draw(st.sampled_from(["true", "false"]))}
    obj = {"apiVersion": "harvesterhci.io/v1beta1", "kind": "Upgrade", "metadata": metadata,
           "spec": {"version": draw(st.sampled_from(["v1.4.3", "v1.5.0"])), "image": "", "logEnabled": True}}
    if draw(st.integers(0, 4)):
        obj["status"] = {
            "conditions": [{"type": t, "status": draw(st.sampled_from(["True", "False", "Unknown"])),
                            "lastUpdateTime": "2025-03-10T10:00:00Z", "message": draw(text)}
                           for t in CONDITIONS[: draw(st.integers(1, 7))]],
            "nodeStatuses": {f"node-{i}": {"state": draw(st.sampled_from(["Succeeded", "Pre-drained"]))}
                             for i in range(draw(st.integers(1, 5)))},
            "previousVersion": "v1.4.2",
            "upgradeLog": name + "-upgradelog",
        }
    return obj


def _set_label(obj, value):
    labels = obj["metadata"].setdefault("labels", {})
    if value is None:
        labels.pop(LABEL, None)
    else:
        labels[LABEL] = value


# Each edit returns the kind of change it made ("protected", "other", "none") or None when not applicable.
def drop_status(o):
    return "protected" if o.pop("status", None) else None


def null_status(o):
    return ("protected", o.update(status=None))[0] if o.get("status") else None


def empty_status(o):
    return ("protected", o.update(status={}))[0] if o.get("status") else None


def flip_condition(o):
    if not (o.get("status") or {}).get("conditions"):
        return None
    cond = o["status"]["conditions"][0]
    cond["status"] = "False" if cond["status"] == "True" else "True"
    return "protected"


def drop_node(o):
    if not (o.get("status") or {}).get("nodeStatuses"):
        return None
    o["status"]["nodeStatuses"].pop(next(iter(o["status"]["nodeStatuses"])))
    return "protected"


def swap_conditions(o):
    conds = (o.get("status") or {}).get("conditions", [])
    if len(conds) < 2:
        return None
    conds[0], conds[1] = conds[1], conds[0]
    return "protected"


def add_status(o):
    if o.get("status"):
        return None
    o["status"] = {"conditions": [{"type": "Completed", "status": "Unknown"}]}
    return "protected"


def drop_finalizers(o):
    return "protected" if o["metadata"].pop("finalizers", None) else None


def clear_upgrade_log(o):
    if not (o.get("status") or {}).get("upgradeLog"):
        return None
    o["status"]["upgradeLog"] = ""
    return "protected"


def change_spec(o):
    o["spec"]["version"] += "-rc1"
    return "other"


def other_label(o):
    o["metadata"].setdefault("labels", {})["extra"] = "1"
    return "other"


def change_annotation(o):
    o["metadata"]["annotations"] = {**o["metadata"].get("annotations", {}), "note": "x"}
    return "other"


def bool_to_int(o):
    o["spec"]["logEnabled"] = 1
    return "other"


def bookkeeping(o):
    for key in ("uid", "creationTimestamp", "generation", "managedFields"):
        o["metadata"].pop(key, None)
    o["metadata"]["resourceVersion"] = "999999999"
    return "none"


def noise(o):
    """Changes nothing a JSON reader would call a change: key order, null and empty members."""
    o["spec"] = dict(reversed(list(o["spec"].items())))
    o["spec"]["upgradeImage"] = None
    o["metadata"].setdefault("annotations", {})
    return "none"


EDITS = [drop_status, null_status, empty_status, flip_condition, drop_node, swap_conditions, add_status,
         drop_finalizers, clear_upgrade_log, change_spec, other_label, change_annotation, bool_to_int, bookkeeping,
         noise]
PROTECTED = ("status", ("metadata", "finalizers"))


@st.composite
def writes(draw):
    old = draw(upgrades())
    new = copy.deepcopy(old)
    made = set()
    for edit in draw(st.lists(st.sampled_from(EDITS), max_size=4, unique=True)):
        made.add(edit(new))
    label = draw(st.sampled_from(["keep", "true", "false", None]))
    if label != "keep":
        _set_label(new, label)
    user, groups = draw(st.sampled_from([("admin", []), ("jane", ["upgrade-admins"]), (CONTROLLER, []),
                                         (CONTROLLER + "-other", [CONTROLLER])]))
    return old, new, made - {None}, user, groups


def _label(obj):
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL)


def _protected(obj):
    return {"status": obj.get("status") or None, "finalizers": obj["metadata"].get("finalizers") or None}


def _unprotected(obj):
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "finalizers"}
    return out


def _call(client, path, document):
    response = client.post(path, data=json.dumps(document), content_type="application/json")
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["response"]["uid"] == document["request"]["uid"]
    return answer["response"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes(), st.booleans(), st.booleans())
def test_guard_matches_the_intent_of_the_write(write, strict, dry_run):
    old, new, made, user, groups = write
    client = CLIENTS[strict]
    document = review(old, new, user=user, groups=tuple(groups), dry_run=dry_run)
    validated = _call(client, "/validate", document)
    mutated = _call(client, "/mutate", document)

    exempt = user == CONTROLLER or "upgrade-admins" in groups
    dismissal = _label(old) != _label(new)
    # edits can undo each other (drop a status, then add one): compare the fields themselves, plainly
    protected_changed = _protected(old) != _protected(new)
    if strict:
        violation = not exempt and protected_changed
    else:
        violation = not exempt and dismissal and protected_changed and "other" not in made

    # /validate and /mutate agree, and both match the oracle
    assert validated["allowed"] is (not violation)
    assert ("patch" in mutated) is violation and mutated["allowed"] is True
    assert "patch" not in validated and "patchType" not in validated
    if not violation:
        assert mutated == {"uid": document["request"]["uid"], "allowed": True}
        return
    assert validated["status"]["code"] == 403 and len(validated["status"]["message"].encode()) < 1024

    patch = json.loads(base64.b64decode(mutated["patch"]))
    assert all(op["op"] in ("add", "remove") for op in patch)
    restored = jsonpatch.apply_patch(new, patch)
    # the protected fields are back exactly; every other change of the write is kept
    assert _protected(restored) == _protected(old)
    assert _unprotected(restored) == _unprotected(new)
    # the apiserver calls /validate with the mutated object next: it must pass
    assert _call(client, "/validate", review(old, restored, user=user, groups=tuple(groups)))["allowed"] is True

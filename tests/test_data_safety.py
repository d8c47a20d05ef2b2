"""Data safety at scale: generated Upgrades and writes, through the app's /validate and /mutate.

Every damaging dismissal (the read-message label changed, nothing else meant, a protected field lost or
altered) is denied by /validate, and /mutate's patch gives back exactly the stored protected fields and
exactly the rest of the write. Every other write (kubectl label, the exempt controller, a status change
without a dismissal, a dismissal with other edits) is allowed untouched by both.

The number of cases: 200, or 10,000 with UPGRADE_GUARD_LONG_TESTS=1 (or UPGRADE_GUARD_PROPERTY_CASES=N).
"""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.figures import FIGURES
from tests.switches import amount
from tests.upgrades import ADMIN, CONDITIONS, CONTROLLER, LABEL, finished_upgrade, review
from webhook.app import create_app
from webhook.config import Config
from webhook.values import lookup, same

CASES = int(amount("UPGRADE_GUARD_PROPERTY_CASES", 200, 10_000))
CONFIG = Config()
PROTECTED = [p.keys for p in CONFIG.protected]
COUNTS: Counter = Counter()

keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=10)
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
           | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=10))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=8)
conditions = st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(CONDITIONS), "status": st.sampled_from(["True", "False", "Unknown"])},
    optional={"reason": st.text(max_size=10), "lastUpdateTime": st.just("2025-03-10T10:09:34Z")}),
    min_size=1, max_size=7)
statuses = st.fixed_dictionaries({"conditions": conditions}, optional={
    "nodeStatuses": st.dictionaries(st.from_regex(r"\Aharvester-node-[0-9]{1,2}\Z"),
                                    st.fixed_dictionaries({"state": st.sampled_from(["Succeeded", "Pre-drained"])}),
                                    max_size=4),
    "previousVersion": st.text(max_size=8), "upgradeLog": st.text(max_size=20), "extra": values})


@st.composite
def stored_upgrades(draw) -> dict:
    upgrade = finished_upgrade(nodes=draw(st.integers(1, 3)))
    upgrade["status"] = draw(statuses)
    finalizers = draw(st.sampled_from([["wrangler.cattle.io/harvester-upgrade-controller"], ["a", "b"], None]))
    if finalizers is None:
        del upgrade["metadata"]["finalizers"]
    else:
        upgrade["metadata"]["finalizers"] = finalizers
    upgrade["metadata"]["labels"].update(draw(st.dictionaries(st.sampled_from(["team", "tier", LABEL]),
                                                              st.sampled_from(["true", "false", "x"]), max_size=2)))
    upgrade["metadata"]["annotations"] = draw(st.dictionaries(keys, st.text(max_size=10), max_size=3))
    return upgrade


def _damage(draw, write: dict, stored: dict) -> None:
    """Lose or alter status and/or finalizers, the ways a careless client does."""
    for target in draw(st.sets(st.sampled_from(["status", "finalizers"]), min_size=1)):
        if target == "status":
            how = draw(st.sampled_from(["drop", "null", "empty", "drop-key", "flip-condition", "replace"]))
            if how == "drop":
                write.pop("status", None)
            elif how in ("null", "empty"):
                write["status"] = None if how == "null" else {}
            elif how == "drop-key":
                write["status"].pop(draw(st.sampled_from(sorted(write["status"]))))
            elif how == "flip-condition":
                condition = draw(st.sampled_from(write["status"]["conditions"]))
                condition["status"] = {"True": "False"}.get(condition["status"], "True")
            else:
                write["status"] = draw(values)
        else:
            how = draw(st.sampled_from(["drop", "empty", "other"]))
            if how == "drop":
                write["metadata"].pop("finalizers", None)
            else:
                write["metadata"]["finalizers"] = [] if how == "empty" else ["someone-else"]


def _relabel(draw, write: dict) -> None:
    labels = write["metadata"]["labels"]
    if LABEL in labels and draw(st.booleans()):
        del labels[LABEL]
    else:
        labels[LABEL] = "true" if labels.get(LABEL) != "true" else "false"


@st.composite
def writes(draw) -> tuple[dict, dict, str, str]:
    """(stored, written, user, kind): kind says what the write is meant to be."""
    stored = draw(stored_upgrades())
    write = copy.deepcopy(stored)
    kind = draw(st.sampled_from(["dismissal", "kubectl-label", "controller", "status-edit", "dismissal-and-edit"]))
    user = CONTROLLER if kind == "controller" else ADMIN
    if kind in ("dismissal", "kubectl-label", "controller", "dismissal-and-edit"):
        _relabel(draw, write)
    if kind in ("dismissal", "controller", "status-edit", "dismissal-and-edit"):
        _damage(draw, write, stored)
    if kind == "dismissal-and-edit":
        write["spec"]["version"] = "v1.5.0"
    for key in draw(st.sets(st.sampled_from(["managedFields", "generation", "uid", "creationTimestamp"]))):
        write["metadata"].pop(key, None)  # what the dashboard strips; bookkeeping, never intent
    if draw(st.booleans()):
        write["metadata"]["resourceVersion"] = "4818"
    if draw(st.booleans()):  # key order means nothing
        write = json.loads(json.dumps(write, sort_keys=True))
    return stored, write, user, kind


def _loses_protected(stored: dict, write: dict) -> bool:
    return any(not same(lookup(stored, keys), lookup(write, keys)) for keys in PROTECTED)


def _without_protected(obj: dict) -> dict:
    out = copy.deepcopy(obj)
    out.pop("status", None)
    out["metadata"].pop("finalizers", None)
    return out


def _post(client, path: str, document: dict) -> dict:
    answer = client.post(path, data=json.dumps(document), content_type="application/json")
    assert answer.status_code == 200, answer.get_data()[:300]
    return answer.get_json()["response"]


def test_data_safety():
    client = create_app(CONFIG).test_client()

    @settings(max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=writes())
    def check(case):
        stored, write, user, kind = case
        document = review(stored, write, user=user)
        validated, mutated = _post(client, "/validate", document), _post(client, "/mutate", document)
        damaging = kind == "dismissal" and _loses_protected(stored, write)
        COUNTS["cases"] += 1
        if damaging:
            COUNTS["damaging dismissals"] += 1
            assert validated["allowed"] is False and validated["status"]["code"] == 403
            assert mutated["allowed"] is True and mutated["patchType"] == "JSONPatch"
            restored = jsonpatch.apply_patch(write, json.loads(base64.b64decode(mutated["patch"])))
            for keys in PROTECTED:  # exactly as stored (where a field was not changed, [] and absent are one)
                assert lookup(restored, keys) == lookup(stored, keys) or same(lookup(write, keys),
                                                                              lookup(stored, keys)), keys
            assert _without_protected(restored) == _without_protected(write), "the patch touched the rest"
        else:
            COUNTS["legitimate writes"] += 1
            assert validated == {"uid": document["request"]["uid"], "allowed": True}, validated
            assert mutated == {"uid": document["request"]["uid"], "allowed": True}, mutated

    check()
    FIGURES.set("data-safety cases checked",
                f"{COUNTS['cases']} ({COUNTS['damaging dismissals']} damaging dismissals all denied and restored, "
                f"{COUNTS['legitimate writes']} legitimate writes all left alone)")
    assert COUNTS["cases"] >= CASES and COUNTS["damaging dismissals"] > CASES // 10

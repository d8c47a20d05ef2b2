"""The decision's case table: every rule of the guard, on the writes real clients make."""

from __future__ import annotations

import copy

import jsonpatch
import pytest

from tests.upgrades import ADMIN, CONTROLLER, LABEL, dashboard_put, finished_upgrade, kubectl_label, labelled
from webhook.config import Config, FieldPath
from webhook.decision import Request, decide

STORED = finished_upgrade()
STRICT = {"strict": True}


def edit(obj: dict, change) -> dict:
    out = copy.deepcopy(obj)
    change(out)
    return out


def without_status(obj: dict) -> dict:
    return edit(obj, lambda o: o.pop("status"))


def wipe_status(o: dict) -> None:
    o.pop("status", None)


NO_STATUS = without_status(STORED)
NO_LABELS = edit(STORED, lambda o: o["metadata"].pop("labels"))
UPGRADING = edit(STORED, lambda o: o["status"]["conditions"][0].update(status="Unknown"))

# id: (old, new, user, groups, config, expected violation fields (None = allowed))
CASES = {
    "dashboard PUT drops status and finalizers": (STORED, dashboard_put(STORED), ADMIN, (), {},
                                                   ("status", "metadata.finalizers")),
    "dashboard PUT drops status only": (STORED, edit(labelled(STORED), wipe_status), ADMIN, (), {}, ("status",)),
    "dashboard PUT removes the label": (labelled(STORED), dashboard_put(STORED, None), ADMIN, (), {},
                                        ("status", "metadata.finalizers")),
    "dashboard PUT changes the label's value": (labelled(STORED, "false"), dashboard_put(STORED), ADMIN, (), {},
                                                ("status", "metadata.finalizers")),
    "kubectl label": (STORED, kubectl_label(STORED), ADMIN, (), {}, None),
    "kubectl label removal": (labelled(STORED), kubectl_label(STORED, None), ADMIN, (), {}, None),
    "controller progress update": (UPGRADING, STORED, CONTROLLER, (), {}, None),
    "controller initialises a wiped upgrade": (NO_STATUS, labelled(STORED), CONTROLLER, (), {}, None),
    "exempt controller even when it wipes with the label": (STORED, dashboard_put(STORED), CONTROLLER, (), {},
                                                            None),
    "UpgradeLog controller clears upgradeLog": (labelled(STORED), edit(labelled(STORED), lambda o: o["status"]
                                                .update(upgradeLog="")), CONTROLLER, (), {}, None),
    "someone else clears upgradeLog, label unchanged": (labelled(STORED), edit(labelled(STORED), lambda o: o[
        "status"].update(upgradeLog="")), ADMIN, (), {}, None),
    "status wiped without a dismissal (default mode)": (STORED, NO_STATUS, ADMIN, (), {}, None),
    "status wiped without a dismissal (strict)": (STORED, NO_STATUS, ADMIN, (), STRICT, ("status",)),
    "dismissal with a spec change": (STORED, edit(dashboard_put(STORED), lambda o: o["spec"].update(
        version="v1.5.0")), ADMIN, (), {}, None),
    "dismissal with another label changed": (STORED, edit(dashboard_put(STORED), lambda o: o["metadata"][
        "labels"].update(team="a")), ADMIN, (), {}, None),
    "dismissal with an annotation changed": (STORED, edit(dashboard_put(STORED), lambda o: o["metadata"][
        "annotations"].clear()), ADMIN, (), {}, None),
    "strict: dismissal with a spec change": (STORED, edit(dashboard_put(STORED), lambda o: o["spec"].update(
        version="v1.5.0")), ADMIN, (), STRICT, ("status", "metadata.finalizers")),
    "strict: exempt user edits status": (STORED, UPGRADING, CONTROLLER, (), STRICT, None),
    "strict: exempt group edits status": (STORED, UPGRADING, "jane", ("ops",), {**STRICT, "exempt_groups": {"ops"}},
                                          None),
    "strict: kubectl label": (STORED, kubectl_label(STORED), ADMIN, (), STRICT, None),
    "strict: admin edits status by hand": (STORED, UPGRADING, ADMIN, (), STRICT, ("status",)),
    "dismissal sets status to null": (STORED, edit(labelled(STORED), lambda o: o.update(status=None)), ADMIN, (),
                                      {}, ("status",)),
    "dismissal empties status": (STORED, edit(labelled(STORED), lambda o: o.update(status={})), ADMIN, (), {},
                                 ("status",)),
    "dismissal flips one condition": (STORED, edit(labelled(STORED), lambda o: o["status"]["conditions"][3]
                                                   .update(status="False")), ADMIN, (), {}, ("status",)),
    "dismissal drops one node": (STORED, edit(labelled(STORED), lambda o: o["status"]["nodeStatuses"]
                                              .pop("harvester-node-1")), ADMIN, (), {}, ("status",)),
    "dismissal adds a status where there was none": (NO_STATUS, labelled(STORED), ADMIN, (), {}, ("status",)),
    "dismissal of an upgrade without status": (NO_STATUS, labelled(NO_STATUS), ADMIN, (), {}, None),
    "labels absent before, only read-message after": (NO_LABELS, edit(NO_LABELS, lambda o: (
        o["metadata"].update(labels={LABEL: "true"}), o.pop("status"))), ADMIN, (), {}, ("status",)),
    "status keys reordered with the label": (STORED, edit(labelled(STORED), lambda o: o.update(
        status=dict(reversed(list(o["status"].items()))))), ADMIN, (), {}, None),
    "conditions reordered with the label": (STORED, edit(labelled(STORED), lambda o: o["status"]["conditions"]
                                                         .reverse()), ADMIN, (), {}, ("status",)),
    "true is not the string true": (STORED, edit(dashboard_put(STORED), lambda o: o["spec"].update(
        logEnabled="true")), ADMIN, (), {}, None),
    "true is not 1": (STORED, edit(dashboard_put(STORED), lambda o: o["spec"].update(logEnabled=1)), ADMIN, (),
                      {}, None),
    "1 is 1.0": (edit(STORED, lambda o: o["spec"].update(n=1)), edit(dashboard_put(STORED), lambda o: o["spec"]
                                                                      .update(n=1.0)), ADMIN, (), {},
                 ("status", "metadata.finalizers")),
    "null and empty members are absent": (STORED, edit(dashboard_put(STORED), lambda o: o["spec"].update(
        upgradeImage=None, extra={}, more=[])), ADMIN, (), {}, ("status", "metadata.finalizers")),
    "finalizers emptied": (STORED, edit(labelled(STORED), lambda o: o["metadata"].update(finalizers=[])), ADMIN,
                           (), {}, ("metadata.finalizers",)),
    "stale bookkeeping is no change": (STORED, edit(dashboard_put(STORED), lambda o: o["metadata"].update(
        resourceVersion="1", deletionGracePeriodSeconds=0, selfLink="/x")), ADMIN, (), {},
        ("status", "metadata.finalizers")),
    "a group named like the exempt user is not exempt": (STORED, dashboard_put(STORED), ADMIN, (CONTROLLER,), {},
                                                         ("status", "metadata.finalizers")),
    "a similar user name is not exempt": (STORED, dashboard_put(STORED), CONTROLLER + "2", (), {},
                                          ("status", "metadata.finalizers")),
    "exempt group": (STORED, dashboard_put(STORED), "jane", ("ops",), {"exempt_groups": {"ops"}}, None),
    "no exempt users configured": (STORED, dashboard_put(STORED), CONTROLLER, (), {"exempt_users": set()},
                                   ("status", "metadata.finalizers")),
    "custom label key": (STORED, dashboard_put(labelled(STORED, "x", "example.com/seen")) , ADMIN, (),
                         {"label": "example.com/seen"}, None),
    "custom label key, dismissal of it": (STORED, edit(dashboard_put(STORED, None), lambda o: o["metadata"][
        "labels"].update({"example.com/seen": "yes"})), ADMIN, (), {"label": "example.com/seen"},
        ("status", "metadata.finalizers")),
    "big cluster, 500 nodes": (finished_upgrade(500), dashboard_put(finished_upgrade(500)), ADMIN, (), {},
                               ("status", "metadata.finalizers")),
}


def request(old, new, user=ADMIN, groups=(), operation="UPDATE", group="harvesterhci.io", kind="Upgrade",
            subresource="") -> Request:
    return Request(operation=operation, group=group, kind=kind, subresource=subresource,
                   namespace="harvester-system", name="hvst-upgrade-8fnwl", user=user, groups=tuple(groups),
                   old=old, new=new)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_case_table(case):
    old, new, user, groups, config, expected = CASES[case]
    decision = decide(request(old, new, user, groups), Config(**config))
    assert (decision.fields or None) == expected, decision.reason
    assert decision.violation == (expected is not None)
    if expected:
        restored = jsonpatch.apply_patch(new, decision.patch)
        for path in decision.changes:
            assert _at(restored, path.path.keys) == _at(old, path.path.keys)
        unprotected = {k: v for k, v in restored.items() if k != "status"}
        new_unprotected = {k: v for k, v in new.items() if k != "status"}
        unprotected["metadata"] = {k: v for k, v in unprotected["metadata"].items() if k != "finalizers"}
        new_unprotected["metadata"] = {k: v for k, v in new_unprotected["metadata"].items() if k != "finalizers"}
        assert unprotected == new_unprotected, "the patch touched something that is not protected"


def _at(obj, keys):
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return "<absent>"
        obj = obj[key]
    return obj


NOT_EXAMINED = {
    "CREATE": dict(operation="CREATE", old=None),
    "DELETE": dict(operation="DELETE", new=None),
    "CONNECT": dict(operation="CONNECT"),
    "status subresource": dict(subresource="status"),
    "another kind": dict(kind="Pod"),
    "another group's Upgrade": dict(group="upgrade.cattle.io"),
    "object is a string": dict(new="not an object"),
    "oldObject is null": dict(old=None),
    "oldObject is a list": dict(old=[]),
}


@pytest.mark.parametrize("case", NOT_EXAMINED, ids=list(NOT_EXAMINED))
@pytest.mark.parametrize("strict", [False, True])
def test_what_it_does_not_examine_is_allowed(case, strict):
    fields = {"old": STORED, "new": dashboard_put(STORED), **NOT_EXAMINED[case]}
    decision = decide(request(**fields), Config(strict=strict))
    assert not decision.violation and not decision.patch


def test_message_says_what_is_lost_and_the_safe_way():
    decision = decide(request(STORED, dashboard_put(STORED)), Config())
    assert "status: 7 conditions, previousVersion" not in decision.message  # ordering is the stored one
    assert "status: 7 conditions, imageID, previousVersion, repoInfo, upgradeLog, 3 node statuses" in decision.message
    assert "metadata.finalizers" in decision.message
    assert "kubectl -n harvester-system label upgrade hvst-upgrade-8fnwl harvesterhci.io/read-message=true" \
        in decision.message
    assert "--overwrite" not in decision.message
    assert len(decision.message.encode()) < 1024
    assert len(decision.warning) < 256 and "status, metadata.finalizers" in decision.warning


def test_message_for_a_label_removal_and_a_value_change():
    removal = decide(request(labelled(STORED), dashboard_put(STORED, None)), Config())
    assert removal.message.endswith("label upgrade hvst-upgrade-8fnwl harvesterhci.io/read-message-")
    change = decide(request(labelled(STORED, "false"), dashboard_put(STORED)), Config())
    assert "harvesterhci.io/read-message=true --overwrite" in change.message


def test_message_in_strict_mode_points_at_the_exemption():
    decision = decide(request(STORED, UPGRADING), Config(strict=True))
    assert "strict mode" in decision.message and "exempt" in decision.message
    assert "status (changed: conditions)" in decision.message


def test_one_node_and_one_condition_are_singular():
    old = finished_upgrade(1)
    old["status"]["conditions"] = old["status"]["conditions"][:1]
    decision = decide(request(old, dashboard_put(old)), Config())
    assert "1 condition," in decision.message and "1 node status" in decision.message


def test_message_stays_short_with_long_paths():
    config = Config(protected=tuple(FieldPath(("status", "x" * 200 + str(i))) for i in range(10)))
    old = edit(STORED, lambda o: o["status"].update({"x" * 200 + str(i): i for i in range(10)}))
    new = edit(labelled(old), lambda o: [o["status"].pop("x" * 200 + str(i)) for i in range(10)])
    decision = decide(request(old, new), config)
    assert decision.violation and len(decision.message.encode()) < 1024 and len(decision.warning) < 256


def test_patch_is_whole_field_adds_without_tests():
    decision = decide(request(STORED, dashboard_put(STORED)), Config())
    assert decision.patch == [
        {"op": "add", "path": "/status", "value": STORED["status"]},
        {"op": "add", "path": "/metadata/finalizers", "value": STORED["metadata"]["finalizers"]},
    ]


def test_patch_removes_what_the_old_object_lacked():
    decision = decide(request(NO_STATUS, labelled(STORED)), Config())
    assert decision.patch == [{"op": "remove", "path": "/status"}]


def test_patch_escapes_pointer_keys_and_builds_missing_parents():
    key = "example.com/keep~me"
    old = edit(STORED, lambda o: o["metadata"]["annotations"].update({key: "v"}))
    new = edit(dashboard_put(old), lambda o: o["metadata"].pop("annotations"))
    config = Config(protected=(FieldPath.parse("/metadata/annotations/example.com~1keep~0me"),
                               FieldPath.parse("status.conditions")))
    decision = decide(request(old, new), config)
    # the annotations map itself changed too (another annotation was dropped): not a label-only change
    assert not decision.violation
    decision = decide(request(old, new), Config(protected=config.protected, strict=True))
    assert decision.patch == [
        {"op": "add", "path": "/metadata/annotations", "value": {key: "v"}},
        {"op": "add", "path": "/status", "value": {"conditions": old["status"]["conditions"]}},
    ]
    restored = jsonpatch.apply_patch(new, decision.patch)
    assert restored["metadata"]["annotations"][key] == "v"
    assert restored["status"]["conditions"] == old["status"]["conditions"]


def test_protected_paths_inside_another_are_folded():
    config = Config(protected=(FieldPath.parse("status.conditions"), FieldPath.parse("status"),
                               FieldPath.parse("status")))
    assert [str(p) for p in config.protected] == ["status"]


@pytest.mark.parametrize("text", ["", ".", "a..b", "/", "/a//b"])
def test_bad_field_paths_are_refused(text):
    with pytest.raises(ValueError):
        FieldPath.parse(text)

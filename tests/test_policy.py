"""The CEL in the manifests, evaluated on the decision's case table: the webhooks' matchConditions never keep a
violation from the guard, and the ValidatingAdmissionPolicy decides as /validate does."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.apiserver import ApiError, _cel_request, policy_denial
from tests.cel import CelError, compile_expression, is_true
from tests.kustomize import find, rendered
from tests.test_decision import CASES
from tests.upgrades import ADMIN, CONTROLLER, LABEL, finished_upgrade, review
from webhook import cel, manifests
from webhook.admission import respond
from webhook.config import Config
from webhook.review import Review

STORED = finished_upgrade()

# Cases the policy's CEL decides otherwise than the guard, and why (also in the README).
CEL_CANNOT = {
    "null and empty members are absent": "CEL compares nested values as they are; the guard reads a null, {} or [] "
                                         "member as absent at any depth. The apiserver prunes null and unknown "
                                         "members of an Upgrade before admission, so a real write never differs so.",
}


def _edit(obj: dict, label: bool, **top) -> dict:
    """A copy with the read-message label set (or not) and top-level members replaced (None: removed)."""
    out = copy.deepcopy(obj)
    if label:
        out["metadata"]["labels"][LABEL] = "true"
    for key, value in top.items():
        holder = out["metadata"] if key == "finalizers" else out
        if value is None:
            holder.pop(key, None)
        else:
            holder[key] = value
    return out


# More cases for the CEL only: emptiness at the top of a protected field, which the guard reads as absence.
EMPTY_CASES = {
    "dismissal turns an absent status into {}": (_edit(STORED, False, status=None),
                                                 _edit(STORED, True, status={}), True),
    "dismissal turns absent finalizers into []": (_edit(STORED, False, finalizers=None),
                                                  _edit(STORED, True, finalizers=[]), True),
    "dismissal drops a status of {}, and the finalizers": (_edit(STORED, False, status={}),
                                                           _edit(STORED, True, status=None, finalizers=None), False),
}


def _request(old, new, user, groups) -> dict:
    """The AdmissionRequest the apiserver sends for this update (any shape of object and oldObject)."""
    request = review(STORED, STORED, user=user, groups=groups)["request"]
    return {**request, "object": new, "oldObject": old}


def _validate_allows(request: dict, config: Config) -> bool:
    """/validate's own answer (the function the endpoint serves), for this config."""
    answer, _ = respond("validate", Review.parse(json.dumps({"apiVersion": "admission.k8s.io/v1",
                                                             "kind": "AdmissionReview", "request": request}).encode()),
                                 config)
    return answer["response"]["allowed"]


def _conditions_hold(conditions: list[dict], request: dict) -> bool:
    return all(is_true(c["expression"], object=request["object"], oldObject=request["oldObject"],
                       request=_cel_request(request)) for c in conditions)


def _policy_allows(config: Config, request: dict) -> bool:
    spec = manifests.admission_policy(config)["spec"]
    if not _conditions_hold(spec["matchConditions"], request):
        return True
    return policy_denial(spec, request, "denied") is None


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_match_conditions_send_every_violation_to_the_guard(case):
    old, new, user, groups, config, expected = CASES[case]
    config = Config(**config)
    request = _request(old, new, user, groups)
    sent = _conditions_hold(cel.match_conditions(config), request)
    if expected:
        assert sent, "a violation the apiserver would never send to the guard"
    if not config.strict:  # default mode: exactly the non-exempt writes that change the label
        exempt = config.is_exempt(user, tuple(request["userInfo"]["groups"]))
        label_changed = old["metadata"].get("labels", {}).get(config.label) != \
            new["metadata"].get("labels", {}).get(config.label)
        assert sent == (not exempt and label_changed)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_policy_decides_as_validate_does(case):
    old, new, user, groups, config, expected = CASES[case]
    config = Config(**config)
    request = _request(old, new, user, groups)
    guard = _validate_allows(request, config)
    assert guard == (expected is None)
    if case in CEL_CANNOT:
        assert _policy_allows(config, request) != guard, f"CEL now expresses {case!r}: drop it from CEL_CANNOT"
    else:
        assert _policy_allows(config, request) == guard


@pytest.mark.parametrize("case", EMPTY_CASES, ids=list(EMPTY_CASES))
def test_the_policy_reads_empty_protected_fields_as_absent_as_validate_does(case):
    old, new, allowed = EMPTY_CASES[case]
    request = _request(old, new, ADMIN, ())
    assert _validate_allows(request, Config()) is allowed
    assert _policy_allows(Config(), request) is allowed


def test_validate_endpoint_agrees_with_its_answer_function(guard):
    """The live /validate answers each default-config case as `respond` does, which the policy is held to."""
    connection = guard.connect()
    for case, (old, new, user, groups, config, _) in CASES.items():
        if config:
            continue
        request = _request(old, new, user, groups)
        status, _, answer = connection.review("/validate", {"apiVersion": "admission.k8s.io/v1",
                                                            "kind": "AdmissionReview", "request": request})
        assert status == 200 and answer["response"]["allowed"] == _validate_allows(request, Config()), case
    connection.close()


def test_the_committed_policy_is_the_default_configs():
    policy = find(rendered("policy"), "ValidatingAdmissionPolicy")
    assert policy == manifests.admission_policy(Config())


def test_the_policy_denial_names_what_would_be_lost_and_the_safe_command():
    stored = STORED
    dismissal = copy.deepcopy(stored)
    dismissal["metadata"]["labels"][LABEL] = "true"
    del dismissal["status"], dismissal["metadata"]["finalizers"]
    spec = manifests.admission_policy(Config())["spec"]
    error = policy_denial(spec, _request(stored, dismissal, ADMIN, ()), "denied")
    assert isinstance(error, ApiError) and error.code == 403
    assert "would lose status metadata.finalizers" in error.message
    assert (f"kubectl -n harvester-system label upgrade hvst-upgrade-8fnwl {LABEL}=true" in error.message)


def _every_expression(config: Config) -> list[str]:
    spec = manifests.admission_policy(config)["spec"]
    return ([c["expression"] for c in cel.match_conditions(config)]
            + [c["expression"] for c in cel.match_conditions(Config(strict=True))]
            + [v["expression"] for v in spec["variables"]]
            + [v[k] for v in spec["validations"] for k in ("expression", "messageExpression")])


def test_expressions_compile_as_standard_cel():
    config = Config(exempt_groups=frozenset({"ops"}))
    for expression in _every_expression(config):
        compile_expression(expression)
    with pytest.raises(CelError):
        compile_expression("object.metadata.labels[?'a'].orValue('')")  # optional syntax: not standard


# Objects of any shape the apiserver could hand over: metadata, labels and status missing, null, or of odd types.
_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "true", "x"]),
                     lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from("ab"), inner,
                                                                                  max_size=2), max_leaves=4)
_labels = st.none() | st.dictionaries(st.sampled_from([LABEL, "other"]), st.sampled_from(["true", "false", ""]),
                                      max_size=2)
_metadata = st.none() | st.fixed_dictionaries({"name": st.just("hvst-upgrade-8fnwl")}, optional={
    "labels": _labels, "finalizers": st.none() | st.lists(st.sampled_from(["f", "g"]), max_size=2),
    "annotations": st.none() | st.dictionaries(st.sampled_from("ab"), st.just("v"), max_size=1)})
_upgrade = st.fixed_dictionaries({"apiVersion": st.just("harvesterhci.io/v1beta1"), "kind": st.just("Upgrade")},
                                 optional={"metadata": _metadata, "status": _json, "spec": _json})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old=_upgrade, new=_upgrade, strict=st.booleans(), user=st.sampled_from([ADMIN, CONTROLLER]))
def test_cel_never_fails_and_never_hides_a_violation(old, new, strict, user):
    config = Config(strict=strict)
    request = _request(old, new, user, ())
    sent = _conditions_hold(cel.match_conditions(config), request)  # raises CelError on any evaluation error
    guard = _validate_allows(request, config)
    if not guard:
        assert sent
    spec = manifests.admission_policy(config)["spec"]
    if sent:
        policy_denial(spec, request, "denied")  # evaluates every variable and validation without error

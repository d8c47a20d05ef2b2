"""Play kube-apiserver's part in admission, from the rendered manifests (shared/reference/apiserver-admission.md).

`Apiserver` stores Upgrade objects and runs every write through admission as the real one does:
- mutating webhooks (configurations sorted by name, webhooks in order), then the apiserver's own update
  bookkeeping (uid, creationTimestamp, generation from the stored object), then ValidatingAdmissionPolicies (a
  denial ends admission) and validating webhooks (every matching one called; the first denial or failure wins);
- for each webhook: rules, namespaceSelector, objectSelector, then matchConditions in CEL (`tests/cel.py`): one
  false skips the webhook, an error is a failed call under the failure policy;
- the call: `POST https://<svc>.<ns>.svc:<port><path>?timeout=<N>s` over TLS 1.2+ verified against the
  configuration's caBundle with SNI and host name `<svc>.<ns>.svc`, HTTP/1.1, kept-alive connections reused from a
  pool (an idle one the server has closed is dropped before use, as Go's transport notices), each new connection
  to an endpoint of the Service picked in turn (kube-proxy's part), `timeoutSeconds` as the deadline;
- the answer checked as the apiserver checks it (status 200-206, AdmissionReview v1, uid, patch and patchType, base64),
  a JSON Patch applied (an error there is a 500 whatever the failure policy), a denial turned into the apiserver's
  error, a failed call into `Internal error occurred: failed calling webhook ...` under `failurePolicy: Fail` and
  ignored under `Ignore`; dry-run refused for webhooks with side effects; the result stored unless dry-run.

Where it departs from the real one: one API version (no conversion, so matchPolicy never matters); no schema
validation, defaulting or pruning of the Upgrade CRD; no managedFields bookkeeping; no reinvocation (every
configuration here says `reinvocationPolicy: Never`); validating webhooks are called one after another, not in
parallel; no retry of 429/5xx with Retry-After; the timeout applies to each socket operation, not the whole call;
a policy's variables are all evaluated before its validations, not lazily.
"""

from __future__ import annotations

import base64
import copy
import http.client
import itertools
import json
import re
import select
import socket
import ssl
import uuid
from dataclasses import dataclass, field

import jsonpatch

from tests.cel import CelError, evaluate, is_true

ADMISSION_V1 = "admission.k8s.io/v1"
AUDIT_KEY = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
GROUP, VERSION, KIND, RESOURCE = "harvesterhci.io", "v1beta1", "Upgrade", "upgrades"
NAMESPACE_LABELS = {"harvester-system": {"kubernetes.io/metadata.name": "harvester-system"}}


class ApiError(Exception):
    """What a client gets back instead of the stored object."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(f"Error from server ({reason}): {message}")
        self.code, self.reason, self.message = code, reason, message


class CallFailed(Exception):
    """A webhook call that failed (not a denial): subject to the failure policy."""


@dataclass
class Call:
    """One attempt to call a webhook: the pod that answered (None if none did), what was sent and received."""

    webhook: str
    endpoint: tuple[str, int] | None
    review: dict
    answer: dict | None = None


@dataclass
class Admitted:
    object: dict
    warnings: list[str] = field(default_factory=list)
    audit: dict[str, str] = field(default_factory=dict)


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch, as `kubectl label` sends (the apiserver applies it before admission)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _selector_matches(selector: dict | None, labels: dict) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator, values = requirement["key"], requirement["operator"], requirement.get("values") or []
        present = key in labels
        if not {"In": present and labels[key] in values, "NotIn": not present or labels[key] not in values,
                "Exists": present, "DoesNotExist": not present}[operator]:
            return False
    return True


def _rule_matches(rules: list[dict], operation: str, namespaced: bool = True) -> bool:
    for rule in rules:
        if (any(o in ("*", operation) for o in rule.get("operations", []))
                and any(g in ("*", GROUP) for g in rule.get("apiGroups", []))
                and any(v in ("*", VERSION) for v in rule.get("apiVersions", []))
                and any(r in ("*", RESOURCE) for r in rule.get("resources", []))  # "*" is never a subresource
                and rule.get("scope", "*") in ("*", "Namespaced" if namespaced else "Cluster")):
            return True
    return False


def _labels(obj: object) -> dict:
    labels = obj.get("metadata", {}).get("labels") if isinstance(obj, dict) else None
    return labels if isinstance(labels, dict) else {}


def _cel_request(request: dict) -> dict:
    """The `request` CEL variable: the AdmissionRequest as JSON, its omitempty members left out when empty."""
    out = {k: v for k, v in request.items() if k not in ("object", "oldObject") and v not in ("", None)}
    out["userInfo"] = {k: v for k, v in request["userInfo"].items() if v not in ("", None, [], {})}
    return out


class Apiserver:
    def __init__(self, objects: list[dict], endpoints: dict[tuple[str, str], list[tuple[str, int]]] | None = None):
        """`objects`: a rendered install; `endpoints`: (namespace, service) -> the ready pods' host and port."""
        self.objects = copy.deepcopy(objects)
        self.endpoints = endpoints if endpoints is not None else {}
        self.store: dict[tuple[str, str], dict] = {}
        self.calls: list[Call] = []
        self._turn = itertools.count()
        self._idle: dict[tuple, list[http.client.HTTPSConnection]] = {}
        self._version = itertools.count(5000)
        self.dropped_audit_keys: list[str] = []  # keys the apiserver would log and drop

    def close(self) -> None:
        """Close the kept-alive connections, as a stopping apiserver does."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    # installing ----------------------------------------------------------------------------------------------

    def _of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def set_ca_bundle(self, ca_pem: bytes) -> None:
        """What the README's `kubectl patch` does: put the CA into every webhook's clientConfig.caBundle."""
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            for configuration in self._of_kind(kind):
                for webhook in configuration["webhooks"]:
                    webhook["clientConfig"]["caBundle"] = base64.b64encode(ca_pem).decode()

    def load_ca_bundles(self, bundles: dict[str, str | None]) -> None:
        """The caBundle (base64) another writer put into each webhook, by webhook name: what the self-managed guard
        patched into the configurations it found in the Kubernetes API."""
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            for configuration in self._of_kind(kind):
                for webhook in configuration["webhooks"]:
                    if bundles.get(webhook["name"]):
                        webhook["clientConfig"]["caBundle"] = bundles[webhook["name"]]

    def inject_ca(self, ca_by_secret: dict[str, bytes]) -> int:
        """cert-manager's cainjector: a configuration annotated `inject-ca-from: ns/certificate` gets the `ca.crt`
        of that Certificate's secret. Returns how many configurations it injected."""
        injected = 0
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            for configuration in self._of_kind(kind):
                source = configuration["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from")
                if not source:
                    continue
                namespace, name = source.split("/")
                (certificate,) = [c for c in self._of_kind("Certificate") if c["metadata"]["name"] == name
                                  and c["metadata"]["namespace"] == namespace]
                for webhook in configuration["webhooks"]:
                    bundle = ca_by_secret[certificate["spec"]["secretName"]]
                    webhook["clientConfig"]["caBundle"] = base64.b64encode(bundle).decode()
                injected += 1
        return injected

    def create(self, obj: dict) -> dict:
        """Store an object as the upgrade controller created it (the guard's rules never see CREATE)."""
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(next(self._version))
        self.store[(stored["metadata"]["namespace"], stored["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def get(self, namespace: str, name: str) -> dict:
        return copy.deepcopy(self.store[(namespace, name)])

    # writing -------------------------------------------------------------------------------------------------

    def update(self, obj: dict, user: str, groups: tuple[str, ...] = (), dry_run: bool = False) -> Admitted:
        """PUT: the whole object, as the dashboard and `kubectl replace` send it."""
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if key not in self.store:
            raise ApiError(404, "NotFound", f'upgrades.{GROUP} "{meta["name"]}" not found')
        stored = self.store[key]
        if meta.get("resourceVersion") not in (None, "", stored["metadata"]["resourceVersion"]):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on upgrades.{GROUP} "{meta["name"]}": '
                                            "the object has been modified; please apply your changes to the latest "
                                            "version and try again")
        request = self._request(obj, stored, user, groups, dry_run)
        admitted = Admitted(copy.deepcopy(obj))
        self._mutate(request, admitted)
        admitted.object = self._before_update(admitted.object, stored)
        request["object"] = copy.deepcopy(admitted.object)
        self._validate(request, admitted)
        if not dry_run:
            admitted.object["metadata"]["resourceVersion"] = str(next(self._version))
            self.store[key] = copy.deepcopy(admitted.object)
        return admitted

    def patch(self, namespace: str, name: str, patch: dict, user: str, groups: tuple[str, ...] = (),
              dry_run: bool = False) -> Admitted:
        """PATCH with a merge patch (`kubectl label`, `kubectl patch --type merge`): applied, then admitted as an
        UPDATE of the whole object."""
        return self.update(merge_patch(self.get(namespace, name), patch), user, groups, dry_run)

    def _request(self, obj: dict, stored: dict, user: str, groups: tuple[str, ...], dry_run: bool) -> dict:
        kind = {"group": GROUP, "version": VERSION, "kind": KIND}
        resource = {"group": GROUP, "version": VERSION, "resource": RESOURCE}
        options = {"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"}
        if dry_run:
            options["dryRun"] = ["All"]
        return {
            "uid": "", "kind": kind, "resource": resource, "requestKind": kind, "requestResource": resource,
            "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"], "operation": "UPDATE",
            "userInfo": {"username": user, "groups": [*groups, "system:authenticated"]},
            "object": copy.deepcopy(obj), "oldObject": copy.deepcopy(stored), "dryRun": dry_run, "options": options,
        }

    @staticmethod
    def _before_update(obj: dict, stored: dict) -> dict:
        """rest.BeforeUpdate and the CRD strategy: system fields come from the stored object; without a status
        subresource any change outside metadata bumps the generation."""
        out = copy.deepcopy(obj)
        meta, old_meta = out["metadata"], stored["metadata"]
        meta["uid"] = meta.get("uid") or old_meta.get("uid")
        meta["creationTimestamp"] = old_meta.get("creationTimestamp")
        outside = {k: v for k, v in out.items() if k != "metadata"}
        old_outside = {k: v for k, v in stored.items() if k != "metadata"}
        meta["generation"] = old_meta.get("generation", 1) + (outside != old_outside)
        return out

    # admission -----------------------------------------------------------------------------------------------

    def _webhooks(self, kind: str) -> list[dict]:
        configurations = sorted(self._of_kind(kind), key=lambda c: c["metadata"]["name"])
        return [w for c in configurations for w in c["webhooks"]]

    def _mutate(self, request: dict, admitted: Admitted) -> None:
        for webhook in self._webhooks("MutatingWebhookConfiguration"):
            request["object"] = copy.deepcopy(admitted.object)
            answer = self._admit(webhook, request, admitted, mutating=True)
            if answer and answer.get("patch"):
                patch = json.loads(base64.b64decode(answer["patch"], validate=True))
                try:
                    patched = jsonpatch.apply_patch(admitted.object, patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                    raise ApiError(500, "InternalError", f"Internal error occurred: {err}") from None
                if (patched.get("apiVersion"), patched.get("kind")) != (admitted.object.get("apiVersion"),
                                                                        admitted.object.get("kind")):
                    raise ApiError(500, "InternalError", "Internal error occurred: the patch changed the kind")
                admitted.object = patched

    def _validate(self, request: dict, admitted: Admitted) -> None:
        """The policy plugin runs before the validating webhooks and ends admission with its denial."""
        for policy in self._bound_policies():
            error = self._policy(policy, request)
            if error:
                raise error
        errors = []
        for webhook in self._webhooks("ValidatingWebhookConfiguration"):
            try:
                self._admit(webhook, request, admitted, mutating=False)
            except ApiError as err:
                errors.append(err)
        if errors:
            raise errors[0]

    def _admit(self, webhook: dict, request: dict, admitted: Admitted, mutating: bool) -> dict | None:
        """Call one webhook if it matches; its `response` when allowed, None when skipped or ignored."""
        if not (_rule_matches(webhook["rules"], request["operation"])
                and _selector_matches(webhook.get("namespaceSelector"), NAMESPACE_LABELS[request["namespace"]])
                and (_selector_matches(webhook.get("objectSelector"), _labels(request["object"]))
                     or _selector_matches(webhook.get("objectSelector"), _labels(request["oldObject"])))):
            return None
        name = webhook["name"]
        try:
            if not self._conditions_hold(webhook.get("matchConditions", []), request):
                return None
            if request["dryRun"] and webhook["sideEffects"] not in ("None", "NoneOnDryRun"):
                raise ApiError(400, "BadRequest", f'admission webhook "{name}" does not support dry run')
            answer = self._call(webhook, request, mutating)
        except CallFailed as err:
            if webhook.get("failurePolicy", "Fail") == "Ignore":
                admitted.audit[f"failed-open.{'mutation' if mutating else 'validation'}.webhook.admission.k8s.io"
                               f"/round_0_index_0"] = name
                return None
            raise ApiError(500, "InternalError",
                           f'Internal error occurred: failed calling webhook "{name}": {err}') from None
        admitted.warnings += answer.get("warnings") or []
        for key, value in (answer.get("auditAnnotations") or {}).items():
            if len(key) <= 63 and AUDIT_KEY.fullmatch(key):
                admitted.audit[f"{name}/{key}"] = value
            else:
                self.dropped_audit_keys.append(key)
        if answer.get("allowed") is not True:
            status = dict(answer.get("status") or {})
            code = max(int(status.get("code") or 0), 400)
            denied = f'admission webhook "{name}" denied the request'
            message = status.get("message") or status.get("reason")
            raise ApiError(code, status.get("reason") or "BadRequest",
                           f"{denied}: {message}" if message else f"{denied} without explanation")
        return answer

    @staticmethod
    def _conditions_hold(conditions: list[dict], request: dict) -> bool:
        """All true: call. One false: skip, whatever the others. Else an error: a failed call."""
        errors = []
        for condition in conditions:
            try:
                if not is_true(condition["expression"], object=request["object"], oldObject=request["oldObject"],
                               request=_cel_request(request)):
                    return False
            except CelError as err:
                errors.append(f"matchCondition {condition['name']!r}: {err}")
        if errors:
            raise CallFailed("; ".join(errors))
        return True

    def _bound_policies(self) -> list[dict]:
        bound = {b["spec"]["policyName"] for b in self._of_kind("ValidatingAdmissionPolicyBinding")
                 if "Deny" in b["spec"]["validationActions"]}
        return [p for p in self._of_kind("ValidatingAdmissionPolicy") if p["metadata"]["name"] in bound]

    def _policy(self, policy: dict, request: dict) -> ApiError | None:
        name, spec = policy["metadata"]["name"], policy["spec"]
        constraints = spec["matchConstraints"]
        if not (_rule_matches(constraints["resourceRules"], request["operation"])
                and _selector_matches(constraints.get("namespaceSelector"), NAMESPACE_LABELS[request["namespace"]])):
            return None
        denied = f"ValidatingAdmissionPolicy '{name}' with binding '{name}' denied request"
        try:
            if not self._conditions_hold(spec.get("matchConditions", []), request):
                return None
            return policy_denial(spec, request, denied)
        except (CallFailed, CelError) as err:
            if spec.get("failurePolicy", "Fail") == "Ignore":
                return None
            return ApiError(500, "InternalError", f"Internal error occurred: {denied}: {err}")

    # the call --------------------------------------------------------------------------------------------------

    def _call(self, webhook: dict, request: dict, mutating: bool) -> dict:
        reference = webhook["clientConfig"]["service"]
        host = f"{reference['name']}.{reference['namespace']}.svc"
        port = reference.get("port", 443)
        timeout = webhook.get("timeoutSeconds", 10)
        url = f"https://{host}:{port}{reference.get('path', '/')}?timeout={timeout}s"
        review = {"apiVersion": ADMISSION_V1, "kind": "AdmissionReview",
                  "request": {**copy.deepcopy(request), "uid": str(uuid.uuid4())}}
        body = json.dumps(review).encode()
        call = Call(webhook["name"], None, review)
        self.calls.append(call)
        try:
            connection, call.endpoint = self._connection(reference, host, port,
                                                         webhook["clientConfig"].get("caBundle"), timeout)
            connection.request("POST", url[len(f"https://{host}:{port}"):], body=body, headers={
                "Host": f"{host}:{port}", "Content-Type": "application/json", "Accept": "application/json, */*",
                "User-Agent": "kube-apiserver-admission"})
            response = connection.getresponse()
            data = response.read()
            if response.will_close:
                connection.close()
            else:
                self._idle.setdefault((host, port, webhook["clientConfig"].get("caBundle")), []).append(connection)
        except TimeoutError:
            raise CallFailed(f'failed to call webhook: Post "{url}": context deadline exceeded') from None
        except ssl.SSLCertVerificationError as err:
            raise CallFailed(f'failed to call webhook: Post "{url}": tls: failed to verify certificate: '
                             f"x509: {err.verify_message}") from None
        except (OSError, http.client.HTTPException) as err:
            raise CallFailed(f'failed to call webhook: Post "{url}": {_go_error(err, host, port)}') from None
        if not 200 <= response.status <= 206:
            raise CallFailed(f"failed to call webhook: the server responded with the status code {response.status}")
        try:
            answer = json.loads(data)
        except ValueError as err:
            raise CallFailed(f"failed to call webhook: {err}") from None
        call.answer = answer
        return verify_answer(answer, review["request"]["uid"], mutating)

    def _connection(self, reference: dict, host: str, port: int, ca_bundle: str | None,
                    timeout: float) -> tuple[http.client.HTTPSConnection, tuple[str, int]]:
        idle = self._idle.get((host, port, ca_bundle), [])
        while idle:
            connection = idle.pop()
            if select.select([connection.sock], [], [], 0)[0]:
                connection.close()  # the server closed it (or sent what it should not have): Go drops it too
                continue
            connection.sock.settimeout(timeout)
            return connection, connection.endpoint
        services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in self._of_kind("Service")}
        service = services.get((reference["namespace"], reference["name"]))
        if service is None:
            raise CallFailed(f'failed to call webhook: service "{reference["name"]}" not found')
        if not any(p["port"] == port for p in service["spec"]["ports"]):
            raise CallFailed(f'failed to call webhook: no service port {port} found for service "{reference["name"]}"')
        ready = self.endpoints.get((reference["namespace"], reference["name"]), [])
        if not ready:  # kube-proxy rejects connections to a Service without endpoints
            raise ConnectionRefusedError("connection refused")
        endpoint = ready[next(self._turn) % len(ready)]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        if ca_bundle:
            context.load_verify_locations(cadata=base64.b64decode(ca_bundle).decode())
        connection = _PodConnection(endpoint, host, context, timeout)
        connection.connect()
        return connection, endpoint


class _PodConnection(http.client.HTTPSConnection):
    """A connection to one pod, verified for the Service's name (SNI and host name), as the apiserver makes it."""

    def __init__(self, endpoint: tuple[str, int], server_name: str, context: ssl.SSLContext, timeout: float):
        super().__init__(endpoint[0], endpoint[1], timeout=timeout, context=context)
        self.endpoint = endpoint
        self.server_name = server_name
        self._tls = context

    def connect(self) -> None:
        # The call's deadline covers the dial and the handshake too (the handshake's own limit, 10 s, is longer).
        raw = socket.create_connection(self.endpoint, timeout=min(self.timeout, 10))
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.server_name)


def _go_error(err: Exception, host: str, port: int) -> str:
    if isinstance(err, ConnectionRefusedError):
        return f"dial tcp {host}:{port}: connect: connection refused"
    if isinstance(err, (ConnectionResetError, http.client.RemoteDisconnected)):
        return "EOF"
    return str(err)


def verify_answer(answer: object, uid: str, mutating: bool) -> dict:
    """VerifyAdmissionResponse: the checks the apiserver makes before it believes an answer."""
    if not isinstance(answer, dict) or (answer.get("apiVersion"), answer.get("kind")) != (ADMISSION_V1,
                                                                                         "AdmissionReview"):
        raise CallFailed("received invalid webhook response: expected webhook response of "
                         "admission.k8s.io/v1, Kind=AdmissionReview")
    response = answer.get("response")
    if not isinstance(response, dict):
        raise CallFailed("received invalid webhook response: response is not set")
    if response.get("uid") != uid:
        raise CallFailed(f"received invalid webhook response: expected response.uid={uid!r}, "
                         f"got {response.get('uid')!r}")
    patch, patch_type = response.get("patch"), response.get("patchType")
    if not mutating and (patch or patch_type):
        raise CallFailed("received invalid webhook response: validating webhook may not return a patch")
    if bool(patch) != bool(patch_type):
        raise CallFailed("received invalid webhook response: webhook returned only one of patch and patchType")
    if patch_type and patch_type != "JSONPatch":
        raise CallFailed(f"received invalid webhook response: webhook returned invalid patchType {patch_type!r}")
    if patch:
        try:
            operations = json.loads(base64.b64decode(patch, validate=True))
        except (ValueError, TypeError) as err:
            raise CallFailed(f"received invalid webhook response: bad patch: {err}") from None
        if not isinstance(operations, list):
            raise CallFailed("received invalid webhook response: the patch is not a JSON Patch array")
    return {**response, "allowed": response.get("allowed") is True}


def policy_denial(spec: dict, request: dict, denied: str) -> ApiError | None:
    """A ValidatingAdmissionPolicy's verdict once its matchConditions hold: its variables, then its validations.
    CelError propagates: the caller applies the failure policy."""
    activation = {"object": request["object"], "oldObject": request["oldObject"], "request": _cel_request(request)}
    variables: dict = {}
    for variable in spec.get("variables", []):
        variables[variable["name"]] = evaluate(variable["expression"], **activation, variables=variables)
    for validation in spec["validations"]:
        if is_true(validation["expression"], **activation, variables=variables):
            continue
        message = validation.get("message") or f"failed expression: {validation['expression']}"
        if validation.get("messageExpression"):
            try:
                message = evaluate(validation["messageExpression"], **activation, variables=variables) or message
            except CelError:
                pass  # the apiserver falls back to `message`
        code = {"Unauthorized": 401, "Forbidden": 403, "Invalid": 422, "RequestEntityTooLarge": 413}.get(
            validation.get("reason", "Invalid"), 422)
        return ApiError(code, validation.get("reason", "Invalid"), f"{denied}: {message}")
    return None

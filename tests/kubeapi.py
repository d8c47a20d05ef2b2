"""An in-test Kubernetes API server for the handful of endpoints the guard uses, over HTTPS with a token.

It answers with the real REST shapes and semantics (kube-apiserver's, for these resources):
- GET of a missing object: 404 with a `Status` (reason NotFound); lists are `<Kind>List` with
  `metadata.resourceVersion` and honour `labelSelector` (equality terms);
- POST of an existing name: 409 AlreadyExists; PUT with a stale `metadata.resourceVersion`: 409 Conflict
  (without one the update is unconditional, as Secrets allow); PUT of a missing object: 404;
- PATCH: JSON Patch, merge patch, and strategic merge patch for built-in kinds (`webhooks` merged by
  `name`; custom resources answer 415 to it, as CRDs do); a patch that names a resourceVersion is a
  precondition, 409 when stale;
- every write bumps one global resourceVersion; Secrets of type kubernetes.io/tls must hold tls.crt and
  tls.key (422 Invalid);
- `pods/<name>/portforward` over WebSocket (`v4.channel.k8s.io`: first frame on each channel names the
  port, then data on channel 0), relayed to a local port the test maps to the pod's port.
Departures: no watch, no field selectors, no admission, no defaulting beyond the metadata it sets.

Tests can take the API down (every connection is dropped until it is back) and hold requests at a gate so
that two replicas really race.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import hashlib
import json
import select
import socket
import ssl
import struct
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonpatch
import yaml

from webhook import certs

TOKEN = "upgrade-guard-test-token"
RESOURCES = {  # (group, plural): (kind, namespaced)
    ("", "secrets"): ("Secret", True),
    ("", "services"): ("Service", True),
    ("", "pods"): ("Pod", True),
    ("discovery.k8s.io", "endpointslices"): ("EndpointSlice", True),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): ("ValidatingWebhookConfiguration", False),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): ("MutatingWebhookConfiguration", False),
    ("harvesterhci.io", "upgrades"): ("Upgrade", True),
}
VERSIONS = {"": "v1", "discovery.k8s.io": "v1", "admissionregistration.k8s.io": "v1", "harvesterhci.io": "v1beta1"}
MERGE_KEYS = {"webhooks": "name", "ports": "port", "containers": "name"}
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _status(code: int, reason: str, message: str, **details) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, **details):
        super().__init__(message)
        self.code, self.document = code, _status(code, reason, message, **details)


def strategic_merge(target, patch, merge_keys=MERGE_KEYS):
    """Maps merge, null deletes, lists with a merge key merge item by item, other lists are replaced."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif key in merge_keys and isinstance(value, list) and isinstance(result.get(key), list):
            merged = list(result[key])
            for item in value:
                name = item.get(merge_keys[key])
                at = next((i for i, e in enumerate(merged) if e.get(merge_keys[key]) == name), None)
                if at is None:
                    merged.append(item)
                else:
                    merged[at] = strategic_merge(merged[at], item, merge_keys)
            result[key] = merged
        else:
            result[key] = strategic_merge(result.get(key), value, merge_keys)
    return result


def merge_patch(target, patch):
    return strategic_merge(target, patch, {})


class KubeApi:
    """The server; objects live in `objects[(group, plural, namespace, name)]`."""

    def __init__(self, tmp: Path):
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.lock = threading.RLock()
        self.version = 1000
        self.requests: list[tuple[str, str, str, int]] = []  # method, path, content type, answer's code
        self.dropped = 0  # connections dropped during an outage
        self.pod_ports: dict[tuple[str, str, int], int] = {}  # (namespace, pod, port) -> local port
        self.gates: dict[tuple[str, str], list] = {}
        self._up = threading.Event()
        self._up.set()
        out = Path(tmp) / "kubeapi"
        self.ca_file = out / "ca.crt"
        certs.write_bundle(out, ["localhost", "127.0.0.1"])
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(out / "tls.crt", out / "tls.key")
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.api = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    # -- life --------------------------------------------------------------------------------------------

    def __enter__(self) -> KubeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode()}}],
            "users": [{"name": "guard", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "guard"}}],
        }))
        return path

    @contextlib.contextmanager
    def outage(self):
        """While inside, every connection (new or kept alive) is dropped without an answer."""
        self._up.clear()
        try:
            yield
        finally:
            self._up.set()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def gate(self, method: str, path: str, parties: int) -> None:
        """The next `parties` requests `method path` wait for each other, then go on together."""
        self.gates[(method, path)] = [threading.Barrier(parties, timeout=10), parties]

    def _pass_gate(self, method: str, path: str) -> None:
        with self.lock:
            gate = self.gates.get((method, path))
            if gate is None:
                return
            gate[1] -= 1
            if gate[1] == 0:
                del self.gates[(method, path)]
        gate[0].wait()

    def answered(self, method: str, path_end: str) -> list[int]:
        """The codes of the answers to `method` on paths ending with `path_end`, in order."""
        with self.lock:
            return [code for m, path, _, code in self.requests if m == method and path.endswith(path_end)]

    # -- the store, also for tests that play an admin ----------------------------------------------------

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def put(self, document: dict) -> dict:
        """Create or overwrite directly (an admin's `kubectl apply`); returns the stored object."""
        group, _, version = document["apiVersion"].rpartition("/")
        plural = next(p for (g, p), (k, _) in RESOURCES.items() if g == group and k == document["kind"])
        meta = document["metadata"]
        with self.lock:
            stored = copy.deepcopy(document)
            stored["metadata"].setdefault("uid", str(uuid.uuid4()))
            stored["metadata"].setdefault("creationTimestamp", _now())
            stored["metadata"]["resourceVersion"] = self._next_version()
            self.objects[(group, plural, meta.get("namespace", ""), meta["name"])] = stored
            return copy.deepcopy(stored)

    def get(self, group: str, plural: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            found = self.objects.get((group, plural, namespace, name))
            return copy.deepcopy(found)

    def delete(self, group: str, plural: str, namespace: str, name: str) -> None:
        with self.lock:
            self.objects.pop((group, plural, namespace, name), None)

    # -- REST --------------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, content_type: str, body: bytes) -> tuple[int, dict]:
        group, plural, namespace, name = route(path)
        if (group, plural) not in RESOURCES:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        kind, namespaced = RESOURCES[(group, plural)]
        what = f"{plural}.{group}" if group else plural
        key = (group, plural, namespace, name)
        with self.lock:
            if not name:
                if method == "GET":
                    return 200, self._list(group, plural, kind, namespace, query)
                if method == "POST":
                    return 201, self._create(group, plural, kind, namespace, _json(body), what)
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
            current = self.objects.get(key)
            if current is None:
                raise ApiError(404, "NotFound", f'{what} "{name}" not found', name=name, group=group, kind=plural)
            if method == "GET":
                return 200, copy.deepcopy(current)
            if method == "DELETE":
                del self.objects[key]
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": name, "group": group, "kind": plural,
                                         "uid": current["metadata"]["uid"]}}
            if method == "PUT":
                return 200, self._update(key, current, _json(body), what)
            if method == "PATCH":
                return 200, self._patch(key, current, content_type, _json(body), what, group)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _list(self, group, plural, kind, namespace, query) -> dict:
        selector = dict(term.split("=", 1) for term in (query.get("labelSelector", [""])[0]).split(",") if "=" in term)
        items = [copy.deepcopy(o) for (g, p, ns, _), o in sorted(self.objects.items())
                 if g == group and p == plural and (not namespace or ns == namespace)
                 and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
        api_version = f"{group}/{VERSIONS[group]}" if group else "v1"
        return {"kind": f"{kind}List", "apiVersion": api_version, "metadata": {"resourceVersion": str(self.version)},
                "items": items}

    def _validate(self, document: dict, what: str, name: str) -> None:
        if document.get("kind") == "Secret" and document.get("type") == "kubernetes.io/tls":
            data = document.get("data") or {}
            for key in ("tls.crt", "tls.key"):
                if key not in data:
                    raise ApiError(422, "Invalid", f'Secret "{name}" is invalid: data[{key}]: Required value',
                                   name=name, kind="Secret")

    def _create(self, group, plural, kind, namespace, document, what) -> dict:
        meta = document.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{kind}.{VERSIONS[group]} is invalid: metadata.name: Required value")
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest",
                           "the namespace of the provided object does not match the namespace sent on the request")
        if (group, plural, namespace, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{what} "{name}" already exists', name=name, group=group, kind=plural)
        self._validate(document, what, name)
        document.setdefault("type", "Opaque") if kind == "Secret" else None
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(),
                    resourceVersion=self._next_version())
        meta.pop("managedFields", None)
        if not namespace:
            meta.pop("namespace")
        document["metadata"] = meta
        self.objects[(group, plural, namespace, name)] = document
        return copy.deepcopy(document)

    def _store(self, key, current: dict, updated: dict, what: str) -> dict:
        name = key[3]
        meta = updated.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        wanted = meta.get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {what} "{name}": the object has been '
                           "modified; please apply your changes to the latest version and try again",
                           name=name, group=key[0], kind=key[1])
        if current.get("kind") == "Secret" and updated.get("type", current.get("type")) != current.get("type"):
            raise ApiError(422, "Invalid", f'Secret "{name}" is invalid: type: Invalid value: "{updated.get("type")}": '
                           "field is immutable", name=name, kind="Secret")
        self._validate(updated, what, name)
        for kept in ("uid", "creationTimestamp", "namespace"):
            if kept in current["metadata"]:
                meta[kept] = current["metadata"][kept]
        meta["name"] = name
        meta["resourceVersion"] = self._next_version()
        if updated == current:
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]  # a no-op write changes nothing
        self.objects[key] = updated
        return copy.deepcopy(updated)

    def _update(self, key, current, document, what) -> dict:
        document.setdefault("type", current.get("type")) if current.get("kind") == "Secret" else None
        return self._store(key, current, document, what)

    def _patch(self, key, current, content_type, patch, what, group) -> dict:
        if content_type == "application/json-patch+json":
            try:
                updated = jsonpatch.apply_patch(current, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise ApiError(422, "Invalid", str(err)) from None
        elif content_type == "application/merge-patch+json":
            updated = merge_patch(current, patch)
        elif content_type == "application/strategic-merge-patch+json" and group != "harvesterhci.io":
            updated = strategic_merge(current, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                           "accepted media types include: application/json-patch+json, application/merge-patch+json")
        return self._store(key, current, updated, what)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(400, "BadRequest", "the body is not JSON") from None


def route(path: str) -> tuple[str, str, str, str]:
    """/api/v1/namespaces/NS/PLURAL/NAME or /apis/GROUP/VERSION/[namespaces/NS/]PLURAL[/NAME]."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return "", "", "", ""
    namespace = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    return group, plural, namespace, name


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Dropped connections (outages, clients going away) are part of the tests, not news."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server_version = "kube-apiserver-test"

    def setup(self) -> None:
        self.api: KubeApi = self.server.api
        if not self.api.up:
            with self.api.lock:
                self.api.dropped += 1
            self.request.close()
        else:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body: no 40 ms stall
            self.request = self.api.context.wrap_socket(self.request, server_side=True)
        super().setup()

    def _drop(self) -> None:
        with self.api.lock:
            self.api.dropped += 1
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass

    def _answer(self, code: int, document: dict) -> None:
        body = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        if not self.api.up:
            self._drop()
            return
        url = urlsplit(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._answer(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.api._pass_gate(self.command, url.path)
        if url.path.endswith("/portforward") and self.headers.get("Upgrade", "").lower() == "websocket":
            self._port_forward(url)
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            code, document = self.api.handle(self.command, url.path, parse_qs(url.query), content_type, body)
        except ApiError as err:
            code, document = err.code, err.document
        with self.api.lock:
            self.api.requests.append((self.command, url.path, content_type, code))
        if not self.api.up:
            self._drop()
            return
        self._answer(code, document)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    # -- port-forward over WebSocket ---------------------------------------------------------------------

    def _port_forward(self, url) -> None:
        group, plural, namespace, pod = route(url.path.rsplit("/", 1)[0])
        port = int(parse_qs(url.query).get("ports", ["0"])[0])
        if self.api.get("", "pods", namespace, pod) is None:
            self._answer(404, _status(404, "NotFound", f'pods "{pod}" not found', name=pod, kind="pods"))
            return
        protocols = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if "v4.channel.k8s.io" not in protocols:
            self._answer(400, _status(400, "BadRequest", "no supported WebSocket subprotocol"))
            return
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.close_connection = True
        prefix = struct.pack("<H", port)
        self._frame(b"\x00" + prefix)
        self._frame(b"\x01" + prefix)
        target = self.api.pod_ports.get((namespace, pod, port))
        try:
            upstream = socket.create_connection(("127.0.0.1", target), timeout=10) if target else None
        except OSError:
            upstream = None
        if upstream is None:
            self._frame(b"\x01" + f"error forwarding port {port} to pod {pod}: connection refused".encode())
            self._frame(b"", opcode=0x8)
            return
        with upstream:
            self._relay(upstream)

    def _relay(self, upstream: socket.socket) -> None:
        """One thread, both directions (an SSL socket must not be read and written from two threads)."""
        tunnel, pending = self.request, b""
        while True:
            ready = [tunnel] if tunnel.pending() else select.select([tunnel, upstream], [], [], 30)[0]
            if not ready:
                return
            if upstream in ready:
                data = upstream.recv(65536)
                if not data:
                    self._frame(b"", opcode=0x8)
                    return
                self._frame(b"\x00" + data)
            if tunnel in ready:
                chunk = tunnel.recv(65536)
                if not chunk:
                    return
                pending += chunk
                while (frame := _parse_frame(pending)) is not None:
                    opcode, data, pending = frame
                    if opcode == 0x8:
                        return
                    if opcode == 0x2 and data[:1] == b"\x00":
                        upstream.sendall(data[1:])

    def _frame(self, payload: bytes, opcode: int = 0x2) -> None:
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([size])
        elif size < 65536:
            head += bytes([126]) + struct.pack(">H", size)
        else:
            head += bytes([127]) + struct.pack(">Q", size)
        self.request.sendall(head + payload)


def _parse_frame(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """One whole frame from the front of `buffer` (opcode, unmasked payload, the rest), or None for more."""
    if len(buffer) < 2:
        return None
    size, at = buffer[1] & 0x7F, 2
    if size == 126:
        if len(buffer) < 4:
            return None
        size, at = struct.unpack(">H", buffer[2:4])[0], 4
    elif size == 127:
        if len(buffer) < 10:
            return None
        size, at = struct.unpack(">Q", buffer[2:10])[0], 10
    mask = b"\0\0\0\0"
    if buffer[1] & 0x80:
        mask, at = buffer[at:at + 4], at + 4
    if len(buffer) < at + size:
        return None
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(buffer[at:at + size]))
    return buffer[0] & 0x0F, data, buffer[at + size:]

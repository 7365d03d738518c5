"""An in-test fake Kubernetes API server: nodes and pods over HTTP on 127.0.0.1.

It models the documented behaviour of kube-apiserver that gpuslice's programs rely on
(https://kubernetes.io/docs/reference/using-api/api-concepts/), including what hurts:

* One global, increasing ``resourceVersion`` (as etcd's revision). Every object carries
  ``metadata.resourceVersion``, ``uid``, ``creationTimestamp``; a LIST carries the list's version.
* ``GET /api/v1/nodes[/name]``, ``GET /api/v1/pods``, ``/api/v1/namespaces/{ns}/pods[/name]``.
* Label selectors (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``)
  and field selectors (``metadata.name``, ``metadata.namespace``, ``spec.nodeName``,
  ``status.phase``; ``=``, ``==``, ``!=``); any other field is a 400, as the real server says.
* Watches (``?watch=1``): chunked streams of ``{"type":..,"object":..}`` lines. Without a
  ``resourceVersion`` (or with "0") the current objects come first as ADDED; with one, every
  change after it. A version older than the retained history gets HTTP 200 and one ERROR event
  with a Status of code 410 (``watch_gone_status`` = 410 answers an HTTP 410 instead).
  ``timeoutSeconds`` ends the stream; ``allowWatchBookmarks`` with ``bookmark_interval`` set
  sends BOOKMARKs.
* ``PATCH`` with ``application/merge-patch+json`` (RFC 7386) or ``application/json-patch+json``
  (RFC 6902, ``test`` included; a failed operation is a 422); other types are a 415. A patch
  carrying ``metadata.resourceVersion`` that is not the current one is a 409 Conflict. A patch
  that changes nothing does not bump the version and sends no event.
* ``PUT`` (update) with a stale ``metadata.resourceVersion``: 409 Conflict.
* ``POST .../pods/{name}/binding`` with a Binding: sets ``spec.nodeName``; a pod already bound
  is a 409. ``POST .../pods`` creates (409 AlreadyExists); ``DELETE`` removes.
* ``coordination.k8s.io/v1`` Leases (``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases``)
  and core/v1 Events (``/api/v1/namespaces/{ns}/events``) as pods are: create, get, PUT, list.
* HTTPS with ``tls=(cert, key)``; every request's ``Authorization`` header is recorded.
* Errors are Status objects (``{"kind":"Status","code":..,"reason":..,"message":..}``).

Tests drive it directly too: ``add_node``, ``add_pod``, ``update``, ``delete``, ``compact``,
``get``; read ``requests`` (every request) and ``mutations`` (every PATCH/PUT/POST/DELETE with
its parsed body and answer); inject faults with ``fault(...)`` (a status, a delay, a hang until
cleared, or a dropped connection) for the next ``times`` matching requests.

Use as a context manager or through the ``fake_apiserver`` pytest fixture (``conftest.py``).
A test in another language runs ``python3 fake_apiserver.py``: it prints its URL on the first
line of stdout and serves until stdin closes. Its control endpoints (not part of Kubernetes):
``POST /fake/fault`` (a Fault's fields as JSON), ``POST /fake/clear-faults``,
``POST /fake/compact``, ``GET /fake/mutations``, ``GET /fake/requests``.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeAPIServer", "Fault", "ApiError"]

_FIELDS = {
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "spec.nodeName": lambda o: o.get("spec", {}).get("nodeName", ""),
    "status.phase": lambda o: o.get("status", {}).get("phase", ""),
}


class ApiError(Exception):
    """An error answered as a Status object."""

    REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict",
               410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
               500: "InternalError", 503: "ServiceUnavailable"}

    def __init__(self, code: int, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.reason = reason or self.REASONS.get(code, "Unknown")

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": str(self), "reason": self.reason, "code": self.code}


@dataclass
class Fault:
    """A fault for requests whose method matches ``method`` (None: any) and whose path and query
    match the regular expression ``path``. ``status``: answer this error; ``delay``: wait first
    (seconds); ``hang``: wait until ``clear_faults`` or the server closes, then drop the
    connection; ``drop``: close the connection without answering. Applies ``times`` times
    (None: always)."""

    method: Optional[str] = None
    path: str = ""
    status: Optional[int] = None
    delay: float = 0.0
    hang: bool = False
    drop: bool = False
    times: Optional[int] = 1
    message: str = "injected fault"
    hits: int = 0


# ---------------------------------------------------------------- selectors and patches


def _split_top(s: str) -> list[str]:
    """Splits on commas outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p.strip() for p in out if p.strip()]


def parse_label_selector(sel: str) -> Callable[[dict], bool]:
    """A predicate over an object's labels; ApiError(400) on a malformed selector."""
    tests = []
    for req in _split_top(sel):
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", req)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                tests.append(lambda l, k=key, v=vals: l.get(k) in v)
            else:
                tests.append(lambda l, k=key, v=vals: l.get(k) not in v)
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", req)
        if m:
            key, op, val = m.groups()
            if op == "!=":
                tests.append(lambda l, k=key, v=val: l.get(k) != v)
            else:
                tests.append(lambda l, k=key, v=val: l.get(k) == v)
            continue
        m = re.fullmatch(r"(!?)([\w./-]+)", req)
        if m:
            neg, key = m.groups()
            tests.append(lambda l, k=key, n=bool(neg): (k in l) != n)
            continue
        raise ApiError(400, f"unable to parse requirement: {req!r}")
    return lambda obj: all(t(obj["metadata"].get("labels") or {}) for t in tests)


def parse_field_selector(sel: str) -> Callable[[dict], bool]:
    """A predicate over the supported fields; ApiError(400) otherwise, as the real server."""
    tests = []
    for req in _split_top(sel):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", req)
        if not m:
            raise ApiError(400, f"invalid field selector: {req!r}")
        key, op, val = m.groups()
        if key not in _FIELDS:
            raise ApiError(400, f'field label not supported: {key}')
        get = _FIELDS[key]
        if op == "!=":
            tests.append(lambda o, g=get, v=val: g(o) != v)
        else:
            tests.append(lambda o, g=get, v=val: g(o) == v)
    return lambda obj: all(t(obj) for t in tests)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    for p in parts:
        if isinstance(doc, dict) and p in doc:
            doc = doc[p]
        elif isinstance(doc, list) and p.isdigit() and int(p) < len(doc):
            doc = doc[int(p)]
        else:
            raise ApiError(422, f"path {path!r} not found")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 on a copy of ``doc``; ApiError(422) when an operation fails (``test`` included)."""
    if not isinstance(ops, list):
        raise ApiError(400, "json patch: expected an array of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, f"json patch: malformed operation {op!r}")
        kind, path = op["op"], op["path"]
        parts = _pointer(path)

        def parent_of(ps, p=path):
            if not ps:
                raise ApiError(422, f"json patch: cannot {kind} the whole document")
            return _walk(doc, ps[:-1], p), ps[-1]

        if kind == "test":
            if _walk(doc, parts, path) != op.get("value"):
                raise ApiError(422, f"testing value {path} failed")
        elif kind in ("add", "replace"):
            par, last = parent_of(parts)
            if kind == "replace":
                _walk(doc, parts, path)
            value = copy.deepcopy(op.get("value"))
            if isinstance(par, list):
                if last == "-":
                    par.append(value)
                elif last.isdigit() and int(last) <= len(par):
                    if kind == "add":
                        par.insert(int(last), value)
                    else:
                        par[int(last)] = value
                else:
                    raise ApiError(422, f"json patch: bad index in {path!r}")
            elif isinstance(par, dict):
                par[last] = value
            else:
                raise ApiError(422, f"json patch: {path!r} has no container")
        elif kind == "remove":
            par, last = parent_of(parts)
            _walk(doc, parts, path)
            if isinstance(par, list):
                par.pop(int(last))
            else:
                del par[last]
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_walk(doc, src, op.get("from", "")))
            if kind == "move":
                spar, slast = parent_of(src)
                if isinstance(spar, list):
                    spar.pop(int(slast))
                else:
                    del spar[slast]
            doc = json_patch(doc, [{"op": "add", "path": path, "value": value}])
        else:
            raise ApiError(400, f"json patch: unknown operation {kind!r}")
    return doc


# ---------------------------------------------------------------- the server


class FakeAPIServer:
    """The fake API server. Thread-safe: tests mutate it while programs talk to it."""

    def __init__(self, history: int = 1000, watch_gone_status: int = 200,
                 bookmark_interval: Optional[float] = None,
                 tls: Optional[tuple[str, str]] = None, client_ca: Optional[str] = None):
        """``tls``: (certificate file, key file) to serve HTTPS, as kube-apiserver does.
        ``client_ca``: with ``tls``, client certificates this CA signed are accepted (optional,
        as kube-apiserver's --client-ca-file); each request records the certificate's CN."""
        self._lock = threading.Condition()
        self._objects: dict[tuple[str, str, str], dict] = {}  # (kind, ns, name) -> object
        self._events: list[tuple[int, str, str, dict]] = []   # (rv, kind, type, object)
        self._history = history
        self._compacted = 0  # watches from a version below this get 410
        self._rv = itertools.count(1000)
        self._last_rv = 999
        self._faults: list[Fault] = []
        self._fault_cleared = threading.Event()
        self._closing = threading.Event()
        self.watch_gone_status = watch_gone_status
        self.bookmark_interval = bookmark_interval
        self.requests: list[dict] = []    # every request: method, path, query
        self.mutations: list[dict] = []   # PATCH/PUT/POST/DELETE: + content_type, body, status
        self.open_watches = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            if client_ca is not None:
                ctx.verify_mode = ssl.CERT_OPTIONAL
                ctx.load_verify_locations(client_ca)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()

    # -- lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing.set()
        self._fault_cleared.set()
        with self._lock:
            self._lock.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> "FakeAPIServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- faults
    def fault(self, **kw) -> Fault:
        """Adds a Fault (see its fields) and returns it."""
        f = Fault(**kw)
        with self._lock:
            self._faults.append(f)
            self._fault_cleared.clear()
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self._fault_cleared.set()

    def _take_fault(self, method: str, target: str) -> Optional[Fault]:
        with self._lock:
            for f in self._faults:
                if (f.method is None or f.method == method) and re.search(f.path, target):
                    f.hits += 1
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self._faults.remove(f)
                    return f
        return None

    # -- the store (tests call these directly)
    def _bump(self, kind: str, typ: str, obj: dict) -> dict:
        rv = next(self._rv)
        self._last_rv = rv
        obj["metadata"]["resourceVersion"] = str(rv)
        self._events.append((rv, kind, typ, copy.deepcopy(obj)))
        if len(self._events) > self._history:
            drop = len(self._events) - self._history
            self._compacted = self._events[drop - 1][0] + 1
            del self._events[:drop]
        self._lock.notify_all()
        return copy.deepcopy(obj)

    def _create(self, kind: str, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ApiError(422, f"{kind}: metadata.name: Required value")
        ns = meta.setdefault("namespace", "default") if _namespaced(kind) else ""
        if not _namespaced(kind):
            meta.pop("namespace", None)
        key = (kind, ns, meta["name"])
        with self._lock:
            if key in self._objects:
                raise ApiError(409, f'{kind} "{meta["name"]}" already exists', "AlreadyExists")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))
            obj.setdefault("apiVersion", _API_VERSION.get(kind, "v1"))
            obj.setdefault("kind", _kind_name(kind))
            _validate(kind, obj)
            self._objects[key] = obj
            return self._bump(kind, "ADDED", obj)

    def add_node(self, name: str, annotations: Optional[dict] = None,
                 labels: Optional[dict] = None, **extra) -> dict:
        obj = {"metadata": {"name": name, "annotations": dict(annotations or {}),
                            "labels": dict(labels or {})}, "spec": {}, "status": {}}
        obj.update(copy.deepcopy(extra))
        return self._create("nodes", obj)

    def add_pod(self, name: str, namespace: str = "default", node_name: str = "",
                annotations: Optional[dict] = None, labels: Optional[dict] = None,
                containers: Optional[list] = None, phase: str = "Pending", uid: str = "",
                **extra) -> dict:
        meta = {"name": name, "namespace": namespace, "annotations": dict(annotations or {}),
                "labels": dict(labels or {})}
        if uid:
            meta["uid"] = uid
        spec: dict = {"containers": copy.deepcopy(containers or [{"name": "main"}])}
        if node_name:
            spec["nodeName"] = node_name
        obj = {"metadata": meta, "spec": spec, "status": {"phase": phase}}
        obj.update(copy.deepcopy(extra))
        return self._create("pods", obj)

    def add_claim(self, name: str, namespace: str = "default", requests: Optional[list] = None,
                  **extra) -> dict:
        """A resource.k8s.io/v1 ResourceClaim with ``requests`` (spec.devices.requests)."""
        obj = {"metadata": {"name": name, "namespace": namespace},
               "spec": {"devices": {"requests": copy.deepcopy(requests or [])}}, "status": {}}
        obj.update(copy.deepcopy(extra))
        return self._create("resourceclaims", obj)

    def get(self, kind: str, name: str, namespace: str = "") -> Optional[dict]:
        """A copy of the object, or None."""
        ns = namespace or ("default" if _namespaced(kind) else "")
        with self._lock:
            o = self._objects.get((kind, ns, name))
            return copy.deepcopy(o) if o is not None else None

    def update(self, kind: str, name: str, fn: Callable[[dict], None],
               namespace: str = "") -> dict:
        """Applies ``fn`` to the stored object (a server-side change: MODIFIED, new version)."""
        ns = namespace or ("default" if _namespaced(kind) else "")
        with self._lock:
            obj = self._objects[(kind, ns, name)]
            fn(obj)
            return self._bump(kind, "MODIFIED", obj)

    def delete(self, kind: str, name: str, namespace: str = "") -> dict:
        ns = namespace or ("default" if _namespaced(kind) else "")
        with self._lock:
            obj = self._objects.pop((kind, ns, name), None)
            if obj is None:
                raise ApiError(404, f'{kind} "{name}" not found', "NotFound")
            return self._bump(kind, "DELETED", obj)

    def _events_after(self, since: int) -> list:
        """The retained events after version ``since``, by bisection (the history is in
        version order), so a watch's wake costs what it sends, not the history's length.
        Call with the lock held."""
        events = self._events
        lo, hi = 0, len(events)
        while lo < hi:
            mid = (lo + hi) // 2
            if events[mid][0] <= since:
                lo = mid + 1
            else:
                hi = mid
        return events[lo:]

    def compact(self) -> None:
        """Forgets the event history, as etcd's compaction: older watches get 410."""
        with self._lock:
            self._events.clear()
            self._compacted = self._last_rv + 1

    def objects(self, kind: str) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(o) for (k, _, _), o in sorted(self._objects.items())
                    if k == kind]

    # -- request handling (the handler calls these)
    def _lookup(self, kind: str, ns: str, name: str) -> dict:
        obj = self._objects.get((kind, ns, name))
        if obj is None:
            raise ApiError(404, f'{kind} "{name}" not found', "NotFound")
        return obj

    def _list(self, kind: str, ns: Optional[str], q: dict) -> tuple[list, int, Callable]:
        match = _matcher(kind, ns, q)
        with self._lock:
            items = [copy.deepcopy(o) for (k, _, _), o in sorted(self._objects.items())
                     if k == kind and match(o)]
            return items, self._last_rv, match

    def _patch(self, kind: str, ns: str, name: str, ctype: str, body: Any) -> dict:
        with self._lock:
            obj = self._lookup(kind, ns, name)
            if ctype == "application/merge-patch+json":
                if not isinstance(body, dict):
                    raise ApiError(400, "merge patch: expected a JSON object")
                want = (body.get("metadata") or {}).get("resourceVersion")
                if want is not None and want != obj["metadata"]["resourceVersion"]:
                    raise ApiError(409, f'Operation cannot be fulfilled on {kind} "{name}": the '
                                   "object has been modified; please apply your changes to the "
                                   "latest version and try again", "Conflict")
                new = merge_patch(obj, body)
            elif ctype == "application/json-patch+json":
                new = json_patch(obj, body)
                if new["metadata"].get("resourceVersion") != obj["metadata"]["resourceVersion"]:
                    raise ApiError(409, f'Operation cannot be fulfilled on {kind} "{name}": the '
                                   "object has been modified", "Conflict")
            else:
                raise ApiError(415, f"the media type {ctype!r} is not supported here; use "
                               "application/merge-patch+json or application/json-patch+json")
            for k in ("name", "namespace", "uid"):
                if new.get("metadata", {}).get(k) != obj["metadata"].get(k):
                    raise ApiError(422, f"metadata.{k}: field is immutable")
            if new == obj:
                return copy.deepcopy(obj)  # no change: no new version, no event
            self._objects[(kind, ns, name)] = new
            return self._bump(kind, "MODIFIED", new)

    def _put(self, kind: str, ns: str, name: str, body: Any) -> dict:
        with self._lock:
            obj = self._lookup(kind, ns, name)
            if not isinstance(body, dict):
                raise ApiError(400, "expected an object")
            want = (body.get("metadata") or {}).get("resourceVersion")
            if want != obj["metadata"]["resourceVersion"]:
                raise ApiError(409, f'Operation cannot be fulfilled on {kind} "{name}": the '
                               "object has been modified", "Conflict")
            new = copy.deepcopy(body)
            for k in ("uid", "creationTimestamp", "namespace"):
                if k in obj["metadata"]:
                    new["metadata"][k] = obj["metadata"][k]
            _validate(kind, new)
            self._objects[(kind, ns, name)] = new
            return self._bump(kind, "MODIFIED", new)

    def _bind(self, ns: str, name: str, body: Any) -> dict:
        if not isinstance(body, dict) or body.get("kind") != "Binding" or \
                not isinstance(body.get("target"), dict) or not body["target"].get("name"):
            raise ApiError(400, "expected a Binding with target.name")
        with self._lock:
            obj = self._lookup("pods", ns, name)
            bound = obj["spec"].get("nodeName")
            if bound:
                raise ApiError(409, f"pod {name} is already assigned to node \"{bound}\"",
                               "Conflict")
            obj["spec"]["nodeName"] = body["target"]["name"]
            ann = (body.get("metadata") or {}).get("annotations")
            if ann:
                obj["metadata"].setdefault("annotations", {}).update(ann)
            self._bump("pods", "MODIFIED", obj)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "code": 201}


# ---------------------------------------------------------------- resource.k8s.io/v1 (DRA)
#
# ResourceSlices (cluster-scoped) and ResourceClaims (namespaced) of Dynamic Resource
# Allocation, as https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/ and
# staging/src/k8s.io/api/resource/v1/types.go describe them: list (field selectors
# spec.nodeName, spec.driver and spec.pool.name on slices), get, create, update (PUT), patch,
# delete and watch, plus a claim's status subresource. A slice is validated as the API server
# does for the limits a driver must respect: a driver and a pool, at most 128 devices, each a
# DNS label with at most 32 attributes and capacities together (422 otherwise). Tests create
# claims with ``add_claim`` and allocate them as the scheduler would with ``update``.

_DRA = "/apis/resource.k8s.io/v1"
_KINDS = {"pods": "Pod", "nodes": "Node", "resourceslices": "ResourceSlice",
          "resourceclaims": "ResourceClaim"}
_API_VERSION = {"resourceslices": "resource.k8s.io/v1", "resourceclaims": "resource.k8s.io/v1"}
_NAMESPACED = {"pods", "resourceclaims"}
_FIELDS["spec.driver"] = lambda o: o.get("spec", {}).get("driver", "")
_FIELDS["spec.pool.name"] = lambda o: (o.get("spec", {}).get("pool") or {}).get("name", "")
SLICE_MAX_DEVICES = 128
SLICE_MAX_ATTRIBUTES_AND_CAPACITIES = 32
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _namespaced(kind: str) -> bool:
    return kind in _NAMESPACED


def _kind_name(kind: str) -> str:
    return _KINDS.get(kind, "Node")


def _validate(kind: str, obj: dict) -> None:
    """The API server's validation of a ResourceSlice's limits; ApiError(422) when violated."""
    if kind != "resourceslices":
        return
    spec = obj.get("spec")
    if not isinstance(spec, dict) or not spec.get("driver"):
        raise ApiError(422, "ResourceSlice: spec.driver: Required value")
    pool = spec.get("pool")
    if not isinstance(pool, dict) or not pool.get("name") or \
            not isinstance(pool.get("resourceSliceCount"), int) or \
            pool["resourceSliceCount"] < 1 or not isinstance(pool.get("generation", 0), int):
        raise ApiError(422, "ResourceSlice: spec.pool: name, generation and a resourceSliceCount "
                       "of at least 1 are required")
    devices = spec.get("devices") or []
    if len(devices) > SLICE_MAX_DEVICES:
        raise ApiError(422, f"ResourceSlice: spec.devices: Too many: {len(devices)}: must have "
                       f"at most {SLICE_MAX_DEVICES} items")
    for i, d in enumerate(devices):
        name = d.get("name", "") if isinstance(d, dict) else ""
        if not _DNS_LABEL.fullmatch(name):
            raise ApiError(422, f"ResourceSlice: spec.devices[{i}].name: Invalid value: {name!r}")
        n = len(d.get("attributes") or {}) + len(d.get("capacity") or {})
        if n > SLICE_MAX_ATTRIBUTES_AND_CAPACITIES:
            raise ApiError(422, f"ResourceSlice: spec.devices[{i}]: Too many: {n}: must have at "
                           f"most {SLICE_MAX_ATTRIBUTES_AND_CAPACITIES} attributes and capacities")


_ROUTES_DRA = [
    (re.compile(rf"^{_DRA}/resourceslices$"), "resourceslices", False),
    (re.compile(rf"^{_DRA}/resourceslices/(?P<name>[^/]+)$"), "resourceslices", True),
    (re.compile(rf"^{_DRA}/resourceclaims$"), "resourceclaims", False),
    (re.compile(rf"^{_DRA}/namespaces/(?P<ns>[^/]+)/resourceclaims$"), "resourceclaims", False),
    (re.compile(rf"^{_DRA}/namespaces/(?P<ns>[^/]+)/resourceclaims/(?P<name>[^/]+)(/status)?$"),
     "resourceclaims", True),
]


def _matcher(kind: str, ns: Optional[str], q: dict) -> Callable[[dict], bool]:
    labels = parse_label_selector(q.get("labelSelector", ""))
    fields = parse_field_selector(q.get("fieldSelector", ""))

    def match(o: dict) -> bool:
        if ns and o["metadata"].get("namespace") != ns:
            return False
        return labels(o) and fields(o)
    return match


_ROUTES = [
    (re.compile(r"^/api/v1/nodes$"), "nodes", False),
    (re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$"), "nodes", True),
    (re.compile(r"^/api/v1/pods$"), "pods", False),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$"), "pods", False),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$"), "pods", True),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/binding$"),
     "binding", True),
    # Leader election's Leases and core/v1 Events: create, get, update (PUT with the
    # resourceVersion read), list and watch, as for pods.
    (re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases$"), "leases",
     False),
    (re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases/(?P<name>[^/]+)$"),
     "leases", True),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$"), "events", False),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events/(?P<name>[^/]+)$"), "events", True),
] + _ROUTES_DRA

# Each kind's apiVersion and Kind; the namespaced kinds.
_KINDS.update({"leases": "Lease", "events": "Event"})
_API_VERSION["leases"] = "coordination.k8s.io/v1"
_NAMESPACED.update({"leases", "events"})

# ResourceClaimTemplates (resource.k8s.io/v1, namespaced), which the webhook's DRA mode creates.
_ROUTES += [
    (re.compile(rf"^{_DRA}/namespaces/(?P<ns>[^/]+)/resourceclaimtemplates$"),
     "resourceclaimtemplates", False),
    (re.compile(rf"^{_DRA}/namespaces/(?P<ns>[^/]+)/resourceclaimtemplates/(?P<name>[^/]+)$"),
     "resourceclaimtemplates", True),
]
_KINDS["resourceclaimtemplates"] = "ResourceClaimTemplate"
_API_VERSION["resourceclaimtemplates"] = "resource.k8s.io/v1"
_NAMESPACED.add("resourceclaimtemplates")


def _client_cn(conn) -> str:
    """The CN of the TLS client certificate of ``conn``, or "" (plain HTTP, or none sent)."""
    getpeercert = getattr(conn, "getpeercert", None)
    cert = getpeercert() if getpeercert is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def _make_handler(server: FakeAPIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, code: int, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if not raw:
                return None
            try:
                return json.loads(raw)
            except ValueError as e:
                raise ApiError(400, f"body is not JSON: {e}") from None

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            server.requests.append({"method": method, "path": parts.path, "query": q,
                                    "authorization": self.headers.get("Authorization", ""),
                                    "client_cn": _client_cn(self.connection)})
            record: Optional[dict] = None
            try:
                body = self._body() if method in ("PATCH", "PUT", "POST") else None
                if method != "GET":
                    record = {"method": method, "path": parts.path,
                              "content_type": self.headers.get("Content-Type", ""),
                              "body": body, "status": None}
                    server.mutations.append(record)
                f = (None if parts.path.startswith("/fake/")
                     else server._take_fault(method, self.path))
                if f is not None:
                    if f.delay:
                        time.sleep(f.delay)
                    if f.hang:
                        server._fault_cleared.wait()
                        f.drop = True
                    if f.drop:
                        if record is not None:
                            record["status"] = 0
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if f.status is not None:
                        raise ApiError(f.status, f.message)
                code, reply = self._route(method, parts.path, q, body)
                if code is None:
                    return  # a watch stream, already written
            except ApiError as e:
                code, reply = e.code, e.status()
            except (BrokenPipeError, ConnectionResetError):
                return
            if record is not None:
                record["status"] = code
            self._send(code, reply)

        def _route(self, method: str, path: str, q: dict, body: Any):
            if path.startswith("/fake/"):
                return self._control(method, path, body)
            for rx, kind, named in _ROUTES:
                m = rx.match(path)
                if not m:
                    continue
                ns = m.groupdict().get("ns")
                name = m.groupdict().get("name")
                key_ns = ns or ""
                if kind == "binding":
                    if method != "POST":
                        raise ApiError(405, "binding: only POST")
                    return 201, server._bind(ns, name, body)
                if not named:
                    if method == "GET":
                        if q.get("watch") in ("1", "true"):
                            self._watch(kind, ns, q)
                            return None, None
                        items, rv, _ = server._list(kind, ns, q)
                        return 200, {"kind": _kind_name(kind) + "List",
                                     "apiVersion": _API_VERSION.get(kind, "v1"),
                                     "metadata": {"resourceVersion": str(rv)},
                                     "items": items}
                    if method == "POST":
                        if not isinstance(body, dict):
                            raise ApiError(400, "expected an object")
                        body.setdefault("metadata", {})
                        if ns:
                            body["metadata"]["namespace"] = ns
                        return 201, server._create(kind, body)
                    raise ApiError(405, f"{method} not allowed on a collection")
                if method == "GET":
                    with server._lock:
                        return 200, copy.deepcopy(server._lookup(kind, key_ns, name))
                if method == "PATCH":
                    ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
                    return 200, server._patch(kind, key_ns, name, ctype, body)
                if method == "PUT":
                    return 200, server._put(kind, key_ns, name, body)
                if method == "DELETE":
                    with server._lock:
                        server._lookup(kind, key_ns, name)
                    return 200, server.delete(kind, name, key_ns)
                raise ApiError(405, f"{method} not allowed")
            raise ApiError(404, f"the server could not find the requested resource ({path})")

        def _control(self, method: str, path: str, body: Any):
            if method == "POST" and path == "/fake/fault":
                if not isinstance(body, dict):
                    raise ApiError(400, "fault: expected a JSON object of Fault fields")
                try:
                    f = server.fault(**body)
                except TypeError as e:
                    raise ApiError(400, f"fault: {e}") from None
                return 200, {"path": f.path}
            if method == "POST" and path == "/fake/clear-faults":
                server.clear_faults()
                return 200, {}
            if method == "POST" and path == "/fake/compact":
                server.compact()
                return 200, {}
            if method == "GET" and path == "/fake/mutations":
                return 200, [m for m in server.mutations if not m["path"].startswith("/fake/")]
            if method == "GET" and path == "/fake/requests":
                return 200, [r for r in server.requests if not r["path"].startswith("/fake/")]
            raise ApiError(404, f"no control endpoint {method} {path}")

        def _chunk(self, obj: dict) -> None:
            data = (json.dumps(obj) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _watch(self, kind: str, ns: Optional[str], q: dict) -> None:
            match = _matcher(kind, ns, q)  # raises 400 before any byte is sent
            rv_text = q.get("resourceVersion", "")
            try:
                since = int(rv_text) if rv_text else 0
            except ValueError:
                raise ApiError(400, f"invalid resourceVersion {rv_text!r}") from None
            timeout = float(q.get("timeoutSeconds", "1800"))
            bookmarks = q.get("allowWatchBookmarks") in ("true", "1") and server.bookmark_interval
            with server._lock:
                gone = since != 0 and since + 1 < server._compacted
                if gone and server.watch_gone_status == 410:
                    raise ApiError(410, f"too old resource version: {since} "
                                   f"({server._compacted - 1})", "Expired")
                initial = []
                if since == 0:
                    initial = [copy.deepcopy(o) for (k, _, _), o in
                               sorted(server._objects.items()) if k == kind and match(o)]
                    since = server._last_rv
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.close_connection = True
            with server._lock:
                server.open_watches += 1
            try:
                if gone:
                    self._chunk({"type": "ERROR", "object": ApiError(
                        410, f"too old resource version: {since} ({server._compacted - 1})",
                        "Expired").status()})
                    return
                for o in initial:
                    self._chunk({"type": "ADDED", "object": o})
                end = time.monotonic() + timeout
                next_bookmark = time.monotonic() + (server.bookmark_interval or 0)
                while not server._closing.is_set():
                    with server._lock:
                        if since + 1 < server._compacted:
                            pending = None
                        else:
                            pending = server._events_after(since)
                        if pending == []:
                            left = end - time.monotonic()
                            if left <= 0:
                                break
                            server._lock.wait(min(left, 0.2))
                            pending = server._events_after(since)
                        last = server._last_rv
                    if pending is None:
                        self._chunk({"type": "ERROR", "object": ApiError(
                            410, "too old resource version", "Expired").status()})
                        return
                    for rv, k, typ, obj in pending:
                        since = rv
                        if k == kind and match(obj):
                            self._chunk({"type": typ, "object": obj})
                    if bookmarks and time.monotonic() >= next_bookmark:
                        next_bookmark = time.monotonic() + server.bookmark_interval
                        self._chunk({"type": "BOOKMARK", "object": {
                            "kind": _kind_name(kind), "apiVersion": _API_VERSION.get(kind, "v1"),
                            "metadata": {"resourceVersion": str(max(since, last))}}})
                    if time.monotonic() >= end:
                        break
            except (BrokenPipeError, ConnectionResetError, OSError):
                return
            finally:
                with server._lock:
                    server.open_watches -= 1
                try:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return Handler


def main() -> None:
    """Serves until stdin closes; prints the URL first (for tests in other languages).
    ``--tls CERT KEY`` serves HTTPS; ``--client-ca CA`` after it accepts client certificates."""
    import sys
    tls = None
    client_ca = None
    if len(sys.argv) >= 4 and sys.argv[1] == "--tls":
        tls = (sys.argv[2], sys.argv[3])
    if len(sys.argv) == 6 and sys.argv[4] == "--client-ca":
        client_ca = sys.argv[5]
    with FakeAPIServer(tls=tls, client_ca=client_ca) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()

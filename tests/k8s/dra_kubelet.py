"""A kubelet-shaped client of DRA drivers (grpcio), generated from the driver's own transcribed
protos (examples/dra-plugin/*.proto).

It plays what kubelet does for a Dynamic Resource Allocation driver, as kubelet's plugin
manager and DRA manager document it
(https://kubernetes.io/docs/concepts/scheduling-eviction/dynamic-resource-allocation/ and
kubelet's pluginregistration v1 and dra v1 / v1beta1 APIs):

* its plugin watcher looks for sockets in the ``plugins_registry`` directory (at start, every
  socket there; then each new one), dials each, calls ``Registration.GetInfo``, accepts a
  plugin of type ``DRAPlugin`` that offers a service it knows (``v1.DRAPlugin`` preferred, then
  ``v1beta1.DRAPlugin``), and answers ``NotifyRegistrationStatus`` with the verdict; a socket
  that disappears deregisters its plugin;
* its DRA manager calls ``NodePrepareResources`` / ``NodeUnprepareResources`` on the endpoint
  the plugin gave, with the claims' namespace, uid and name only;
* ``restart()`` models a kubelet restart: the registrations are forgotten, and the plugin
  watcher, starting again, finds the sockets still in the directory.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Optional

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(_HERE, "..", "..", "examples", "dra-plugin")
PLUGIN_TYPE = "DRAPlugin"
# The services kubelet knows, in the order it prefers them, with their generated modules.
SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
POLL_S = 0.05


def _generate():
    """Generates the Python modules of the driver's protos into a temporary directory."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="gpuslice-dra-api-")
    proto_dir = os.path.abspath(PROTO_DIR)
    for name in ("registration", "dra_v1", "dra_v1beta1"):
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}",
                          f"--grpc_python_out={out}", os.path.join(proto_dir, name + ".proto")])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {name}.proto (exit {rc})")
    sys.path.insert(0, out)
    mods = {}
    for name in ("registration", "dra_v1", "dra_v1beta1"):
        mods[name] = (importlib.import_module(name + "_pb2"),
                      importlib.import_module(name + "_pb2_grpc"))
    return mods


_MODS = _generate()
reg_pb, reg_grpc = _MODS["registration"]
API = {"v1.DRAPlugin": _MODS["dra_v1"], "v1beta1.DRAPlugin": _MODS["dra_v1beta1"]}


@dataclass
class Registration:
    """One successful registration: what GetInfo said and the service kubelet chose."""
    socket: str
    inode: tuple  # (inode, change time) of the socket file
    name: str
    endpoint: str
    versions: list
    service: str


class DRAKubelet:
    """Watches ``registry_dir`` for plugins and calls them. Thread-safe."""

    def __init__(self, registry_dir: str, timeout: float = 10.0):
        self.registry_dir = registry_dir
        self.timeout = timeout
        self.registrations: list[Registration] = []  # every registration, in order
        self.rejections: list[str] = []              # why a plugin was refused
        self.plugins: dict[str, Registration] = {}   # the live ones, by driver name
        self._seen: dict[str, tuple] = {}            # socket path -> (inode, ctime) dialled
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.start()

    # -- the plugin watcher
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cv:
            self.plugins.clear()
            self._seen.clear()

    def restart(self) -> None:
        """A kubelet restart: registrations forgotten; the sockets in the directory found again."""
        self.stop()
        self.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                names = sorted(os.listdir(self.registry_dir))
            except FileNotFoundError:
                names = []
            present = {}
            for n in names:
                path = os.path.join(self.registry_dir, n)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if n.endswith(".sock"):
                    # kubelet sees each creation (inotify); an inode number may be reused by a
                    # new socket, its change time tells them apart
                    present[path] = (st.st_ino, st.st_ctime_ns)
            with self._cv:
                for path in [p for p in self._seen if p not in present]:
                    del self._seen[path]
                    for name, r in list(self.plugins.items()):
                        if r.socket == path:
                            del self.plugins[name]
                    self._cv.notify_all()
            for path, ino in present.items():
                if self._seen.get(path) != ino:
                    self._seen[path] = ino
                    self._register(path, ino)
            self._stop.wait(POLL_S)

    def _register(self, path: str, ino: tuple) -> None:
        channel = grpc.insecure_channel("unix:" + path)
        try:
            stub = reg_grpc.RegistrationStub(channel)
            try:
                info = stub.GetInfo(reg_pb.InfoRequest(), timeout=self.timeout)
            except grpc.RpcError as e:
                self._reject(path, f"GetInfo: {e.code().name}: {e.details()}", None)
                return
            versions = list(info.supported_versions)
            chosen = next((s for s in SERVICES if s in versions), None)
            error = ""
            if info.type != PLUGIN_TYPE:
                error = f"plugin type {info.type!r}: expected {PLUGIN_TYPE}"
            elif not info.name:
                error = "no driver name"
            elif not info.endpoint:
                error = "no endpoint"
            elif chosen is None:
                error = f"none of the versions {versions} is supported; kubelet knows {SERVICES}"
            if error:
                self._reject(path, error, stub)
                return
            stub.NotifyRegistrationStatus(reg_pb.RegistrationStatus(plugin_registered=True),
                                          timeout=self.timeout)
            r = Registration(path, ino, info.name, info.endpoint, versions, chosen)
            with self._cv:
                self.registrations.append(r)
                self.plugins[info.name] = r
                self._cv.notify_all()
        finally:
            channel.close()

    def _reject(self, path: str, error: str, stub) -> None:
        if stub is not None:
            try:
                stub.NotifyRegistrationStatus(
                    reg_pb.RegistrationStatus(plugin_registered=False, error=error),
                    timeout=self.timeout)
            except grpc.RpcError:
                pass
        with self._cv:
            self.rejections.append(f"{path}: {error}")
            self._cv.notify_all()

    def wait_registered(self, name: str, count: int = 1, timeout: float = 10.0) -> Registration:
        """Waits until driver ``name`` is registered and ``count`` registrations of it have
        happened in all; returns the live one."""
        def ready():
            n = sum(1 for r in self.registrations if r.name == name)
            return n >= count and name in self.plugins
        with self._cv:
            if not self._cv.wait_for(ready, timeout):
                raise TimeoutError(f"driver {name!r}: {len(self.registrations)} registration(s), "
                                   f"rejections {self.rejections} after {timeout}s")
            return self.plugins[name]

    # -- the DRA manager
    def _call(self, name: str, method: str, claims: list, service: Optional[str]):
        with self._cv:
            r = self.plugins.get(name)
        if r is None:
            raise RuntimeError(f"driver {name!r} is not registered")
        pb, pb_grpc = API[service or r.service]
        channel = grpc.insecure_channel("unix:" + r.endpoint)
        try:
            stub = pb_grpc.DRAPluginStub(channel)
            req_type = (pb.NodePrepareResourcesRequest if method == "NodePrepareResources"
                        else pb.NodeUnprepareResourcesRequest)
            req = req_type(claims=[pb.Claim(namespace=c["namespace"], uid=c["uid"],
                                            name=c["name"]) for c in claims])
            return getattr(stub, method)(req, timeout=self.timeout)
        finally:
            channel.close()

    def prepare(self, name: str, claims: list, service: Optional[str] = None):
        """NodePrepareResources of ``claims`` ({namespace, uid, name}) on driver ``name``, through
        the service chosen at registration (or ``service``)."""
        return self._call(name, "NodePrepareResources", claims, service)

    def unprepare(self, name: str, claims: list, service: Optional[str] = None):
        return self._call(name, "NodeUnprepareResources", claims, service)


def claim_ref(claim: dict) -> dict:
    """What kubelet sends of a ResourceClaim object."""
    m = claim["metadata"]
    return {"namespace": m["namespace"], "uid": m["uid"], "name": m["name"]}

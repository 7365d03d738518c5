"""A kubelet-shaped device plugin client (grpcio), generated from the plugin's own api.proto.

It plays kubelet's device manager as the device plugin API v1beta1 documents it
(https://kubernetes.io/docs/concepts/extend-kubernetes/compute-storage-net/device-plugins/):

* it serves ``Registration`` on ``<dir>/kubelet.sock`` and accepts a ``RegisterRequest`` only
  for API version ``v1beta1`` and a resource name of the form ``<domain>/<name>`` (kubelet
  answers anything else with an error, and the plugin is expected to give up or retry);
* after a registration it dials the plugin's socket ``<dir>/<endpoint>``;
* ``restart()`` models a kubelet restart: kubelet's socket disappears, every other socket in the
  directory is removed (kubelet's device manager cleans the directory when it starts) and a new
  ``kubelet.sock`` appears; plugins must notice and register again.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import threading
from concurrent import futures
from typing import Iterator, Optional

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(_HERE, "..", "..", "examples", "device-plugin", "api.proto")


def _generate():
    """Generates api_pb2 / api_pb2_grpc from the plugin's proto into a temporary directory."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="gpuslice-kubelet-api-")
    proto_dir = os.path.dirname(os.path.abspath(PROTO))
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.abspath(PROTO)])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {rc})")
    sys.path.insert(0, out)
    return importlib.import_module("api_pb2"), importlib.import_module("api_pb2_grpc")


pb, pb_grpc = _generate()

API_VERSION = "v1beta1"


class _Registration(pb_grpc.RegistrationServicer):
    def __init__(self, kubelet: "Kubelet"):
        self.kubelet = kubelet

    def Register(self, request, context):
        k = self.kubelet
        if request.version != API_VERSION:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unsupported API version {request.version!r}; expected {API_VERSION}")
        name = request.resource_name
        if name.count("/") != 1 or not all(name.split("/")):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"invalid resource name {name!r}: expected <domain>/<name>")
        if k.reject_with is not None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, k.reject_with)
        with k._cv:
            k.registrations.append(request)
            k._cv.notify_all()
        return pb.Empty()


class Kubelet:
    """Serves Registration on ``directory``/kubelet.sock. Thread-safe."""

    def __init__(self, directory: str):
        self.directory = directory
        self.socket = os.path.join(directory, "kubelet.sock")
        self.registrations: list = []
        self.reject_with: Optional[str] = None  # set to refuse registrations with this message
        self._cv = threading.Condition()
        self._server: Optional[grpc.Server] = None
        self.start()

    def start(self) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RegistrationServicer_to_server(_Registration(self), self._server)
        self._server.add_insecure_port("unix:" + self.socket)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def restart(self) -> None:
        """A kubelet restart: its socket goes, the directory is cleaned, a new socket comes."""
        self.stop()
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if not os.path.isdir(path):
                os.unlink(path)
        self.start()

    def wait_registrations(self, count: int, timeout: float = 10.0) -> list:
        """Waits until ``count`` registrations arrived; returns them all."""
        with self._cv:
            if not self._cv.wait_for(lambda: len(self.registrations) >= count, timeout):
                raise TimeoutError(f"{len(self.registrations)} registration(s) after {timeout}s;"
                                   f" expected {count}")
            return list(self.registrations)

    def plugin(self, endpoint: Optional[str] = None) -> "PluginClient":
        """A client of the plugin that registered last (or of ``endpoint``)."""
        if endpoint is None:
            endpoint = self.wait_registrations(1)[-1].endpoint
        return PluginClient(os.path.join(self.directory, endpoint))


class PluginClient:
    """Calls a device plugin as kubelet does."""

    def __init__(self, socket_path: str, timeout: float = 10.0):
        self.channel = grpc.insecure_channel("unix:" + socket_path)
        self.stub = pb_grpc.DevicePluginStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "PluginClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def options(self):
        return self.stub.GetDevicePluginOptions(pb.Empty(), timeout=self.timeout)

    def list_and_watch(self) -> Iterator:
        """The ListAndWatch stream (cancel it with ``.cancel()``)."""
        return self.stub.ListAndWatch(pb.Empty())

    def allocate(self, *containers: list[str]):
        req = pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=list(ids)) for ids in containers])
        return self.stub.Allocate(req, timeout=self.timeout)

    def preferred(self, available: list[str], size: int, must: Optional[list[str]] = None):
        req = pb.PreferredAllocationRequest(container_requests=[
            pb.ContainerPreferredAllocationRequest(available_deviceIDs=available,
                                                   must_include_deviceIDs=must or [],
                                                   allocation_size=size)])
        return self.stub.GetPreferredAllocation(req, timeout=self.timeout)

    def pre_start(self, ids: list[str]):
        return self.stub.PreStartContainer(pb.PreStartContainerRequest(devices_ids=ids),
                                           timeout=self.timeout)

"""The memory ledger from Python: the same cross-process ledger the shim charges.

``Ledger.create(path, limits)`` makes a ledger file, ``Ledger.open(path)`` joins one, and
``Ledger.in_memory(limits)`` keeps one in this process (simulation, tests).

``limits`` names the devices and their byte limits, in one of two forms:

* a mapping from device UUID (``str``) to a limit, registered in the mapping's order
  (device index 0, 1, ...);
* a mapping from device index (``int``, exactly 0..n-1) or a sequence of limits; device ``i``
  is then registered under the UUID ``"device-<i>"``.

A limit is an ``int`` (bytes) or a quantity string as the shim reads it (``"3000m"`` is
3000 MiB, ``"1.5Gi"``, ``"4096"``). A percentage is refused: the ledger stores bytes.

Methods take a device as its index or its UUID. Every process (after ``os.fork()`` too) is
charged in a slot of its own. All methods are thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

from ._core import _Ledger, parse_bytes, read_ledger_snapshot

Device = Union[int, str]
Limit = Union[int, str]

__all__ = ["Ledger", "read_ledger_snapshot"]


def _to_bytes(value: Limit, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected bytes (int) or a quantity string, got a bool")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: {value} is negative; expected a byte count >= 0")
        return value
    if isinstance(value, str):
        return parse_bytes(value)
    raise TypeError(f"{what}: expected bytes (int) or a quantity string, got {type(value).__name__}")


def _normalise(limits: Mapping[Any, Limit] | Sequence[Limit]) -> list[tuple[str, int]]:
    if isinstance(limits, (str, bytes)):
        raise TypeError("limits: expected a mapping of UUID or index to bytes, or a sequence")
    if isinstance(limits, Mapping):
        items = list(limits.items())
        if all(isinstance(k, str) for k, _ in items):
            return [(k, _to_bytes(v, f"limit of {k!r}")) for k, v in items]
        if all(isinstance(k, int) and not isinstance(k, bool) for k, _ in items):
            keys = sorted(k for k, _ in items)
            if keys != list(range(len(keys))):
                raise ValueError(f"limits: device indices {keys} must be exactly 0..{len(keys) - 1}")
            return [(f"device-{k}", _to_bytes(limits[k], f"limit of device {k}")) for k in keys]
        raise TypeError("limits: keys must be all UUIDs (str) or all device indices (int)")
    return [(f"device-{i}", _to_bytes(v, f"limit of device {i}")) for i, v in enumerate(limits)]


class Ledger:
    """A memory ledger: per device a limit and a total, per process the bytes it holds."""

    def __init__(self, core: _Ledger) -> None:
        self._core = core

    @classmethod
    def create(cls, path: str, limits: Mapping[Any, Limit] | Sequence[Limit]) -> Ledger:
        """Create the ledger file at ``path`` (FileExistsError if it exists)."""
        devices = _normalise(limits)
        ledger = cls(_Ledger.open(str(path), True))
        ledger._register(devices)
        return ledger

    @classmethod
    def open(cls, path: str) -> Ledger:
        """Open an existing ledger file (FileNotFoundError if absent, ValueError if damaged)."""
        return cls(_Ledger.open(str(path), False))

    @classmethod
    def in_memory(cls, limits: Mapping[Any, Limit] | Sequence[Limit]) -> Ledger:
        """A ledger in this process's memory."""
        ledger = cls(_Ledger.in_memory())
        ledger._register(_normalise(limits))
        return ledger

    def _register(self, devices: list[tuple[str, int]]) -> None:
        for uuid, limit in devices:
            self._core.device(uuid, limit)

    def _index(self, device: Device) -> int:
        if isinstance(device, str):
            return self._core.find_device(device)
        if isinstance(device, bool) or not isinstance(device, int):
            raise TypeError(f"device: expected an index (int) or a UUID (str), got {device!r}")
        return device

    @property
    def path(self) -> str:
        """The ledger file ('' for an in-memory ledger)."""
        return self._core.path

    @property
    def devices(self) -> list[str]:
        """UUIDs of the registered devices, by index."""
        return [self._core.uuid(i) for i in range(self._core.device_count)]

    def add_device(self, uuid: str, limit: Limit) -> int:
        """Index of ``uuid``, registering it with ``limit`` if absent (an existing device keeps
        its limit)."""
        return self._core.device(uuid, _to_bytes(limit, f"limit of {uuid!r}"))

    def try_reserve(self, device: Device, nbytes: Limit) -> bool:
        """Reserve bytes for this process if the device stays within its limit."""
        return self._core.try_reserve(self._index(device), _to_bytes(nbytes, "bytes"))

    def release(self, device: Device, nbytes: Limit) -> None:
        """Give back bytes this process reserved (ValueError if it holds fewer)."""
        self._core.release(self._index(device), _to_bytes(nbytes, "bytes"))

    def held(self, device: Device) -> int:
        """Bytes this process holds on the device."""
        return self._core.held(self._index(device))

    def used(self, device: Device) -> int:
        """Bytes in use on the device, over all processes."""
        return self._core.used(self._index(device))

    def limit(self, device: Device) -> int:
        """The device's limit in bytes."""
        return self._core.limit(self._index(device))

    def set_limit(self, device: Device, nbytes: Limit) -> None:
        """Change the limit; it applies to the next reservation and revokes nothing."""
        self._core.set_limit(self._index(device), _to_bytes(nbytes, "limit"))

    def sm_limit(self, device: Device) -> int:
        """The device's SM share in percent: 0 = unset (the container's CUDA_DEVICE_SM_LIMIT
        applies), 1..99 a cap, 100 = explicitly none."""
        return self._core.sm_limit(self._index(device))

    def set_sm_limit(self, device: Device, percent: int) -> None:
        """Set the SM share the limiter reads (0..100, 0 = none)."""
        self._core.set_sm_limit(self._index(device), percent)

    def reap(self) -> int:
        """Return dead processes' bytes; the number of bytes reclaimed."""
        return self._core.reap()

    def snapshot(self) -> dict[str, Any]:
        """``{"devices": [{index, uuid, limit, used, sm_limit_percent}], "processes": [{pid,
        start_time, used: {device index: bytes}}]}``."""
        return self._core.snapshot()

    def __repr__(self) -> str:
        where = self.path or "in-memory"
        return f"Ledger({where!r}, devices={self.devices!r})"

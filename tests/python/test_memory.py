"""gpuslice.Ledger: the memory ledger from Python, and `gpuslice inspect`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuslice
from gpuslice._cmd_inspect import prometheus_text
from gpuslice.cli import main

UUID0 = "GPU-8f0c2a4e-1b2c-4d5e-8f90-0123456789ab"
UUID1 = "GPU-00000000-0000-0000-0000-000000000001"
MIB = 1024 * 1024


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / f"ledger-{os.getpid()}")


def test_in_memory_reserve_release_and_limits():
    ledger = gpuslice.Ledger.in_memory({UUID0: "1m", UUID1: 4096})
    assert ledger.devices == [UUID0, UUID1]
    assert ledger.limit(0) == MIB
    assert ledger.limit(UUID1) == 4096
    assert ledger.try_reserve(UUID0, "512k")
    assert not ledger.try_reserve(0, MIB)
    assert ledger.used(0) == 512 * 1024
    assert ledger.held(0) == 512 * 1024
    ledger.release(0, 512 * 1024)
    assert ledger.used(UUID0) == 0
    ledger.set_limit(1, "1k")
    assert not ledger.try_reserve(1, 1025)
    assert ledger.try_reserve(1, 1024)
    ledger.set_sm_limit(1, 25)
    assert ledger.sm_limit(UUID1) == 25
    assert ledger.reap() == 0


def test_limits_by_index_and_sequence():
    by_index = gpuslice.Ledger.in_memory({1: "2g", 0: 100})
    assert by_index.devices == ["device-0", "device-1"]
    assert by_index.limit(1) == 2 << 30
    as_list = gpuslice.Ledger.in_memory(["1Ki", 7])
    assert as_list.limit("device-0") == 1024
    assert as_list.limit(1) == 7


@pytest.mark.parametrize(
    ("limits", "exc", "text"),
    [
        ({0: 1, 2: 1}, ValueError, "must be exactly 0..1"),
        ({"GPU-a": "3000MB"}, ValueError, 'unit "MB" is ambiguous'),
        ({"GPU-a": "50%"}, ValueError, "invalid quantity"),
        ({"GPU-a": -1}, ValueError, "is negative"),
        ({"GPU-a": 1, 0: 1}, TypeError, "all UUIDs"),
        ("1g", TypeError, "expected a mapping"),
        ([1.5], TypeError, "got float"),
    ],
)
def test_bad_limits_are_refused_with_one_line(limits, exc, text):
    with pytest.raises(exc, match=text) as info:
        gpuslice.Ledger.in_memory(limits)
    assert "\n" not in str(info.value)


def test_bad_device_and_release():
    ledger = gpuslice.Ledger.in_memory({UUID0: 100})
    with pytest.raises(ValueError, match="is not in the ledger"):
        ledger.used("GPU-missing")
    with pytest.raises(IndexError, match="expected 0..0"):
        ledger.used(3)
    with pytest.raises(ValueError, match="holds only 0"):
        ledger.release(0, 1)
    with pytest.raises(ValueError, match="expected a percentage"):
        ledger.set_sm_limit(0, 101)


def test_file_ledger_is_shared_between_objects_and_processes(path):
    ledger = gpuslice.Ledger.create(path, {UUID0: "1m"})
    with pytest.raises(FileExistsError):
        gpuslice.Ledger.create(path, {UUID0: "1m"})
    other = gpuslice.Ledger.open(path)
    assert other.devices == [UUID0]
    assert ledger.try_reserve(0, 1000)
    assert other.used(0) == 1000

    code = (
        "import gpuslice, sys\n"
        f"l = gpuslice.Ledger.open({path!r})\n"
        "assert l.try_reserve(0, 2000)\n"
        "sys.exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert ledger.used(0) == 3000
    snap = ledger.snapshot()
    assert sorted(p["used"][0] for p in snap["processes"]) == [1000, 2000]
    assert ledger.reap() == 2000  # the child exited holding its bytes
    assert ledger.used(0) == 1000
    assert ledger.reap() == 0


def test_forked_child_gets_its_own_slot_and_sigkill_is_reaped(path):
    ledger = gpuslice.Ledger.create(path, {UUID0: "1m"})
    assert ledger.try_reserve(0, 100)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            ok = ledger.try_reserve(0, 5000) and ledger.held(0) == 5000
            os.write(w, b"1" if ok else b"0")
            signal.pause()
        finally:
            os._exit(1)
    assert os.read(r, 1) == b"1"
    assert ledger.used(0) == 5100
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert ledger.reap() == 5000
    assert ledger.used(0) == 100
    assert ledger.held(0) == 100


def test_open_errors(path, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gpuslice.Ledger.open(path)
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"hello" * 1000)
    with pytest.raises(ValueError, match="wrong magic number"):
        gpuslice.Ledger.open(str(foreign))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=300)), max_size=60))
def test_never_over_limit_and_accounting_is_exact(ops):
    ledger = gpuslice.Ledger.in_memory({UUID0: 1000})
    held: list[int] = []
    for reserve, n in ops:
        if reserve or not held:
            before = ledger.used(0)
            if ledger.try_reserve(0, n):
                held.append(n)
            else:
                assert before + n > 1000
        else:
            ledger.release(0, held.pop())
        assert ledger.used(0) <= 1000
        assert ledger.used(0) == sum(held) == ledger.held(0)


def test_inspect_table_and_prometheus(path, capsys):
    ledger = gpuslice.Ledger.create(path, {UUID0: "1g", UUID1: "2g"})
    ledger.set_sm_limit(UUID1, 30)
    assert ledger.try_reserve(UUID0, "300m")
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert UUID0 in out and "300Mi" in out and "1Gi" in out and "30%" in out
    assert str(os.getpid()) in out

    assert main(["inspect", path, "--prometheus"]) == 0
    prom = capsys.readouterr().out
    device0 = f'ledger="{path}",device="0",uuid="{UUID0}"'
    assert f"gpuslice_device_memory_limit_bytes{{{device0}}} {1 << 30}" in prom
    assert f"gpuslice_device_memory_used_bytes{{{device0}}} {300 * MIB}" in prom
    assert (f'gpuslice_process_memory_used_bytes{{ledger="{path}",pid="{os.getpid()}",'
            f'device="0",uuid="{UUID0}"}} {300 * MIB}') in prom
    assert "# TYPE gpuslice_device_memory_used_bytes gauge" in prom
    # Every sample line is name{labels} value.
    for line in prom.splitlines():
        if not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            assert name.endswith("}") and int(value) >= 0


def test_prometheus_escapes_labels():
    snap = {"devices": [{"index": 0, "uuid": 'a"b\\c', "limit": 1, "used": 0,
                         "sm_limit_percent": 0}], "processes": []}
    text = prometheus_text(snap, "/x")
    assert 'uuid="a\\"b\\\\c"' in text


def test_inspect_reports_a_damaged_file(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 10)
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "truncated: 10 bytes" in err


def test_inspect_on_a_corrupted_ledger_gives_the_recovery_that_never_doubles_a_quota(path, capsys):
    ledger = gpuslice.Ledger.create(path, {UUID0: "1m"})
    assert ledger.try_reserve(0, 4096)
    # As mark_corrupted leaves it: the initialisation word (offset 16) is a claim word whose
    # low byte is the state, 3 for "corrupted"; and every device's total (device 0's at offset
    # 256 + 128) has its top bit, the gate that reservations test, set for good.
    with open(path, "r+b") as f:
        f.seek(16)
        f.write(bytes([3]))
        f.seek(256 + 128 + 7)
        top = f.read(1)[0]
        f.seek(256 + 128 + 7)
        f.write(bytes([top | 0x80]))
    assert main(["inspect", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "marked corrupted" in err
    # Removing the file while the container's processes run would grant the quota again: the
    # advice stops them first.
    assert "stop every process" in err
    assert err.index("stop every process") < err.index("remove the file")
    assert not ledger.try_reserve(0, 4096)  # the attached process is stopped too

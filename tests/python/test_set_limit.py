"""`gpuslice set-limit`: changes a container's ledger in place, refuses bad input in one line."""

from __future__ import annotations

import os

import pytest

from gpuslice import Ledger
from gpuslice.cli import main

GIB = 1 << 30
UUID0 = "GPU-5a1ce000-0000-4000-8000-0000000000a0"
UUID1 = "GPU-5a1ce000-0000-4000-8000-0000000000a1"


@pytest.fixture
def ledger_path(tmp_path):
    path = str(tmp_path / f"ledger.{os.getpid()}.bin")
    Ledger.create(path, {UUID0: "8g", UUID1: "8g"})
    return path


def test_changes_memory_and_sm_of_one_device(ledger_path, capsys):
    assert main(["set-limit", ledger_path, "--device", "0", "--memory", "4g", "--sm", "40"]) == 0
    ledger = Ledger.open(ledger_path)
    assert ledger.limit(0) == 4 * GIB
    assert ledger.sm_limit(0) == 40
    # The other device is untouched.
    assert ledger.limit(1) == 8 * GIB
    assert ledger.sm_limit(1) == 0
    out = capsys.readouterr().out
    assert "40%" in out


def test_device_by_uuid_and_every_device_by_default(ledger_path):
    assert main(["set-limit", ledger_path, "--device", UUID1, "--sm", "25"]) == 0
    ledger = Ledger.open(ledger_path)
    assert ledger.sm_limit(1) == 25
    assert ledger.sm_limit(0) == 0
    assert main(["set-limit", ledger_path, "--memory", "2Gi"]) == 0
    assert [ledger.limit(i) for i in range(2)] == [2 * GIB, 2 * GIB]


@pytest.mark.parametrize("given,stored", [("0", 100), ("100", 100), ("100%", 100), ("35%", 35),
                                          ("env", 0)])
def test_sm_values_map_to_the_ledger_field(ledger_path, given, stored):
    assert main(["set-limit", ledger_path, "--sm", "10"]) == 0
    assert main(["set-limit", ledger_path, "--sm", given]) == 0
    assert Ledger.open(ledger_path).sm_limit(0) == stored


def test_lowering_below_use_warns_and_revokes_nothing(ledger_path, capsys):
    ledger = Ledger.open(ledger_path)
    assert ledger.try_reserve(0, "1g")
    assert main(["set-limit", ledger_path, "--device", "0", "--memory", "512m"]) == 0
    assert ledger.used(0) == GIB
    assert not ledger.try_reserve(0, 1)
    assert "exceeds the new limit" in capsys.readouterr().out
    ledger.release(0, "1g")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sm", "150"], "--sm '150'"),
        (["--sm", "fast"], "--sm 'fast'"),
        (["--memory", "3000MB"], "--memory '3000MB'"),
        (["--memory", "50%"], "--memory '50%'"),
        (["--device", "7", "--sm", "30"], "--device 7"),
        (["--device", "GPU-nope", "--sm", "30"], "no such GPU UUID"),
        ([], "nothing to change"),
    ],
)
def test_bad_input_is_one_clear_line(ledger_path, capsys, args, message):
    before = Ledger.open(ledger_path).snapshot()
    assert main(["set-limit", ledger_path, *args]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("gpuslice set-limit: error:")
    assert message in err
    assert Ledger.open(ledger_path).snapshot() == before


def test_missing_file_is_never_created(tmp_path, capsys):
    path = tmp_path / "absent.bin"
    assert main(["set-limit", str(path), "--sm", "30"]) == 1
    assert "no such ledger file" in capsys.readouterr().err
    assert not path.exists()


def test_foreign_file_is_refused(tmp_path, capsys):
    path = tmp_path / "foreign.bin"
    path.write_text("not a ledger\n")
    assert main(["set-limit", str(path), "--sm", "30"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert path.read_text() == "not a ledger\n"

"""The configuration contract seen from Python: same grammar, same messages."""

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpuslice


def test_version_is_the_cmake_project_version():
    import re
    from pathlib import Path

    cmake = (Path(__file__).parents[2] / "CMakeLists.txt").read_text()
    assert re.search(r"project\(gpuslice VERSION ([0-9.]+)", cmake).group(1) == gpuslice.__version__


@pytest.mark.parametrize(
    "text,expected",
    [("3000m", 3000 * 2**20), ("1.5g", 3 * 2**29), ("2GiB", 2**31), ("1024", 1024), ("0", 0)],
)
def test_parse_bytes(text, expected):
    assert gpuslice.parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text,fragment",
    [("3000MB", "ambiguous"), ("1.5.0g", "decimal point"), ("-1", "sign"), ("abc", "digit"),
     ("", "empty"), ("1 g", "whitespace"), ("99999999999999999999", "64 bits")],
)
def test_parse_bytes_errors(text, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        gpuslice.parse_bytes(text)
    assert "\n" not in str(info.value)
    assert "expected a non-negative number" in str(info.value)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_format_parse_round_trip(n):
    assert gpuslice.parse_bytes(gpuslice.format_bytes(n)) == n


def test_parse_config():
    cfg = gpuslice.parse_config({
        "CUDA_DEVICE_MEMORY_LIMIT": "3000m",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "50%",
        "CUDA_DEVICE_SM_LIMIT": "30",
        "GPU_CORE_UTILIZATION_POLICY": "force",
    })
    assert cfg.memory_limits[0] == 3000 * 2**20
    assert cfg.memory_limits[1] == "50%"
    assert cfg.memory_limit_bytes(1, 80 * 2**30) == 40 * 2**30
    assert cfg.sm_limits[:2] == [30, 30]
    assert cfg.policy == gpuslice.UtilizationPolicy.force
    assert cfg.priority == 1


def test_parse_config_error_names_variable():
    with pytest.raises(ValueError) as info:
        gpuslice.parse_config({"CUDA_DEVICE_MEMORY_LIMIT": "3000MB"})
    assert str(info.value).startswith('CUDA_DEVICE_MEMORY_LIMIT="3000MB": unit "MB" is ambiguous')


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gpuslice", *args],
                          capture_output=True, text=True, check=False)


def test_cli_version_and_help():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"gpuslice {gpuslice.__version__}"
    out = run_cli("--help")
    assert out.returncode == 0
    assert "check-env" in out.stdout


def test_cli_check_env():
    out = run_cli("check-env", "CUDA_DEVICE_MEMORY_LIMIT=2g", "CUDA_DEVICE_SM_LIMIT=40")
    assert out.returncode == 0, out.stderr
    assert "2Gi" in out.stdout and "40%" in out.stdout
    bad = run_cli("check-env", "CUDA_DEVICE_MEMORY_LIMIT=3000MB")
    assert bad.returncode == 1
    assert 'CUDA_DEVICE_MEMORY_LIMIT="3000MB"' in bad.stderr

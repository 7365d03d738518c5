"""Fixtures of the Kubernetes-node tests: the fake API server (fake_apiserver.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fake_apiserver import FakeAPIServer  # noqa: E402


@pytest.fixture
def fake_apiserver():
    """A fresh FakeAPIServer on 127.0.0.1 (random port), closed after the test."""
    with FakeAPIServer() as server:
        yield server


def load_gpuslice():
    """The gpuslice package: with the _core module of the CMake build (GPUSLICE_CORE_MODULE)
    and the sources in python/, or as installed; None when neither is there."""
    import importlib
    import importlib.util

    core = os.environ.get("GPUSLICE_CORE_MODULE")
    if core and "gpuslice._core" not in sys.modules:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
        spec = importlib.util.spec_from_file_location("gpuslice._core", core)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpuslice._core"] = module
        spec.loader.exec_module(module)
    try:
        return importlib.import_module("gpuslice")
    except ImportError:
        return None

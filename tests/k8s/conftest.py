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

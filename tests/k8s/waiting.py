"""Polling for the node and scheduler tests: wait until a condition holds, within a deadline."""

from __future__ import annotations

import time

POLL_S = 0.02


def wait_for(pred, what: str = "condition", timeout: float = 10.0):
    """pred()'s first true value, polled every POLL_S; AssertionError naming `what` once `timeout`
    seconds pass without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")

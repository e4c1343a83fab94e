"""`make run`'s demo: it builds its namespaces, runs portgate with the nft backend, answers a
real client from the demo LAN host, and removes everything on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.netlab import ROOT, require_root, unique_prefix

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


def test_the_demo_runs_a_gateway_a_client_can_use_and_cleans_up(tmp_path: Path) -> None:
    require_root()
    prefix = unique_prefix("d")
    env = {**os.environ, "PORTGATE_DEMO_PREFIX": prefix, "PORTGATE_DEMO_DIR": str(tmp_path)}
    demo = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert demo.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        for line in demo.stdout:
            seen.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        text = "".join(seen)
        assert "Press Ctrl-C" in text, text
        assert f"ip netns exec {prefix}-lan upnpc -i -l" in text
        done = subprocess.run(
            ["ip", "netns", "exec", f"{prefix}-lan", "upnpc", "-i", "-l"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "ExternalIPAddress = 203.0.113.1" in done.stdout, done.stdout + done.stderr
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=30)
    assert "demo network removed" in rest
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in namespaces

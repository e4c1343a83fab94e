"""Fixtures shared by the namespace tiers."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netlab import GatewayDaemon, Lab, unique_prefix


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh gateway/LAN/LAN2/WAN namespace lab, removed afterwards."""
    lab = Lab(unique_prefix("t"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[GatewayDaemon]:
    """`portgate run` with the nft backend in the lab's gateway, killed afterwards."""
    d = GatewayDaemon(lab, tmp_path)
    d.start()
    try:
        yield d
    finally:
        d.stop(signal.SIGKILL)

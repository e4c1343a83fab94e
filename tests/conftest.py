"""Fixtures shared by the namespace tiers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netlab import Lab, unique_prefix


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh gateway/LAN/LAN2/WAN namespace lab, removed afterwards."""
    lab = Lab(unique_prefix("t"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()

"""Fixtures of the robustness tier: labs with their own namespace prefix ("pgr..."), removed
afterwards. Like every namespace test, these fail (never skip) without root."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netlab import Lab, unique_prefix


@pytest.fixture
def robust_lab() -> Iterator[Lab]:
    """A fresh gateway/LAN/LAN2/WAN lab for one test."""
    lab = Lab(unique_prefix("r"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[Lab]:
    """One lab for a whole module (the hostile-input tests share one daemon under attack)."""
    lab = Lab(unique_prefix("r"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()

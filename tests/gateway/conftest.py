"""Builders for the core: a table with a small LAN, owners for each protocol."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address

import pytest

from gateway.allocator import Allocator
from gateway.config import LifetimeConfig, PolicyConfig
from gateway.model import Endpoint, Origin, Owner
from gateway.policy import Lan, Policy
from gateway.table import MappingTable

EXTERNAL = IPv4Address("203.0.113.1")
LAN = Lan(
    prefixes=(IPv4Network("192.168.1.0/24"), IPv6Network("2001:db8:1::/64")),
    own_addresses=frozenset({ip_address("192.168.1.1"), ip_address("2001:db8:1::1")}),
)


def make_policy(**overrides: object) -> Policy:
    lifetimes = overrides.pop("lifetimes", LifetimeConfig())
    config = PolicyConfig(**overrides)  # type: ignore[arg-type]
    return Policy(config, lifetimes, LAN)  # type: ignore[arg-type]


def make_table(seed: int = 7, **overrides: object) -> MappingTable:
    return MappingTable(make_policy(**overrides), Allocator(random.Random(seed)), EXTERNAL)


def owner(origin: Origin, client: str = "192.168.1.10", nonce: bytes | None = None) -> Owner:
    if origin is Origin.PCP and nonce is None:
        nonce = b"n" * 12
    return Owner(origin, ip_address(client), nonce)


def ep(text: str) -> Endpoint:
    address, _, port = text.rpartition(":")
    return Endpoint(ip_address(address.strip("[]")), int(port))


@pytest.fixture
def table() -> MappingTable:
    return make_table()

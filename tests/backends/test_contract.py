"""Tier 4: one contract for every backend. The memory backend and the nftables backend (each
case in a fresh network namespace) must behave alike; nft cases also read the kernel back."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from backends.memory import MemoryBackend
from backends.nft.backend import NftBackend
from backends.nft.ruleset import JumpTarget, Layout
from gateway.errors import BackendError
from gateway.model import (
    Change,
    ChangeKind,
    Endpoint,
    Kind,
    Mapping,
    MappingKey,
    Origin,
    Owner,
    Proto,
    RemoteFilter,
    kernel_view,
)
from gateway.ports import Backend
from tests.netlab import Namespace, inside, unique_prefix

EXT = ip_address("203.0.113.1")


def port_map(uid: int, port: int, proto: Proto = Proto.TCP, **kw: object) -> Mapping:
    host = ip_address(f"192.168.77.{10 + uid % 200}")
    return Mapping(
        uid,
        Kind.PORT_MAP,
        MappingKey(proto, Endpoint(EXT, port)),
        Endpoint(host, port),
        Owner(Origin.UPNP, host),
        **kw,  # type: ignore[arg-type]
    )


def pinhole(uid: int, port: int, **kw: object) -> Mapping:
    internal = Endpoint(ip_address(f"fd77::{uid:x}"), port)
    return Mapping(
        uid,
        Kind.PINHOLE,
        MappingKey(Proto.UDP, internal),
        internal,
        Owner(Origin.PCP, internal.address, b"n" * 12),
        **kw,  # type: ignore[arg-type]
    )


FILTERED = port_map(
    2,
    8081,
    filters=(
        RemoteFilter(ip_network("198.51.100.0/24")),
        RemoteFilter.host(ip_address("192.0.2.5"), 53),
    ),
)
SAMPLE = [
    port_map(1, 8080),
    FILTERED,
    port_map(3, 8080, Proto.UDP),
    pinhole(4, 0),
    pinhole(5, 443, filters=(RemoteFilter(ip_network("2001:db8::/32"), 0),)),
]


def views(mappings: list[Mapping]) -> frozenset[object]:
    return frozenset(v.canonical() for m in mappings if (v := kernel_view(m)) is not None)


def added(m: Mapping) -> Change:
    return Change(ChangeKind.ADDED, None, m)


def removed(m: Mapping) -> Change:
    return Change(ChangeKind.REMOVED, m, None)


#: A stand-in for OpenWrt's fw4: forward drops unless a rule accepts; forward_wan is the
#: chain jump mode hooks into.
FW4 = """
table inet fw4 {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "wan0" jump forward_wan
    }
    chain forward_wan {
        ct status dnat accept comment "!fw4: Accept port forwards"
    }
}
"""


def load_fw4(ns: Namespace) -> None:
    script = ns.run("mktemp").stdout.strip()
    Path(script).write_text(FW4)
    ns.run("nft", "-f", script)
    Path(script).unlink()


class NftHarness:
    def __init__(self, namespace: Namespace, table: str, jump: bool = False) -> None:
        self.namespace = namespace
        self.table = table
        self.jump = jump

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.namespace.run("nft", *args, check=check)

    def flush_externally(self) -> None:
        if self.jump:
            # a firewall reload: fw4 replaces its table, losing what we had put in it
            self.nft("delete", "table", "inet", "fw4")
            load_fw4(self.namespace)
        else:
            self.nft("flush", "table", "inet", self.table)


class MemoryHarness:
    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def flush_externally(self) -> None:
        self.backend.simulate_flush()


@pytest.fixture(params=["memory", "nft", "nft-jump"])
def subject(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, object]]:
    if request.param == "memory":
        backend = MemoryBackend()
        yield backend, MemoryHarness(backend)
        return
    name = unique_prefix("c")
    jump = request.param == "nft-jump"
    with Namespace(name) as ns, inside(name):
        if jump:
            load_fw4(ns)
        layout = Layout(
            table="pgtest",
            lan_interfaces=("lo",),
            forward_jump=JumpTarget("inet", "fw4", "forward_wan") if jump else None,
        )
        yield NftBackend(layout), NftHarness(ns, "pgtest", jump)


def test_install_puts_exactly_the_mappings_in_place(subject: tuple[Backend, object]) -> None:
    backend, _ = subject
    backend.install(SAMPLE)
    assert backend.snapshot() == views(SAMPLE)
    assert backend.healthy()


def test_disabled_mappings_are_not_installed(subject: tuple[Backend, object]) -> None:
    backend, _ = subject
    backend.install([port_map(1, 8080), port_map(2, 8081, enabled=False)])
    assert backend.snapshot() == views([port_map(1, 8080)])


def test_a_batch_adds_removes_and_moves(subject: tuple[Backend, object]) -> None:
    backend, _ = subject
    backend.install(SAMPLE)
    moved = replace(SAMPLE[0], key=MappingKey(Proto.TCP, Endpoint(EXT, 9090)))
    backend.apply(
        [
            removed(FILTERED),
            added(port_map(6, 7000)),
            Change(ChangeKind.UPDATED, SAMPLE[0], moved),
        ]
    )
    expected = [moved, SAMPLE[2], SAMPLE[3], SAMPLE[4], port_map(6, 7000)]
    assert backend.snapshot() == views(expected)


def test_a_refused_batch_changes_nothing(subject: tuple[Backend, object]) -> None:
    backend, _ = subject
    backend.install(SAMPLE)
    before = backend.snapshot()
    with pytest.raises(BackendError):
        backend.apply([added(port_map(7, 7001)), removed(port_map(8, 7002))])
    assert backend.snapshot() == before


def test_what_a_batch_adds_and_removes_again_never_lands(
    subject: tuple[Backend, object],
) -> None:
    backend, _ = subject
    backend.install([])
    temp = port_map(9, 7100)
    backend.apply([added(temp), removed(temp), added(port_map(10, 7200))])
    assert backend.snapshot() == views([port_map(10, 7200)])


def test_install_reconciles_with_what_is_there(subject: tuple[Backend, object]) -> None:
    backend, _ = subject
    assert backend.install(SAMPLE[:3]) == (0, 3)
    # says what it had to change: the full check logs it, and stays quiet when it was nothing
    assert backend.install([*SAMPLE[2:], port_map(11, 6000)]) == (2, 3)
    assert backend.snapshot() == views([*SAMPLE[2:], port_map(11, 6000)])
    assert backend.install([*SAMPLE[2:], port_map(11, 6000)]) == (0, 0)


def test_an_external_flush_is_noticed_and_repaired(subject: tuple[Backend, object]) -> None:
    backend, harness = subject
    backend.install(SAMPLE)
    harness.flush_externally()  # type: ignore[attr-defined]
    assert not backend.healthy()
    backend.install(SAMPLE)
    assert backend.healthy()
    assert backend.snapshot() == views(SAMPLE)


def test_reset_removes_everything_we_own(subject: tuple[Backend, object]) -> None:
    backend, _ = subject
    backend.install(SAMPLE)
    backend.reset_owned()
    assert backend.snapshot() == frozenset()


# -- nftables only -------------------------------------------------------------------------


@pytest.fixture
def nft_ns() -> Iterator[Namespace]:
    name = unique_prefix("n")
    with Namespace(name) as ns, inside(name):
        yield ns


def listed(ns: Namespace, table: str = "pgtest") -> dict[str, list[object]]:
    out = json.loads(ns.run("nft", "-j", "list", "table", "inet", table).stdout)
    sets: dict[str, list[object]] = {}
    for item in out["nftables"]:
        body = item.get("map") or item.get("set")
        if body:
            sets[body["name"]] = body.get("elem", [])
    return sets


def test_nft_keeps_mappings_as_elements_not_rules(nft_ns: Namespace) -> None:
    backend = NftBackend(Layout(table="pgtest", lan_interfaces=("br-lan",)))
    backend.install(SAMPLE)
    sets = listed(nft_ns)
    expected = [
        [{"concat": ["203.0.113.1", "tcp", 8080]}, {"concat": ["192.168.77.11", 8080]}],
        [{"concat": ["203.0.113.1", "udp", 8080]}, {"concat": ["192.168.77.13", 8080]}],
    ]
    assert sorted(map(json.dumps, sets["dnat4"])) == sorted(map(json.dumps, expected))
    assert len(sets["dnat4_peer"]) == 2
    assert sets["lan_ifaces"] == ["br-lan"]
    rules = json.loads(nft_ns.run("nft", "-j", "list", "table", "inet", "pgtest").stdout)
    count = sum(1 for item in rules["nftables"] if "rule" in item)
    backend.apply([added(port_map(20 + i, 20000 + i)) for i in range(50)])
    rules = json.loads(nft_ns.run("nft", "-j", "list", "table", "inet", "pgtest").stdout)
    assert sum(1 for item in rules["nftables"] if "rule" in item) == count
    assert len(listed(nft_ns)["dnat4"]) == 52


def test_nft_installs_ten_thousand_leases_in_one_transaction(nft_ns: Namespace) -> None:
    backend = NftBackend(Layout(table="pgtest"))
    leases = [port_map(i, 10000 + i) for i in range(10000)]
    backend.install(leases)
    assert backend.runner.transactions == 1
    assert len(listed(nft_ns)["dnat4"]) == 10000
    backend.apply([removed(leases[0]), added(port_map(10001, 5000))])
    assert backend.runner.transactions == 2
    assert len(listed(nft_ns)["dnat4"]) == 10000


def test_nft_never_touches_foreign_tables(nft_ns: Namespace) -> None:
    nft_ns.run(
        "nft", "add table inet fw; add chain inet fw input { type filter hook input priority 0; }"
    )
    nft_ns.run("nft", "add rule inet fw input tcp dport 22 accept")
    before = nft_ns.run("nft", "list", "table", "inet", "fw").stdout
    backend = NftBackend(Layout(table="pgtest"))
    backend.install(SAMPLE)
    backend.apply([removed(SAMPLE[0])])
    backend.reset_owned()
    assert nft_ns.run("nft", "list", "table", "inet", "fw").stdout == before
    assert nft_ns.run("nft", "list", "table", "inet", "pgtest", check=False).returncode != 0


def test_nft_refuses_a_table_of_that_name_made_by_someone_else(nft_ns: Namespace) -> None:
    nft_ns.run("nft", "add table inet pgtest; add chain inet pgtest theirs")
    backend = NftBackend(Layout(table="pgtest"))
    with pytest.raises(BackendError, match="did not create"):
        backend.install(SAMPLE)
    assert "theirs" in nft_ns.run("nft", "list", "table", "inet", "pgtest").stdout


def test_nft_rebuilds_a_table_whose_priorities_changed(nft_ns: Namespace) -> None:
    NftBackend(Layout(table="pgtest")).install(SAMPLE)
    backend = NftBackend(Layout(table="pgtest", dnat_priority=-90))
    backend.install(SAMPLE)
    assert "priority dstnat + 10" in nft_ns.run("nft", "list", "table", "inet", "pgtest").stdout
    assert backend.snapshot() == views(SAMPLE)


def test_nft_repairs_a_deleted_table(nft_ns: Namespace) -> None:
    backend = NftBackend(Layout(table="pgtest"))
    backend.install(SAMPLE)
    nft_ns.run("nft", "delete", "table", "inet", "pgtest")
    assert not backend.healthy()
    backend.install(SAMPLE)
    assert backend.snapshot() == views(SAMPLE)


def test_nft_jump_mode_touches_only_its_own_part_of_the_firewall(nft_ns: Namespace) -> None:
    load_fw4(nft_ns)
    before = nft_ns.run("nft", "list", "table", "inet", "fw4").stdout
    layout = Layout(table="pgtest", forward_jump=JumpTarget("inet", "fw4", "forward_wan"))
    backend = NftBackend(layout)
    backend.install(SAMPLE)
    fw4 = nft_ns.run("nft", "list", "table", "inet", "fw4").stdout
    assert "jump pgtest_forward" in fw4 and "set pgtest_pin6 " in fw4
    assert "chain forward " not in nft_ns.run("nft", "list", "table", "inet", "pgtest").stdout
    backend.install(SAMPLE)  # idempotent: one jump, not two
    assert (
        nft_ns.run("nft", "list", "table", "inet", "fw4").stdout.count("jump pgtest_forward") == 1
    )
    backend.reset_owned()
    assert nft_ns.run("nft", "list", "table", "inet", "fw4").stdout == before


def test_nft_jump_mode_needs_the_firewall_table(nft_ns: Namespace) -> None:
    layout = Layout(table="pgtest", forward_jump=JumpTarget("inet", "fw4", "forward_wan"))
    with pytest.raises(BackendError, match="inet fw4 does not exist"):
        NftBackend(layout).install(SAMPLE)

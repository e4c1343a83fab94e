"""Real packets through the nftables backend, in a lab of namespaces: a gateway running the
daemon, two LAN hosts and a WAN host (scripts/netns-lab.sh)."""

from __future__ import annotations

import json
import signal
from ipaddress import ip_address
from pathlib import Path

import pytest

from backends.nft.backend import NftBackend
from backends.nft.ruleset import Layout
from gateway.model import Endpoint, Kind, Mapping, MappingKey, Origin, Owner, Proto, RemoteFilter
from tests.netlab import (
    LAN_HOST,
    WAN_GW,
    WAN_HOST,
    WAN_HOST2,
    GatewayDaemon,
    Lab,
    inside,
    wait_until,
)

pytestmark = pytest.mark.netns


def test_tcp_and_udp_reach_the_lan_host_until_the_mapping_is_deleted(
    lab: Lab, daemon: GatewayDaemon
) -> None:
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8080), 80)
    assert daemon.ctl("add", "tcp", "8080", f"{LAN_HOST}:80").returncode == 0
    assert daemon.ctl("add", "udp", "9000", f"{LAN_HOST}:9999").returncode == 0
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8080), 80)
    assert lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 9000), 9999)
    assert daemon.ctl("delete", "tcp", "8080").returncode == 0
    assert daemon.ctl("delete", "udp", "9000").returncode == 0
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8080), 80)
    assert not lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 9000), 9999)


def test_traffic_stops_when_the_lease_expires(lab: Lab, daemon: GatewayDaemon) -> None:
    assert daemon.ctl("add", "udp", "9001", f"{LAN_HOST}:9001", "--lifetime", "3").returncode == 0
    assert lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 9001), 9001)
    assert wait_until(lambda: "map expire udp" in daemon.log_text(), timeout=10)
    assert not lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 9001), 9001)


def test_hairpin_from_another_lan_host(lab: Lab, daemon: GatewayDaemon) -> None:
    assert daemon.ctl("add", "tcp", "8080", f"{LAN_HOST}:80").returncode == 0
    assert daemon.ctl("add", "udp", "9000", f"{LAN_HOST}:9000").returncode == 0
    assert lab.reaches(lab.lan2, lab.lan, "tcp", (WAN_GW, 8080), 80)
    assert lab.reaches(lab.lan2, lab.lan, "udp", (WAN_GW, 9000), 9000)


def test_an_external_flush_is_repaired_within_five_seconds(lab: Lab, daemon: GatewayDaemon) -> None:
    assert daemon.ctl("add", "tcp", "8080", f"{LAN_HOST}:80").returncode == 0
    lab.run(lab.gw, "nft", "flush", "ruleset")
    assert wait_until(
        lambda: (
            lab.run(lab.gw, "nft", "list", "table", "inet", "portgate", check=False).returncode == 0
        ),
        timeout=5,
    )
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8080), 80)
    assert daemon.log_text().count("restoring them") >= 1


def test_a_restart_reinstalls_leases_and_drops_stale_kernel_state(
    lab: Lab, daemon: GatewayDaemon
) -> None:
    assert daemon.ctl("add", "tcp", "8080", f"{LAN_HOST}:80").returncode == 0
    daemon.stop(signal.SIGKILL)
    # while it is down, someone leaves an element of their own in our map
    lab.run(
        lab.gw,
        "nft",
        "add element inet portgate dnat4 { 203.0.113.1 . tcp . 7777 : 192.168.77.11 . 77 }",
    )
    daemon.start()
    listing = json.loads(
        lab.run(lab.gw, "nft", "-j", "list", "map", "inet", "portgate", "dnat4").stdout
    )
    elements = next(item["map"].get("elem", []) for item in listing["nftables"] if "map" in item)
    assert [e[0]["concat"][2] for e in elements] == [8080]
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8080), 80)


def test_foreign_tables_survive_start_stop_and_reset(lab: Lab, tmp_path: Path) -> None:
    lab.run(
        lab.gw,
        "nft",
        "add table inet fw; add chain inet fw input { type filter hook input priority 0; }",
    )
    lab.run(lab.gw, "nft", "add rule inet fw input tcp dport 22 accept")
    before = lab.run(lab.gw, "nft", "list", "table", "inet", "fw").stdout
    d = GatewayDaemon(lab, tmp_path)
    d.start()
    d.ctl("add", "tcp", "8080", f"{LAN_HOST}:80")
    d.stop()
    assert lab.run(lab.gw, "nft", "list", "table", "inet", "fw").stdout == before
    # stop without keeping: our table goes, theirs stays
    text = d.config.read_text().replace("state: {", "state: {keep_mappings_on_stop: false, ")
    d.config.write_text(text)
    d.start()
    d.stop()
    assert lab.run(lab.gw, "nft", "list", "table", "inet", "portgate", check=False).returncode != 0
    assert lab.run(lab.gw, "nft", "list", "table", "inet", "fw").stdout == before


def test_a_remote_host_filter_admits_only_that_host(lab: Lab) -> None:
    with inside(lab.gw):
        backend = NftBackend(Layout(table="portgate", lan_interfaces=("br-lan",)))
        host = ip_address(LAN_HOST)
        mapping = Mapping(
            1,
            Kind.PORT_MAP,
            MappingKey(Proto.TCP, Endpoint(ip_address(WAN_GW), 8443)),
            Endpoint(host, 443),
            Owner(Origin.UPNP, host),
            filters=(RemoteFilter.host(ip_address(WAN_HOST)),),
        )
        backend.install([mapping])
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8443), 443, source=WAN_HOST)
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8443), 443, source=WAN_HOST2)
    assert not lab.reaches(lab.lan2, lab.lan, "tcp", (WAN_GW, 8443), 443)

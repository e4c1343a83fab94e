"""IPv6 pinholes end to end: the gateway runs with ``ipv6_firewall`` on (new inbound IPv6 is
dropped unless a pinhole admits it); upnpc (WANIPv6FirewallControl) and our PCP client open
pinholes over IPv6, and a WAN host's packets reach the LAN host only while they live."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Iterator
from ipaddress import IPv6Address, ip_address
from pathlib import Path

import pytest

from protocols.pcp.codec import (
    MapData,
    Opcode,
    Request,
    ResultCode,
    decode_response,
    encode_request,
)
from protocols.pcp.options import Filter, Options
from tests.netlab import LAN6_HOST, WAN6_HOST, GatewayDaemon, Lab, inside, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.e2e]
GW6_LAN = "fd77::1"


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[GatewayDaemon]:
    d = GatewayDaemon(lab, tmp_path, ipv6_firewall=True)
    d.start()
    try:
        yield d
    finally:
        d.stop(signal.SIGKILL)


def pcp6(lab: Lab, port: int, lifetime: int = 600, options: Options | None = None) -> object:
    request = Request(
        Opcode.MAP,
        lifetime,
        ip_address(LAN6_HOST),
        MapData(b"v6-nonce-001", 6, port, port, IPv6Address("::")),
        options or Options(),
    )
    with inside(lab.lan):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.bind((LAN6_HOST, 0))
            sock.settimeout(3)
            sock.sendto(encode_request(request), (GW6_LAN, 5351))
            data, _ = sock.recvfrom(1100)
        finally:
            sock.close()
    return decode_response(data)


def test_inbound_ipv6_is_dropped_without_a_pinhole(lab: Lab, daemon: GatewayDaemon) -> None:
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9100), 9100)
    assert not lab.reaches(lab.wan, lab.lan, "udp", (LAN6_HOST, 9101), 9101)


def test_a_pcp_pinhole_admits_its_flow_until_deleted(lab: Lab, daemon: GatewayDaemon) -> None:
    answer = pcp6(lab, 9100)
    assert answer.result == ResultCode.SUCCESS  # type: ignore[attr-defined]
    body = answer.body  # type: ignore[attr-defined]
    assert isinstance(body, MapData)
    assert (body.external_address, body.external_port) == (ip_address(LAN6_HOST), 9100)
    assert lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9100), 9100)
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9102), 9102)
    rows = daemon.listing()
    assert [(r["kind"], r["origin"]) for r in rows] == [("pinhole", "pcp")]
    deleted = pcp6(lab, 9100, lifetime=0)
    assert deleted.result == ResultCode.SUCCESS  # type: ignore[attr-defined]
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9100), 9100)


def test_a_filtered_pcp_pinhole_admits_only_that_peer(lab: Lab, daemon: GatewayDaemon) -> None:
    other = Options(filters=(Filter(128, 0, ip_address("2001:db8:ff::99")),))
    assert pcp6(lab, 9200, options=other).result == ResultCode.SUCCESS  # type: ignore[attr-defined]
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9200), 9200)
    mine = Options(filters=(Filter(128, 0, ip_address(WAN6_HOST)),))
    assert pcp6(lab, 9200, options=mine).result == ResultCode.SUCCESS  # type: ignore[attr-defined]
    assert lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9200), 9200)


def test_upnpc_opens_updates_and_deletes_a_pinhole(lab: Lab, daemon: GatewayDaemon) -> None:
    def upnpc(*args: str) -> str:
        done = lab.run(lab.lan, "timeout", "30", "upnpc", "-6", "-i", *args, check=False)
        return done.stdout + done.stderr

    out = upnpc("-A", "", "0", LAN6_HOST, "9300", "6", "3600")
    found = re.search(r"UniqueID\s*[:=]\s*(\d+)", out) or re.search(
        r"Pinhole ID\s*[:=]\s*(\d+)", out
    )
    assert found, out
    uid = found.group(1)
    assert lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9300), 9300)
    assert any(r["kind"] == "pinhole" and r["origin"] == "upnp" for r in daemon.listing())
    updated = upnpc("-U", uid, "7200")
    assert "returned 0" in updated or "UpdatePinhole" in updated, updated
    upnpc("-D", uid)
    assert not any(r["kind"] == "pinhole" for r in daemon.listing())
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9300), 9300)


FW4 = """
table inet fw4 {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "br-lan" accept
        iifname "wan0" jump forward_wan
    }
    chain forward_wan {
        ct status dnat accept comment "!fw4: Accept port forwards"
    }
}
"""


def load_fw4(lab: Lab, directory: Path) -> None:
    script = directory / "fw4.nft"
    script.write_text(FW4)
    lab.run(lab.gw, "nft", "-f", str(script))


def test_behind_an_fw4_style_firewall_jump_mode_makes_pinholes_work(
    lab: Lab, tmp_path: Path
) -> None:
    load_fw4(lab, tmp_path)
    d = GatewayDaemon(lab, tmp_path)
    d.config.write_text(
        d.config.read_text().replace(
            "ipv6_firewall: false", 'ipv6_firewall: false, forward_jump: "inet fw4 forward_wan"'
        )
    )
    d.start()
    try:
        assert not lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9400), 9400)
        assert pcp6(lab, 9400).result == ResultCode.SUCCESS  # type: ignore[attr-defined]
        assert lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9400), 9400)
        assert d.ctl("add", "tcp", "8080", "192.168.77.10:80").returncode == 0
        assert lab.reaches(lab.wan, lab.lan, "tcp", ("203.0.113.1", 8080), 80)
        # a firewall reload replaces fw4's table; portgate puts its part back
        lab.run(lab.gw, "nft", "delete", "table", "inet", "fw4")
        load_fw4(lab, tmp_path)
        assert wait_until(
            lambda: (
                "jump portgate_forward"
                in lab.run(lab.gw, "nft", "list", "table", "inet", "fw4").stdout
            ),
            timeout=5,
        )
        assert lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9400), 9400)
    finally:
        d.stop()
    fw4 = lab.run(lab.gw, "nft", "list", "table", "inet", "fw4").stdout
    assert "portgate" in fw4  # kept on stop, like our own table (keep_mappings_on_stop)

"""End to end: the daemon in the lab's gateway namespace with the nft backend, driven by real
clients on the LAN host: natpmpc (Debian's), libtorrent (Debian's python3-libtorrent) and a
PCP client built from our codec (no PCP client is packaged), with real WAN-to-LAN traffic."""

from __future__ import annotations

import re
import signal
import socket
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from protocols.pcp.codec import (
    MapData,
    Opcode,
    PeerData,
    Request,
    Response,
    ResultCode,
    decode_response,
    encode_request,
)
from protocols.pcp.options import Filter, Options
from tests.netlab import (
    GW_LAN,
    LAN2_HOST,
    LAN_HOST,
    WAN_GW,
    WAN_HOST,
    WAN_HOST2,
    GatewayDaemon,
    Lab,
    Libtorrent,
    inside,
)

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


def natpmpc(lab: Lab, namespace: str, *args: str, gateway: str = GW_LAN) -> str:
    done = lab.run(namespace, "natpmpc", "-g", gateway, *args, check=False)
    return done.stdout + done.stderr


def mapped_port(output: str) -> int:
    found = re.search(r"Mapped public port (\d+) protocol (\w+) to local port (\d+)", output)
    assert found, output
    return int(found.group(1))


def pcp(lab: Lab, request: Request, namespace: str | None = None, extra: bytes = b"") -> Response:
    with inside(namespace or lab.lan):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.settimeout(3)
            sock.sendto(encode_request(request, extra), (GW_LAN, 5351))
            data, _ = sock.recvfrom(1100)
        finally:
            sock.close()
    return decode_response(data)


def pcp_map(
    client: str,
    internal_port: int,
    proto: int = 6,
    lifetime: int = 600,
    suggested: int = 0,
    nonce: bytes = b"portgate-e2e",
    options: Options | None = None,
) -> Request:
    return Request(
        Opcode.MAP,
        lifetime,
        ip_address(client),
        MapData(nonce, proto, internal_port, suggested, IPv4Address("0.0.0.0")),
        options or Options(),
    )


def test_natpmpc_learns_the_public_address(lab: Lab, daemon: GatewayDaemon) -> None:
    out = natpmpc(lab, lab.lan)
    assert "Public IP address : 203.0.113.1" in out


def test_natpmpc_maps_tcp_and_udp_that_carry_traffic_until_deleted(
    lab: Lab, daemon: GatewayDaemon
) -> None:
    tcp = mapped_port(natpmpc(lab, lab.lan, "-a", "4000", "4000", "tcp", "3600"))
    udp = mapped_port(natpmpc(lab, lab.lan, "-a", "4001", "4001", "udp", "3600"))
    assert (tcp, udp) == (4000, 4001)
    rows = daemon.listing()
    assert {(r["proto"], r["external"], r["origin"]) for r in rows} == {
        ("tcp", f"{WAN_GW}:4000", "natpmp"),
        ("udp", f"{WAN_GW}:4001", "natpmp"),
    }
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 4000), 4000)
    assert lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 4001), 4001)
    natpmpc(lab, lab.lan, "-a", "4000", "4000", "tcp", "0")
    natpmpc(lab, lab.lan, "-a", "4001", "4001", "udp", "0")
    assert daemon.listing() == []
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 4000), 4000)


def test_natpmpc_gets_another_port_when_its_choice_is_taken(
    lab: Lab, daemon: GatewayDaemon
) -> None:
    assert mapped_port(natpmpc(lab, lab.lan, "-a", "5000", "5000", "tcp", "600")) == 5000
    other = mapped_port(natpmpc(lab, lab.lan2, "-a", "5000", "5000", "tcp", "600"))
    assert other != 5000
    assert lab.reaches(lab.wan, lab.lan2, "tcp", (WAN_GW, other), 5000)


def test_nothing_answers_natpmp_or_pcp_from_the_wan(lab: Lab, daemon: GatewayDaemon) -> None:
    out = natpmpc(lab, lab.wan, gateway=WAN_GW)
    assert "Public IP address" not in out
    with inside(lab.wan):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(1.5)
        try:
            for target in (WAN_GW, GW_LAN):
                sock.sendto(encode_request(pcp_map(WAN_HOST, 6000)), (target, 5351))
                with pytest.raises(TimeoutError):
                    sock.recvfrom(1100)
        finally:
            sock.close()
    assert daemon.listing() == []


def test_pcp_map_carries_traffic_and_delete_stops_it(lab: Lab, daemon: GatewayDaemon) -> None:
    answer = pcp(lab, pcp_map(LAN_HOST, 7000, suggested=7000))
    assert answer.result == ResultCode.SUCCESS
    assert isinstance(answer.body, MapData)
    assert answer.body.external_address == ip_address(WAN_GW)
    port = answer.body.external_port
    assert port == 7000
    assert 120 <= answer.lifetime <= 600
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, port), 7000)
    gone = pcp(lab, pcp_map(LAN_HOST, 7000, lifetime=0))
    assert gone.result == ResultCode.SUCCESS and gone.lifetime == 0
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, port), 7000)


def test_pcp_filter_admits_only_the_named_peer(lab: Lab, daemon: GatewayDaemon) -> None:
    only = Options(filters=(Filter(128, 0, ip_address(WAN_HOST)),))
    answer = pcp(lab, pcp_map(LAN_HOST, 7100, proto=17, suggested=7100, options=only))
    assert answer.result == ResultCode.SUCCESS
    assert lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 7100), 7100, source=WAN_HOST)
    assert not lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 7100), 7100, source=WAN_HOST2)


def test_pcp_prefer_failure_refuses_a_taken_port(lab: Lab, daemon: GatewayDaemon) -> None:
    first = pcp(lab, pcp_map(LAN2_HOST, 7200, suggested=7200), namespace=lab.lan2)
    assert first.result == ResultCode.SUCCESS
    strict = Options(prefer_failure=True)
    answer = pcp(lab, pcp_map(LAN_HOST, 7200, suggested=7200, options=strict))
    assert answer.result == ResultCode.CANNOT_PROVIDE_EXTERNAL
    relaxed = pcp(lab, pcp_map(LAN_HOST, 7200, suggested=7200))
    assert relaxed.result == ResultCode.SUCCESS
    assert isinstance(relaxed.body, MapData) and relaxed.body.external_port != 7200


def test_pcp_refuses_another_nonce_and_third_party(lab: Lab, daemon: GatewayDaemon) -> None:
    assert pcp(lab, pcp_map(LAN_HOST, 7300)).result == ResultCode.SUCCESS
    thief = pcp(lab, pcp_map(LAN_HOST, 7300, nonce=b"another-nonc"))
    assert thief.result == ResultCode.NOT_AUTHORIZED
    assert thief.lifetime > 0
    proxy = Options(third_party=ip_address(LAN2_HOST))
    answer = pcp(lab, pcp_map(LAN_HOST, 7301, options=proxy))
    assert answer.result == ResultCode.UNSUPP_OPTION
    assert [r["internal"] for r in daemon.listing()] == [f"{LAN_HOST}:7300"]


def test_pcp_peer_creates_a_mapping_for_that_peer(lab: Lab, daemon: GatewayDaemon) -> None:
    request = Request(
        Opcode.PEER,
        600,
        ip_address(LAN_HOST),
        PeerData(b"peer-nonce-1", 6, 7400, 0, IPv4Address("0.0.0.0"), 443, ip_address(WAN_HOST)),
    )
    answer = pcp(lab, request)
    assert answer.result == ResultCode.SUCCESS
    assert isinstance(answer.body, PeerData)
    [row] = daemon.listing()
    assert row["origin"] == "pcp" and row["internal"] == f"{LAN_HOST}:7400"


@pytest.mark.parametrize("pcp_enabled", [True, False], ids=["pcp", "natpmp-only"])
def test_libtorrent_maps_its_listen_port(lab: Lab, tmp_path: Path, pcp_enabled: bool) -> None:
    """libtorrent 2.0 (Debian) tries PCP first and falls back to NAT-PMP when the gateway
    answers PCP as a NAT-PMP-only server would; either way a WAN peer then reaches its
    listen socket through the mapping."""
    daemon = GatewayDaemon(lab, tmp_path, extra="" if pcp_enabled else "pcp: {enabled: false}")
    daemon.start()
    torrent = Libtorrent(lab, lab.lan, 6881, upnp=False, natpmp=True)
    mapped = torrent.mapped()
    try:
        assert mapped, "".join(torrent.lines)
        rows = daemon.listing()
        origins = {r["origin"] for r in rows if r["internal"] == f"{LAN_HOST}:6881"}
        assert origins == ({"pcp"} if pcp_enabled else {"natpmp"}), rows
        with inside(lab.wan):
            conn = socket.create_connection((WAN_GW, mapped), timeout=3)
            conn.close()
    finally:
        torrent.stop()
        daemon.stop(signal.SIGKILL)

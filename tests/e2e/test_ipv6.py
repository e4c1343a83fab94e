"""IPv6 pinholes end to end: the gateway runs with ``ipv6_firewall`` on (new inbound IPv6 is
dropped unless a pinhole admits it); upnpc (WANIPv6FirewallControl) and our PCP client open
pinholes over IPv6, and a WAN host's packets reach the LAN host only while they live. The PCP
client asks the gateway's ULA address or, as one that asks its default router does, its
link-local address on the LAN interface."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv6Address, ip_address
from pathlib import Path

import pytest

from protocols.pcp.codec import (
    MapData,
    Opcode,
    Request,
    Response,
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


def pcp6(
    lab: Lab,
    port: int,
    lifetime: int = 600,
    options: Options | None = None,
    *,
    server: str = GW6_LAN,
    source: str = LAN6_HOST,
) -> object:
    return pcp6_answer(lab, port, lifetime, options, server=server, source=source)[0]


def pcp6_answer(
    lab: Lab,
    port: int,
    lifetime: int = 600,
    options: Options | None = None,
    *,
    server: str = GW6_LAN,
    source: str = LAN6_HOST,
) -> tuple[Response, str]:
    """A MAP for ``source``'s TCP ``port`` from the LAN host, sent from ``source`` to
    ``server`` (either may be a link-local address with its zone, ``fe80::1%eth0``): the
    answer and the address it came from."""
    request = Request(
        Opcode.MAP,
        lifetime,
        ip_address(source.partition("%")[0]),
        MapData(b"v6-nonce-001", 6, port, port, IPv6Address("::")),
        options or Options(),
    )
    with inside(lab.lan):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.bind(sockaddr6(source, 0))
            sock.settimeout(3)
            sock.sendto(encode_request(request), sockaddr6(server, 5351))
            data, sender = sock.recvfrom(1100)
        finally:
            sock.close()
    return decode_response(data), str(sender[0])


def sockaddr6(host: str, port: int) -> tuple[str, int, int, int]:
    """``host`` (``fe80::1%eth0`` too) as the 4-tuple bind and sendto need: Python drops the
    zone of a 2-tuple's host. Call it inside the namespace whose interface the zone names."""
    address = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM)[0][4]
    return (str(address[0]), int(address[1]), int(address[2]), int(address[3]))


def link_local(lab: Lab, namespace: str, device: str) -> str:
    """The link-local address of ``device`` in ``namespace`` (no DAD in the lab: usable)."""

    def found() -> str | None:
        shown = lab.run(namespace, "ip", "-6", "-o", "addr", "show", "dev", device, "scope", "link")
        match = re.search(r"inet6 (fe80:[0-9a-f:]+)/64", shown.stdout)
        return None if match is None or "tentative" in shown.stdout else match.group(1)

    assert wait_until(lambda: found() is not None, timeout=5), f"no link-local on {device}"
    address = found()
    assert address is not None
    return address


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


def test_a_pcp_client_asking_the_gateways_link_local_address_gets_its_pinhole(
    lab: Lab, daemon: GatewayDaemon
) -> None:
    """RFC 6887 §8.1: a PCP client asks its default router, on IPv6 usually the router's
    link-local address (the source of its Router Advertisements). From its ULA address it
    gets its pinhole there as at fd77::1, answered from the address it asked."""
    gateway = link_local(lab, lab.gw, "br-lan")
    server = f"{gateway}%eth0"  # as the LAN host names it
    listening = re.compile(rf"listening on UDP 5351 at .*{re.escape(gateway)}%br-lan")
    assert wait_until(lambda: listening.search(daemon.log_text()) is not None, timeout=5), (
        daemon.log_text()
    )
    answer, sender = pcp6_answer(lab, 9500, server=server)
    assert (answer.result, sender) == (ResultCode.SUCCESS, gateway)
    body = answer.body
    assert isinstance(body, MapData)
    assert (body.external_address, body.external_port) == (ip_address(LAN6_HOST), 9500)
    assert lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9500), 9500)
    rows = daemon.listing()
    assert [(r["kind"], r["origin"], r["internal"]) for r in rows] == [
        ("pinhole", "pcp", f"[{LAN6_HOST}]:9500")
    ]
    # from its own link-local address it would map that one: useless off the link, refused
    own = f"{link_local(lab, lab.lan, 'eth0')}%eth0"
    for asked in (server, GW6_LAN):
        refused, _ = pcp6_answer(lab, 9501, server=asked, source=own)
        assert refused.result == ResultCode.NOT_AUTHORIZED
    assert len(daemon.listing()) == 1
    # deleted through the link-local address too
    deleted = pcp6(lab, 9500, lifetime=0, server=server)
    assert deleted.result == ResultCode.SUCCESS  # type: ignore[attr-defined]
    assert daemon.listing() == []
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9500), 9500)


def test_a_link_local_address_is_served_once_dad_is_done(lab: Lab, tmp_path: Path) -> None:
    """A link-local address that arrives while the daemon runs is first tentative (duplicate
    address detection; it cannot be bound): left out, then served once the kernel clears it,
    without the other sockets going down."""
    lab.run(lab.gw, "sysctl", "-qw", "net.ipv6.conf.br-lan.accept_dad=1")
    old = link_local(lab, lab.gw, "br-lan")
    lab.run(lab.gw, "ip", "-6", "addr", "del", f"{old}/64", "dev", "br-lan")
    d = GatewayDaemon(lab, tmp_path, ipv6_firewall=True)
    d.start()
    try:
        lab.run(lab.gw, "ip", "-6", "addr", "add", "fe80::1/64", "dev", "br-lan")
        shown = lab.run(lab.gw, "ip", "-6", "addr", "show", "dev", "br-lan").stdout
        assert "tentative" in shown, shown

        def served() -> bool:
            try:
                answer, _ = pcp6_answer(lab, 9600, server="fe80::1%eth0")
            except OSError:
                return False
            return answer.result == ResultCode.SUCCESS

        assert wait_until(served, timeout=8), d.log_text()
        assert pcp6(lab, 9601).result == ResultCode.SUCCESS  # type: ignore[attr-defined]
        assert "cannot listen on UDP 5351" not in d.log_text(), d.log_text()
        assert lab.reaches(lab.wan, lab.lan, "tcp", (LAN6_HOST, 9600), 9600)
    finally:
        d.stop(signal.SIGKILL)


def test_ipv6_announcements_come_from_the_link_local_address_too(lab: Lab, tmp_path: Path) -> None:
    """At start the gateway announces PCP to [ff02::1]:5350 on each LAN interface, from each
    of its IPv6 addresses there, so a client hears it from the address it uses as server."""
    gateway = link_local(lab, lab.gw, "br-lan")
    expected = {gateway, GW6_LAN}
    listener = lab.spawn(
        lab.lan,
        sys.executable,
        "-c",
        textwrap.dedent(
            f"""
            import socket, time
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::", 5350))
            print("ready", flush=True)
            s.settimeout(0.5)
            seen = set()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not {expected!r} <= seen:
                try:
                    data, peer = s.recvfrom(1100)
                except OSError:
                    continue
                seen.add(peer[0])
                print(data.hex(), peer[0], flush=True)
            """
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    d = GatewayDaemon(lab, tmp_path, ipv6_firewall=True)
    d.start()
    try:
        out, err = listener.communicate(timeout=30)
    finally:
        d.stop(signal.SIGKILL)
    senders = {
        peer
        for data, peer in (line.split() for line in out.splitlines())
        if decode_response(bytes.fromhex(data)).opcode == Opcode.ANNOUNCE
    }
    assert expected <= senders, (out, err, d.log_text())


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

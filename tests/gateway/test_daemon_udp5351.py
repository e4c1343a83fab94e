"""The daemon's UDP 5351 sockets: which LAN addresses get one (the IPv6 link-local address of
each LAN interface too, since IPv6 PCP clients ask their default router) and the LAN check
their datagrams go through (``Daemon.is_lan``: a link-local source with a LAN interface's
zone). Sockets are faked: no namespace needed (tests/e2e/test_ipv6.py has the real thing)."""

from __future__ import annotations

import socket
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevelFilterPredicate, capturedLogs, formatEvent

from gateway.config import parse_config
from gateway.daemon import Daemon
from gateway.netinfo import InterfaceInfo
from protocols.pcp import codec as pcp
from protocols.udp5351 import Udp5351Protocol
from tests.protocols.gateway_rig import CLIENT_V6, FakeDatagramTransport, Rig

GATEWAY_LL = IPv6Address("fe80::1%br-lan")
BR_LAN = InterfaceInfo(
    "br-lan",
    7,
    (
        IPv4Interface("192.168.1.1/24"),
        IPv6Interface("2001:db8:1::1/64"),
        IPv6Interface("fe80::1/64"),
    ),
    True,
)
CONFIG = """
wan: {interface: wan0}
lan: [{interface: br-lan}]
backend: {type: memory}
"""


class Port:
    """A listening port: its protocol, and closing it."""

    def __init__(self, protocol: Udp5351Protocol) -> None:
        self.protocol = protocol

    def stopListening(self) -> None:
        pass


class FakeReactor:
    """``listenUDP`` and ``adoptDatagramPort`` recorded; time is the rig's clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.listened: list[tuple[str, Udp5351Protocol]] = []
        self.adopted: list[Udp5351Protocol] = []

    def listenUDP(
        self, port: int, protocol: Udp5351Protocol, interface: str = "", maxPacketSize: int = 0
    ) -> Any:
        self.listened.append((interface, protocol))
        return Port(protocol)

    def adoptDatagramPort(
        self, fd: int, family: int, protocol: Udp5351Protocol, maxPacketSize: int = 0
    ) -> Any:
        assert family == socket.AF_INET6
        self.adopted.append(protocol)
        return Port(protocol)

    def callLater(self, delay: float, fn: Any, *args: Any) -> Any:
        return self.clock.callLater(delay, fn, *args)


@pytest.fixture
def bound(monkeypatch: pytest.MonkeyPatch) -> list[IPv6Address]:
    """``bind_link_local`` made to hand back a loopback socket: the addresses it was asked."""
    asked: list[IPv6Address] = []

    def bind(address: IPv6Address, port: int) -> socket.socket:
        asked.append(address)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
        return sock

    monkeypatch.setattr("protocols.udp5351.bind_link_local", bind)
    return asked


def start(extra: str = "") -> tuple[Daemon, FakeReactor, Rig, str]:
    rig = Rig()
    reactor = FakeReactor(rig.reactor)
    daemon = Daemon(
        "portgate.yaml",
        parse_config(CONFIG + extra),
        reactor,
        rig.service,
        rig.backend,
        LogLevelFilterPredicate(),
        lan_info={"br-lan": BR_LAN},
    )
    with capturedLogs() as events:
        daemon.start_udp5351()
    text = "\n".join(formatEvent(e) for e in events)
    return daemon, reactor, rig, text


def test_pcp_listens_on_the_link_local_address_of_each_lan_interface(
    bound: list[IPv6Address],
) -> None:
    daemon, reactor, _, log = start()
    assert "listening on UDP 5351 at 192.168.1.1, 2001:db8:1::1, fe80::1%br-lan" in log
    assert [address for address, _ in reactor.listened] == ["192.168.1.1", "2001:db8:1::1"]
    assert bound == [GATEWAY_LL]
    [protocol] = reactor.adopted
    assert (protocol.local_address, protocol.interface) == (GATEWAY_LL, "br-lan")
    assert protocol.natpmp is None and protocol.pcp is not None
    assert len(daemon.udp5351_ports) == 3


def test_without_pcp_over_ipv6_only_ipv4_listens(bound: list[IPv6Address]) -> None:
    _, reactor, _, _ = start("pcp: {ipv6: false}")
    assert [address for address, _ in reactor.listened] == ["192.168.1.1"]
    assert bound == [] and reactor.adopted == []


def test_the_link_local_socket_serves_lan_clients_through_the_daemons_lan_check(
    bound: list[IPv6Address],
) -> None:
    _, reactor, rig, _ = start()
    [protocol] = reactor.adopted
    transport = FakeDatagramTransport(str(GATEWAY_LL))
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    try:
        # it announces at start, to all nodes on br-lan
        assert transport.written == [(pcp.encode_announce(0), ("ff02::1%br-lan", 5350))]
        transport.written.clear()
        body = pcp.MapData(b"n" * 12, 6, 8080, 0, IPv6Address("::"))
        request = pcp.encode_request(pcp.Request(pcp.Opcode.MAP, 3600, CLIENT_V6, body))
        protocol.datagramReceived(request, (str(CLIENT_V6), 40000))
        rig.reactor.advance(0)
        [(reply, to)] = transport.written
        assert to == (str(CLIENT_V6), 40000)
        assert pcp.decode_response(reply).result is pcp.ResultCode.SUCCESS
        assert [m.kind.value for m in rig.mappings()] == ["pinhole"]

        transport.written.clear()
        announce = pcp.encode_request(pcp.Request(pcp.Opcode.ANNOUNCE, 0, IPv6Address("fe80::10")))
        # as Twisted gives it (no zone): it came in on br-lan, the socket's interface
        protocol.datagramReceived(announce, ("fe80::10", 40000))
        rig.reactor.advance(0)
        assert [to for _, to in transport.written] == [("fe80::10", 40000)]
        for zone in ("wan0", "3"):  # with a zone that is not a LAN interface's: not heard
            protocol.datagramReceived(announce, (f"fe80::10%{zone}", 40000))
        for zone in ("br-lan", "7"):  # br-lan by name or by index
            protocol.datagramReceived(announce, (f"fe80::10%{zone}", 40000))
        rig.reactor.advance(0)
        assert [to for _, to in transport.written] == [
            ("fe80::10", 40000),
            ("fe80::10%br-lan", 40000),
            ("fe80::10%7", 40000),
        ]
        assert all(
            pcp.decode_response(r).result is pcp.ResultCode.SUCCESS for r, _ in transport.written
        )
    finally:
        protocol.doStop()  # type: ignore[no-untyped-call]

"""The UDP 5351 socket: LAN-only, dispatch on the version byte, replies, announcements on
``task.Clock``, Mapping Updates, and the factory that binds one socket per LAN address."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, capturedLogs, formatEvent

from gateway.model import IPAddress
from protocols.natpmp import codec as natpmp
from protocols.pcp import codec as pcp
from protocols.udp5351 import (
    ALL_HOSTS_V4,
    ANNOUNCE_COUNT,
    CLIENT_PORT,
    SourceLimiter,
    Udp5351Protocol,
    bind_link_local,
    listen_udp5351,
)
from tests.netlab import Namespace, inside, unique_prefix
from tests.protocols.gateway_rig import (
    CLIENT,
    CLIENT_V6,
    EXTERNAL,
    GATEWAY_V4,
    GATEWAY_V6,
    NEW_EXTERNAL,
    WAN_HOST,
    FakeDatagramTransport,
    Rig,
    is_lan,
)

NONCE = b"n" * 12
NATPMP_MAP = natpmp.encode_request(natpmp.MapRequest(natpmp.Opcode.MAP_TCP, 6881, 6881, 3600))
#: the announcement schedule: 250 ms, doubling (RFC 6886 §3.2.1)
SCHEDULE = [0.25 * (2**k - 1) for k in range(ANNOUNCE_COUNT)]


def pcp_map(source: IPAddress = CLIENT, port: int = 6881) -> bytes:
    zero = IPv4Address(0) if isinstance(source, IPv4Address) else IPv6Address("::")
    body = pcp.MapData(NONCE, 6, port, 0, zero)
    return pcp.encode_request(pcp.Request(pcp.Opcode.MAP, 3600, source, body))


class Socket:
    """A ``Udp5351Protocol`` on a fake transport, with its unsolicited sends captured."""

    def __init__(
        self,
        rig: Rig,
        local: IPAddress = GATEWAY_V4,
        *,
        announce_on_start: bool = False,
        lan: Callable[[IPAddress], bool] = is_lan,
        **options: Any,
    ) -> None:
        self.rig = rig
        self.sent: list[tuple[float, bytes, tuple[str, int]]] = []
        self.protocol = Udp5351Protocol(
            rig.service,
            lan,
            local_address=local,
            scheduler=rig.reactor,
            send=self._capture,
            announce_on_start=announce_on_start,
            **options,
        )
        self.transport = FakeDatagramTransport(str(local))
        self.protocol.makeConnection(self.transport)  # type: ignore[arg-type]

    def _capture(self, data: bytes, to: tuple[str, int]) -> None:
        self.sent.append((self.rig.reactor.seconds(), data, to))

    def receive(self, data: bytes, source: IPAddress = CLIENT, port: int = 40000) -> list[bytes]:
        before = len(self.transport.written)
        self.protocol.datagramReceived(data, (str(source), port))
        self.rig.reactor.advance(0)
        replies = self.transport.written[before:]
        assert all(to == (str(source), port) for _, to in replies)
        return [data for data, _ in replies]


@pytest.fixture
def rig() -> Rig:
    return Rig()


# -- requests --------------------------------------------------------------------------------


def test_non_lan_sources_are_dropped_before_parsing(rig: Rig) -> None:
    sock = Socket(rig)
    for data in (NATPMP_MAP, b"\x00\x00", b"\x01\x01", pcp_map(WAN_HOST), b"\xff"):
        assert sock.receive(data, WAN_HOST) == []
    assert rig.mappings() == []
    assert sock.receive(b"\x00\x00", IPv4Address("127.0.0.1")) == []


def test_version_0_goes_to_natpmp(rig: Rig) -> None:
    [reply] = Socket(rig).receive(NATPMP_MAP)
    response = natpmp.decode_response(reply)
    assert isinstance(response, natpmp.MapResponse) and response.external_port == 6881
    assert rig.mappings()[0].owner.origin.value == "natpmp"


def test_version_2_goes_to_pcp(rig: Rig) -> None:
    [reply] = Socket(rig).receive(pcp_map())
    response = pcp.decode_response(reply)
    assert response.result is pcp.ResultCode.SUCCESS
    assert rig.mappings()[0].owner.origin.value == "pcp"


@pytest.mark.parametrize("version", [1, 3, 200])
def test_other_versions_get_pcps_unsupp_version(rig: Rig, version: int) -> None:
    [reply] = Socket(rig).receive(bytes((version,)) + pcp_map()[1:])
    assert len(reply) == 24
    assert reply[0] == 2 and reply[3] == pcp.ResultCode.UNSUPP_VERSION


def test_with_natpmp_disabled_version_0_is_dropped(rig: Rig) -> None:
    sock = Socket(rig, natpmp_enabled=False)
    assert sock.receive(NATPMP_MAP) == []
    assert len(sock.receive(pcp_map())) == 1


def test_with_pcp_disabled_pcp_gets_natpmps_unsupported_version(rig: Rig) -> None:
    sock = Socket(rig, pcp_enabled=False)
    [reply] = sock.receive(pcp_map())
    assert natpmp.decode_response(reply) == natpmp.ErrorResponse(
        1, natpmp.ResultCode.UNSUPPORTED_VERSION, 0
    )


def test_an_ipv6_socket_speaks_pcp_only(rig: Rig) -> None:
    sock = Socket(rig, GATEWAY_V6)
    assert sock.protocol.natpmp is None
    assert sock.receive(b"\x00\x00", CLIENT_V6) == []
    [reply] = sock.receive(pcp_map(CLIENT_V6, 8080), CLIENT_V6)
    assert pcp.decode_response(reply).result is pcp.ResultCode.SUCCESS
    assert rig.mappings()[0].kind.value == "pinhole"


# -- on a link-local address ----------------------------------------------------------------

#: the gateway's link-local address on br-lan, with its zone (as Daemon.lan_addresses gives it)
GATEWAY_LL = IPv6Address("fe80::1%br-lan")
CLIENT_LL = IPv6Address("fe80::10%br-lan")


def zoned_is_lan(address: IPAddress) -> bool:
    """The daemon's rule (``Daemon.is_lan``): a link-local source is a LAN host only with the
    zone of a LAN interface (here br-lan, index 7)."""
    if isinstance(address, IPv6Address) and address.is_link_local:
        return address.scope_id in {"br-lan", "7"}
    return is_lan(address)


def test_a_global_client_asking_the_link_local_address_gets_its_pinhole(rig: Rig) -> None:
    """The common case: the client's server is its default router, fe80::1, and it sends from
    its own global (or ULA) address, which is what it asks to open."""
    sock = Socket(rig, GATEWAY_LL, interface="br-lan", lan=zoned_is_lan)
    [reply] = sock.receive(pcp_map(CLIENT_V6, 8080), CLIENT_V6)
    response = pcp.decode_response(reply)
    assert response.result is pcp.ResultCode.SUCCESS
    assert isinstance(response.body, pcp.MapData) and response.body.external_port == 8080
    [mapping] = rig.mappings()
    assert mapping.kind.value == "pinhole" and mapping.internal.address == CLIENT_V6


ANNOUNCE_REQUEST = pcp.encode_request(pcp.Request(pcp.Opcode.ANNOUNCE, 0, IPv6Address("fe80::10")))


def test_a_link_local_source_gets_the_zone_of_the_sockets_interface(rig: Rig) -> None:
    """Twisted hands a datagram's source over without its zone (it drops the scope id recvfrom
    gives): on a socket the kernel ties to br-lan, a link-local source came in on br-lan, and
    the LAN check is asked about it so."""
    seen: list[IPAddress] = []

    def lan(address: IPAddress) -> bool:
        seen.append(address)
        return zoned_is_lan(address)

    sock = Socket(rig, GATEWAY_LL, interface="br-lan", lan=lan)
    [reply] = sock.receive(ANNOUNCE_REQUEST, IPv6Address("fe80::10"))  # leaves by br-lan
    assert pcp.decode_response(reply).result is pcp.ResultCode.SUCCESS
    assert seen == [CLIENT_LL]
    # a zone that comes with the source is the one checked: another interface's is not the LAN
    assert sock.receive(ANNOUNCE_REQUEST, IPv6Address("fe80::10%wan0")) == []
    assert sock.receive(ANNOUNCE_REQUEST, IPv6Address("fe80::10%9")) == []
    assert len(sock.receive(ANNOUNCE_REQUEST, IPv6Address("fe80::10%7"))) == 1


def test_a_socket_tied_to_no_interface_does_not_hear_link_local_sources(rig: Rig) -> None:
    """A global or ULA address's socket that could not be tied to its interface (here: a fake
    transport, so no SO_BINDTODEVICE) cannot tell where a link-local source came from."""
    sock = Socket(rig, GATEWAY_V6, interface="br-lan", lan=zoned_is_lan)
    assert sock.receive(ANNOUNCE_REQUEST, IPv6Address("fe80::10")) == []
    [reply] = sock.receive(pcp_map(CLIENT_V6, 8080), CLIENT_V6)
    assert pcp.decode_response(reply).result is pcp.ResultCode.SUCCESS


def test_a_pinhole_for_a_link_local_address_is_refused_with_not_authorized(rig: Rig) -> None:
    """A client sending from its link-local address asks, by PCP's rule, for a mapping of that
    address: useless outside the link, so refused the way any address that is not a mappable
    LAN host is, with a PCP error (not a crash and not silence)."""
    sock = Socket(rig, GATEWAY_LL, interface="br-lan", lan=zoned_is_lan)
    [reply] = sock.receive(pcp_map(IPv6Address("fe80::10"), 8080), IPv6Address("fe80::10"))
    response = pcp.decode_response(reply)
    assert response.result is pcp.ResultCode.NOT_AUTHORIZED
    assert response.lifetime > 0
    assert rig.mappings() == []


def test_a_link_local_socket_announces_to_all_nodes_on_its_interface(rig: Rig) -> None:
    sock = Socket(rig, GATEWAY_LL, interface="br-lan", announce_on_start=True)
    assert [(data, to) for _, data, to in sock.sent] == [
        (pcp.encode_announce(0), ("ff02::1%br-lan", CLIENT_PORT))
    ]


def test_an_ipv4_mapped_source_counts_as_ipv4(rig: Rig) -> None:
    sock = Socket(rig)
    [reply] = sock.receive(b"\x00\x00", IPv6Address(f"::ffff:{CLIENT}"))
    assert natpmp.decode_response(reply) == natpmp.PublicAddressResponse(
        natpmp.ResultCode.SUCCESS, 0, EXTERNAL
    )


# -- announcements ---------------------------------------------------------------------------


def run(rig: Rig, seconds: float) -> None:
    rig.reactor.pump([0.25] * int(seconds / 0.25))


def test_an_epoch_reset_announces_ten_times_with_a_doubling_gap() -> None:
    rig = Rig(start=False)
    sock = Socket(rig)
    start = rig.reactor.seconds()
    rig.service.start()  # no leases: state is new, EpochReset
    run(rig, 200)
    natpmp_sends = [(t - start, d, to) for t, d, to in sock.sent if d[0] == 0]
    pcp_sends = [(t - start, d, to) for t, d, to in sock.sent if d[0] == 2]
    assert [round(t, 2) for t, _, _ in natpmp_sends] == SCHEDULE
    assert [round(t, 2) for t, _, _ in pcp_sends] == SCHEDULE
    assert {to for _, _, to in sock.sent} == {(ALL_HOSTS_V4, CLIENT_PORT)}
    for t, data, _ in natpmp_sends:
        assert natpmp.decode_response(data) == natpmp.PublicAddressResponse(
            natpmp.ResultCode.SUCCESS, int(t), EXTERNAL
        )
    for t, data, _ in pcp_sends:
        assert data == pcp.encode_announce(int(t))  # §14.1.3, epoch updated each time


def test_a_new_external_address_is_announced_and_restarts_the_epoch(rig: Rig) -> None:
    sock = Socket(rig)
    rig.reactor.advance(500)
    rig.service.set_external_address(NEW_EXTERNAL)
    rig.reactor.advance(0)
    first = natpmp.decode_response(sock.sent[0][1])
    assert first == natpmp.PublicAddressResponse(natpmp.ResultCode.SUCCESS, 0, NEW_EXTERNAL)
    assert pcp.decode_response(sock.sent[1][1]).epoch == 0
    rig.reactor.advance(10)
    [reply] = sock.receive(b"\x00\x00")
    assert natpmp.decode_response(reply).epoch == 10


def test_losing_the_external_address_announces_nothing(rig: Rig) -> None:
    sock = Socket(rig)
    rig.service.set_external_address(None)
    run(rig, 10)
    assert sock.sent == []


def test_the_natpmp_announcement_waits_for_an_external_address() -> None:
    rig = Rig(external=None)
    sock = Socket(rig, announce_on_start=True)
    run(rig, 1)
    assert sock.sent and all(data[0] == 2 for _, data, _ in sock.sent)


def test_announcing_at_start(rig: Rig) -> None:
    sock = Socket(rig, announce_on_start=True)
    assert len(sock.sent) == 2
    run(rig, 200)
    assert len(sock.sent) == 2 * ANNOUNCE_COUNT


def test_a_new_event_restarts_the_series(rig: Rig) -> None:
    sock = Socket(rig, natpmp_enabled=False, announce_on_start=True)
    run(rig, 3)
    rig.service.set_external_address(NEW_EXTERNAL)
    run(rig, 200)
    assert len(sock.sent) == 4 + ANNOUNCE_COUNT  # 0, .25, .75, 1.75 of the first, then ten


def test_an_ipv6_socket_announces_pcp_to_all_nodes_on_its_interface(rig: Rig) -> None:
    sock = Socket(rig, GATEWAY_V6, interface="br-lan", announce_on_start=True)
    assert [(data, to) for _, data, to in sock.sent] == [
        (pcp.encode_announce(0), ("ff02::1%br-lan", CLIENT_PORT))
    ]


def test_stopping_cancels_announcements_and_unsubscribes(rig: Rig) -> None:
    sock = Socket(rig, announce_on_start=True)
    sock.protocol.doStop()  # type: ignore[no-untyped-call]
    rig.service.set_external_address(NEW_EXTERNAL)
    run(rig, 200)
    assert len(sock.sent) == 2


def test_without_an_injected_send_unsolicited_datagrams_use_the_transport(rig: Rig) -> None:
    protocol = Udp5351Protocol(rig.service, is_lan, local_address=GATEWAY_V4, scheduler=rig.reactor)
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    assert [to for _, to in transport.written] == [(ALL_HOSTS_V4, CLIENT_PORT)] * 2
    protocol.doStop()  # type: ignore[no-untyped-call]


def test_mapping_updates_go_to_the_clients_address_and_port(rig: Rig) -> None:
    sock = Socket(rig)
    [reply] = sock.receive(pcp_map(), CLIENT, 41000)
    port = pcp.decode_response(reply).body
    assert isinstance(port, pcp.MapData)
    rig.service.set_external_address(NEW_EXTERNAL)
    run(rig, 1)
    updates = [(d, to) for _, d, to in sock.sent if to[1] == 41000]
    assert len(updates) == 3 and {to for _, to in updates} == {(str(CLIENT), 41000)}
    body = pcp.decode_response(updates[0][0]).body
    assert isinstance(body, pcp.MapData) and body.external_address == NEW_EXTERNAL
    assert body.external_port == port.external_port


def test_mapping_updates_can_be_switched_off(rig: Rig) -> None:
    sock = Socket(rig, mapping_updates=False)
    sock.receive(pcp_map(), CLIENT, 41000)
    rig.service.set_external_address(NEW_EXTERNAL)
    run(rig, 1)
    assert all(to[1] == CLIENT_PORT for _, _, to in sock.sent)


# -- the factory -----------------------------------------------------------------------------


class FakeReactor:
    """``listenUDP`` and ``adoptDatagramPort`` recorded; fails for the addresses it is told
    to. An adopted socket is recorded as (its bound address with the zone, its port), its
    descriptor duplicated as Twisted does (and closed by ``stopListening``)."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.listening: list[tuple[int, Udp5351Protocol, str]] = []
        self.adopted: list[tuple[socket.socket, Udp5351Protocol, int]] = []
        self.stopped: list[str] = []
        self._failing = failing

    def adoptDatagramPort(
        self, fd: int, family: int, protocol: Udp5351Protocol, maxPacketSize: int = 8192
    ) -> Any:
        assert family == socket.AF_INET6
        sock = socket.fromfd(fd, family, socket.SOCK_DGRAM)
        self.adopted.append((sock, protocol, maxPacketSize))
        reactor = self

        class Port:
            def stopListening(self) -> None:
                reactor.stopped.append(sock.getsockname()[0])
                sock.close()

        return Port()

    def listenUDP(
        self, port: int, protocol: Udp5351Protocol, interface: str = "", maxPacketSize: int = 8192
    ) -> Any:
        if interface in self._failing:
            raise CannotListenError(interface, port, OSError("in use"))  # type: ignore[no-untyped-call]
        self.listening.append((port, protocol, interface))
        reactor = self

        class Port:
            def stopListening(self) -> None:
                reactor.stopped.append(interface)

        return Port()

    def callLater(self, delay: float, fn: Any, *args: Any) -> Any:
        raise AssertionError("nothing is scheduled before the sockets start")


def test_one_socket_per_lan_address() -> None:
    rig = Rig()
    reactor = FakeReactor()
    ports = listen_udp5351(
        reactor,
        [GATEWAY_V4, GATEWAY_V6],
        rig.service,
        is_lan,
        natpmp_enabled=True,
        pcp_enabled=True,
        interfaces={GATEWAY_V4: "br-lan", GATEWAY_V6: "br-lan"},
    )
    assert len(ports) == 2
    assert [(port, interface) for port, _, interface in reactor.listening] == [
        (5351, str(GATEWAY_V4)),
        (5351, str(GATEWAY_V6)),
    ]
    v4, v6 = (protocol for _, protocol, _ in reactor.listening)
    assert v4.natpmp is not None and v4.pcp is not None and v4.interface == "br-lan"
    assert v6.natpmp is None and v6.pcp is not None


def test_natpmp_alone_binds_no_ipv6_socket() -> None:
    reactor = FakeReactor()
    listen_udp5351(reactor, [GATEWAY_V4, GATEWAY_V6], Rig().service, is_lan, True, False)
    assert [interface for _, _, interface in reactor.listening] == [str(GATEWAY_V4)]
    assert listen_udp5351(FakeReactor(), [GATEWAY_V4], Rig().service, is_lan, False, False) == []


def test_an_address_that_cannot_be_bound_leaves_the_others_serving() -> None:
    reactor = FakeReactor(failing=(str(GATEWAY_V6),))
    with capturedLogs() as events:
        ports = listen_udp5351(reactor, [GATEWAY_V4, GATEWAY_V6], Rig().service, is_lan, True, True)
    assert len(ports) == 1 and reactor.stopped == []
    assert [interface for _, _, interface in reactor.listening] == [str(GATEWAY_V4)]
    [line] = [formatEvent(e) for e in events if e.get("log_level") is LogLevel.error]
    assert f"cannot listen on UDP 5351 at {GATEWAY_V6}" in line


def test_when_no_address_can_be_bound_the_error_is_raised() -> None:
    reactor = FakeReactor(failing=(str(GATEWAY_V4), str(GATEWAY_V6)))
    with pytest.raises(CannotListenError):
        listen_udp5351(reactor, [GATEWAY_V4, GATEWAY_V6], Rig().service, is_lan, True, True)


def test_a_zoned_link_local_address_is_bound_here_and_adopted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """listenUDP cannot bind fe80::1%br-lan; the factory binds it (bind_link_local) and hands
    the socket to the reactor, keeping no descriptor of its own."""
    bound: list[tuple[IPv6Address, int, socket.socket]] = []

    def bind(address: IPv6Address, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
        bound.append((address, port, sock))
        return sock

    monkeypatch.setattr("protocols.udp5351.bind_link_local", bind)
    reactor = FakeReactor()
    ports = listen_udp5351(
        reactor,
        [GATEWAY_V4, GATEWAY_V6, GATEWAY_LL],
        Rig().service,
        zoned_is_lan,
        True,
        True,
        interfaces={GATEWAY_V4: "br-lan", GATEWAY_V6: "br-lan", GATEWAY_LL: "br-lan"},
    )
    assert len(ports) == 3
    assert [interface for _, _, interface in reactor.listening] == [
        str(GATEWAY_V4),
        str(GATEWAY_V6),
    ]
    [(address, port, ours)] = bound
    assert (address, port) == (GATEWAY_LL, 5351)
    assert ours.fileno() == -1  # closed: the reactor has its own duplicate
    [(adopted, protocol, size)] = reactor.adopted
    assert adopted.getsockname()[0] == "::1" and size == 8192
    assert protocol.natpmp is None and protocol.pcp is not None
    assert (protocol.local_address, protocol.interface) == (GATEWAY_LL, "br-lan")
    for listening in ports:
        listening.stopListening()


@pytest.mark.parametrize(
    "address",
    ["fe80::1%pgx-nosuch0", "fe80::1%lo", "fe80::1"],
    ids=["no-such-interface", "not-on-that-interface", "no-zone"],
)
def test_a_link_local_address_that_cannot_be_bound_leaves_the_others_serving(
    address: str,
) -> None:
    reactor = FakeReactor()
    link_local = IPv6Address(address)
    with capturedLogs() as events:
        ports = listen_udp5351(
            reactor, [GATEWAY_V4, link_local], Rig().service, zoned_is_lan, True, True
        )
    if not link_local.scope_id:
        # no zone: left to listenUDP, whose own bind fails (here the fake one succeeds)
        assert [i for _, _, i in reactor.listening] == [str(GATEWAY_V4), address]
        return
    assert len(ports) == 1 and reactor.adopted == []
    [line] = [formatEvent(e) for e in events if e.get("log_level") is LogLevel.error]
    assert f"cannot listen on UDP 5351 at {address}" in line


def test_bind_link_local_needs_a_zone() -> None:
    with pytest.raises(OSError):
        bind_link_local(IPv6Address("fe80::1"), 0)


@pytest.mark.netns
def test_a_real_link_local_socket_answers_a_client_on_its_link() -> None:
    """Two namespaces joined by a veth pair: the gateway end has only a link-local address
    (fe80::1), the client end a LAN address (CLIENT_V6) and its own link-local one. PCP to
    fe80::1%<its link>: the request from CLIENT_V6 is answered from fe80::1 (the address the
    client asked) and maps CLIENT_V6; one from the client's link-local address is heard (it
    came in on the LAN interface) and refused with NOT_AUTHORIZED; announcements leave by
    that interface."""
    from twisted.internet import reactor

    gw_ns = Namespace(unique_prefix("u") + "-g")
    client_ns = Namespace(unique_prefix("u") + "-c")
    with gw_ns, client_ns:
        gw_ns.run("ip", "link", "add", "pgu-gw", "type", "veth", "peer", "name", "pgu-cl")
        gw_ns.run("ip", "link", "set", "pgu-cl", "netns", client_ns.name)
        gw_ns.run("ip", "link", "set", "pgu-gw", "addrgenmode", "none")
        gw_ns.run("ip", "addr", "add", "fe80::1/64", "dev", "pgu-gw", "nodad")
        gw_ns.run("ip", "link", "set", "pgu-gw", "up")
        # the LAN prefix is on that link (on a router, its ULA or global address says so)
        gw_ns.run("ip", "-6", "route", "add", "2001:db8:1::/64", "dev", "pgu-gw")
        client_ns.run("ip", "link", "set", "pgu-cl", "addrgenmode", "none")
        client_ns.run("ip", "addr", "add", "fe80::2/64", "dev", "pgu-cl", "nodad")
        client_ns.run("ip", "addr", "add", f"{CLIENT_V6}/64", "dev", "pgu-cl", "nodad")
        client_ns.run("ip", "link", "set", "pgu-cl", "up")
        rig = Rig()
        with inside(gw_ns.name):
            index = socket.if_nametoindex("pgu-gw")
            local = IPv6Address("fe80::1%pgu-gw")

            def on_lan(address: IPAddress) -> bool:
                if isinstance(address, IPv6Address) and address.is_link_local:
                    return address.scope_id in {"pgu-gw", str(index)}
                return is_lan(address)

            [port] = listen_udp5351(
                reactor,
                [local],
                rig.service,
                on_lan,
                True,
                True,
                interfaces={local: "pgu-gw"},
                announce_on_start=False,
                port=0,
            )
        with inside(client_ns.name):
            client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            client_ll = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            announcements = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            client_index = socket.if_nametoindex("pgu-cl")
        try:
            sock = port.getHandle()
            server = ("fe80::1", port.getHost().port, 0, client_index)
            assert port.protocol.local_address == local

            def ask(client: socket.socket, data: bytes) -> tuple[pcp.Response, str]:
                client.settimeout(2)
                client.sendto(data, server)
                assert select.select([sock], [], [], 2)[0]
                port.doRead()
                rig.reactor.advance(0)
                reply, sender = client.recvfrom(1100)
                return pcp.decode_response(reply), sender[0]

            client.bind((str(CLIENT_V6), 0))
            response, sender = ask(client, pcp_map(CLIENT_V6, 8080))
            assert (response.result, sender) == (pcp.ResultCode.SUCCESS, "fe80::1")
            [mapping] = rig.mappings()
            assert (mapping.kind.value, mapping.internal.address) == ("pinhole", CLIENT_V6)

            client_ll.bind(("fe80::2", 0, 0, client_index))
            response, _ = ask(client_ll, pcp_map(IPv6Address("fe80::2"), 8081))
            assert response.result is pcp.ResultCode.NOT_AUTHORIZED
            assert len(rig.mappings()) == 1

            announcements.bind(("::", CLIENT_PORT))
            group = socket.inet_pton(socket.AF_INET6, "ff02::1")
            announcements.setsockopt(
                socket.IPPROTO_IPV6,
                socket.IPV6_JOIN_GROUP,
                group + client_index.to_bytes(4, "little"),
            )
            announcements.settimeout(2)
            with inside(gw_ns.name):  # where the zone's name, pgu-gw, means something
                port.protocol.announce()
            data, sender_address = announcements.recvfrom(1100)
            assert data == pcp.encode_announce(0)
            assert sender_address[:2] == ("fe80::1", port.getHost().port)
            assert sender_address[3] == client_index
        finally:
            for s in (client, client_ll, announcements):
                s.close()
            port.stopReading()
            port.connectionLost(None)


def test_a_real_loopback_socket_answers_and_sets_the_multicast_interface() -> None:
    from twisted.internet import reactor

    rig = Rig()
    loopback = IPv4Address("127.0.0.1")
    [port] = listen_udp5351(
        reactor,
        [loopback],
        rig.service,
        lambda address: address == loopback,
        True,
        True,
        announce_on_start=False,
        port=0,
    )
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock = port.getHandle()
        chosen = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
        assert chosen == loopback.packed
        client.settimeout(2)
        client.sendto(b"\x00\x00", ("127.0.0.1", port.getHost().port))
        assert select.select([sock], [], [], 2)[0]
        port.doRead()
        rig.reactor.advance(0)
        reply = client.recv(64)
        assert natpmp.decode_response(reply) == natpmp.PublicAddressResponse(
            natpmp.ResultCode.SUCCESS, 0, EXTERNAL
        )
    finally:
        client.close()
        port.stopReading()
        port.connectionLost(None)


def test_a_flooding_client_is_throttled_while_another_is_served(rig: Rig) -> None:
    limiter = SourceLimiter(rig.service.now, rate=10, burst=20)
    sock = Socket(rig, limiter=limiter)
    public_address_request = b"\x00\x00"
    answered = sum(len(sock.receive(public_address_request)) for _ in range(100))
    assert answered == 20  # the burst, then nothing more this instant
    other = IPv4Address("192.168.1.77")
    assert len(sock.receive(public_address_request, other)) == 1
    rig.reactor.advance(1.0)  # ten more tokens a second
    answered = sum(len(sock.receive(public_address_request)) for _ in range(100))
    assert answered == 10

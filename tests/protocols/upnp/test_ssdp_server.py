"""The SSDP shell on ``task.Clock`` with a recording transport: answer timing, the
anti-amplification limits, the LAN-only filter, and the announcement sequences of
protocols.md §1.7. One test drives the real sockets on the loopback interface."""

from __future__ import annotations

import itertools
import random
import select
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)
from typing import Any

import pytest
from twisted.internet.task import Clock

from protocols.upnp.ssdp import (
    DeviceIdentity,
    Notify,
    SearchResponse,
    decode_notify,
    decode_response,
    http_location,
    notifications,
)
from protocols.upnp.ssdp_server import (
    SSDP_GROUP_IPV4,
    SSDP_GROUP_IPV6_LINK,
    SSDP_GROUP_IPV6_SITE,
    Datagram,
    LanInterface,
    LanLink,
    MulticastTransport,
    RateLimiter,
    SsdpServer,
    SsdpSettings,
    Via,
)

IPAddress = IPv4Address | IPv6Address

R = "2fac1234-31f8-11b4-a222-08002b34c003"
W = "2fac1234-31f8-11b4-a222-08002b34c004"
C = "2fac1234-31f8-11b4-a222-08002b34c005"
BOOT = 1700000000
ROWS = 11  # IGD:2 with Layer3Forwarding: 3 + 2*2 + 4

LAN = LanInterface(
    "br-lan",
    3,
    (
        IPv4Interface("192.168.1.1/24"),
        IPv6Interface("fe80::1/64"),
        IPv6Interface("2001:db8:1::1/64"),
    ),
)
WAN_INDEX = 2
LAN_PREFIXES = (
    IPv4Network("192.168.0.0/16"),
    IPv4Network("10.0.0.0/8"),
    IPv6Network("2001:db8:1::/64"),
)


def is_lan(address: IPAddress) -> bool:
    """Like the policy's ``Lan.contains``: link-local prefixes are not in it."""
    return any(address in prefix for prefix in LAN_PREFIXES)


def identity(**overrides: object) -> DeviceIdentity:
    values: dict[str, object] = {
        "root_uuid": R,
        "wan_uuid": W,
        "wanconn_uuid": C,
        "server": "Linux/6.1 UPnP/1.1 portgate/0.1",
        "location": http_location(5000),
        "boot_id": BOOT,
        "config_id": 7,
    }
    values.update(overrides)
    return DeviceIdentity(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Sent:
    at: float
    data: bytes
    destination: IPAddress
    port: int
    via: Via

    @property
    def notify(self) -> Notify:
        return decode_notify(self.data)

    @property
    def response(self) -> SearchResponse:
        return decode_response(self.data)


class RecordingTransport:
    """An ``SsdpTransport`` that keeps what it is asked to do."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[Sent] = []
        self.receive: Callable[[Datagram], None] | None = None
        self.joins: list[tuple[int, ...]] = []
        self.closed = False

    def open(self, receive: Callable[[Datagram], None]) -> None:
        self.receive = receive

    def join(self, interfaces: Sequence[LanLink]) -> None:
        self.joins.append(tuple(link.index for link in interfaces))

    def send(self, data: bytes, destination: IPAddress, port: int, via: Via) -> None:
        self.sent.append(Sent(self.clock.seconds(), data, destination, port, via))

    def close(self) -> None:
        self.closed = True

    def take(self) -> list[Sent]:
        sent, self.sent = self.sent, []
        return sent


@dataclass
class Rig:
    clock: Clock
    transport: RecordingTransport
    server: SsdpServer

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Advance in small steps so each send is stamped close to its scheduled time."""
        steps = round(seconds / step)
        for _ in range(steps):
            self.clock.advance(step)

    def started(self) -> Rig:
        self.server.start()
        self.run(1.0)
        self.transport.take()
        return self

    def receive(self, data: bytes, **fields: Any) -> None:
        self.server.datagram_received(datagram(data, **fields))


def rig(
    interfaces: Sequence[LanLink] = (LAN,),
    seed: int = 1,
    who: DeviceIdentity | None = None,
    **settings: Any,
) -> Rig:
    clock = Clock()
    transport = RecordingTransport(clock)
    server = SsdpServer(
        clock,
        interfaces,
        who if who is not None else identity(),
        is_lan,
        SsdpSettings(**settings),
        rng=random.Random(seed),
        transport=transport,
    )
    return Rig(clock, transport, server)


def msearch(st: str = "ssdp:all", mx: int | None = 3, man: str = '"ssdp:discover"') -> bytes:
    lines = ["M-SEARCH * HTTP/1.1", "HOST: 239.255.255.250:1900", f"MAN: {man}", f"ST: {st}"]
    if mx is not None:
        lines.append(f"MX: {mx}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def datagram(
    data: bytes,
    source: str = "192.168.1.10",
    port: int = 50000,
    destination: IPAddress = SSDP_GROUP_IPV4,
    ifindex: int = 3,
) -> Datagram:
    return Datagram(data, ip_address(source), port, destination, ifindex)


# -- answering searches -------------------------------------------------------------------------


def test_ssdp_all_is_answered_within_mx_spread_over_the_window() -> None:
    r = rig().started()
    start = r.clock.seconds()
    r.receive(msearch("ssdp:all", mx=3))
    r.run(3.5)
    sent = r.transport.take()
    assert len(sent) == ROWS
    offsets = [s.at - start for s in sent]
    assert offsets == sorted(offsets)
    for index, offset in enumerate(offsets):  # one answer per slot of MX/11 (+ one clock step)
        assert index * 3 / ROWS <= offset + 1e-9 and offset <= (index + 1) * 3 / ROWS + 0.011
    assert {(s.response.st, s.response.usn) for s in sent} == set(notifications(identity()))
    assert {(s.destination, s.port, s.via) for s in sent} == {
        (IPv4Address("192.168.1.10"), 50000, Via(3, IPv4Address("192.168.1.1")))
    }
    assert {s.response.location for s in sent} == {"http://192.168.1.1:5000/rootDesc.xml"}


@pytest.mark.parametrize(("mx", "window"), [(1, 1), (3, 3), (5, 5), (120, 5)])
def test_single_answers_wait_a_random_delay_within_mx(mx: int, window: int) -> None:
    r = rig(seed=mx, rate_burst=1000, global_burst=1000).started()
    delays = []
    for _ in range(40):
        start = r.clock.seconds()
        r.receive(msearch("upnp:rootdevice", mx=mx))
        r.run(window + 0.05)
        (sent,) = r.transport.take()
        delays.append(sent.at - start)
    assert all(0 <= delay <= window + 0.011 for delay in delays)
    assert max(delays) - min(delays) > window / 3  # random, not a fixed delay


def test_unicast_search_without_mx_is_answered_within_one_second() -> None:
    r = rig().started()
    start = r.clock.seconds()
    r.receive(msearch("upnp:rootdevice", mx=None), destination=IPv4Address("192.168.1.1"))
    r.run(1.0)
    (sent,) = r.transport.take()
    assert sent.at - start < 1.0
    assert sent.response.st == "upnp:rootdevice"


def test_multicast_search_without_mx_is_dropped() -> None:
    r = rig().started()
    r.receive(msearch("upnp:rootdevice", mx=None))
    r.run(6)
    assert r.transport.take() == []


def test_answers_per_search_are_capped_root_rows_first() -> None:
    r = rig(max_answers_per_search=4).started()
    r.receive(msearch("ssdp:all"))
    r.run(4)
    sent = r.transport.take()
    assert [s.response.st for s in sent] == [n.nt for n in notifications(identity())[:4]]


def test_responses_per_source_are_rate_limited_and_refill() -> None:
    r = rig(rate_burst=20, rate_per_second=5).started()
    for _ in range(5):
        r.receive(msearch("ssdp:all", mx=1))
    r.receive(msearch("ssdp:all", mx=1), source="192.168.1.11")
    r.run(1.1)
    sent = r.transport.take()
    by_source = {
        source: sum(1 for s in sent if s.destination == source)
        for source in {s.destination for s in sent}
    }
    assert by_source == {IPv4Address("192.168.1.10"): 20, IPv4Address("192.168.1.11"): ROWS}
    r.run(2.0)  # 3 s since the burst: about 15 tokens back, capped by the search's 11 rows
    r.receive(msearch("ssdp:all", mx=1))
    r.run(1.1)
    assert len(r.transport.take()) == ROWS


def test_all_sources_together_are_limited() -> None:
    r = rig(global_burst=30, global_per_second=1).started()
    for host in range(10, 20):
        r.receive(msearch("ssdp:all", mx=1), source=f"192.168.1.{host}")
    r.run(1.1)
    assert len(r.transport.take()) == 30


def test_waiting_responses_are_bounded() -> None:
    r = rig(max_pending=15, rate_burst=100).started()
    for host in range(10, 14):
        r.receive(msearch("ssdp:all", mx=5), source=f"192.168.1.{host}")
    r.run(5.1)
    assert len(r.transport.take()) == 15


def test_rate_limiter_forgets_the_least_recently_seen_source_first() -> None:
    limiter = RateLimiter(burst=10, per_second=1.0, max_keys=2)
    assert limiter.take("a", 10, 0.0) == 10
    assert limiter.take("a", 1, 0.0) == 0
    assert limiter.take("b", 3, 0.0) == 3
    assert limiter.take("c", 3, 0.0) == 3  # "a" is forgotten
    assert len(limiter) == 2
    assert limiter.take("a", 10, 0.0) == 10
    assert limiter.take("c", 10, 4.0) == 10  # 7 left + 4 s * 1/s, capped at the burst


@pytest.mark.parametrize(
    "fields",
    [
        {"ifindex": WAN_INDEX},  # arrived on the WAN
        {"source": "203.0.113.9"},  # not a LAN address, though on the LAN interface
        {"source": "192.168.1.1"},  # our own address
        {"source": "fe80::1"},  # our own link-local address
        {"source": "192.168.1.255"},  # the LAN's broadcast address
        {"source": "255.255.255.255"},
        {"source": "0.0.0.0"},
        {"source": "239.255.255.250"},
        {"port": 0},
        {"destination": IPv4Address("239.255.255.251")},  # a group we do not serve
        {"destination": SSDP_GROUP_IPV6_SITE, "source": "2001:db8:1::5"},  # ff05::c is off
    ],
)
def test_searches_from_outside_the_lan_or_from_ourselves_are_dropped(
    fields: dict[str, Any],
) -> None:
    r = rig().started()
    r.receive(msearch("ssdp:all"), **fields)
    r.run(4)
    assert r.transport.take() == []


@pytest.mark.parametrize(
    "data",
    [
        msearch(man="ssdp:discover"),
        msearch(man=""),
        msearch(mx=None),
        b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNT: upnp:rootdevice\r\n"
        b"NTS: ssdp:alive\r\nUSN: uuid:x::upnp:rootdevice\r\n\r\n",
        b"\x00" * 40,
    ],
)
def test_malformed_searches_and_other_devices_notifies_get_no_answer(data: bytes) -> None:
    r = rig().started()
    r.receive(data)
    r.run(6)
    assert r.transport.take() == []


def test_ipv6_link_local_search_is_answered_from_our_link_local_address() -> None:
    r = rig().started()
    r.receive(msearch("upnp:rootdevice"), source="fe80::10", destination=SSDP_GROUP_IPV6_LINK)
    r.run(3.1)
    (sent,) = r.transport.take()
    assert (sent.destination, sent.via) == (IPv6Address("fe80::10"), Via(3, IPv6Address("fe80::1")))
    assert sent.response.location == "http://[fe80::1]:5000/rootDesc.xml"


def test_ipv6_link_local_search_on_a_wan_interface_is_still_dropped() -> None:
    r = rig().started()
    r.receive(
        msearch("upnp:rootdevice"),
        source="fe80::10",
        destination=SSDP_GROUP_IPV6_LINK,
        ifindex=WAN_INDEX,
    )
    r.run(3.1)
    assert r.transport.take() == []


def test_a_search_broadcast_to_the_subnet_is_treated_like_a_multicast_one() -> None:
    r = rig().started()
    r.receive(msearch("upnp:rootdevice", mx=None), destination=IPv4Address("192.168.1.255"))
    r.receive(msearch("upnp:rootdevice", mx=4), destination=IPv4Address("255.255.255.255"))
    r.run(4.1)
    (sent,) = r.transport.take()
    assert sent.response.st == "upnp:rootdevice"


def test_ipv6_global_search_is_answered_from_the_address_on_its_prefix() -> None:
    r = rig(ipv6_site_local=True).started()
    r.receive(msearch("upnp:rootdevice"), source="2001:db8:1::5", destination=SSDP_GROUP_IPV6_SITE)
    r.run(3.1)
    (sent,) = r.transport.take()
    assert sent.via == Via(3, IPv6Address("2001:db8:1::1"))
    assert sent.response.location == "http://[2001:db8:1::1]:5000/rootDesc.xml"


def test_the_location_names_our_address_on_the_searchers_subnet() -> None:
    two_subnets = LanInterface(
        "br-lan", 3, (IPv4Interface("192.168.1.1/24"), IPv4Interface("10.0.0.1/24"))
    )
    r = rig(interfaces=(two_subnets,)).started()
    r.receive(msearch("upnp:rootdevice"), source="10.0.0.5")
    r.receive(msearch("upnp:rootdevice"), source="192.168.7.5")  # routed LAN: first address
    r.run(3.1)
    assert sorted(s.response.location for s in r.transport.take()) == [
        "http://10.0.0.1:5000/rootDesc.xml",
        "http://192.168.1.1:5000/rootDesc.xml",
    ]


def test_igd1_identity_answers_igd2_searches_with_nothing() -> None:
    r = rig(who=identity(igd_version=1)).started()
    r.receive(msearch("urn:schemas-upnp-org:device:InternetGatewayDevice:2"))
    r.receive(msearch("urn:schemas-upnp-org:device:InternetGatewayDevice:1"), source="192.168.1.11")
    r.run(3.1)
    (sent,) = r.transport.take()
    assert sent.response.st == "urn:schemas-upnp-org:device:InternetGatewayDevice:1"


def test_nothing_is_answered_before_start_or_after_stop() -> None:
    r = rig()
    r.receive(msearch())
    r.run(4)
    assert r.transport.take() == []
    r.started()
    r.receive(msearch())
    r.server.stop()
    r.transport.take()
    r.run(4)
    r.receive(msearch())
    r.run(4)
    assert r.transport.take() == []


# -- announcing ---------------------------------------------------------------------------------


def kinds(sent: Sequence[Sent]) -> list[str]:
    return [s.notify.nts for s in sent]


def test_start_sends_byebye_then_alive_each_set_twice_after_a_short_random_wait() -> None:
    r = rig()
    r.server.start()
    assert r.transport.joins == [(3,)]
    assert r.transport.take() == []  # nothing at once: a random 0-100 ms first
    r.run(1.0, step=0.001)
    sent = r.transport.take()
    targets = 2  # IPv4 group and ff02::c (ff05::c is off by default)
    assert kinds(sent) == ["ssdp:byebye"] * (2 * targets * ROWS) + ["ssdp:alive"] * (
        2 * targets * ROWS
    )
    first = sent[0].at
    assert 0 <= first <= 0.101
    alive_times = sorted({round(s.at, 3) for s in sent if s.notify.nts == "ssdp:alive"})
    bye_times = sorted({round(s.at, 3) for s in sent if s.notify.nts == "ssdp:byebye"})
    assert len(alive_times) == len(bye_times) == 2
    assert 0.2 <= alive_times[1] - alive_times[0] <= 0.5  # a few hundred ms apart
    assert 0.2 <= bye_times[1] - bye_times[0] <= 0.5
    expected: list[tuple[IPAddress, str, IPAddress]] = [
        (SSDP_GROUP_IPV4, "239.255.255.250:1900", IPv4Address("192.168.1.1")),
        (SSDP_GROUP_IPV6_LINK, "[FF02::C]:1900", IPv6Address("fe80::1")),
    ]
    for target, host, source in expected:
        mine = [s for s in sent if s.destination == target]
        assert len(mine) == 4 * ROWS
        assert {(s.port, s.via, s.notify.host) for s in mine} == {(1900, Via(3, source), host)}
    alive = [s.notify for s in sent if s.notify.nts == "ssdp:alive"]
    assert {a.location for a in alive} == {
        "http://192.168.1.1:5000/rootDesc.xml",
        "http://[fe80::1]:5000/rootDesc.xml",
    }
    assert {a.boot_id for a in alive} == {BOOT}
    assert [(a.nt, a.usn) for a in alive[:ROWS]] == list(notifications(identity()))


def test_site_local_announcements_use_a_global_address_when_enabled() -> None:
    r = rig(ipv6_site_local=True)
    r.server.start()
    r.run(1.0)
    site = [s for s in r.transport.take() if s.destination == SSDP_GROUP_IPV6_SITE]
    assert len(site) == 4 * ROWS
    assert {s.via.source for s in site} == {IPv6Address("2001:db8:1::1")}
    assert {s.notify.host for s in site} == {"[FF05::C]:1900"}


def test_alive_is_repeated_every_notify_interval_with_jitter() -> None:
    r = rig(seed=5, ipv6=False)
    r.server.start()
    r.run(1.0)
    r.transport.take()
    bursts: list[float] = []
    for _ in range(4):
        r.run(901.0, step=0.5)
        sent = r.transport.take()
        assert kinds(sent) == ["ssdp:alive"] * (2 * ROWS)
        times = sorted({s.at for s in sent})
        assert len(times) == 2 and 0.2 <= times[1] - times[0] <= 0.5
        bursts.append(times[0])
    gaps = [b - a for a, b in itertools.pairwise(bursts)]
    assert all(900 - 64 - 1 <= gap <= 900 + 1 for gap in gaps)
    assert all(gap < identity().max_age / 2 + 1 for gap in gaps)
    assert len({round(gap) for gap in gaps}) > 1  # jittered


def test_notify_interval_above_half_the_max_age_is_refused() -> None:
    with pytest.raises(ValueError, match="max_age"):
        rig(notify_interval=1000.0)


def test_stop_sends_byebye_for_every_pair_and_closes() -> None:
    r = rig().started()
    r.receive(msearch("ssdp:all", mx=5))  # pending answers are dropped
    r.server.stop()
    sent = r.transport.take()
    assert kinds(sent) == ["ssdp:byebye"] * (2 * ROWS)
    assert {(s.notify.nt, s.notify.usn) for s in sent} == set(notifications(identity()))
    assert r.transport.closed and not r.server.running
    r.run(1000, step=1)
    assert r.transport.take() == []
    r.server.stop()  # idempotent
    assert r.transport.take() == []


def test_stop_before_the_first_announcement_still_says_byebye_and_never_alive() -> None:
    r = rig()
    r.server.start()
    r.server.stop()
    r.run(2)
    assert set(kinds(r.transport.take())) == {"ssdp:byebye"}


def test_lan_address_change_sends_byebye_update_then_alive_with_the_next_bootid() -> None:
    r = rig().started()
    moved = LanInterface(
        "br-lan", 3, (IPv4Interface("192.168.1.2/24"), IPv6Interface("fe80::1/64"))
    )
    r.server.update_addresses([moved])
    assert r.transport.joins[-1] == (3,)
    now = r.transport.take()
    assert kinds(now) == ["ssdp:byebye"] * ROWS + ["ssdp:update"] * ROWS
    bye, update = now[:ROWS], now[ROWS:]
    assert {(s.destination, s.via) for s in bye} == {(SSDP_GROUP_IPV4, Via(3, None))}
    assert {(s.destination, s.via) for s in update} == {
        (SSDP_GROUP_IPV6_LINK, Via(3, IPv6Address("fe80::1")))
    }
    assert update[0].notify.nt == "upnp:rootdevice"  # root first
    assert {(s.notify.boot_id, s.notify.next_boot_id) for s in update} == {(BOOT, BOOT + 1)}
    assert r.server.identity.boot_id == BOOT + 1
    r.run(1.0)
    later = r.transport.take()
    assert kinds(later) == ["ssdp:alive"] * (2 * 2 * ROWS)
    assert {s.notify.boot_id for s in later} == {BOOT + 1}
    assert {s.via.source for s in later} == {IPv4Address("192.168.1.2"), IPv6Address("fe80::1")}
    r.receive(msearch("upnp:rootdevice"))
    r.run(3.1)
    (answer,) = r.transport.take()
    assert answer.response.location == "http://192.168.1.2:5000/rootDesc.xml"
    assert answer.response.boot_id == BOOT + 1


def test_a_new_interface_is_joined_and_announced_and_the_others_updated() -> None:
    r = rig(ipv6=False).started()
    guest = LanInterface("br-guest", 4, (IPv4Interface("192.168.2.1/24"),))
    r.server.update_addresses([LAN, guest])
    assert r.transport.joins[-1] == (3, 4)
    assert kinds(r.transport.take()) == ["ssdp:update"] * ROWS
    r.run(1.0)
    later = r.transport.take()
    assert {s.via for s in later} == {
        Via(3, IPv4Address("192.168.1.1")),
        Via(4, IPv4Address("192.168.2.1")),
    }
    r.receive(msearch("upnp:rootdevice"), source="192.168.2.20", ifindex=4)
    r.run(3.1)
    (answer,) = r.transport.take()
    assert answer.via == Via(4, IPv4Address("192.168.2.1"))


def test_unchanged_advertised_addresses_announce_nothing() -> None:
    r = rig().started()
    r.server.update_addresses([LAN])
    r.run(1.0)
    assert r.transport.take() == []
    assert r.server.identity.boot_id == BOOT


def test_an_answer_waiting_for_an_address_that_went_away_is_dropped() -> None:
    r = rig(ipv6=False).started()
    r.receive(msearch("upnp:rootdevice", mx=5))
    r.server.update_addresses([LanInterface("br-lan", 3, (IPv4Interface("192.168.1.2/24"),))])
    r.run(5.1)
    assert "HTTP/1.1 200 OK" not in {s.data.split(b"\r\n")[0].decode() for s in r.transport.take()}


def test_losing_every_address_says_byebye_and_goes_quiet() -> None:
    r = rig().started()
    r.server.update_addresses([LanInterface("br-lan", 3, ())])
    assert kinds(r.transport.take()) == ["ssdp:byebye"] * (2 * ROWS)
    r.run(1000, step=1)
    assert r.transport.take() == []


# -- the real sockets, on loopback --------------------------------------------------------------


class LoopbackReactor(Clock):
    """``task.Clock`` plus the reader registry ``MulticastTransport`` uses."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


def loopback_search(lan_index: int) -> bytes | None:
    """Start a server with real sockets on 127.0.0.1, send it a unicast search from
    127.0.0.2 and return what comes back within the unicast window (None: nothing)."""
    reactor = LoopbackReactor()
    settings = SsdpSettings(port=0, ipv6=False)
    transport = MulticastTransport(reactor, settings)
    lo = LanInterface("lo", lan_index, (IPv4Interface("127.0.0.1/8"),))
    server = SsdpServer(
        reactor,
        [lo],
        identity(),
        lambda address: address in IPv4Network("127.0.0.0/8"),
        settings,
        rng=random.Random(3),
        transport=transport,
    )
    server.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.2", 0))
        client.sendto(
            msearch("upnp:rootdevice", mx=None), ("127.0.0.1", transport.ports[socket.AF_INET])
        )
        (reader,) = reactor.readers
        assert select.select([reader], [], [], 2.0)[0]
        reader.doRead()
        for _ in range(100):
            reactor.advance(0.01)
        client.settimeout(0.5)
        try:
            return client.recv(4096)
        except TimeoutError:
            return None
    finally:
        client.close()
        server.stop()
        assert reactor.readers == []


def test_real_socket_learns_the_ingress_interface_and_answers_a_unicast_search() -> None:
    reply = loopback_search(socket.if_nametoindex("lo"))
    assert reply is not None
    response = decode_response(reply)
    assert response.st == "upnp:rootdevice"
    assert response.location == "http://127.0.0.1:5000/rootDesc.xml"


def test_real_socket_drops_a_search_from_an_interface_that_is_not_a_lan() -> None:
    assert loopback_search(socket.if_nametoindex("lo") + 1000) is None

"""The SSDP shell: multicast sockets, timers and the anti-amplification rules around the pure
codec in ``ssdp`` (protocols.md §1 and §8.1-8.2).

``SsdpServer`` answers M-SEARCH and sends NOTIFY; every datagram goes through an
``SsdpTransport``: ``MulticastTransport`` (the real sockets) in the daemon, a recorder in tests
(on ``twisted.internet.task.Clock``).

How the ingress interface is learnt: one IPv4 socket on 0.0.0.0:1900 and one IPv6 socket on
[::]:1900 (IPV6_V6ONLY), with IP_PKTINFO / IPV6_RECVPKTINFO, read with ``recvmsg`` by a small
``IReadDescriptor`` of our own (Twisted's UDP port reads with ``recvfrom`` and drops the
ancillary data). Each datagram arrives with the interface index it came in on and the address
it was sent to; replies and NOTIFYs leave with ``sendmsg`` and an IP_PKTINFO / IPV6_PKTINFO
naming the interface and our source address. Compared with one socket per LAN interface this
needs no SO_BINDTODEVICE (root) and no socket per address, still sees unicast searches to any
of our addresses, and survives address changes (group memberships are made by interface
index, not by address). Because a socket bound to the wildcard also receives what arrives on
the WAN, the interface index is checked before anything else, and IP_MULTICAST_ALL is off so
groups joined by other programs on other interfaces are not delivered to us.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_address,
)
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from protocols.ratelimit import RateLimiter
from protocols.upnp.ssdp import (
    HOST_IPV4,
    HOST_IPV6_LINK,
    HOST_IPV6_SITE,
    MAX_MESSAGE,
    Answer,
    DeviceIdentity,
    SsdpDecodeError,
    answers,
    decode_search,
    encode_alive,
    encode_byebye,
    encode_search_response,
    encode_update,
    notifications,
)

__all__ = [
    "SSDP_GROUP_IPV4",
    "SSDP_GROUP_IPV6_LINK",
    "SSDP_GROUP_IPV6_SITE",
    "SSDP_PORT",
    "Datagram",
    "LanInterface",
    "LanLink",
    "MulticastTransport",
    "RateLimiter",
    "SsdpServer",
    "SsdpSettings",
    "SsdpTransport",
    "Via",
]

log = Logger(namespace="portgate.ssdp")

IPAddress = IPv4Address | IPv6Address

SSDP_PORT = 1900
SSDP_GROUP_IPV4 = IPv4Address("239.255.255.250")
SSDP_GROUP_IPV6_LINK = IPv6Address("ff02::c")
SSDP_GROUP_IPV6_SITE = IPv6Address("ff05::c")
_LIMITED_BROADCAST = IPv4Address("255.255.255.255")

# Linux values Python's socket module does not always export.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
IP_MULTICAST_ALL: int = getattr(socket, "IP_MULTICAST_ALL", 49)
IPV6_MULTICAST_ALL: int = getattr(socket, "IPV6_MULTICAST_ALL", 29)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_IN6_PKTINFO = struct.Struct("=16sI")  # ipi6_addr, ipi6_ifindex
_IP_MREQN = struct.Struct("=4s4si")  # imr_multiaddr, imr_address, imr_ifindex
_IPV6_MREQ = struct.Struct("=16sI")  # ipv6mr_multiaddr, ipv6mr_interface
_ANCILLARY_SPACE = 64
#: Datagrams read per readiness notification before the reactor gets control back.
_READS_PER_WAKEUP = 64


# -- values ------------------------------------------------------------------------------------


class LanLink(Protocol):
    """A LAN interface as the daemon knows it (``gateway.netinfo.InterfaceInfo`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def addresses(self) -> Sequence[IPv4Interface | IPv6Interface]: ...


@dataclass(frozen=True, slots=True)
class LanInterface:
    """A plain ``LanLink``."""

    name: str
    index: int
    addresses: tuple[IPv4Interface | IPv6Interface, ...]


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received datagram with what IP_PKTINFO told about it."""

    data: bytes
    source: IPAddress
    source_port: int
    #: The destination address of the packet: an SSDP group or one of our unicast addresses.
    destination: IPAddress
    #: The interface it arrived on.
    ifindex: int


@dataclass(frozen=True, slots=True)
class Via:
    """Where a datagram leaves: the interface, and our source address on it (None: the kernel
    picks, used for byebye on an address that may already be gone)."""

    ifindex: int
    source: IPAddress | None


class SsdpTransport(Protocol):
    """What the server sends and receives through."""

    def open(self, receive: Callable[[Datagram], None]) -> None:
        """Start receiving; ``receive`` gets every datagram (not yet filtered)."""
        ...

    def join(self, interfaces: Sequence[LanLink]) -> None:
        """Make the group memberships exactly those of ``interfaces`` (by interface index)."""
        ...

    def send(self, data: bytes, destination: IPAddress, port: int, via: Via) -> None:
        """Send one datagram; failures are logged and dropped (UDP)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SsdpSettings:
    """Knobs with their defaults (protocols.md §1.5, §1.7, §8.2)."""

    #: The port the sockets bind (NOTIFYs always go to port 1900 of the group).
    port: int = SSDP_PORT
    ipv4: bool = True
    ipv6: bool = True
    #: Also join and announce on [ff05::c] (site-local scope) from a ULA/GUA address.
    ipv6_site_local: bool = False
    #: Seconds between alive announcements, minus a random jitter of up to notify_jitter.
    notify_interval: float = 900.0
    notify_jitter: float = 64.0
    #: Longest random wait before the first announcement after start or an address change.
    announce_delay: float = 0.1
    #: Gap between the two copies of each announcement set (UDP is lossy).
    repeat_delay: float = 0.3
    #: Unicast searches are answered within this many seconds (must be under 1).
    unicast_window: float = 0.5
    #: Multicast TTL / hop limit (UDA 1.1: 2).
    multicast_ttl: int = 2
    #: Most responses one search gets (ssdp:all has 11 rows for IGD:2).
    max_answers_per_search: int = 16
    #: Per source address: a token bucket of this many responses, refilled at rate_per_second.
    rate_burst: int = 40
    rate_per_second: float = 10.0
    #: Source addresses remembered by the per-source limiter (least recently seen go first).
    rate_sources: int = 1024
    #: All sources together.
    global_burst: int = 400
    global_per_second: float = 100.0
    #: Most responses waiting for their delay at any time.
    max_pending: int = 512

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: expected 0..65535, got {self.port}")
        if self.notify_interval <= 0 or not 0 <= self.notify_jitter < self.notify_interval:
            raise ValueError("notify_interval must be positive and above notify_jitter >= 0")
        if self.announce_delay < 0 or self.repeat_delay < 0:
            raise ValueError("announce_delay and repeat_delay must not be negative")
        if not 0 < self.unicast_window < 1:
            raise ValueError("unicast_window: expected more than 0 and less than 1 second")
        if not 1 <= self.multicast_ttl <= 255:
            raise ValueError(f"multicast_ttl: expected 1..255, got {self.multicast_ttl}")
        counts = (
            self.max_answers_per_search,
            self.rate_burst,
            self.rate_sources,
            self.global_burst,
            self.max_pending,
        )
        if min(counts) < 1 or self.rate_per_second <= 0 or self.global_per_second <= 0:
            raise ValueError("limits and rates must be positive")


# -- the server --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """One place announcements go: an interface, a group, our source address there."""

    ifindex: int
    group: IPAddress
    host: str
    source: IPAddress


def _is_unicast(address: IPAddress) -> bool:
    if address.is_multicast or address.is_unspecified:
        return False
    return address != _LIMITED_BROADCAST


def _spread(count: int, window: float, rng: random.Random) -> list[float]:
    """Delays in [0, window]: one uniform delay, or one per equal slot of the window."""
    if count == 1:
        return [rng.uniform(0.0, window)]
    slot = window / count
    return [(index + rng.random()) * slot for index in range(count)]


class SsdpServer:
    """Answers searches and announces the device on the LAN interfaces.

    ``interfaces``: the LAN interfaces with their current addresses; ``is_lan(address)``: the
    policy's LAN source check (IPv6 link-local sources arriving on a LAN interface are accepted
    without it); ``identity``: what the messages carry (its ``boot_id`` is the
    first BOOTID; the server increases it on address changes, see ``identity``).
    ``transport`` defaults to the real sockets; ``rng`` to ``random.SystemRandom()``.
    """

    def __init__(
        self,
        reactor: Any,
        interfaces: Sequence[LanLink],
        identity: DeviceIdentity,
        is_lan: Callable[[IPAddress], bool],
        settings: SsdpSettings | None = None,
        *,
        rng: random.Random | None = None,
        transport: SsdpTransport | None = None,
    ) -> None:
        self._settings = settings if settings is not None else SsdpSettings()
        if self._settings.notify_interval > identity.max_age / 2:
            raise ValueError(
                f"notify_interval {self._settings.notify_interval} s must be at most half of "
                f"max_age {identity.max_age} s"
            )
        self._reactor = reactor
        self._identity = identity
        self._is_lan = is_lan
        self._rng = rng if rng is not None else random.SystemRandom()
        self._transport: SsdpTransport = (
            transport if transport is not None else MulticastTransport(reactor, self._settings)
        )
        self._groups: frozenset[IPAddress] = frozenset(
            ([SSDP_GROUP_IPV4] if self._settings.ipv4 else [])
            + ([SSDP_GROUP_IPV6_LINK] if self._settings.ipv6 else [])
            + (
                [SSDP_GROUP_IPV6_SITE]
                if self._settings.ipv6 and self._settings.ipv6_site_local
                else []
            )
        )
        self._limiter = RateLimiter(
            self._settings.rate_burst, self._settings.rate_per_second, self._settings.rate_sources
        )
        self._global = RateLimiter(self._settings.global_burst, self._settings.global_per_second, 1)
        self._calls: set[Any] = set()
        self._reannounce: Any = None
        self._pending = 0
        self._running = False
        self._links: dict[int, LanLink] = {}
        self._own: frozenset[IPAddress] = frozenset()
        self._broadcasts: frozenset[IPAddress] = frozenset()
        self._targets: tuple[_Target, ...] = ()
        self._set_interfaces(interfaces)

    # -- the daemon's interface ----------------------------------------------------------

    @property
    def identity(self) -> DeviceIdentity:
        """The identity now on the wire (BOOTID included)."""
        return self._identity

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Open the sockets, join the groups and announce: byebye then alive, each set twice,
        after a random 0-100 ms; then alive again every notify_interval (jittered).
        Raises OSError when the sockets cannot be opened."""
        if self._running:
            raise RuntimeError("SsdpServer.start called twice")
        self._transport.open(self.datagram_received)
        try:
            self._transport.join(list(self._links.values()))
        except BaseException:
            self._transport.close()
            raise
        self._running = True
        log.info(
            "SSDP on {targets}",
            targets=", ".join(f"{t.source}->{t.group}" for t in self._targets) or "nothing yet",
        )
        first = self._rng.uniform(0.0, self._settings.announce_delay)
        repeat = self._settings.repeat_delay
        self._later(first, lambda: self._send_byebye(self._targets))
        self._later(first + repeat, self._byebye_then_alive)
        self._later(first + 2 * repeat, self._alive_and_schedule)

    def stop(self) -> None:
        """Cancel what is pending, send byebye for every NT/USN pair, close the sockets."""
        if not self._running:
            return
        self._running = False
        self._cancel_all()
        self._send_byebye(self._targets)
        self._transport.close()

    def update_addresses(self, interfaces: Sequence[LanLink]) -> None:
        """The LAN interfaces or their addresses changed (§1.7): byebye where an advertised
        address went away, BOOTID + 1, ssdp:update (old BOOTID, NEXTBOOTID) on the advertised
        addresses that stayed, then alive everywhere with the new BOOTID after 0-100 ms, twice.
        Nothing is announced when the advertised addresses did not change."""
        before = self._targets
        self._set_interfaces(interfaces)
        if not self._running:
            return
        self._transport.join(list(self._links.values()))
        if set(before) == set(self._targets):
            return
        lost = tuple(t for t in before if t not in self._targets)
        kept = tuple(t for t in before if t in self._targets)
        self._send_byebye(lost, keep_source=False)
        old = self._identity
        if old.boot_id < 2**31 - 1:
            self._send_update(kept, old.boot_id + 1)
            self._identity = replace(old, boot_id=old.boot_id + 1)
        log.info(
            "SSDP addresses changed: BOOTID {boot}, announcing on {targets}",
            boot=self._identity.boot_id,
            targets=", ".join(f"{t.source}->{t.group}" for t in self._targets) or "nothing",
        )
        self._cancel_reannounce()
        first = self._rng.uniform(0.0, self._settings.announce_delay)
        self._later(first, self._alive)
        self._later(first + self._settings.repeat_delay, self._alive_and_schedule)

    # -- receiving -----------------------------------------------------------------------

    def datagram_received(self, datagram: Datagram) -> None:
        """One datagram from the transport: filter, decode, schedule the answers."""
        if not self._running:
            return
        link = self._links.get(datagram.ifindex)
        source = datagram.source
        if link is None:
            log.debug("SSDP drop: {source} arrived on a non-LAN interface", source=source)
            return
        if (
            not _is_unicast(source)
            or source in self._broadcasts
            or source in self._own
            or datagram.source_port == 0
        ):
            log.debug("SSDP drop: bad or own source {source}", source=source)
            return
        # An IPv6 link-local source that came in on a LAN interface is on that link (such
        # packets are never routed); the policy's LAN prefixes leave link-local out.
        on_link = isinstance(source, IPv6Address) and source.is_link_local
        if not on_link and not self._is_lan(source):
            log.debug("SSDP drop: {source} is not on the LAN", source=source)
            return
        destination = datagram.destination
        if destination.is_multicast and destination not in self._groups:
            return
        # A search broadcast to the subnet is treated like a multicast one (MX, delays).
        multicast = (
            destination.is_multicast
            or destination == _LIMITED_BROADCAST
            or destination in self._broadcasts
        )
        try:
            search = decode_search(datagram.data, multicast=multicast)
        except SsdpDecodeError as error:
            log.debug("SSDP drop from {source}: {reason}", source=source, reason=error.reason)
            return
        rows = answers(search, self._identity)[: self._settings.max_answers_per_search]
        if not rows:
            return
        local = self._local_address(link, source)
        if local is None:
            return
        now = float(self._reactor.seconds())
        wanted = min(len(rows), self._settings.max_pending - self._pending)
        granted = self._limiter.take(source, wanted, now)
        granted = self._global.take(None, granted, now)
        if granted < len(rows):
            log.debug(
                "SSDP rate limit: {source} gets {granted} of {wanted} answers",
                source=source,
                granted=granted,
                wanted=len(rows),
            )
        if granted == 0:
            return
        window = float(search.mx) if multicast and search.mx else self._settings.unicast_window
        via = Via(datagram.ifindex, local)
        delays = _spread(granted, window, self._rng)
        for row, delay in zip(rows[:granted], delays, strict=True):
            self._pending += 1
            self._later(delay, self._respond_later(row, source, datagram.source_port, via))

    def _respond_later(
        self, row: Answer, destination: IPAddress, port: int, via: Via
    ) -> Callable[[], None]:
        def respond() -> None:
            self._pending -= 1
            if via.source is None or via.source not in self._own:
                return  # the address went away while we waited
            location = self._identity.location_for(via.source)
            data = encode_search_response(self._identity, row, location, self._reactor.seconds())
            self._transport.send(data, destination, port, via)

        return respond

    def _local_address(self, link: LanLink, source: IPAddress) -> IPAddress | None:
        """Our address on ``link`` for a reply to ``source`` (and for its LOCATION): one on
        the source's subnet if there is one; link-local to link-local."""
        if isinstance(source, IPv4Address):
            v4 = [a for a in link.addresses if isinstance(a, IPv4Interface)]
            same = [a.ip for a in v4 if source in a.network]
            return same[0] if same else (v4[0].ip if v4 else None)
        v6 = [a for a in link.addresses if isinstance(a, IPv6Interface)]
        local_link = [a.ip for a in v6 if a.ip.is_link_local]
        wider = [a for a in v6 if not a.ip.is_link_local]
        if source.is_link_local:
            return local_link[0] if local_link else None
        on_subnet = [a.ip for a in wider if source in a.network]
        if on_subnet:
            return on_subnet[0]
        if wider:
            return wider[0].ip
        return local_link[0] if local_link else None

    # -- announcing ----------------------------------------------------------------------

    def _set_interfaces(self, interfaces: Sequence[LanLink]) -> None:
        self._links = {link.index: link for link in interfaces}
        own: set[IPAddress] = set()
        broadcasts: set[IPAddress] = set()
        targets: list[_Target] = []
        settings = self._settings
        for link in interfaces:
            v4 = [a for a in link.addresses if isinstance(a, IPv4Interface)]
            v6 = [a for a in link.addresses if isinstance(a, IPv6Interface)]
            own.update(a.ip for a in link.addresses)
            broadcasts.update(a.network.broadcast_address for a in v4 if a.network.prefixlen < 31)
            if settings.ipv4 and v4:
                targets.append(_Target(link.index, SSDP_GROUP_IPV4, HOST_IPV4, v4[0].ip))
            if settings.ipv6:
                local_link = [a.ip for a in v6 if a.ip.is_link_local]
                wider = [a.ip for a in v6 if not a.ip.is_link_local]
                if local_link:
                    targets.append(
                        _Target(link.index, SSDP_GROUP_IPV6_LINK, HOST_IPV6_LINK, local_link[0])
                    )
                if settings.ipv6_site_local and wider:
                    targets.append(
                        _Target(link.index, SSDP_GROUP_IPV6_SITE, HOST_IPV6_SITE, wider[0])
                    )
        self._own = frozenset(own)
        self._broadcasts = frozenset(broadcasts)
        self._targets = tuple(targets)

    def _send_byebye(self, targets: Sequence[_Target], keep_source: bool = True) -> None:
        rows = notifications(self._identity)
        for target in targets:
            via = Via(target.ifindex, target.source if keep_source else None)
            for row in rows:
                data = encode_byebye(self._identity, row, target.host)
                self._transport.send(data, target.group, SSDP_PORT, via)

    def _send_update(self, targets: Sequence[_Target], next_boot_id: int) -> None:
        rows = notifications(self._identity)
        for target in targets:
            location = self._identity.location_for(target.source)
            via = Via(target.ifindex, target.source)
            for row in rows:
                data = encode_update(self._identity, row, target.host, location, next_boot_id)
                self._transport.send(data, target.group, SSDP_PORT, via)

    def _alive(self) -> None:
        rows = notifications(self._identity)
        for target in self._targets:
            location = self._identity.location_for(target.source)
            via = Via(target.ifindex, target.source)
            for row in rows:
                data = encode_alive(self._identity, row, target.host, location)
                self._transport.send(data, target.group, SSDP_PORT, via)

    def _byebye_then_alive(self) -> None:
        self._send_byebye(self._targets)
        self._alive()

    def _alive_and_schedule(self) -> None:
        self._alive()
        self._schedule_reannounce()

    def _cancel_reannounce(self) -> None:
        if self._reannounce is not None:
            self._calls.discard(self._reannounce)
            if self._reannounce.active():
                self._reannounce.cancel()
            self._reannounce = None

    def _schedule_reannounce(self) -> None:
        self._cancel_reannounce()
        settings = self._settings
        delay = settings.notify_interval - self._rng.uniform(0.0, settings.notify_jitter)
        self._reannounce = self._later(delay, self._reannounce_now)

    def _reannounce_now(self) -> None:
        self._reannounce = None
        self._alive()
        self._later(self._settings.repeat_delay, self._alive_and_schedule)

    # -- timers --------------------------------------------------------------------------

    def _later(self, delay: float, action: Callable[[], None]) -> Any:
        holder: list[Any] = []

        def fire() -> None:
            self._calls.discard(holder[0])
            if not self._running:
                return
            try:
                action()
            except Exception:
                log.failure("SSDP timer failed")

        call = self._reactor.callLater(delay, fire)
        holder.append(call)
        self._calls.add(call)
        return call

    def _cancel_all(self) -> None:
        for call in list(self._calls):
            if call.active():
                call.cancel()
        self._calls.clear()
        self._reannounce = None
        self._pending = 0


# -- the real sockets --------------------------------------------------------------------------


def _strip_zone(host: str) -> str:
    return host.split("%", 1)[0]


class _Reader:
    """Twisted's ``IReadDescriptor`` (fileno, doRead, connectionLost, logPrefix; reactors
    take it by duck typing) reading one socket with ``recvmsg`` and its PKTINFO."""

    def __init__(
        self, sock: socket.socket, family: int, receive: Callable[[Datagram], None]
    ) -> None:
        self._sock = sock
        self._family = family
        self._receive = receive

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return "ssdp"

    def connectionLost(self, reason: Failure) -> None:
        """Nothing to do: the transport closes the socket."""

    def doRead(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancillary, flags, address = self._sock.recvmsg(
                    MAX_MESSAGE + 1, _ANCILLARY_SPACE
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. ECONNREFUSED from an earlier send's ICMP error
                log.debug("SSDP receive error: {error}", error=error)
                continue
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
                continue
            datagram = self._datagram(data, ancillary, address)
            if datagram is None:
                continue
            try:
                self._receive(datagram)
            except Exception:
                log.failure("SSDP datagram handling failed")

    def _datagram(
        self, data: bytes, ancillary: list[tuple[int, int, bytes]], address: Any
    ) -> Datagram | None:
        source = ip_address(_strip_zone(str(address[0])))
        port = int(address[1])
        for level, kind, payload in ancillary:
            if self._family == socket.AF_INET and (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO):
                if len(payload) < _IN_PKTINFO.size:
                    return None
                ifindex, _spec_dst, dst = _IN_PKTINFO.unpack_from(payload)
                return Datagram(data, source, port, IPv4Address(dst), ifindex)
            if self._family == socket.AF_INET6 and (level, kind) == (
                socket.IPPROTO_IPV6,
                socket.IPV6_PKTINFO,
            ):
                if len(payload) < _IN6_PKTINFO.size:
                    return None
                dst6, ifindex6 = _IN6_PKTINFO.unpack_from(payload)
                return Datagram(data, source, port, IPv6Address(dst6), ifindex6)
        return None  # no PKTINFO: we cannot tell the interface, so we do not answer


class MulticastTransport:
    """The production ``SsdpTransport``: an IPv4 and an IPv6 socket on the SSDP port."""

    def __init__(self, reactor: Any, settings: SsdpSettings) -> None:
        self._reactor = reactor
        self._settings = settings
        self._sockets: dict[int, socket.socket] = {}
        self._readers: list[_Reader] = []
        self._joined: set[tuple[IPAddress, int]] = set()

    @property
    def ports(self) -> dict[int, int]:
        """The bound port per address family (useful when settings.port is 0)."""
        return {family: int(sock.getsockname()[1]) for family, sock in self._sockets.items()}

    def open(self, receive: Callable[[Datagram], None]) -> None:
        if self._settings.ipv4:
            self._sockets[socket.AF_INET] = self._open_ipv4()
        if self._settings.ipv6:
            try:
                self._sockets[socket.AF_INET6] = self._open_ipv6()
            except OSError as error:
                if not self._sockets:
                    raise
                # A host without IPv6 (ipv6.disable=1) still gets SSDP over IPv4.
                log.warn("SSDP over IPv6 is off: {error}", error=error)
        for family, sock in self._sockets.items():
            reader = _Reader(sock, family, receive)
            self._readers.append(reader)
            self._reactor.addReader(reader)

    def _open_ipv4(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self._settings.multicast_ttl
            )
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            _try_setsockopt(sock, socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            sock.bind(("0.0.0.0", self._settings.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _open_ipv6(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.setsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self._settings.multicast_ttl
            )
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            _try_setsockopt(sock, socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            sock.bind(("::", self._settings.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def join(self, interfaces: Sequence[LanLink]) -> None:
        wanted: set[tuple[IPAddress, int]] = set()
        for link in interfaces:
            if socket.AF_INET in self._sockets:
                wanted.add((SSDP_GROUP_IPV4, link.index))
            if socket.AF_INET6 in self._sockets:
                wanted.add((SSDP_GROUP_IPV6_LINK, link.index))
                if self._settings.ipv6_site_local:
                    wanted.add((SSDP_GROUP_IPV6_SITE, link.index))
        for group, ifindex in sorted(self._joined - wanted, key=str):
            self._membership(group, ifindex, join=False)
            self._joined.discard((group, ifindex))
        for group, ifindex in sorted(wanted - self._joined, key=str):
            if self._membership(group, ifindex, join=True):
                self._joined.add((group, ifindex))

    def _membership(self, group: IPAddress, ifindex: int, join: bool) -> bool:
        try:
            if isinstance(group, IPv4Address):
                request = _IP_MREQN.pack(group.packed, b"\0\0\0\0", ifindex)
                option = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
                self._sockets[socket.AF_INET].setsockopt(socket.IPPROTO_IP, option, request)
            else:
                request = _IPV6_MREQ.pack(group.packed, ifindex)
                option = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
                self._sockets[socket.AF_INET6].setsockopt(socket.IPPROTO_IPV6, option, request)
        except OSError as error:
            log.warn(
                "SSDP cannot {what} {group} on interface {ifindex}: {error}",
                what="join" if join else "leave",
                group=group,
                ifindex=ifindex,
                error=error,
            )
            return False
        return True

    def send(self, data: bytes, destination: IPAddress, port: int, via: Via) -> None:
        if isinstance(destination, IPv4Address):
            sock = self._sockets.get(socket.AF_INET)
            source = via.source if isinstance(via.source, IPv4Address) else IPv4Address(0)
            control = _IN_PKTINFO.pack(via.ifindex, source.packed, b"\0\0\0\0")
            ancillary = [(socket.IPPROTO_IP, IP_PKTINFO, control)]
            address: tuple[Any, ...] = (str(destination), port)
        else:
            sock = self._sockets.get(socket.AF_INET6)
            source6 = via.source if isinstance(via.source, IPv6Address) else IPv6Address(0)
            control = _IN6_PKTINFO.pack(source6.packed, via.ifindex)
            ancillary = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, control)]
            link_scope_multicast = destination.is_multicast and destination.packed[1] & 0x0F == 2
            scoped = destination.is_link_local or link_scope_multicast
            address = (str(destination), port, 0, via.ifindex if scoped else 0)
        if sock is None:
            return
        try:
            sock.sendmsg([data], ancillary, 0, address)
        except OSError as error:
            log.debug(
                "SSDP send to {destination} failed: {error}", destination=destination, error=error
            )

    def close(self) -> None:
        for reader in self._readers:
            self._reactor.removeReader(reader)
        self._readers.clear()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._joined.clear()


def _try_setsockopt(sock: socket.socket, level: int, option: int, value: int) -> None:
    try:
        sock.setsockopt(level, option, value)
    except OSError as error:  # older kernels: not fatal, the ifindex check still holds
        log.debug("SSDP setsockopt({option}) failed: {error}", option=option, error=error)

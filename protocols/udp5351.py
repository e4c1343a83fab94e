"""The UDP 5351 socket shared by NAT-PMP and PCP, and its announcements.

One ``Udp5351Protocol`` per LAN address (``listen_udp5351`` binds them, so nothing listens on
the WAN), the LAN interfaces' IPv6 link-local addresses included: RFC 6887 §8.1 has a PCP client
ask its default router, which on IPv6 is the router's link-local address (the source of its
Router Advertisements). A datagram whose source is not a LAN address is dropped before anything
reads it (a link-local source is given the zone of the interface the socket is tied to for that
check, so only one that came in on a LAN interface passes); the rest are told apart by their
first byte (RFC 6887 §9, protocols.md §6.13):

- 0: NAT-PMP (IPv4 sockets with NAT-PMP enabled; dropped otherwise);
- 2, and 1 or > 2: PCP (the latter answered UNSUPP_VERSION offering version 2); with PCP
  disabled, NAT-PMP's 8-byte "unsupported version" answer, which makes PCP clients fall back.

Replies go back to the request's source from the address it was sent to. Unsolicited datagrams
(the announcements and PCP Mapping Updates) go through ``send(data, (host, port))``, the
transport's ``write`` unless one is injected.

Announcements, at start and whenever the gateway publishes ``EpochReset`` or a new external
address (``ExternalAddressChanged``): 10 sends, 250 ms apart at first and doubling (RFC 6886
§3.2.1; RFC 6887 §14.1.3 allows the same), each carrying the current epoch: the NAT-PMP public
address response to 224.0.0.1:5350 (skipped while the address is unknown) and the PCP
unsolicited ANNOUNCE to 224.0.0.1:5350 or [ff02::1]:5350 out of the socket's LAN interface
(so each IPv6 address of an interface, its link-local one too, announces there, and a client
hears it from whichever of them it uses as its server).

The epoch (NAT-PMP SSSoE and PCP epoch, one counter) is the gateway's, restarted when the
external address changes (RFC 6887 §8.5 requires that; ``EpochClock``).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.model import IPAddress
from gateway.ports import EpochReset, ExternalAddressChanged, Gateway, GatewayEvent
from protocols.natpmp.handler import NatPmpHandler
from protocols.pcp.handler import DEFAULT_MAX_FILTERS, PcpHandler, Send
from protocols.ratelimit import DEFAULT_MAX_KEYS, RateLimiter, RefusalLog

__all__ = [
    "ALL_HOSTS_V4",
    "ALL_NODES_V6",
    "ANNOUNCE_COUNT",
    "ANNOUNCE_FIRST_GAP",
    "CLIENT_PORT",
    "SERVER_PORT",
    "EpochClock",
    "SourceLimiter",
    "Udp5351Protocol",
    "bind_link_local",
    "listen_udp5351",
]

log = Logger(namespace="portgate.udp5351")

SERVER_PORT = 5351
CLIENT_PORT = 5350
ALL_HOSTS_V4 = "224.0.0.1"
ALL_NODES_V6 = "ff02::1"
ANNOUNCE_COUNT = 10
ANNOUNCE_FIRST_GAP = 0.25
#: Twisted's default read size (8192) is plenty: PCP messages are at most 1100 bytes.
_MAX_DATAGRAM = 8192
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

#: Per-client request rate on UDP 5351 (requests per second, and the burst allowed), the
#: defaults of ``limits.udp5351_requests_per_second`` and ``limits.udp5351_request_burst``:
#: far above what a real client sends (a few requests per mapping per lease), low enough
#: that one flooding host cannot starve the others.
SOURCE_RATE = 1000.0
SOURCE_BURST = 2000.0
LIMIT_LOG_INTERVAL = 60.0


class EpochClock:
    """The epoch both protocols report: the gateway's ``epoch_seconds``, restarted when the
    external address changes. Share one between the sockets; feed it every event."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._offset = 0

    def __call__(self) -> int:
        return max(0, self._gateway.epoch_seconds() - self._offset)

    def observe(self, event: GatewayEvent) -> None:
        if isinstance(event, EpochReset):
            self._offset = 0
        elif isinstance(event, ExternalAddressChanged) and event.new is not None:
            self._offset = self._gateway.epoch_seconds()


class Udp5351Protocol(DatagramProtocol):
    """NAT-PMP and PCP on one socket bound to ``local_address`` (a LAN address).

    - ``gateway``: the shared table's service; ``is_lan``: True for LAN sources (checked
      before parsing; everything else is dropped without an answer);
    - ``natpmp_enabled`` / ``pcp_enabled``: the admin switches (NAT-PMP only ever on IPv4);
      ``peer_enabled``: PCP PEER (else UNSUPP_OPCODE); ``mapping_updates``: PCP §14.2;
    - ``interface``: the LAN interface's name, used to bind the socket to it and to scope the
      IPv6 multicast; ``scheduler``: what ``callLater`` runs on (the reactor);
    - ``epoch``: a shared ``EpochClock``; ``send``: where unsolicited datagrams go;
      ``announce_on_start``: announce when the socket starts (a daemon start is a "boot").
    """

    noisy = False

    def __init__(
        self,
        gateway: Gateway,
        is_lan: Callable[[IPAddress], bool],
        *,
        local_address: IPAddress,
        natpmp_enabled: bool = True,
        pcp_enabled: bool = True,
        peer_enabled: bool = True,
        mapping_updates: bool = True,
        max_filters: int = DEFAULT_MAX_FILTERS,
        interface: str | None = None,
        scheduler: Any = None,
        epoch: EpochClock | None = None,
        send: Send | None = None,
        announce_on_start: bool = True,
        limiter: SourceLimiter | None = None,
    ) -> None:
        if scheduler is None:
            from twisted.internet import reactor

            scheduler = reactor
        self.gateway = gateway
        self.local_address = local_address
        self.interface = interface
        self._is_lan = is_lan
        self._limiter = limiter
        self._scheduler = scheduler
        self._epoch = epoch if epoch is not None else EpochClock(gateway)
        self._send = send
        self._announce_on_start = announce_on_start
        self._ipv4 = isinstance(local_address, IPv4Address)
        self.natpmp: NatPmpHandler | None = (
            NatPmpHandler(gateway, epoch=self._epoch) if natpmp_enabled and self._ipv4 else None
        )
        self.pcp: PcpHandler | None = (
            PcpHandler(
                gateway,
                epoch=self._epoch,
                peer_enabled=peer_enabled,
                max_filters=max_filters,
                scheduler=scheduler if mapping_updates else None,
                send=self.send_unsolicited if mapping_updates else None,
            )
            if pcp_enabled
            else None
        )
        self._unsubscribe: Callable[[], None] | None = None
        self._announce_call: Any = None
        #: the interface the kernel ties this socket to, if it does: every datagram came in
        #: there, so it is the zone of a link-local source (which Twisted hands over without
        #: one). A zoned link-local address is tied by its bind; others by SO_BINDTODEVICE.
        self._zone: str | None = None
        if isinstance(local_address, IPv6Address) and local_address.is_link_local:
            self._zone = local_address.scope_id

    # -- life cycle -------------------------------------------------------------------------

    def startProtocol(self) -> None:
        self._configure_socket()
        self._unsubscribe = self.gateway.subscribe(self._on_event)
        log.info(
            "{what} listening on {address}",
            address=self.local_address,
            what=" and ".join(
                name for name, on in (("NAT-PMP", self.natpmp), ("PCP", self.pcp)) if on
            ),
        )
        if self._announce_on_start:
            self.announce()

    def stopProtocol(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._cancel_announcements()
        if self.pcp is not None:
            self.pcp.close()

    def _configure_socket(self) -> None:
        """Multicast out of the LAN interface, and receive only what came in on it."""
        get_handle = getattr(self.transport, "getHandle", None)
        sock = get_handle() if get_handle is not None else None
        if not isinstance(sock, socket.socket):
            return
        try:
            if self._ipv4:
                sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, self.local_address.packed
                )
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            elif self.interface is not None:
                index = socket.if_nametoindex(self.interface)
                sock.setsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, struct.pack("@I", index)
                )
        except OSError as error:
            log.warn(
                "{address}: cannot choose the multicast interface: {error}",
                address=self.local_address,
                error=error,
            )
        if self.interface is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, self.interface.encode())
                self._zone = self._zone or self.interface
            except OSError as error:
                log.warn(
                    "{address}: cannot bind to interface {interface} ({error}); relying on "
                    "the address and the LAN source check",
                    address=self.local_address,
                    interface=self.interface,
                    error=error,
                )

    # -- requests ---------------------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        host, port = str(addr[0]), int(addr[1])
        bare, _, zone = host.partition("%")
        try:
            source = ip_address(bare)
        except ValueError:
            return
        if isinstance(source, IPv6Address) and source.ipv4_mapped is not None:
            source = source.ipv4_mapped
        # the LAN check and the rate limit see a link-local source with its zone, the
        # interface it came in on (Twisted drops the scope id recvfrom gives, so it is the
        # socket's own; without one, such a source is not heard); the handlers see the bare
        # address, which is what a PCP client puts in its header. Replies to it leave by the
        # socket's interface.
        peer: IPAddress = source
        if isinstance(source, IPv6Address) and source.is_link_local:
            zone = zone or self._zone or ""
            if zone:
                try:
                    peer = IPv6Address(f"{source}%{zone}")
                except ValueError:
                    return
        if not self._is_lan(peer):
            log.debug("dropped a datagram from non-LAN {source}", source=peer)
            return
        if not datagram:
            return
        if self._limiter is not None and not self._limiter.allow(peer):
            return
        version = datagram[0]
        reply: Deferred[bytes | None] | None = None
        try:
            if version == 0:
                if self.natpmp is not None:
                    reply = self.natpmp.handle(datagram, source)
            elif self.pcp is not None:
                reply = self.pcp.handle(datagram, source, (host, port))
            elif self.natpmp is not None:
                reply = self.natpmp.handle(datagram, source)
        except Exception:
            log.failure("request from {source} failed", source=source)
            return
        if reply is None:
            log.debug(
                "dropped a version {version} datagram from {source}: protocol disabled",
                version=version,
                source=source,
            )
            return
        reply.addCallback(self._write, (host, port))
        reply.addErrback(self._failed, source)

    def _write(self, data: bytes | None, to: tuple[str, int]) -> None:
        transport: Any = self.transport  # zope's IUDPTransport confuses mypy
        if data is None or transport is None:
            return
        try:
            transport.write(data, to)
        except Exception as error:
            log.debug("could not answer {to}: {error}", to=to, error=error)

    def _failed(self, failure: Failure, source: IPAddress) -> None:
        log.failure("request from {source} failed", failure, source=source)

    # -- unsolicited datagrams ---------------------------------------------------------------

    def send_unsolicited(self, data: bytes, to: tuple[str, int]) -> None:
        """Announcements and Mapping Updates, from this socket (so from port 5351)."""
        transport: Any = self.transport
        try:
            if self._send is not None:
                self._send(data, to)
            elif transport is not None:
                transport.write(data, to)
        except Exception as error:
            log.warn("could not send to {to}: {error}", to=to, error=error)

    def _multicast_group(self) -> str:
        if self._ipv4:
            return ALL_HOSTS_V4
        if self.interface is not None:
            return f"{ALL_NODES_V6}%{self.interface}"
        return ALL_NODES_V6

    def _on_event(self, event: GatewayEvent) -> None:
        self._epoch.observe(event)
        if self.pcp is not None:
            self.pcp.notify(event)
        if isinstance(event, EpochReset) or (
            isinstance(event, ExternalAddressChanged) and event.new is not None
        ):
            self.announce()

    def announce(self) -> None:
        """(Re)start the series of announcements."""
        self._cancel_announcements()
        self._announce_step(0)

    def _announce_step(self, step: int) -> None:
        self._announce_call = None
        group = (self._multicast_group(), CLIENT_PORT)
        if self.natpmp is not None:
            data = self.natpmp.announcement()
            if data is not None:
                self.send_unsolicited(data, group)
        if self.pcp is not None:
            self.send_unsolicited(self.pcp.announcement(), group)
        if step + 1 < ANNOUNCE_COUNT:
            self._announce_call = self._scheduler.callLater(
                ANNOUNCE_FIRST_GAP * 2**step, self._announce_step, step + 1
            )

    def _cancel_announcements(self) -> None:
        if self._announce_call is not None and self._announce_call.active():
            self._announce_call.cancel()
        self._announce_call = None


class SourceLimiter:
    """Requests per second per LAN source, as a token bucket (``protocols.ratelimit``): a
    client that floods UDP 5351 (malware, a broken loop) has its excess dropped silently, as
    the RFCs allow for a server under load, and the log says so once a minute per client.
    Shared by every socket; ``configure`` changes the limits in place (a reload)."""

    def __init__(
        self,
        now: Callable[[], float],
        rate: float = SOURCE_RATE,
        burst: float = SOURCE_BURST,
        max_sources: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._now = now
        self._buckets = RateLimiter(burst, rate, max_sources)
        self._refusals = RefusalLog(LIMIT_LOG_INTERVAL, max_sources)

    @property
    def rate(self) -> float:
        return self._buckets.per_second

    @property
    def burst(self) -> float:
        return self._buckets.burst

    def configure(self, rate: float, burst: float) -> None:
        self._buckets.configure(burst, rate)

    def allow(self, source: IPAddress) -> bool:
        now = self._now()
        if self._buckets.allow(source, now):
            return True
        if self._refusals.due(source, now):
            log.info(
                "refused requests from {source} on UDP 5351: over {rate:.0f} per second "
                "(limits.udp5351_requests_per_second)",
                source=source,
                rate=self._buckets.per_second,
            )
        return False

    def __len__(self) -> int:
        return len(self._buckets)


def bind_link_local(address: IPv6Address, port: int) -> socket.socket:
    """A non-blocking IPv6 UDP socket bound to ``address``, a link-local address with its zone
    (``fe80::1%br-lan``; the zone an interface name or index), on ``port``.

    Twisted's ``listenUDP`` cannot do this: it binds ``(host, port)``, and a link-local
    address needs the interface index in the 4-tuple (without it the kernel says EINVAL).
    Bound this way, Linux also ties the socket to that interface (as SO_BINDTODEVICE), so it
    receives only what came in there and a reply to a link-local peer leaves by it.
    Raises OSError (the zone names no interface, the address is not on it yet)."""
    zone = address.scope_id
    if not zone:
        raise OSError(errno.EINVAL, f"{address} has no zone (interface)")
    index = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
    bare = str(address).partition("%")[0]
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setblocking(False)
        sock.bind((bare, port, 0, index))
    except OSError:
        sock.close()
        raise
    return sock


def _listen(reactor: Any, address: IPAddress, port: int, protocol: Udp5351Protocol) -> Any:
    """One listening port: ``listenUDP``, or for a zoned link-local address a socket bound
    here and handed to the reactor (``IReactorSocket.adoptDatagramPort``). Raises
    ``CannotListenError``."""
    if not (isinstance(address, IPv6Address) and address.is_link_local and address.scope_id):
        return reactor.listenUDP(
            port, protocol, interface=str(address), maxPacketSize=_MAX_DATAGRAM
        )
    try:
        sock = bind_link_local(address, port)
    except OSError as error:
        raise CannotListenError(str(address), port, error) from error  # type: ignore[no-untyped-call]
    try:
        return reactor.adoptDatagramPort(
            sock.fileno(), socket.AF_INET6, protocol, maxPacketSize=_MAX_DATAGRAM
        )
    except OSError as error:
        raise CannotListenError(str(address), port, error) from error  # type: ignore[no-untyped-call]
    finally:
        # the reactor works on its own duplicate of the descriptor
        sock.close()


def listen_udp5351(
    reactor: Any,
    addresses: Sequence[IPAddress],
    gateway: Gateway,
    is_lan: Callable[[IPAddress], bool],
    natpmp_enabled: bool,
    pcp_enabled: bool,
    *,
    interfaces: Mapping[IPAddress, str] | None = None,
    peer_enabled: bool = True,
    mapping_updates: bool = True,
    max_filters: int = DEFAULT_MAX_FILTERS,
    announce_on_start: bool = True,
    port: int = SERVER_PORT,
    limiter: SourceLimiter | None = None,
) -> list[Any]:
    """Bind one socket per LAN address (IPv4: NAT-PMP and/or PCP; IPv6: PCP only) on ``port``
    and return the listening ports (``stopListening`` each to close). A link-local IPv6
    address comes with its zone (``fe80::1%br-lan``, as ``Daemon.lan_addresses`` gives it) and
    is bound on that interface (``bind_link_local``). ``interfaces`` names the LAN interface
    of each address; ``limiter`` is the per-client rate limit the sockets share
    (None: one with the default rates). An address that cannot be bound is logged and left
    out, so the others still serve (the daemon binds again when the LAN addresses change);
    only when none can be bound is ``CannotListenError`` raised."""
    epoch = EpochClock(gateway)
    if limiter is None:
        limiter = SourceLimiter(gateway.now)
    names = dict(interfaces or {})
    listening: list[Any] = []
    failures: list[CannotListenError] = []
    for address in addresses:
        ipv4 = isinstance(address, IPv4Address)
        if not (pcp_enabled or (natpmp_enabled and ipv4)):
            continue
        protocol = Udp5351Protocol(
            gateway,
            is_lan,
            local_address=address,
            natpmp_enabled=natpmp_enabled,
            pcp_enabled=pcp_enabled,
            peer_enabled=peer_enabled,
            mapping_updates=mapping_updates,
            max_filters=max_filters,
            interface=names.get(address),
            scheduler=reactor,
            epoch=epoch,
            announce_on_start=announce_on_start,
            limiter=limiter,
        )
        try:
            listening.append(_listen(reactor, address, port, protocol))
        except CannotListenError as error:
            failures.append(error)
    if failures and not listening:
        raise failures[0]
    for failure in failures:
        log.error(
            "cannot listen on UDP {port} at {address}: {error}; the other addresses serve",
            port=port,
            address=failure.interface,
            error=failure.socketError,
        )
    return listening

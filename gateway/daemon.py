"""The composition root: what ``portgate run --config FILE`` (``gateway.cli``) starts.

It builds the pieces (config, policy, table, lease store, backend, service, admin socket),
runs the Twisted reactor, reloads on SIGHUP and stops cleanly on SIGTERM/SIGINT. This is the
only module that names concrete front-ends and backends.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from types import FrameType
from typing import IO, Any, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)

from backends.memory import MemoryBackend
from backends.nft.backend import NftBackend
from backends.nft.ruleset import JumpTarget, Layout
from gateway import sdnotify
from gateway.allocator import Allocator
from gateway.audit import format_event, on_journal
from gateway.clock import Clock
from gateway.config import Config, ConfigError, LimitsConfig, load_config
from gateway.control import ControlError, listen_control
from gateway.errors import BackendError, StoreError
from gateway.memory import release_free_memory
from gateway.model import IPAddress
from gateway.netinfo import InterfaceInfo, external_ipv4, read_interfaces
from gateway.netwatch import watch_interfaces
from gateway.policy import Lan, Policy
from gateway.ports import Backend
from gateway.reachability import StunProbe, WanReachability, WanStatusAdmin, usable_address
from gateway.service import GatewayService
from gateway.store import LeaseStore
from gateway.table import MappingTable
from protocols.stun.client import StunClient, mapped_ipv4
from protocols.udp5351 import SourceLimiter, listen_udp5351
from protocols.upnp.actions import SysfsLinkInfo
from protocols.upnp.description import UpnpSettings
from protocols.upnp.http import UpnpFrontEnd, UpnpLimits
from protocols.upnp.ssdp import DeviceIdentity, http_location
from protocols.upnp.ssdp_server import SsdpServer, SsdpSettings

log = Logger(namespace="portgate.daemon")

#: How often interface addresses are read again (LAN prefixes, learned external address).
NETWORK_RECHECK = 10.0
#: How often freed heap pages are handed back to the system (gateway.memory).
RELEASE_MEMORY_EVERY = 60.0

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}


# -- logging -------------------------------------------------------------------------------


class _LineObserver:
    """One line per event: ``2026-11-24 23:59:01 info service: map add ...`` or JSON, with
    syslog priority prefixes when standard error is the journal (``gateway.audit``)."""

    def __init__(self, stream: IO[str], as_json: bool) -> None:
        self._stream = stream
        self._json = as_json
        self._journal = on_journal(stream)

    def __call__(self, event: LogEvent) -> None:
        line = format_event(event, as_json=self._json, journal=self._journal)
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass


#: Twisted's own chatter about ports opening and closing ("... starting on ...", "(UDP Port
#: 5351 Closed)"): debug detail, not audit lines; our own log says what listens where.
_TWISTED_PORT_CHATTER = ("starting on ", "Starting protocol ", "Stopping protocol ", " Closed)")


def _quiet_twisted_ports(event: LogEvent) -> PredicateResult:
    verdict: PredicateResult = PredicateResult.maybe
    if event.get("log_namespace") == "log_legacy" and event.get("log_level") == LogLevel.info:
        text = formatEvent(event)
        if any(part in text for part in _TWISTED_PORT_CHATTER):
            verdict = PredicateResult.no
    return verdict


def start_logging(config: Config, stream: IO[str] = sys.stderr) -> LogLevelFilterPredicate:
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[config.log.level])
    lines = cast(ILogObserver, _LineObserver(stream, config.log.format == "json"))
    predicates = [cast(ILogFilterPredicate, predicate)]
    if config.log.level != "debug":
        predicates.insert(0, cast(ILogFilterPredicate, _quiet_twisted_ports))
    observer = FilteringLogObserver(lines, predicates)
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observer)], redirectStandardIO=False)
    return predicate


# -- the running daemon --------------------------------------------------------------------


@dataclass
class Daemon:
    config_path: str
    config: Config
    reactor: Any
    service: GatewayService
    backend: Backend
    predicate: LogLevelFilterPredicate
    control_port: Any = None
    lan_info: dict[str, InterfaceInfo | None] = field(default_factory=dict)
    udp5351_ports: list[Any] = field(default_factory=list)
    #: the UDP 5351 sockets' per-client rate limit (kept across their restarts)
    udp5351_limiter: SourceLimiter | None = None
    upnp: UpnpFrontEnd | None = None
    upnp_ports: list[Any] = field(default_factory=list)
    ssdp: SsdpServer | None = None
    #: stops the netlink watch that calls recheck_network on interface changes
    stop_watching: Callable[[], None] | None = None
    #: decides whether the WAN address is served (private address, CGNAT; gateway.reachability)
    reachability: WanReachability | None = None
    restarting: bool = False
    stopped: bool = False

    def is_lan(self, address: IPAddress) -> bool:
        """The LAN check the front-ends apply to every source (follows SIGHUP and address
        changes, since it reads the current policy). A link-local IPv6 source counts only with
        the zone of a LAN interface (it cannot have been routed from elsewhere)."""
        if isinstance(address, IPv6Address) and address.is_link_local:
            scope = address.scope_id
            return scope is not None and scope in self.lan_scopes()
        return self.service.policy.lan.contains(address)

    def lan_scopes(self) -> set[str]:
        scopes: set[str] = set()
        for name, info in self.lan_info.items():
            if info is not None:
                scopes.update((name, str(info.index)))
        return scopes

    def location_address(self, local: IPAddress) -> IPAddress:
        """The address to put in SSDP's LOCATION for a message sent from ``local``: for a
        link-local source, a ULA or global address of the same interface when it has one (as
        miniupnpd does), so that clients come back from an address that is theirs in the
        table rather than from their own link-local one."""
        if not (isinstance(local, IPv6Address) and local.is_link_local):
            return local
        bare = IPv6Address(str(local).split("%", 1)[0])
        for info in self.lan_info.values():
            if info is None or bare not in {i.ip for i in info.ipv6}:
                continue
            for iface in info.ipv6:
                if not (iface.ip.is_link_local or iface.ip.is_loopback):
                    return iface.ip
        return local

    def lan_addresses(self) -> dict[IPAddress, str]:
        """The gateway's own addresses on the LAN interfaces, with their interface names."""
        found: dict[IPAddress, str] = {}
        for name, info in self.lan_info.items():
            if info is None:
                continue
            for iface in info.addresses:
                address = iface.ip
                if address.is_loopback:
                    continue
                if isinstance(address, IPv6Address) and address.is_link_local:
                    # IPv6 clients reach their router at its link-local address (SSDP on
                    # ff02::c announces it; PCP clients ask the default router): keep the zone
                    address = IPv6Address(f"{address}%{name}")
                found[address] = name
        return found

    def start_frontends(self) -> None:
        self.start_udp5351()
        self.start_upnp()

    def upnp_uuid(self) -> str:
        """The root device UUID: configured, or made once and kept in the lease store so it
        stays the same across restarts."""
        if self.config.upnp.uuid is not None:
            return self.config.upnp.uuid
        stored = self.service.store.get_meta("upnp_uuid")
        if stored is None:
            stored = str(uuid.uuid4())
            self.service.store.set_meta("upnp_uuid", stored)
        return stored

    def start_upnp(self) -> None:
        upnp = self.config.upnp
        if not upnp.enabled:
            return
        addresses = [str(a) for a in self.lan_addresses() if isinstance(a, IPv4Address)]
        if upnp.ipv6:
            addresses += [str(a) for a in self.lan_addresses() if isinstance(a, IPv6Address)]
        if not addresses:
            log.warn("no LAN address yet: UPnP will start once one appears")
            return
        if self.upnp is None:
            settings = UpnpSettings(
                uuid=self.upnp_uuid(),
                friendly_name=upnp.friendly_name,
                igd_version=upnp.igd_version,
                igd1_user_agents=upnp.igd1_user_agents,
                ipv6=upnp.ipv6,
                http_port=upnp.http_port,
            )
            self.upnp = UpnpFrontEnd(
                self.reactor,
                self.service,
                settings,
                self.is_lan,
                link=SysfsLinkInfo(self.config.wan.interface),
                limits=upnp_limits(self.config.limits),
            )
        front = self.upnp
        try:
            port, self.upnp_ports = front.listen_all(addresses)
        except CannotListenError as error:
            log.error("UPnP: cannot listen for HTTP: {error}", error=error)
            return
        settings = front.settings
        identity = DeviceIdentity(
            root_uuid=settings.uuid,
            wan_uuid=settings.wan_uuid,
            wanconn_uuid=settings.wanconn_uuid,
            server=settings.server,
            location=self._location(http_location(port)),
            boot_id=int(time.time()) & 0x7FFFFFFF,
            config_id=front.config_id,
            igd_version=settings.igd_version,
            max_age=max(1800, 2 * upnp.notify_interval),
        )
        links = [info for info in self.lan_info.values() if info is not None]
        self.ssdp = SsdpServer(
            self.reactor,
            links,
            identity,
            is_lan=self.is_lan,
            settings=SsdpSettings(ipv6=upnp.ipv6, notify_interval=upnp.notify_interval),
        )
        try:
            self.ssdp.start()
        except OSError as error:
            log.error("UPnP: cannot open the SSDP sockets: {error}", error=error)
            self.ssdp = None
        log.info(
            "UPnP IGD:{version} on port {port} at {addresses}; description {path}",
            version=settings.igd_version,
            port=port,
            addresses=", ".join(addresses),
            path="/rootDesc.xml",
        )

    def _location(self, base: Callable[[IPAddress], str]) -> Callable[[IPAddress], str]:
        def location(local: IPAddress) -> str:
            return base(self.location_address(local))

        return location

    def stop_upnp(self, final: bool) -> list[Deferred[None]]:
        """Stop listening; returns what fires once the HTTP sockets are closed."""
        if self.ssdp is not None:
            self.ssdp.stop()
            self.ssdp = None
        closing = [port.stopListening() for port in self.upnp_ports]
        self.upnp_ports = []
        if final and self.upnp is not None:
            self.upnp.stop()
            self.upnp = None
        return [d for d in closing if d is not None]

    def start_udp5351(self) -> None:
        config = self.config
        if not (config.natpmp.enabled or config.pcp.enabled):
            return
        # PCP over IPv6 on every IPv6 address of the LAN interfaces, the zoned link-local ones
        # too: a client's default router, hence its PCP server (RFC 6887 §8.1), is usually
        # the router's link-local address
        addresses = {
            address: name
            for address, name in self.lan_addresses().items()
            if isinstance(address, IPv4Address) or (config.pcp.enabled and config.pcp.ipv6)
        }
        if not addresses:
            log.warn("no LAN address yet: NAT-PMP/PCP will listen once one appears")
            return
        if self.udp5351_limiter is None:
            self.udp5351_limiter = SourceLimiter(
                self.service.now,
                rate=config.limits.udp5351_requests_per_second,
                burst=config.limits.udp5351_request_burst,
            )
        try:
            self.udp5351_ports = listen_udp5351(
                self.reactor,
                list(addresses),
                self.service,
                self.is_lan,
                natpmp_enabled=config.natpmp.enabled,
                pcp_enabled=config.pcp.enabled,
                interfaces=addresses,
                limiter=self.udp5351_limiter,
            )
        except CannotListenError as error:
            log.error("cannot listen on UDP 5351: {error}", error=error)
            return
        log.info(
            "NAT-PMP {natpmp}, PCP {pcp}: listening on UDP 5351 at {addresses}",
            natpmp="on" if config.natpmp.enabled else "off",
            pcp="on" if config.pcp.enabled else "off",
            # the protocol's address: a link-local one with its zone (getHost drops it)
            addresses=", ".join(str(p.protocol.local_address) for p in self.udp5351_ports),
        )

    def stop_udp5351(self) -> list[Deferred[None]]:
        """Stop listening; returns what fires once the sockets are closed."""
        closing = [port.stopListening() for port in self.udp5351_ports]
        self.udp5351_ports = []
        return [d for d in closing if d is not None]

    def restart_frontends(self, rebuild_upnp: bool = False) -> None:
        """Listen again on the LAN addresses as they are now. Twisted closes a port's socket
        only at the reactor's next turn, so the new sockets open once the old ones are gone
        (else the same address and port are still in use); changes that arrive meanwhile
        are picked up by that start, which reads the addresses when it runs.
        ``rebuild_upnp``: the UPnP front-end is made anew from the config (its settings
        changed; GENA subscribers are dropped and SSDP announces a new CONFIGID)."""
        if self.restarting:
            if rebuild_upnp and self.upnp is not None:
                self.upnp.stop()
                self.upnp = None
            return
        self.restarting = True
        closing = self.stop_udp5351() + self.stop_upnp(final=rebuild_upnp)

        def start(_: object) -> None:
            self.restarting = False
            if not self.stopped:
                self.start_udp5351()
                self.start_upnp()

        gatherResults(closing, consumeErrors=True).addBoth(start)

    def stop_frontends(self) -> None:
        self.stop_udp5351()
        self.stop_upnp(final=True)

    def reload(self) -> None:
        """SIGHUP: read the config again; an invalid one keeps the old and says why."""
        try:
            config = load_config(self.config_path)
        except ConfigError as error:
            log.error("reload refused, keeping the running config: {error}", error=error)
            return
        unchanged = ("wan", "lan", "state", "control", "backend", "metrics")
        moved = [name for name in unchanged if getattr(config, name) != getattr(self.config, name)]
        if moved:
            log.warn(
                "reload: changes to {keys} need a restart; the rest applies now",
                keys=", ".join(moved),
            )
        fronts = [
            name
            for name in ("upnp", "natpmp", "pcp")
            if getattr(config, name) != getattr(self.config, name)
        ]
        self.config = config
        self.predicate.setLogLevelForNamespace(None, _LEVELS[config.log.level])  # type: ignore[arg-type]
        self.service.set_policy(build_policy(config, self.lan_info))
        self.apply_limits(config.limits)
        if fronts:
            log.info("reload: {names} changed: listening again", names=", ".join(fronts))
            self.restart_frontends(rebuild_upnp="upnp" in fronts)
        log.info("reloaded {path}: new rules apply to new requests", path=self.config_path)

    def apply_limits(self, limits: LimitsConfig) -> None:
        """The ``limits`` section, to the running front-ends: new connections, requests and
        subscriptions see it at once; what is open stays."""
        if self.upnp is not None:
            self.upnp.set_limits(upnp_limits(limits))
        if self.udp5351_limiter is not None:
            self.udp5351_limiter.configure(
                rate=limits.udp5351_requests_per_second, burst=limits.udp5351_request_burst
            )

    def recheck_network(self) -> None:
        names = [lan.interface for lan in self.config.lan] + [self.config.wan.interface]
        try:
            info = read_interfaces(names)
        except OSError as error:
            log.error("cannot read interface addresses: {error}", error=error)
            return
        lan_info = {lan.interface: info.get(lan.interface) for lan in self.config.lan}
        if lan_info != self.lan_info:
            for name, item in lan_info.items():
                if item is None:
                    log.warn("LAN interface {name} does not exist (yet)", name=name)
            old_addresses = self.lan_addresses()
            self.lan_info = lan_info
            self.service.set_policy(build_policy(self.config, lan_info))
            if self.lan_addresses() != old_addresses:
                self.restart_frontends()
            log.info("LAN prefixes: {prefixes}", prefixes=_prefix_text(self.service.policy.lan))
        learned = external_ipv4(info.get(self.config.wan.interface))
        address = self.config.wan.external_address or learned
        reachability = self.reachability
        before = self.service.external_address if reachability is None else reachability.address
        if address is None and before is not None:
            log.warn(
                "WAN interface {name} has no IPv4 address: mapping requests are refused",
                name=self.config.wan.interface,
            )
        if reachability is None:
            self.service.set_external_address(address)
        else:
            reachability.update(address, source=learned)

    def stop(self) -> None:
        self.stopped = True
        if self.stop_watching is not None:
            self.stop_watching()
            self.stop_watching = None
        if self.reachability is not None:
            self.reachability.stop()
        self.stop_frontends()
        keep = self.config.state.keep_mappings_on_stop
        self.service.stop(keep_mappings=keep)
        if self.control_port is not None:
            self.control_port.stopListening()
        log.info("portgate stopped")


def _prefix_text(lan: Lan) -> str:
    return ", ".join(str(p) for p in lan.prefixes) or "none"


def build_lan(config: Config, lan_info: dict[str, InterfaceInfo | None]) -> Lan:
    prefixes: list[Any] = []
    own: set[Any] = set()
    for lan in config.lan:
        info = lan_info.get(lan.interface)
        if info is not None:
            for iface in info.addresses:
                if iface.ip.is_link_local or iface.ip.is_loopback:
                    continue
                own.add(iface.ip)
                if iface.network not in prefixes:
                    prefixes.append(iface.network)
        for prefix in lan.prefixes:
            if prefix not in prefixes:
                prefixes.append(prefix)
    return Lan(tuple(prefixes), frozenset(own))


def upnp_limits(limits: LimitsConfig) -> UpnpLimits:
    return UpnpLimits(
        connections_per_client=limits.http_connections_per_client,
        connections=limits.http_connections,
        requests_per_second=limits.http_requests_per_second,
        request_burst=limits.http_request_burst,
        subscriptions_per_client=limits.gena_subscriptions_per_client,
        subscriptions=limits.gena_subscriptions,
    )


def build_policy(config: Config, lan_info: dict[str, InterfaceInfo | None]) -> Policy:
    return Policy(
        config.policy,
        config.lifetimes,
        build_lan(config, lan_info),
        upnp_igd_version=config.upnp.igd_version,
    )


def build_backend(config: Config) -> Backend:
    if config.backend.type == "memory":
        return MemoryBackend()
    nft = config.backend.nft
    layout = Layout(
        table=nft.table,
        dnat_priority=nft.dnat_priority,
        snat_priority=nft.snat_priority,
        forward_priority=nft.forward_priority,
        hairpin=nft.hairpin,
        lan_interfaces=tuple(lan.interface for lan in config.lan),
        wan_interface=config.wan.interface,
        ipv6_firewall=nft.ipv6_firewall,
        forward_jump=None if nft.forward_jump is None else JumpTarget.parse(nft.forward_jump),
    )
    return NftBackend(layout)


def start_daemon(config_path: str, config: Config, reactor: Any) -> Daemon:
    """Build and start everything; raises StartupError with a one-line reason."""
    names = [lan.interface for lan in config.lan] + [config.wan.interface]
    try:
        info = read_interfaces(names)
    except OSError as error:
        raise StartupError(f"cannot read interface addresses: {error}") from error
    lan_info = {lan.interface: info.get(lan.interface) for lan in config.lan}
    learned = external_ipv4(info.get(config.wan.interface))
    external: IPv4Address | None = config.wan.external_address or learned
    policy = build_policy(config, lan_info)
    # under wan.private_address: refuse, a private address is not served until STUN clears it
    serving = usable_address(external, config.wan.private_address)
    table = MappingTable(policy, Allocator(random.SystemRandom()), serving)
    try:
        store = LeaseStore(config.state.lease_file)
    except StoreError as error:
        raise StartupError(str(error)) from error
    try:
        backend = build_backend(config)
    except BackendError as error:
        store.close()
        raise StartupError(f"nftables backend: {error}") from error
    clock = Clock(reactor)
    service = GatewayService(
        table,
        backend,
        store,
        clock,
        health_interval=config.backend.nft.check_interval,
        verify_interval=config.backend.nft.verify_interval,
    )
    predicate = LogLevelFilterPredicate()
    daemon = Daemon(config_path, config, reactor, service, backend, predicate, lan_info=lan_info)
    log.info(
        "portgate starting: backend={backend} wan={wan} external={external} lan={lan}",
        backend=backend.name,
        wan=config.wan.interface,
        external=external if external is not None else "unknown",
        lan=_prefix_text(policy.lan),
    )
    if backend.name == "memory":
        log.warn(
            "the memory backend keeps mappings in this process only: nothing reaches the kernel"
        )
    for name, item in lan_info.items():
        if item is None:
            log.warn("LAN interface {name} does not exist (yet)", name=name)
    try:
        service.start()
    except (StoreError, BackendError) as error:
        raise StartupError(f"cannot start: {error}") from error
    probe = (
        None
        if config.wan.stun is None
        else stun_probe(reactor, config.wan.stun.host, config.wan.stun.port)
    )
    reachability = WanReachability(config.wan, clock, service.set_external_address, probe)
    daemon.reachability = reachability
    reachability.update(external, source=learned)
    try:
        daemon.control_port = listen_control(
            reactor, config.control.socket, WanStatusAdmin(service, reachability)
        )
    except (ControlError, OSError) as error:
        service.stop(keep_mappings=True)
        raise StartupError(f"admin socket {config.control.socket}: {error}") from error
    log.info("admin socket listening on {path}", path=config.control.socket)
    daemon.start_frontends()
    try:
        daemon.stop_watching = watch_interfaces(reactor, names, daemon.recheck_network)
    except OSError as error:
        log.warn(
            "cannot watch interfaces through netlink ({error}); rechecking every {every} s",
            error=error,
            every=NETWORK_RECHECK,
        )
    if config.metrics.enabled:
        # imported only here: prometheus_client costs ~4 MB resident (and needs ssl, which
        # gateway.cli leaves importable when metrics are on)
        from gateway.metrics import start_metrics

        def gena_subscriptions() -> int:
            upnp = daemon.upnp
            return 0 if upnp is None else len(upnp.events.subscriptions)

        start_metrics(
            config.metrics,
            reactor,
            service,
            subscriptions=gena_subscriptions,
            wan=reachability.gauges,
        )
    return daemon


def stun_probe(reactor: Any, host: str, port: int) -> StunProbe:
    """Asks the STUN server at ``host:port`` (``wan.stun.server``) for our mapped address."""
    client = StunClient(reactor)

    def probe(source: IPv4Address | None) -> Deferred[IPv4Address]:
        return client.query(host, port, source).addCallback(mapped_ipv4)

    return probe


class StartupError(Exception):
    """portgate cannot start; the message says why, in one line."""


def run_daemon(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"portgate: {error}", file=sys.stderr)
        return 2
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    predicate = start_logging(config)
    try:
        daemon = start_daemon(config_path, config, reactor)
    except StartupError as error:
        log.critical("{error}", error=error)
        print(f"portgate: {error}", file=sys.stderr)
        return 1
    daemon.predicate = predicate

    def serving() -> str:
        return f"serving {len(daemon.service.table)} mapping(s)"

    def reload() -> None:
        sdnotify.reloading()
        daemon.reload()
        sdnotify.ready(serving())

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(reload)

    signal.signal(signal.SIGHUP, on_hup)
    reactor.addSystemEventTrigger("before", "shutdown", sdnotify.stopping)
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stop)
    from twisted.internet.task import LoopingCall

    recheck = LoopingCall(daemon.recheck_network)
    recheck.clock = reactor
    reactor.callWhenRunning(recheck.start, NETWORK_RECHECK, now=False)
    # start-up's transients (the nftables dump, the install script) are freed by now; give
    # their pages back, then keep doing so for later bursts (see gateway.memory)
    trim = LoopingCall(release_free_memory)
    trim.clock = reactor
    reactor.callWhenRunning(trim.start, RELEASE_MEMORY_EVERY, now=True)
    reactor.callWhenRunning(log.info, "portgate running (pid {pid})", pid=os.getpid())
    reactor.callWhenRunning(lambda: sdnotify.ready(serving()))
    reactor.run()
    return 0

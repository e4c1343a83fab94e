"""UPnP control actions: an explicit table (service, action) -> handler over the shared table.

Argument specifications come from the SCPDs in ``description`` (one source of truth); parsing
and checking them (``parse_arguments``) is pure. Handlers turn a call into gateway requests
(``MapPort``, ``UnmapPort``, ...) with ``Owner(Origin.UPNP, <client source address>)`` and build
the out-arguments; gateway refusals become UPnP error codes through ``UPNP_ERROR_FOR_REASON``
(per dialect: WANIPConnection:1, WANIPConnection:2, WANIPv6FirewallControl:1), with a few
action-specific meanings (``ActionEntry.overrides``, e.g. NOT_FOUND is 713 for
GetGenericPortMappingEntry). The semantic rules are those of protocols.md §3.6-§3.12 and §7.2.

``IgdState`` keeps the state variables (evented and queryable) current from the gateway's
events: ExternalIPAddress, ConnectionStatus, PortMappingNumberOfEntries, SystemUpdateID, ...
GENA listens to it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lxml import etree  # type: ignore[import-untyped, unused-ignore]  # stubs: types-lxml
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.errors import GatewayError, Reason
from gateway.model import (
    ChangeKind,
    Endpoint,
    IPAddress,
    Kind,
    MappingKey,
    Origin,
    Owner,
    Proto,
    RemoteFilter,
)
from gateway.model import (
    Mapping as GatewayMapping,
)
from gateway.ports import ExternalAddressChanged, Gateway, GatewayEvent, MappingsChanged
from gateway.requests import (
    ClosePinhole,
    ExternalAddress,
    Found,
    GetByUid,
    GetExternalAddress,
    GetMapping,
    GetMappingByIndex,
    Granted,
    Listing,
    ListMappings,
    MapPort,
    OpenPinhole,
    Removed,
    Request,
    Result,
    UnmapPort,
    UnmapRange,
    UpdatePinhole,
)
from protocols.upnp.description import (
    CONNECTION_TYPES,
    SPECS,
    Action,
    Service,
    ServiceSpec,
    UpnpSettings,
    parse_service_type,
    service_version,
)
from protocols.upnp.soap import CONTROL_NS, Cdata, SoapRequest, xml_text

__all__ = [
    "ACTIONS",
    "UPNP_ERROR_FOR_REASON",
    "ActionDispatcher",
    "ActionEntry",
    "Arguments",
    "CallContext",
    "Dialect",
    "Fault",
    "IgdState",
    "LinkCounters",
    "LinkInfo",
    "NoLinkInfo",
    "Reply",
    "Success",
    "SysfsLinkInfo",
    "UpnpFault",
    "error_description",
    "parse_arguments",
]

log = Logger(namespace="portgate.upnp")

_T = TypeVar("_T")
Outs = list[tuple[str, str | Cdata]]

#: GetListOfPortMappings never returns more entries than this (NewNumberOfPorts 0 = this):
#: one per port of one protocol, so "all" really is all (the table's own limit is lower).
LIST_LIMIT = 65535
#: Longer NewPortMappingDescription values are cut to this many characters.
MAX_DESCRIPTION = 128
#: A string argument longer than this is refused with 605.
MAX_STRING = 1024
UI4_MAX = 0xFFFFFFFF
PORT_LISTING_NS = "urn:schemas-upnp-org:gw:WANIPConnection"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
PORT_LISTING_SCHEMA = (
    "urn:schemas-upnp-org:gw:WANIPConnection http://www.upnp.org/schemas/gw/WANIPConnection-v2.xsd"
)
#: IANA protocol numbers WANIPv6FirewallControl speaks (UDP-Lite 136 is not mapped here).
_PINHOLE_PROTOCOLS = {6: Proto.TCP, 17: Proto.UDP}
_PINHOLE_ANY_PROTOCOL = 65535


# -- errors ------------------------------------------------------------------------------------


class Dialect(enum.Enum):
    """Whose error codes apply: the same Reason reads differently per service and version."""

    IGD1 = "WANIPConnection:1"
    IGD2 = "WANIPConnection:2"
    FIREWALL = "WANIPv6FirewallControl:1"


#: The one translation of gateway refusals to UPnP error codes (protocols.md §3.7, §3.12, §7.2).
UPNP_ERROR_FOR_REASON: Mapping[Dialect, Mapping[Reason, int]] = {
    Dialect.IGD2: {
        Reason.CONFLICT: 718,
        Reason.CONFLICT_FOREIGN: 729,
        Reason.NOT_OWNER: 606,
        Reason.NOT_FOUND: 714,
        Reason.NO_PORTS: 728,
        Reason.POLICY_DENIED: 606,
        Reason.PORT_DENIED: 606,
        Reason.RESERVED_PORT: 729,
        Reason.THIRD_PARTY: 606,
        Reason.BAD_LIFETIME: 402,
        Reason.BAD_REQUEST: 402,
        Reason.NO_EXTERNAL_ADDRESS: 501,
        Reason.QUOTA: 728,
        Reason.TABLE_FULL: 728,
        Reason.NOT_LAN: 606,
        Reason.UNSUPPORTED: 501,
        Reason.BACKEND_FAILED: 501,
    },
    # IGD:1 control points know 718 as "try another port" and have neither 728 nor 729.
    Dialect.IGD1: {
        Reason.CONFLICT: 718,
        Reason.CONFLICT_FOREIGN: 718,
        Reason.NOT_OWNER: 714,
        Reason.NOT_FOUND: 714,
        Reason.NO_PORTS: 501,
        Reason.POLICY_DENIED: 718,
        Reason.PORT_DENIED: 718,
        Reason.RESERVED_PORT: 718,
        Reason.THIRD_PARTY: 606,
        Reason.BAD_LIFETIME: 402,
        Reason.BAD_REQUEST: 402,
        Reason.NO_EXTERNAL_ADDRESS: 501,
        Reason.QUOTA: 501,
        Reason.TABLE_FULL: 501,
        Reason.NOT_LAN: 606,
        Reason.UNSUPPORTED: 501,
        Reason.BACKEND_FAILED: 501,
    },
    Dialect.FIREWALL: {
        Reason.CONFLICT: 606,
        Reason.CONFLICT_FOREIGN: 606,
        Reason.NOT_OWNER: 606,
        Reason.NOT_FOUND: 704,
        Reason.NO_PORTS: 701,
        Reason.POLICY_DENIED: 606,
        Reason.PORT_DENIED: 606,
        Reason.RESERVED_PORT: 606,
        Reason.THIRD_PARTY: 606,
        Reason.BAD_LIFETIME: 402,
        Reason.BAD_REQUEST: 402,
        Reason.NO_EXTERNAL_ADDRESS: 501,
        Reason.QUOTA: 701,
        Reason.TABLE_FULL: 701,
        Reason.NOT_LAN: 606,
        Reason.UNSUPPORTED: 501,
        Reason.BACKEND_FAILED: 501,
    },
}

_GENERIC_ERRORS = {
    401: "Invalid Action",
    402: "Invalid Args",
    404: "Invalid Var",
    501: "Action Failed",
    600: "Argument Value Invalid",
    601: "Argument Value Out of Range",
    602: "Optional Action Not Implemented",
    605: "String Argument Too Long",
    606: "Action not authorized",
}
_SERVICE_ERRORS: Mapping[Service, Mapping[int, str]] = {
    Service.WAN_IP_CONNECTION: {
        703: "InactiveConnectionStateRequired",
        704: "ConnectionSetupFailed",
        705: "ConnectionSetupInProgress",
        706: "ConnectionNotConfigured",
        707: "DisconnectInProgress",
        708: "InvalidLayer2Address",
        709: "InternetAccessDisabled",
        710: "InvalidConnectionType",
        711: "ConnectionAlreadyTerminated",
        713: "SpecifiedArrayIndexInvalid",
        714: "NoSuchEntryInArray",
        715: "WildCardNotPermittedInSrcIP",
        716: "WildCardNotPermittedInExtPort",
        718: "ConflictInMappingEntry",
        724: "SamePortValuesRequired",
        725: "OnlyPermanentLeasesSupported",
        726: "RemoteHostOnlySupportsWildcard",
        727: "ExternalPortOnlySupportsWildcard",
        728: "NoPortMapsAvailable",
        729: "ConflictWithOtherMechanisms",
        730: "PortMappingNotFound",
        731: "ReadOnly",
        732: "WildCardNotPermittedInIntPort",
        733: "InconsistentParameters",
    },
    Service.WAN_IPV6_FIREWALL_CONTROL: {
        701: "PinholeSpaceExhausted",
        702: "FirewallDisabled",
        703: "InboundPinholeNotAllowed",
        704: "NoSuchEntry",
        705: "ProtocolNotSupported",
        706: "InternalPortWildcardingNotAllowed",
        707: "ProtocolWildcardingNotAllowed",
        708: "WildCardNotPermittedInSrcIP",
        709: "NoTrafficReceived",
    },
    Service.LAYER3_FORWARDING: {
        720: "InvalidDeviceUUID",
        721: "InvalidServiceID",
        723: "InvalidConnServiceSelection",
    },
    Service.WAN_COMMON_INTERFACE_CONFIG: {},
}


def error_description(service: Service, code: int) -> str:
    """The standard errorDescription of ``code`` in ``service``."""
    return _SERVICE_ERRORS[service].get(code) or _GENERIC_ERRORS.get(code, "Action Failed")


class UpnpFault(Exception):
    """A handler's refusal with a UPnP error code."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"{code} {detail}".strip())
        self.code = code
        self.detail = detail


# -- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Success:
    """``namespace`` echoes the one the client used (a v1 client gets a v1 response)."""

    namespace: str
    action: str
    outs: tuple[tuple[str, str | Cdata], ...]


@dataclass(frozen=True, slots=True)
class Fault:
    code: int
    description: str


Reply = Success | Fault


# -- arguments (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arguments:
    """In-arguments after type checks: ``int`` for ui2/ui4, ``bool`` for boolean, else str."""

    values: Mapping[str, int | bool | str]

    def number(self, name: str) -> int:
        value = self.values[name]
        assert isinstance(value, int) and not isinstance(value, bool), name
        return value

    def flag(self, name: str) -> bool:
        value = self.values[name]
        assert isinstance(value, bool), name
        return value

    def text(self, name: str) -> str:
        value = self.values[name]
        assert isinstance(value, str), name
        return value


_INT_RANGES = {"ui1": 255, "ui2": 65535, "ui4": UI4_MAX}
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def _parse_value(data_type: str, text: str) -> int | bool | str:
    if data_type in _INT_RANGES:
        digits = text.strip(" \t\r\n")
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 10:
            raise UpnpFault(402, f"expected an unsigned number, got {text[:20]!r}")
        number = int(digits)
        if number > _INT_RANGES[data_type]:
            raise UpnpFault(402, f"{number} is out of range for {data_type}")
        return number
    if data_type == "boolean":
        word = text.strip(" \t\r\n").lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise UpnpFault(402, f"expected a boolean, got {text[:20]!r}")
    if len(text) > MAX_STRING:
        raise UpnpFault(605, f"string of {len(text)} characters")
    return text


def parse_arguments(
    spec: ServiceSpec,
    action: Action,
    version: int,
    raw: Sequence[tuple[str, str | None]],
) -> Arguments:
    """Check the in-arguments against the SCPD: each exactly once, nothing else, each of its
    related variable's data type (402 otherwise; 605 for an overlong string)."""
    wanted = {argument.name: argument for argument in action.inputs}
    seen: dict[str, int | bool | str] = {}
    for name, text in raw:
        argument = wanted.get(name)
        if argument is None:
            raise UpnpFault(402, f"unknown argument {name[:40]!r}")
        if name in seen:
            raise UpnpFault(402, f"argument {name} given twice")
        if text is None:
            raise UpnpFault(402, f"argument {name} is not a simple value")
        variable = spec.variable(argument.variable, version)
        assert variable is not None, argument.variable
        seen[name] = _parse_value(variable.data_type, text)
    missing = [name for name in wanted if name not in seen]
    if missing:
        raise UpnpFault(402, "missing " + ", ".join(missing))
    return Arguments(seen)


def _protocol(text: str) -> Proto:
    word = text.strip().upper()
    if word == "TCP":
        return Proto.TCP
    if word == "UDP":
        return Proto.UDP
    raise UpnpFault(402, f"protocol must be TCP or UDP, got {text[:20]!r}")


_WILDCARDS = ("", "*")


def _remote_filters(text: str) -> tuple[RemoteFilter, ...]:
    """NewRemoteHost: empty (or ``*``, ``0.0.0.0``) is any remote host; else an IPv4 literal.
    DNS names are refused: resolving them is an SSRF liability (protocols.md §3.7)."""
    word = text.strip()
    if word in (*_WILDCARDS, "0.0.0.0"):
        return ()
    try:
        address = IPv4Address(word)
    except ValueError:
        raise UpnpFault(402, "NewRemoteHost must be empty or an IPv4 address") from None
    return (RemoteFilter.host(address),)


def _internal_client(text: str) -> IPv4Address:
    word = text.strip()
    if word in (*_WILDCARDS, "0.0.0.0"):
        raise UpnpFault(715, "NewInternalClient must name a host")
    try:
        return IPv4Address(word)
    except ValueError:
        raise UpnpFault(402, "NewInternalClient must be an IPv4 address") from None


def _ipv6(text: str, wildcard_code: int | None) -> IPv6Address | None:
    """A WANIPv6FirewallControl address: empty (or ``*``) is the wildcard, which is an error
    ``wildcard_code`` where it is not allowed."""
    word = text.strip()
    if word in _WILDCARDS:
        if wildcard_code is not None:
            raise UpnpFault(wildcard_code, "wildcard address not allowed")
        return None
    try:
        return IPv6Address(word)
    except ValueError:
        raise UpnpFault(402, "expected an IPv6 address") from None


def client_address(host: str) -> IPAddress:
    """The caller's address from the transport, IPv4-mapped IPv6 unwrapped, zone dropped."""
    address = ip_address(host.split("%", 1)[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def remote_host_text(mapping: GatewayMapping) -> str:
    if not mapping.filters:
        return ""
    prefix = mapping.filters[0].prefix
    if prefix.prefixlen == prefix.max_prefixlen:
        return str(prefix.network_address)
    return str(prefix)


def encode_port_listing(mappings: Sequence[GatewayMapping], now: float) -> str:
    """The PortMappingList document of GetListOfPortMappings (protocols.md §3.7)."""
    root = etree.Element(
        f"{{{PORT_LISTING_NS}}}PortMappingList", nsmap={"p": PORT_LISTING_NS, "xsi": XSI_NS}
    )
    root.set(f"{{{XSI_NS}}}schemaLocation", PORT_LISTING_SCHEMA)
    for mapping in mappings:
        entry = etree.SubElement(root, f"{{{PORT_LISTING_NS}}}PortMappingEntry")
        remaining = mapping.remaining(now)
        for name, value in (
            ("NewRemoteHost", remote_host_text(mapping)),
            ("NewExternalPort", str(mapping.external.port)),
            ("NewProtocol", mapping.proto.value.upper()),
            ("NewInternalPort", str(mapping.internal.port)),
            ("NewInternalClient", str(mapping.internal.address)),
            ("NewEnabled", "1" if mapping.enabled else "0"),
            ("NewDescription", xml_text(mapping.description, MAX_DESCRIPTION)),
            ("NewLeaseTime", str(min(remaining or 0, UI4_MAX))),
        ):
            etree.SubElement(entry, f"{{{PORT_LISTING_NS}}}{name}").text = value
    return etree.tostring(root, encoding="unicode")


# -- the WAN link ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkCounters:
    bytes_sent: int
    bytes_received: int
    packets_sent: int
    packets_received: int


class LinkInfo(Protocol):
    """What the WAN link can tell beyond the table; None means "not known"."""

    def counters(self) -> LinkCounters | None: ...

    def pinhole_packets(self, uid: int) -> int | None: ...

    def outbound_pinhole_timeout(self, proto: Proto) -> int | None: ...


class NoLinkInfo:
    """A link that tells nothing: the counter actions answer 501."""

    def counters(self) -> LinkCounters | None:
        return None

    def pinhole_packets(self, uid: int) -> int | None:
        return None

    def outbound_pinhole_timeout(self, proto: Proto) -> int | None:
        return None


class SysfsLinkInfo:
    """Counters of the WAN interface from ``/sys/class/net/<if>/statistics`` and conntrack's
    timeouts from ``/proc/sys/net/netfilter`` (what GetOutboundPinholeTimeout reports)."""

    def __init__(
        self, interface: str, sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc")
    ):
        self._statistics = sys_root / "class" / "net" / interface / "statistics"
        self._netfilter = proc_root / "sys" / "net" / "netfilter"

    @staticmethod
    def _read(path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def counters(self) -> LinkCounters | None:
        values = [
            self._read(self._statistics / name)
            for name in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")
        ]
        if any(value is None for value in values):
            return None
        sent, received, packets_sent, packets_received = (int(v or 0) for v in values)
        return LinkCounters(sent, received, packets_sent, packets_received)

    def pinhole_packets(self, uid: int) -> int | None:
        return None

    def outbound_pinhole_timeout(self, proto: Proto) -> int | None:
        name = (
            "nf_conntrack_tcp_timeout_established"
            if proto is Proto.TCP
            else "nf_conntrack_udp_timeout_stream"
        )
        return self._read(self._netfilter / name)


# -- state variables ------------------------------------------------------------------------------

StateListener = Callable[[Service, frozenset[str]], None]


class IgdState:
    """The state variables, kept current from the gateway's events.

    Listeners (GENA) hear ``(service, names of the variables that changed)`` after the change.
    SystemUpdateID moves on every committed change batch of the port-mapping table except pure
    lease refreshes; PortMappingNumberOfEntries comes from the set of port-mapping ids, read
    once at the start and then kept from the committed changes (so a change applied before
    the start and committed after it is not counted twice). Build it after the service has
    started: restored leases publish no event.
    """

    def __init__(
        self, gateway: Gateway, settings: UpnpSettings, *, system_update_id: int = 1
    ) -> None:
        self._gateway = gateway
        self._settings = settings
        self.system_update_id = system_update_id & UI4_MAX
        self._port_maps: set[int] = set()  # ids of the port mappings in the table
        self.connected_since: float | None = (
            gateway.now() if gateway.external_address is not None else None
        )
        self._listeners: list[StateListener] = []
        self._unsubscribe: Callable[[], None] | None = gateway.subscribe(self._on_event)
        self._count()

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._listeners.clear()

    def listen(self, listener: StateListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def stop() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return stop

    # -- values -------------------------------------------------------------------------------

    @property
    def mapping_count(self) -> int:
        return len(self._port_maps)

    @property
    def connected(self) -> bool:
        return self._gateway.external_address is not None

    def uptime(self) -> int:
        if self.connected_since is None or not self.connected:
            return 0
        return max(0, int(self._gateway.now() - self.connected_since)) & UI4_MAX

    def all_values(self, service: Service, view: int) -> dict[str, str]:
        settings = self._settings
        if service is Service.WAN_IP_CONNECTION:
            address = self._gateway.external_address
            return {
                "ConnectionType": "IP_Routed",
                "PossibleConnectionTypes": "IP_Routed",
                "ConnectionStatus": "Connected" if address is not None else "Disconnected",
                "Uptime": str(self.uptime()),
                "LastConnectionError": "ERROR_NONE",
                "RSIPAvailable": "0",
                "NATEnabled": "1",
                "ExternalIPAddress": "" if address is None else str(address),
                "PortMappingNumberOfEntries": str(min(self.mapping_count, 65535)),
                "SystemUpdateID": str(self.system_update_id),
            }
        if service is Service.WAN_COMMON_INTERFACE_CONFIG:
            return {
                "WANAccessType": settings.wan_access_type,
                "Layer1UpstreamMaxBitRate": str(settings.upstream_max_bitrate),
                "Layer1DownstreamMaxBitRate": str(settings.downstream_max_bitrate),
                "PhysicalLinkStatus": "Up" if self.connected else "Down",
            }
        if service is Service.LAYER3_FORWARDING:
            return {"DefaultConnectionService": settings.default_connection_service(view)}
        return {
            "FirewallEnabled": "1",
            "InboundPinholeAllowed": "1" if settings.ipv6 else "0",
        }

    def values(self, service: Service, view: int) -> list[tuple[str, str]]:
        """Every evented variable of ``service`` as a client of ``view`` knows it, in SCPD
        order (the initial event's body)."""
        current = self.all_values(service, view)
        version = service_version(service, view)
        return [(name, current[name]) for name in SPECS[service].evented(version)]

    def query(self, service: Service, name: str, view: int) -> str | None:
        """QueryStateVariable: the value, or None for a variable we do not keep."""
        if SPECS[service].variable(name, service_version(service, view)) is None:
            return None
        return self.all_values(service, view).get(name)

    # -- events -------------------------------------------------------------------------------

    def _notify(self, service: Service, names: set[str]) -> None:
        if not names:
            return
        frozen = frozenset(names)
        for listener in list(self._listeners):
            try:
                listener(service, frozen)
            except Exception:
                log.failure("a state listener failed")

    def _on_event(self, event: GatewayEvent) -> None:
        if isinstance(event, ExternalAddressChanged):
            toggled = (event.old is None) != (event.new is None)
            if event.new is None:
                self.connected_since = None
            elif toggled or self.connected_since is None:
                self.connected_since = self._gateway.now()
            self._notify(
                Service.WAN_IP_CONNECTION,
                {"ExternalIPAddress", "ConnectionStatus"} if toggled else {"ExternalIPAddress"},
            )
            if toggled:
                self._notify(Service.WAN_COMMON_INTERFACE_CONFIG, {"PhysicalLinkStatus"})
        elif isinstance(event, MappingsChanged):
            names: set[str] = set()
            before = len(self._port_maps)
            for change in event.changes:
                if change.mapping.kind is not Kind.PORT_MAP:
                    continue
                if change.before is not None and change.after is None:
                    self._port_maps.discard(change.before.uid)
                elif change.after is not None:
                    self._port_maps.add(change.after.uid)
                if change.kind is not ChangeKind.REFRESHED:
                    names.add("SystemUpdateID")
            if names:
                self.system_update_id = self.system_update_id % UI4_MAX + 1
            if len(self._port_maps) != before:
                names.add("PortMappingNumberOfEntries")
            self._notify(Service.WAN_IP_CONNECTION, names)

    def _count(self) -> None:
        def counted(result: Result) -> None:
            if isinstance(result, Listing):
                self._port_maps.update(mapping.uid for mapping in result.mappings)

        def failed(failure: Failure) -> None:
            log.failure("could not count the port mappings", failure=failure)

        self._gateway.handle(ListMappings()).addCallbacks(counted, failed)


# -- calls ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who calls: the client's source address and the IGD view it was given (User-Agent)."""

    client: IPAddress
    view: int = 2


@dataclass(frozen=True, slots=True)
class Call:
    service: Service
    version: int
    action: Action
    args: Arguments
    context: CallContext

    @property
    def owner(self) -> Owner:
        return Owner(Origin.UPNP, self.context.client)

    @property
    def dialect(self) -> Dialect:
        if self.service is Service.WAN_IPV6_FIREWALL_CONTROL:
            return Dialect.FIREWALL
        if self.service is Service.WAN_IP_CONNECTION and self.version < 2:
            return Dialect.IGD1
        return Dialect.IGD2


Handler = Callable[["ActionDispatcher", Call], Coroutine[Any, Any, Outs]]


@dataclass(frozen=True, slots=True)
class ActionEntry:
    """What runs for one action, and the Reasons whose code differs for this action."""

    handler: Handler
    overrides: Mapping[Reason, int] = field(default_factory=dict)


class ActionDispatcher:
    """Runs control requests against the gateway. ``call`` never fails: every outcome is a
    ``Success`` or a ``Fault`` (unexpected errors are logged and become 501)."""

    def __init__(
        self,
        gateway: Gateway,
        settings: UpnpSettings,
        state: IgdState,
        link: LinkInfo | None = None,
    ) -> None:
        self._gateway = gateway
        self._settings = settings
        self._state = state
        self._link: LinkInfo = link if link is not None else NoLinkInfo()

    def call(self, service: Service, request: SoapRequest, context: CallContext) -> Deferred[Reply]:
        return Deferred.fromCoroutine(self._call(service, request, context))

    async def _call(self, service: Service, request: SoapRequest, context: CallContext) -> Reply:
        try:
            if request.namespace == CONTROL_NS and request.action == "QueryStateVariable":
                value = self._query_state_variable(service, request, context)
                return Success(CONTROL_NS, request.action, (("return", value),))
            call, entry = self._resolve(service, request, context)
        except UpnpFault as fault:
            return Fault(fault.code, error_description(service, fault.code))
        try:
            outs = await entry.handler(self, call)
        except UpnpFault as fault:
            code = fault.code
        except GatewayError as error:
            code = (
                entry.overrides.get(error.reason)
                or UPNP_ERROR_FOR_REASON[call.dialect][error.reason]
            )
            log.debug(
                "upnp {action} from {client} refused ({code}): {why}",
                action=request.action,
                client=context.client,
                code=code,
                why=error.message,
            )
        except Exception:
            log.failure(
                "upnp {action} from {client} failed", action=request.action, client=context.client
            )
            code = 501
        else:
            self._check_outs(call.action, outs)
            return Success(request.namespace, request.action, tuple(outs))
        return Fault(code, error_description(service, code))

    def _resolve(
        self, service: Service, request: SoapRequest, context: CallContext
    ) -> tuple[Call, ActionEntry]:
        parsed = parse_service_type(request.namespace)
        implemented = self._settings.implemented_version(service)
        if parsed is None or parsed[0] is not service or not 1 <= parsed[1] <= implemented:
            raise UpnpFault(401, "the namespace does not name this service")
        version = parsed[1]
        spec = SPECS[service]
        action = spec.action(request.action, version)
        entry = ACTIONS.get((service, request.action))
        if action is None or entry is None:
            if request.action in spec.optional_unimplemented:
                raise UpnpFault(602)
            raise UpnpFault(401)
        args = parse_arguments(spec, action, version, request.arguments)
        return Call(service, version, action, args, context), entry

    @staticmethod
    def _check_outs(action: Action, outs: Outs) -> None:
        expected = [argument.name for argument in action.outputs]
        if [name for name, _ in outs] != expected:
            raise AssertionError(f"{action.name} answered {outs!r}, SCPD says {expected}")

    def _query_state_variable(
        self, service: Service, request: SoapRequest, context: CallContext
    ) -> str:
        if len(request.arguments) != 1 or request.arguments[0][0] != "varName":
            raise UpnpFault(402, "QueryStateVariable takes one varName")
        name = request.arguments[0][1]
        if name is None:
            raise UpnpFault(402)
        value = self._state.query(service, name.strip(), context.view)
        if value is None:
            raise UpnpFault(404)
        return value

    async def _ask(self, request: Request, kind: type[_T]) -> _T:
        result = await self._gateway.handle(request)
        if not isinstance(result, kind):
            raise TypeError(f"{type(request).__name__} answered {type(result).__name__}")
        return result

    # -- WANIPConnection ----------------------------------------------------------------------

    async def set_connection_type(self, call: Call) -> Outs:
        wanted = call.args.text("NewConnectionType").strip()
        if wanted == "IP_Routed":
            return []
        if wanted in CONNECTION_TYPES:
            raise UpnpFault(731, "the connection type is fixed")
        raise UpnpFault(402, "unknown connection type")

    async def get_connection_type_info(self, call: Call) -> Outs:
        return [("NewConnectionType", "IP_Routed"), ("NewPossibleConnectionTypes", "IP_Routed")]

    async def request_connection(self, call: Call) -> Outs:
        if not self._state.connected:
            raise UpnpFault(704, "the WAN has no address")
        return []

    async def force_termination(self, call: Call) -> Outs:
        raise UpnpFault(606, "LAN clients may not drop the WAN connection")

    async def get_status_info(self, call: Call) -> Outs:
        values = self._state.all_values(Service.WAN_IP_CONNECTION, call.context.view)
        return [
            ("NewConnectionStatus", values["ConnectionStatus"]),
            ("NewLastConnectionError", values["LastConnectionError"]),
            ("NewUptime", values["Uptime"]),
        ]

    async def get_nat_rsip_status(self, call: Call) -> Outs:
        return [("NewRSIPAvailable", "0"), ("NewNATEnabled", "1")]

    async def get_external_ip_address(self, call: Call) -> Outs:
        result = await self._ask(GetExternalAddress(), ExternalAddress)
        return [("NewExternalIPAddress", "" if result.address is None else str(result.address))]

    @staticmethod
    def _entry_outs(mapping: GatewayMapping, lifetime: int | None) -> Outs:
        return [
            ("NewInternalPort", str(mapping.internal.port)),
            ("NewInternalClient", str(mapping.internal.address)),
            ("NewEnabled", "1" if mapping.enabled else "0"),
            ("NewPortMappingDescription", xml_text(mapping.description, MAX_DESCRIPTION)),
            ("NewLeaseDuration", str(min(lifetime or 0, UI4_MAX))),
        ]

    async def get_generic_port_mapping_entry(self, call: Call) -> Outs:
        found = await self._ask(GetMappingByIndex(call.args.number("NewPortMappingIndex")), Found)
        mapping = found.mapping
        return [
            ("NewRemoteHost", remote_host_text(mapping)),
            ("NewExternalPort", str(mapping.external.port)),
            ("NewProtocol", mapping.proto.value.upper()),
            *self._entry_outs(mapping, found.lifetime),
        ]

    async def _external_key(self, call: Call) -> MappingKey:
        """The mapping identity of Get/DeletePortMapping (RemoteHost is checked but not part
        of it: one mapping per external port and protocol, protocols.md §3.7)."""
        _remote_filters(call.args.text("NewRemoteHost"))
        proto = _protocol(call.args.text("NewProtocol"))
        port = call.args.number("NewExternalPort")
        if port == 0:
            raise UpnpFault(402, "NewExternalPort must not be 0")
        address = self._gateway.external_address
        if address is not None:
            return MappingKey(proto, Endpoint(address, port))
        listing = await self._ask(ListMappings(proto=proto, start=port, end=port), Listing)
        if not listing.mappings:
            raise GatewayError(Reason.NOT_FOUND, f"no {proto.value} mapping on port {port}")
        return listing.mappings[0].key

    async def get_specific_port_mapping_entry(self, call: Call) -> Outs:
        key = await self._external_key(call)
        found = await self._ask(GetMapping(key), Found)
        return self._entry_outs(found.mapping, found.lifetime)

    def _map_port(self, call: Call, exact: bool) -> MapPort:
        args = call.args
        filters = _remote_filters(args.text("NewRemoteHost"))
        proto = _protocol(args.text("NewProtocol"))
        external_port = args.number("NewExternalPort")
        if exact and external_port == 0:
            raise UpnpFault(716, "NewExternalPort must not be 0")
        internal_port = args.number("NewInternalPort")
        if internal_port == 0:
            raise UpnpFault(732 if call.version >= 2 else 402, "NewInternalPort must not be 0")
        client = _internal_client(args.text("NewInternalClient"))
        return MapPort(
            owner=call.owner,
            proto=proto,
            internal=Endpoint(client, internal_port),
            external_port=external_port,
            lifetime=args.number("NewLeaseDuration"),
            description=args.text("NewPortMappingDescription")[:MAX_DESCRIPTION],
            filters=filters,
            exact=exact,
            enabled=args.flag("NewEnabled"),
            upnp_v1=call.version < 2,
        )

    async def add_port_mapping(self, call: Call) -> Outs:
        await self._ask(self._map_port(call, exact=True), Granted)
        return []

    async def add_any_port_mapping(self, call: Call) -> Outs:
        granted = await self._ask(self._map_port(call, exact=False), Granted)
        return [("NewReservedPort", str(granted.mapping.external.port))]

    async def delete_port_mapping(self, call: Call) -> Outs:
        key = await self._external_key(call)
        await self._ask(UnmapPort(call.owner, key), Removed)
        return []

    def _port_range(self, call: Call) -> tuple[Proto, int, int]:
        start, end = call.args.number("NewStartPort"), call.args.number("NewEndPort")
        proto = _protocol(call.args.text("NewProtocol"))
        if start > end:
            raise UpnpFault(733, "NewStartPort is above NewEndPort")
        return proto, start, end

    async def delete_port_mapping_range(self, call: Call) -> Outs:
        proto, start, end = self._port_range(call)
        try:
            manage = call.args.flag("NewManage")
            await self._ask(UnmapRange(call.owner, proto, start, end, manage), Removed)
        except GatewayError as error:
            if error.reason is not Reason.NOT_FOUND:
                raise
            # Nothing deletable: 606 when mappings exist there (someone else's), else 730.
            listing = await self._ask(
                ListMappings(proto=proto, start=start, end=end, limit=1), Listing
            )
            if listing.mappings:
                raise UpnpFault(606, "none of the mappings in the range is yours") from None
            raise
        return []

    async def get_list_of_port_mappings(self, call: Call) -> Outs:
        proto, start, end = self._port_range(call)
        wanted = call.args.number("NewNumberOfPorts")
        limit = min(wanted, LIST_LIMIT) if wanted else LIST_LIMIT
        # Without NewManage a control point sees only its own mappings (protocols.md §8.9).
        client = None if call.args.flag("NewManage") else call.context.client
        listing = await self._ask(
            ListMappings(proto=proto, start=start, end=end, client=client, limit=limit), Listing
        )
        if not listing.mappings:
            raise GatewayError(Reason.NOT_FOUND, "no mapping in the range")
        return [("NewPortListing", Cdata(encode_port_listing(listing.mappings, listing.now)))]

    # -- WANCommonInterfaceConfig -------------------------------------------------------------

    async def get_common_link_properties(self, call: Call) -> Outs:
        values = self._state.all_values(Service.WAN_COMMON_INTERFACE_CONFIG, call.context.view)
        return [
            ("NewWANAccessType", values["WANAccessType"]),
            ("NewLayer1UpstreamMaxBitRate", values["Layer1UpstreamMaxBitRate"]),
            ("NewLayer1DownstreamMaxBitRate", values["Layer1DownstreamMaxBitRate"]),
            ("NewPhysicalLinkStatus", values["PhysicalLinkStatus"]),
        ]

    def _counters(self) -> LinkCounters:
        counters = self._link.counters()
        if counters is None:
            raise UpnpFault(501, "no counters for the WAN link")
        return counters

    async def get_total_bytes_sent(self, call: Call) -> Outs:
        return [("NewTotalBytesSent", str(self._counters().bytes_sent & UI4_MAX))]

    async def get_total_bytes_received(self, call: Call) -> Outs:
        return [("NewTotalBytesReceived", str(self._counters().bytes_received & UI4_MAX))]

    async def get_total_packets_sent(self, call: Call) -> Outs:
        return [("NewTotalPacketsSent", str(self._counters().packets_sent & UI4_MAX))]

    async def get_total_packets_received(self, call: Call) -> Outs:
        return [("NewTotalPacketsReceived", str(self._counters().packets_received & UI4_MAX))]

    # -- Layer3Forwarding ---------------------------------------------------------------------

    async def get_default_connection_service(self, call: Call) -> Outs:
        value = self._settings.default_connection_service(call.context.view)
        return [("NewDefaultConnectionService", value)]

    async def set_default_connection_service(self, call: Call) -> Outs:
        """A single-WAN gateway accepts only its own connection service (and ignores it)."""
        value = call.args.text("NewDefaultConnectionService").strip()
        device, sep, service_id = value.partition(",")
        if not sep:
            raise UpnpFault(723, "expected <device UDN>:<type>,<serviceId>")
        udn = f"uuid:{self._settings.wanconn_uuid}:"
        if not device.startswith(udn):
            raise UpnpFault(720, "no such device")
        device_kind, _, version = device[len(udn) :].rpartition(":")
        if device_kind != "WANConnectionDevice" or version not in ("1", "2"):
            raise UpnpFault(723, "not a WANConnectionDevice")
        if service_id.strip() != Service.WAN_IP_CONNECTION.service_id:
            raise UpnpFault(721, "no such service")
        return []

    # -- WANIPv6FirewallControl ---------------------------------------------------------------

    async def get_firewall_status(self, call: Call) -> Outs:
        allowed = "1" if self._settings.ipv6 else "0"
        return [("FirewallEnabled", "1"), ("InboundPinholeAllowed", allowed)]

    def _check_pinholes_allowed(self) -> None:
        # 702 FirewallDisabled never applies: our firewall is always on.
        if not self._settings.ipv6:
            raise UpnpFault(703, "inbound pinholes are disabled")

    def _pinhole_target(self, call: Call) -> tuple[Proto, Endpoint, tuple[RemoteFilter, ...]]:
        """The five pinhole arguments, checked in the order of protocols.md §3.12."""
        self._check_pinholes_allowed()
        args = call.args
        remote = _ipv6(args.text("RemoteHost"), None)
        remote_port = args.number("RemotePort")
        internal = _ipv6(args.text("InternalClient"), 708)
        assert internal is not None
        internal_port = args.number("InternalPort")
        if internal_port == 0:
            raise UpnpFault(706, "InternalPort must not be 0")
        number = args.number("Protocol")
        if number == _PINHOLE_ANY_PROTOCOL:
            raise UpnpFault(707, "Protocol must not be the wildcard")
        proto = _PINHOLE_PROTOCOLS.get(number)
        if proto is None:
            raise UpnpFault(705, f"protocol {number} is not supported")
        if internal_port < 1024:
            raise UpnpFault(606, "pinholes to ports below 1024 are not allowed")
        filters: tuple[RemoteFilter, ...] = ()
        if remote is not None or remote_port:
            prefix = ip_network(remote) if remote is not None else IPv6Network("::/0")
            filters = (RemoteFilter(prefix, remote_port),)
        return proto, Endpoint(internal, internal_port), filters

    async def get_outbound_pinhole_timeout(self, call: Call) -> Outs:
        proto, _, _ = self._pinhole_target(call)
        timeout = self._link.outbound_pinhole_timeout(proto)
        if timeout is None:
            raise UpnpFault(501, "the outbound timeout is not known")
        return [("OutboundPinholeTimeout", str(min(timeout, UI4_MAX)))]

    async def add_pinhole(self, call: Call) -> Outs:
        proto, internal, filters = self._pinhole_target(call)
        lifetime = call.args.number("LeaseTime")
        if not 1 <= lifetime <= 86400:
            raise UpnpFault(402, "LeaseTime must be 1-86400")
        granted = await self._ask(
            OpenPinhole(call.owner, proto, internal, lifetime, filters), Granted
        )
        uid = granted.mapping.uid
        if uid > 65535:
            # UniqueID is a ui2; a table id above it cannot be named to the client.
            if granted.created:
                await self._ask(ClosePinhole(call.owner, uid), Removed)
            raise UpnpFault(701, "no pinhole id left")
        return [("UniqueID", str(uid))]

    async def update_pinhole(self, call: Call) -> Outs:
        self._check_pinholes_allowed()
        lifetime = call.args.number("NewLeaseTime")
        if not 1 <= lifetime <= 86400:
            raise UpnpFault(402, "NewLeaseTime must be 1-86400")
        await self._ask(UpdatePinhole(call.owner, call.args.number("UniqueID"), lifetime), Granted)
        return []

    async def delete_pinhole(self, call: Call) -> Outs:
        self._check_pinholes_allowed()
        await self._ask(ClosePinhole(call.owner, call.args.number("UniqueID")), Removed)
        return []

    async def _own_pinhole(self, call: Call) -> GatewayMapping:
        self._check_pinholes_allowed()
        found = await self._ask(GetByUid(call.args.number("UniqueID")), Found)
        mapping = found.mapping
        if mapping.kind is not Kind.PINHOLE:
            raise UpnpFault(704, "no such pinhole")
        client = call.context.client
        if mapping.owner.origin is not Origin.UPNP or client not in (
            mapping.owner.client,
            mapping.internal.address,
        ):
            raise UpnpFault(606, "the pinhole belongs to another client")
        return mapping

    async def get_pinhole_packets(self, call: Call) -> Outs:
        mapping = await self._own_pinhole(call)
        packets = self._link.pinhole_packets(mapping.uid)
        return [("PinholePackets", str((packets or 0) & UI4_MAX))]

    async def check_pinhole_working(self, call: Call) -> Outs:
        mapping = await self._own_pinhole(call)
        if not self._link.pinhole_packets(mapping.uid):
            raise UpnpFault(709, "no traffic seen through the pinhole")
        return [("IsWorking", "1")]


_RANGE = {Reason.NOT_FOUND: 730, Reason.BAD_REQUEST: 733}
_D = ActionDispatcher
_IP = Service.WAN_IP_CONNECTION
_COMMON = Service.WAN_COMMON_INTERFACE_CONFIG
_L3F = Service.LAYER3_FORWARDING
_FW = Service.WAN_IPV6_FIREWALL_CONTROL

#: Every action of every SCPD, and nothing else (a test holds the two together).
ACTIONS: Mapping[tuple[Service, str], ActionEntry] = {
    (_IP, "SetConnectionType"): ActionEntry(_D.set_connection_type),
    (_IP, "GetConnectionTypeInfo"): ActionEntry(_D.get_connection_type_info),
    (_IP, "RequestConnection"): ActionEntry(_D.request_connection),
    (_IP, "ForceTermination"): ActionEntry(_D.force_termination),
    (_IP, "GetStatusInfo"): ActionEntry(_D.get_status_info),
    (_IP, "GetNATRSIPStatus"): ActionEntry(_D.get_nat_rsip_status),
    (_IP, "GetGenericPortMappingEntry"): ActionEntry(
        _D.get_generic_port_mapping_entry, {Reason.NOT_FOUND: 713}
    ),
    (_IP, "GetSpecificPortMappingEntry"): ActionEntry(_D.get_specific_port_mapping_entry),
    (_IP, "AddPortMapping"): ActionEntry(_D.add_port_mapping),
    (_IP, "AddAnyPortMapping"): ActionEntry(_D.add_any_port_mapping),
    (_IP, "DeletePortMapping"): ActionEntry(_D.delete_port_mapping),
    (_IP, "DeletePortMappingRange"): ActionEntry(_D.delete_port_mapping_range, _RANGE),
    (_IP, "GetExternalIPAddress"): ActionEntry(_D.get_external_ip_address),
    (_IP, "GetListOfPortMappings"): ActionEntry(_D.get_list_of_port_mappings, _RANGE),
    (_COMMON, "GetCommonLinkProperties"): ActionEntry(_D.get_common_link_properties),
    (_COMMON, "GetTotalBytesSent"): ActionEntry(_D.get_total_bytes_sent),
    (_COMMON, "GetTotalBytesReceived"): ActionEntry(_D.get_total_bytes_received),
    (_COMMON, "GetTotalPacketsSent"): ActionEntry(_D.get_total_packets_sent),
    (_COMMON, "GetTotalPacketsReceived"): ActionEntry(_D.get_total_packets_received),
    (_L3F, "GetDefaultConnectionService"): ActionEntry(_D.get_default_connection_service),
    (_L3F, "SetDefaultConnectionService"): ActionEntry(_D.set_default_connection_service),
    (_FW, "GetFirewallStatus"): ActionEntry(_D.get_firewall_status),
    (_FW, "GetOutboundPinholeTimeout"): ActionEntry(_D.get_outbound_pinhole_timeout),
    (_FW, "AddPinhole"): ActionEntry(_D.add_pinhole),
    (_FW, "UpdatePinhole"): ActionEntry(_D.update_pinhole),
    (_FW, "DeletePinhole"): ActionEntry(_D.delete_pinhole),
    (_FW, "GetPinholePackets"): ActionEntry(_D.get_pinhole_packets),
    (_FW, "CheckPinholeWorking"): ActionEntry(_D.check_pinhole_working),
}

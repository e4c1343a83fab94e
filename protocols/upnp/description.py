"""The IGD device tree, its SCPDs, and the IGD:1 / IGD:2 view a client gets (protocols.md §2).

Pure: no Twisted, no I/O. The service specifications here (actions, arguments, state
variables) are the single source of truth for both the SCPD documents and the argument parsing
of ``actions``. Documents are built with lxml and rendered once per (view, LAN host) by
``Descriptions``; the LAN host only matters for the default presentationURL.

URL layout: the root description and the SCPDs live at fixed paths (``/rootDesc.xml``, what
SSDP's LOCATION points at); control and event URLs sit under a random per-boot prefix
(protocols.md §8.6), so a web page cannot guess them.
"""

from __future__ import annotations

import enum
import re
import secrets
import uuid as uuid_module
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from typing import Literal

from lxml import etree  # type: ignore[import-untyped, unused-ignore]  # stubs: types-lxml

from protocols.upnp.soap import xml_text

__all__ = [
    "DESCRIPTION_PATH",
    "DEVICE_NS",
    "SERVER",
    "SERVICE_NS",
    "Action",
    "Argument",
    "Descriptions",
    "RenderedView",
    "Service",
    "ServiceSpec",
    "StateVariable",
    "UpnpSettings",
    "UrlLayout",
    "choose_view",
    "device_type",
    "parse_service_type",
    "service_type",
    "services_in_view",
]

DEVICE_NS = "urn:schemas-upnp-org:device-1-0"
SERVICE_NS = "urn:schemas-upnp-org:service-1-0"
DESCRIPTION_PATH = "/rootDesc.xml"
#: SERVER header: OS, UPnP version, product; generic on purpose (protocols.md §8.9).
SERVER = "Linux UPnP/1.1 portgate/0.1"
XML_DECLARATION = b'<?xml version="1.0"?>\n'

_URN_SERVICE = "urn:schemas-upnp-org:service:"
_URN_DEVICE = "urn:schemas-upnp-org:device:"
_MAX_CONFIG_ID = 16777215
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")

View = Literal[1, 2]


# -- services -------------------------------------------------------------------------------


class Service(enum.Enum):
    """The services of our device tree, by their type name without version."""

    LAYER3_FORWARDING = "Layer3Forwarding"
    WAN_COMMON_INTERFACE_CONFIG = "WANCommonInterfaceConfig"
    WAN_IP_CONNECTION = "WANIPConnection"
    WAN_IPV6_FIREWALL_CONTROL = "WANIPv6FirewallControl"

    @property
    def service_id(self) -> str:
        return "urn:upnp-org:serviceId:" + _SERVICE_IDS[self]

    @property
    def short_name(self) -> str:
        """The name used in our URLs (miniupnpd's paths)."""
        return _SHORT_NAMES[self][0]

    @property
    def scpd_path(self) -> str:
        return f"/{_SHORT_NAMES[self][1]}.xml"


_SERVICE_IDS = {
    Service.LAYER3_FORWARDING: "L3Forwarding1",
    Service.WAN_COMMON_INTERFACE_CONFIG: "WANCommonIFC1",
    Service.WAN_IP_CONNECTION: "WANIPConn1",
    Service.WAN_IPV6_FIREWALL_CONTROL: "WANIPv6Firewall1",
}
# (control/event name, SCPD file name)
_SHORT_NAMES = {
    Service.LAYER3_FORWARDING: ("L3F", "L3F"),
    Service.WAN_COMMON_INTERFACE_CONFIG: ("CmnIfCfg", "WANCfg"),
    Service.WAN_IP_CONNECTION: ("IPConn", "WANIPCn"),
    Service.WAN_IPV6_FIREWALL_CONTROL: ("IP6FCtl", "WANIP6FC"),
}


def service_type(service: Service, version: int) -> str:
    return f"{_URN_SERVICE}{service.value}:{version}"


def device_type(name: str, version: int) -> str:
    return f"{_URN_DEVICE}{name}:{version}"


def parse_service_type(text: str) -> tuple[Service, int] | None:
    """``urn:schemas-upnp-org:service:WANIPConnection:2`` -> (WAN_IP_CONNECTION, 2)."""
    if not text.startswith(_URN_SERVICE):
        return None
    name, sep, version = text[len(_URN_SERVICE) :].rpartition(":")
    if not sep or not version.isascii() or not version.isdigit() or len(version) > 3:
        return None
    try:
        service = Service(name)
    except ValueError:
        return None
    number = int(version)
    return (service, number) if number >= 1 else None


def service_version(service: Service, view: int) -> int:
    """The version of ``service`` in an IGD view (only WANIPConnection has a :2)."""
    return view if service is Service.WAN_IP_CONNECTION else 1


def services_in_view(view: int) -> tuple[Service, ...]:
    if view >= 2:
        return tuple(Service)
    return tuple(s for s in Service if s is not Service.WAN_IPV6_FIREWALL_CONTROL)


# -- SCPD specifications ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateVariable:
    """One ``<stateVariable>``. ``since`` is the first service version that has it;
    ``range_since`` the first version whose SCPD declares ``value_range``."""

    name: str
    data_type: str
    send_events: bool = False
    allowed: tuple[str, ...] = ()
    value_range: tuple[int, int] | None = None
    default: str | None = None
    since: int = 1
    range_since: int = 1


@dataclass(frozen=True, slots=True)
class Argument:
    name: str
    direction: Literal["in", "out"]
    variable: str


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    arguments: tuple[Argument, ...] = ()
    since: int = 1

    @property
    def inputs(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if a.direction == "in")

    @property
    def outputs(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if a.direction == "out")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    service: Service
    actions: tuple[Action, ...]
    variables: tuple[StateVariable, ...]
    #: Optional actions of the standard that we do not offer: answered with 602.
    optional_unimplemented: frozenset[str] = frozenset()
    _actions: dict[str, Action] = field(init=False, repr=False, compare=False)
    _variables: dict[str, StateVariable] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_actions", {a.name: a for a in self.actions})
        object.__setattr__(self, "_variables", {v.name: v for v in self.variables})
        for action in self.actions:
            for argument in action.arguments:
                if argument.variable not in self._variables:
                    raise ValueError(f"{action.name}.{argument.name}: no {argument.variable}")

    def action(self, name: str, version: int) -> Action | None:
        found = self._actions.get(name)
        return found if found is not None and found.since <= version else None

    def variable(self, name: str, version: int) -> StateVariable | None:
        found = self._variables.get(name)
        return found if found is not None and found.since <= version else None

    def actions_for(self, version: int) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.since <= version)

    def variables_for(self, version: int) -> tuple[StateVariable, ...]:
        return tuple(v for v in self.variables if v.since <= version)

    def evented(self, version: int) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables_for(version) if v.send_events)


def _in(name: str, variable: str) -> Argument:
    return Argument(name, "in", variable)


def _out(name: str, variable: str) -> Argument:
    return Argument(name, "out", variable)


CONNECTION_STATUSES = (
    "Unconfigured",
    "Connecting",
    "Connected",
    "PendingDisconnect",
    "Disconnecting",
    "Disconnected",
)
CONNECTION_TYPES = ("Unconfigured", "IP_Routed", "IP_Bridged")
LAST_CONNECTION_ERRORS = (
    "ERROR_NONE",
    "ERROR_COMMAND_ABORTED",
    "ERROR_NOT_ENABLED_FOR_INTERNET",
    "ERROR_USER_DISCONNECT",
    "ERROR_ISP_DISCONNECT",
    "ERROR_IDLE_DISCONNECT",
    "ERROR_FORCED_DISCONNECT",
    "ERROR_NO_CARRIER",
    "ERROR_IP_CONFIGURATION",
    "ERROR_UNKNOWN",
)
WAN_ACCESS_TYPES = ("DSL", "POTS", "Cable", "Ethernet")
LINK_STATUSES = ("Up", "Down", "Initializing", "Unavailable")

_MAPPING_ENTRY_OUTS = (
    _out("NewInternalPort", "InternalPort"),
    _out("NewInternalClient", "InternalClient"),
    _out("NewEnabled", "PortMappingEnabled"),
    _out("NewPortMappingDescription", "PortMappingDescription"),
    _out("NewLeaseDuration", "PortMappingLeaseDuration"),
)
_MAPPING_KEY_INS = (
    _in("NewRemoteHost", "RemoteHost"),
    _in("NewExternalPort", "ExternalPort"),
    _in("NewProtocol", "PortMappingProtocol"),
)
_ADD_INS = (
    *_MAPPING_KEY_INS,
    _in("NewInternalPort", "InternalPort"),
    _in("NewInternalClient", "InternalClient"),
    _in("NewEnabled", "PortMappingEnabled"),
    _in("NewPortMappingDescription", "PortMappingDescription"),
    _in("NewLeaseDuration", "PortMappingLeaseDuration"),
)

WAN_IP_CONNECTION = ServiceSpec(
    Service.WAN_IP_CONNECTION,
    actions=(
        Action("SetConnectionType", (_in("NewConnectionType", "ConnectionType"),)),
        Action(
            "GetConnectionTypeInfo",
            (
                _out("NewConnectionType", "ConnectionType"),
                _out("NewPossibleConnectionTypes", "PossibleConnectionTypes"),
            ),
        ),
        Action("RequestConnection"),
        Action("ForceTermination"),
        Action(
            "GetStatusInfo",
            (
                _out("NewConnectionStatus", "ConnectionStatus"),
                _out("NewLastConnectionError", "LastConnectionError"),
                _out("NewUptime", "Uptime"),
            ),
        ),
        Action(
            "GetNATRSIPStatus",
            (_out("NewRSIPAvailable", "RSIPAvailable"), _out("NewNATEnabled", "NATEnabled")),
        ),
        Action(
            "GetGenericPortMappingEntry",
            (
                _in("NewPortMappingIndex", "PortMappingNumberOfEntries"),
                _out("NewRemoteHost", "RemoteHost"),
                _out("NewExternalPort", "ExternalPort"),
                _out("NewProtocol", "PortMappingProtocol"),
                *_MAPPING_ENTRY_OUTS,
            ),
        ),
        Action("GetSpecificPortMappingEntry", (*_MAPPING_KEY_INS, *_MAPPING_ENTRY_OUTS)),
        Action("AddPortMapping", _ADD_INS),
        Action("AddAnyPortMapping", (*_ADD_INS, _out("NewReservedPort", "ExternalPort")), since=2),
        Action("DeletePortMapping", _MAPPING_KEY_INS),
        Action(
            "DeletePortMappingRange",
            (
                _in("NewStartPort", "ExternalPort"),
                _in("NewEndPort", "ExternalPort"),
                _in("NewProtocol", "PortMappingProtocol"),
                _in("NewManage", "A_ARG_TYPE_Manage"),
            ),
            since=2,
        ),
        Action("GetExternalIPAddress", (_out("NewExternalIPAddress", "ExternalIPAddress"),)),
        Action(
            "GetListOfPortMappings",
            (
                _in("NewStartPort", "ExternalPort"),
                _in("NewEndPort", "ExternalPort"),
                _in("NewProtocol", "PortMappingProtocol"),
                _in("NewManage", "A_ARG_TYPE_Manage"),
                _in("NewNumberOfPorts", "PortMappingNumberOfEntries"),
                _out("NewPortListing", "A_ARG_TYPE_PortListing"),
            ),
            since=2,
        ),
    ),
    variables=(
        StateVariable("ConnectionType", "string", default="IP_Routed"),
        StateVariable("PossibleConnectionTypes", "string", True, CONNECTION_TYPES),
        StateVariable("ConnectionStatus", "string", True, CONNECTION_STATUSES),
        StateVariable("Uptime", "ui4"),
        StateVariable("LastConnectionError", "string", allowed=LAST_CONNECTION_ERRORS),
        StateVariable("RSIPAvailable", "boolean"),
        StateVariable("NATEnabled", "boolean"),
        StateVariable("ExternalIPAddress", "string", True),
        StateVariable("PortMappingNumberOfEntries", "ui2", True),
        StateVariable("PortMappingEnabled", "boolean"),
        StateVariable("PortMappingLeaseDuration", "ui4", value_range=(0, 604800), range_since=2),
        StateVariable("RemoteHost", "string"),
        StateVariable("ExternalPort", "ui2"),
        StateVariable("InternalPort", "ui2", value_range=(1, 65535), range_since=2),
        StateVariable("PortMappingProtocol", "string", allowed=("TCP", "UDP")),
        StateVariable("InternalClient", "string"),
        StateVariable("PortMappingDescription", "string"),
        StateVariable("SystemUpdateID", "ui4", True, since=2),
        StateVariable("A_ARG_TYPE_Manage", "boolean", since=2),
        StateVariable("A_ARG_TYPE_PortListing", "string", since=2),
    ),
    optional_unimplemented=frozenset(
        {
            "RequestTermination",
            "SetAutoDisconnectTime",
            "SetIdleDisconnectTime",
            "SetWarnDisconnectDelay",
            "GetAutoDisconnectTime",
            "GetIdleDisconnectTime",
            "GetWarnDisconnectDelay",
        }
    ),
)

WAN_COMMON_INTERFACE_CONFIG = ServiceSpec(
    Service.WAN_COMMON_INTERFACE_CONFIG,
    actions=(
        Action(
            "GetCommonLinkProperties",
            (
                _out("NewWANAccessType", "WANAccessType"),
                _out("NewLayer1UpstreamMaxBitRate", "Layer1UpstreamMaxBitRate"),
                _out("NewLayer1DownstreamMaxBitRate", "Layer1DownstreamMaxBitRate"),
                _out("NewPhysicalLinkStatus", "PhysicalLinkStatus"),
            ),
        ),
        Action("GetTotalBytesSent", (_out("NewTotalBytesSent", "TotalBytesSent"),)),
        Action("GetTotalBytesReceived", (_out("NewTotalBytesReceived", "TotalBytesReceived"),)),
        Action("GetTotalPacketsSent", (_out("NewTotalPacketsSent", "TotalPacketsSent"),)),
        Action(
            "GetTotalPacketsReceived",
            (_out("NewTotalPacketsReceived", "TotalPacketsReceived"),),
        ),
    ),
    variables=(
        StateVariable("WANAccessType", "string", allowed=WAN_ACCESS_TYPES),
        StateVariable("Layer1UpstreamMaxBitRate", "ui4"),
        StateVariable("Layer1DownstreamMaxBitRate", "ui4"),
        StateVariable("PhysicalLinkStatus", "string", True, LINK_STATUSES),
        StateVariable("TotalBytesSent", "ui4"),
        StateVariable("TotalBytesReceived", "ui4"),
        StateVariable("TotalPacketsSent", "ui4"),
        StateVariable("TotalPacketsReceived", "ui4"),
    ),
    optional_unimplemented=frozenset(
        {
            "GetEnabledForInternet",
            "SetEnabledForInternet",
            "GetWANAccessProvider",
            "GetMaximumActiveConnections",
            "GetActiveConnection",
        }
    ),
)

LAYER3_FORWARDING = ServiceSpec(
    Service.LAYER3_FORWARDING,
    actions=(
        Action(
            "SetDefaultConnectionService",
            (_in("NewDefaultConnectionService", "DefaultConnectionService"),),
        ),
        Action(
            "GetDefaultConnectionService",
            (_out("NewDefaultConnectionService", "DefaultConnectionService"),),
        ),
    ),
    variables=(StateVariable("DefaultConnectionService", "string", True),),
)

_PINHOLE_INS = (
    _in("RemoteHost", "A_ARG_TYPE_IPv6Address"),
    _in("RemotePort", "A_ARG_TYPE_Port"),
    _in("InternalClient", "A_ARG_TYPE_IPv6Address"),
    _in("InternalPort", "A_ARG_TYPE_Port"),
    _in("Protocol", "A_ARG_TYPE_Protocol"),
)
_UNIQUE_ID = _in("UniqueID", "A_ARG_TYPE_UniqueID")

WAN_IPV6_FIREWALL_CONTROL = ServiceSpec(
    Service.WAN_IPV6_FIREWALL_CONTROL,
    actions=(
        Action(
            "GetFirewallStatus",
            (
                _out("FirewallEnabled", "FirewallEnabled"),
                _out("InboundPinholeAllowed", "InboundPinholeAllowed"),
            ),
        ),
        Action(
            "GetOutboundPinholeTimeout",
            (
                *_PINHOLE_INS,
                _out("OutboundPinholeTimeout", "A_ARG_TYPE_OutboundPinholeTimeout"),
            ),
        ),
        Action(
            "AddPinhole",
            (
                *_PINHOLE_INS,
                _in("LeaseTime", "A_ARG_TYPE_LeaseTime"),
                _out("UniqueID", "A_ARG_TYPE_UniqueID"),
            ),
        ),
        Action("UpdatePinhole", (_UNIQUE_ID, _in("NewLeaseTime", "A_ARG_TYPE_LeaseTime"))),
        Action("DeletePinhole", (_UNIQUE_ID,)),
        Action(
            "GetPinholePackets",
            (_UNIQUE_ID, _out("PinholePackets", "A_ARG_TYPE_PinholePackets")),
        ),
        Action("CheckPinholeWorking", (_UNIQUE_ID, _out("IsWorking", "A_ARG_TYPE_Boolean"))),
    ),
    variables=(
        StateVariable("FirewallEnabled", "boolean", True),
        StateVariable("InboundPinholeAllowed", "boolean", True),
        StateVariable("A_ARG_TYPE_OutboundPinholeTimeout", "ui4"),
        StateVariable("A_ARG_TYPE_IPv6Address", "string"),
        StateVariable("A_ARG_TYPE_Port", "ui2"),
        StateVariable("A_ARG_TYPE_Protocol", "ui2"),
        StateVariable("A_ARG_TYPE_LeaseTime", "ui4", value_range=(1, 86400)),
        StateVariable("A_ARG_TYPE_UniqueID", "ui2"),
        StateVariable("A_ARG_TYPE_PinholePackets", "ui4"),
        StateVariable("A_ARG_TYPE_Boolean", "boolean"),
    ),
)

SPECS: Mapping[Service, ServiceSpec] = {
    spec.service: spec
    for spec in (
        LAYER3_FORWARDING,
        WAN_COMMON_INTERFACE_CONFIG,
        WAN_IP_CONNECTION,
        WAN_IPV6_FIREWALL_CONTROL,
    )
}


# -- settings, URLs, views ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpnpSettings:
    """What the daemon passes in (from ``UpnpConfig`` and the host).

    ``uuid`` is the bare UUID of the root device (stable across reboots; the daemon derives
    one per host when the config has none); the WANDevice and WANConnectionDevice UUIDs are
    derived from it. ``igd_version`` 1 serves IGD:1 to everyone; 2 serves IGD:2 except to
    clients whose User-Agent contains one of ``igd1_user_agents``. ``ipv6`` allows inbound
    pinholes (WANIPv6FirewallControl). ``presentation_url`` None: ``http://<LAN address>/``.
    ``http_port`` is where ``UpnpFrontEnd.listen`` listens by default (0: any free port).
    """

    uuid: str
    friendly_name: str = "portgate router"
    igd_version: Literal[1, 2] = 2
    igd1_user_agents: tuple[str, ...] = ("Microsoft", "FDSSDP", "Xbox")
    ipv6: bool = True
    presentation_url: str | None = None
    server: str = SERVER
    manufacturer: str = "portgate"
    model_name: str = "portgate"
    model_number: str = "0.1"
    model_description: str = "portgate port-mapping gateway"
    wan_access_type: str = "Ethernet"
    upstream_max_bitrate: int = 0
    downstream_max_bitrate: int = 0
    http_port: int = 0

    def __post_init__(self) -> None:
        try:
            parsed = uuid_module.UUID(self.uuid)
        except ValueError:
            raise ValueError(f"uuid: expected a UUID, got {self.uuid!r}") from None
        object.__setattr__(self, "uuid", str(parsed))
        if self.igd_version not in (1, 2):
            raise ValueError(f"igd_version: expected 1 or 2, got {self.igd_version!r}")
        for name in ("friendly_name", "manufacturer", "model_name", "model_number"):
            value = getattr(self, name)
            if not value or len(value) > 64 or xml_text(value) != value:
                raise ValueError(f"{name}: expected 1-64 printable characters, got {value!r}")
        if any(not ua for ua in self.igd1_user_agents):
            raise ValueError("igd1_user_agents: empty strings would match every client")
        if self.wan_access_type not in WAN_ACCESS_TYPES:
            raise ValueError(
                f"wan_access_type: expected one of {', '.join(WAN_ACCESS_TYPES)}, "
                f"got {self.wan_access_type!r}"
            )
        for name in ("upstream_max_bitrate", "downstream_max_bitrate"):
            if not 0 <= getattr(self, name) <= 0xFFFFFFFF:
                raise ValueError(f"{name}: expected 0..4294967295")
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port: expected 0..65535, got {self.http_port}")
        if any(ch in self.server for ch in "\r\n") or not self.server.isascii():
            raise ValueError("server: expected one line of ASCII")

    @property
    def wan_uuid(self) -> str:
        """The WANDevice's bare UUID (stable: derived from ``uuid``)."""
        return str(uuid_module.uuid5(uuid_module.UUID(self.uuid), "WANDevice"))

    @property
    def wanconn_uuid(self) -> str:
        """The WANConnectionDevice's bare UUID (stable: derived from ``uuid``)."""
        return str(uuid_module.uuid5(uuid_module.UUID(self.uuid), "WANConnectionDevice"))

    def implemented_version(self, service: Service) -> int:
        """The highest version of ``service`` we answer control requests for; 0: absent."""
        if service is Service.WAN_IPV6_FIREWALL_CONTROL and self.igd_version < 2:
            return 0
        return service_version(service, self.igd_version)

    def default_connection_service(self, view: int) -> str:
        """Layer3Forwarding's DefaultConnectionService (protocols.md §3.11)."""
        return (
            f"uuid:{self.wanconn_uuid}:WANConnectionDevice:{view},"
            f"{Service.WAN_IP_CONNECTION.service_id}"
        )


def choose_view(settings: UpnpSettings, user_agent: str | None) -> View:
    """IGD:1 for a forced IGD:1 gateway and for clients that break on IGD:2 (§2.4)."""
    if settings.igd_version == 1:
        return 1
    if user_agent and any(needle in user_agent for needle in settings.igd1_user_agents):
        return 1
    return 2


@dataclass(frozen=True, slots=True)
class UrlLayout:
    """Where each document and endpoint lives. ``prefix`` is random per boot (§8.6)."""

    prefix: str

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"prefix: expected 8-64 URL-safe characters, got {self.prefix!r}")

    @classmethod
    def random(cls) -> UrlLayout:
        return cls(secrets.token_hex(12))

    @property
    def description_path(self) -> str:
        return DESCRIPTION_PATH

    def control_path(self, service: Service) -> str:
        return f"/{self.prefix}/ctl/{service.short_name}"

    def event_path(self, service: Service) -> str:
        return f"/{self.prefix}/evt/{service.short_name}"

    def control_paths(self) -> dict[str, Service]:
        return {self.control_path(s): s for s in Service}

    def event_paths(self) -> dict[str, Service]:
        return {self.event_path(s): s for s in Service}

    def scpd_paths(self) -> dict[str, Service]:
        return {s.scpd_path: s for s in Service}


# -- rendering ------------------------------------------------------------------------------------


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    namespace = etree.QName(parent).namespace
    child = etree.SubElement(parent, f"{{{namespace}}}{tag}" if namespace else tag)
    if text is not None:
        child.text = xml_text(text)
    return child


def _serialize(root: etree._Element) -> bytes:
    return XML_DECLARATION + etree.tostring(
        root, encoding="utf-8", xml_declaration=False, pretty_print=True
    )


def render_scpd(spec: ServiceSpec, version: int) -> bytes:
    root = etree.Element(f"{{{SERVICE_NS}}}scpd", nsmap={None: SERVICE_NS})
    spec_version = _sub(root, "specVersion")
    _sub(spec_version, "major", "1")
    _sub(spec_version, "minor", "1")
    action_list = _sub(root, "actionList")
    for action in spec.actions_for(version):
        element = _sub(action_list, "action")
        _sub(element, "name", action.name)
        if action.arguments:
            arguments = _sub(element, "argumentList")
            for argument in action.inputs + action.outputs:
                item = _sub(arguments, "argument")
                _sub(item, "name", argument.name)
                _sub(item, "direction", argument.direction)
                _sub(item, "relatedStateVariable", argument.variable)
    table = _sub(root, "serviceStateTable")
    for variable in spec.variables_for(version):
        element = _sub(table, "stateVariable")
        element.set("sendEvents", "yes" if variable.send_events else "no")
        _sub(element, "name", variable.name)
        _sub(element, "dataType", variable.data_type)
        if variable.default is not None:
            _sub(element, "defaultValue", variable.default)
        if variable.allowed:
            allowed = _sub(element, "allowedValueList")
            for value in variable.allowed:
                _sub(allowed, "allowedValue", value)
        if variable.value_range is not None and variable.range_since <= version:
            value_range = _sub(element, "allowedValueRange")
            _sub(value_range, "minimum", str(variable.value_range[0]))
            _sub(value_range, "maximum", str(variable.value_range[1]))
    return _serialize(root)


def _device(
    parent: etree._Element,
    settings: UpnpSettings,
    kind: str,
    version: int,
    friendly_name: str,
    udn: str,
) -> etree._Element:
    device = _sub(parent, "device")
    _sub(device, "deviceType", device_type(kind, version))
    _sub(device, "friendlyName", friendly_name)
    _sub(device, "manufacturer", settings.manufacturer)
    _sub(device, "modelDescription", settings.model_description)
    _sub(device, "modelName", settings.model_name)
    _sub(device, "modelNumber", settings.model_number)
    _sub(device, "UDN", f"uuid:{udn}")
    return device


def _services(
    device: etree._Element, layout: UrlLayout, services: tuple[Service, ...], view: int
) -> None:
    service_list = _sub(device, "serviceList")
    for service in services:
        element = _sub(service_list, "service")
        _sub(element, "serviceType", service_type(service, service_version(service, view)))
        _sub(element, "serviceId", service.service_id)
        _sub(element, "SCPDURL", service.scpd_path)
        _sub(element, "controlURL", layout.control_path(service))
        _sub(element, "eventSubURL", layout.event_path(service))


def render_description(
    settings: UpnpSettings, layout: UrlLayout, view: int, config_id: int, presentation_url: str
) -> bytes:
    """The root device description of protocols.md §2.3 (view 2) or §2.4 (view 1)."""
    root = etree.Element(f"{{{DEVICE_NS}}}root", nsmap={None: DEVICE_NS})
    root.set("configId", str(config_id))
    spec_version = _sub(root, "specVersion")
    _sub(spec_version, "major", "1")
    _sub(spec_version, "minor", "1")
    igd = _device(
        root, settings, "InternetGatewayDevice", view, settings.friendly_name, settings.uuid
    )
    _services(igd, layout, (Service.LAYER3_FORWARDING,), view)
    wan = _device(
        _sub(igd, "deviceList"), settings, "WANDevice", view, "WANDevice", settings.wan_uuid
    )
    _services(wan, layout, (Service.WAN_COMMON_INTERFACE_CONFIG,), view)
    connection = _device(
        _sub(wan, "deviceList"),
        settings,
        "WANConnectionDevice",
        view,
        "WANConnectionDevice",
        settings.wanconn_uuid,
    )
    connection_services: tuple[Service, ...] = (Service.WAN_IP_CONNECTION,)
    if view >= 2:
        connection_services += (Service.WAN_IPV6_FIREWALL_CONTROL,)
    _services(connection, layout, connection_services, view)
    _sub(igd, "presentationURL", presentation_url)
    return _serialize(root)


@dataclass(frozen=True, slots=True)
class RenderedView:
    """Every document of one view, ready to send: the root description and the SCPDs by
    path (only the services the view has)."""

    view: int
    description: bytes
    scpds: Mapping[str, bytes]


def host_literal(address: str) -> str:
    """``192.168.1.1`` or ``[fd00::1]`` (zone dropped) for use in a URL."""
    bare = address.split("%", 1)[0]
    try:
        parsed = ip_address(bare)
    except ValueError:
        return bare
    return f"[{parsed}]" if isinstance(parsed, IPv6Address) else str(parsed)


class Descriptions:
    """Renders each view once (per LAN host, for the default presentationURL) and keeps it.

    ``config_id`` (CONFIGID.UPNP.ORG and the ``configId`` attribute) is a 24-bit digest of the
    documents with the per-boot prefix and the host left out, so it changes exactly when the
    settings change what clients see."""

    def __init__(self, settings: UpnpSettings, layout: UrlLayout) -> None:
        self.settings = settings
        self.layout = layout
        self.config_id = self._digest()
        self._cache: dict[tuple[int, str], RenderedView] = {}

    def _digest(self) -> int:
        canonical = UrlLayout("configid")
        crc = 0
        for view in (1, 2):
            crc = zlib.crc32(render_description(self.settings, canonical, view, 0, ""), crc)
            for service in services_in_view(view):
                scpd = render_scpd(SPECS[service], service_version(service, view))
                crc = zlib.crc32(scpd, crc)
        return crc & _MAX_CONFIG_ID

    def presentation_url(self, host: str) -> str:
        if self.settings.presentation_url is not None:
            return self.settings.presentation_url
        return f"http://{host_literal(host)}/"

    def view(self, view: int, host: str) -> RenderedView:
        """The documents of ``view`` as served on the LAN address ``host``."""
        key = (view, host if self.settings.presentation_url is None else "")
        rendered = self._cache.get(key)
        if rendered is None:
            if len(self._cache) > 64:  # hosts are our own addresses; this never fills
                self._cache.clear()
            rendered = RenderedView(
                view,
                render_description(
                    self.settings, self.layout, view, self.config_id, self.presentation_url(host)
                ),
                {
                    service.scpd_path: render_scpd(SPECS[service], service_version(service, view))
                    for service in services_in_view(view)
                },
            )
            self._cache[key] = rendered
        return rendered

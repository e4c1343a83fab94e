"""The configuration: YAML text to a frozen, validated tree of msgspec Structs.

Values arrive as real Python types (``IPv4Network``, ``PortRange``, ``int``, ...), so the rest of
the daemon reads them directly. Every problem is reported as one ``ConfigError`` whose text is a
single line naming the file and the key path, e.g.::

    etc/x.yaml: policy.rules[0].internal: expected an IPv4/IPv6 address or prefix or "lan",
    got 'foo'

(wrapped here; the real message has no line break).

Single-field limits are ``msgspec.Meta`` constraints; checks across fields live in
``__post_init__`` and raise ``ValueError("<key path>: <what was expected>")`` relative to the
struct, which msgspec reports with the struct's own path.

msgspec accepts neither a union of two custom types (``IPv4Network | IPv6Network``) nor a custom
parser for a dataclass (``PortRange``), so those fields are annotated with private aliases: the
real types for the type checker, and at run time abstract "marker" classes of which the real
types are registered virtual subclasses. msgspec hands such fields to ``_dec_hook`` and checks
the result with ``isinstance``, which the registration satisfies.
"""

from __future__ import annotations

import abc
import functools
import os
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import msgspec
import msgspec.inspect as mi
import yaml

__all__ = [
    "BackendConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "LanConfig",
    "LifetimeConfig",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "NatPmpConfig",
    "PcpConfig",
    "PolicyConfig",
    "PortRange",
    "Rule",
    "StateConfig",
    "StunConfig",
    "UpnpConfig",
    "WanConfig",
    "dump_config",
    "load_config",
    "parse_config",
]


class ConfigError(Exception):
    """A configuration that cannot be used; ``str(error)`` is one line naming file and key."""


# -- port ranges ------------------------------------------------------------------------------

_PORT_RANGE_RE = re.compile(r"([0-9]+)(?:\s*-\s*([0-9]+))?")
_PORTS_EXPECTED = "a port or a port range like 1024-65535"


@dataclass(frozen=True, order=True)
class PortRange:
    """Ports ``low`` to ``high``, both included, within 0-65535."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for port in (self.low, self.high):
            if type(port) is not int:
                raise TypeError(f"port range bounds must be integers, got {port!r}")
        if not 0 <= self.low <= self.high <= 65535:
            raise ValueError(
                f"invalid port range {self.low}-{self.high}: expected 0 <= low <= high <= 65535"
            )

    @classmethod
    def parse(cls, value: str | int) -> PortRange:
        """``"1024-65535"``, ``"8080"`` or ``8080``; ``ValueError`` names what was expected."""
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"expected {_PORTS_EXPECTED}, got {_show(value)}")
        if isinstance(value, int):
            low = high = value
        else:
            match = _PORT_RANGE_RE.fullmatch(value.strip())
            if match is None:
                raise ValueError(f"expected {_PORTS_EXPECTED}, got {_show(value)}")
            low = int(match[1])
            high = low if match[2] is None else int(match[2])
        if not (0 <= low <= 65535 and 0 <= high <= 65535):
            raise ValueError(f"expected {_PORTS_EXPECTED} within 0-65535, got {_show(value)}")
        if low > high:
            raise ValueError(f"expected {_PORTS_EXPECTED} with low <= high, got {_show(value)}")
        return cls(low, high)

    def __contains__(self, port: int) -> bool:
        return self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


# -- field types msgspec cannot express directly (see the module docstring) --------------------


class _NetworkMarker(abc.ABC):  # noqa: B024 (only virtual subclasses)
    """Run-time stand-in for ``IPv4Network | IPv6Network`` in annotations."""


class _NetworkOrLanMarker(abc.ABC):  # noqa: B024 (only virtual subclasses)
    """Run-time stand-in for ``IPv4Network | IPv6Network | None`` (None: "lan")."""


class _PortRangeMarker(abc.ABC):  # noqa: B024 (only virtual subclasses)
    """Run-time stand-in for ``PortRange``, parsed from text instead of a mapping."""


_NetworkMarker.register(IPv4Network)
_NetworkMarker.register(IPv6Network)
_NetworkOrLanMarker.register(IPv4Network)
_NetworkOrLanMarker.register(IPv6Network)
_NetworkOrLanMarker.register(type(None))
_PortRangeMarker.register(PortRange)

if TYPE_CHECKING:
    _Network: TypeAlias = IPv4Network | IPv6Network
    _NetworkOrLan: TypeAlias = IPv4Network | IPv6Network | None
    _Ports: TypeAlias = PortRange
else:
    _Network = _NetworkMarker
    _NetworkOrLan = _NetworkOrLanMarker
    _Ports = _PortRangeMarker

_NETWORK_EXPECTED = "an IPv4/IPv6 address or prefix"
_NETWORK_OR_LAN_EXPECTED = 'an IPv4/IPv6 address or prefix or "lan"'
_IPV4_EXPECTED = "an IPv4 address"


def _decode_network(value: object, expected: str = _NETWORK_EXPECTED) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected {expected}, got {_show(value)}")
    try:
        return ip_network(value)
    except ValueError:
        pass
    try:
        loose = ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"expected {expected}, got {_show(value)}") from None
    raise ValueError(
        f"expected {expected}, got {_show(value)} (host bits set; the prefix is {loose})"
    )


def _decode_network_or_lan(value: object) -> IPv4Network | IPv6Network | None:
    if value == "lan":
        return None
    return _decode_network(value, _NETWORK_OR_LAN_EXPECTED)


def _decode_ipv4_address(value: object) -> IPv4Address:
    if isinstance(value, str):
        try:
            return IPv4Address(value)
        except ValueError:
            pass
    raise ValueError(f"expected {_IPV4_EXPECTED}, got {_show(value)}")


def _decode_port_range(value: object) -> PortRange:
    if isinstance(value, (str, int)):
        return PortRange.parse(value)
    raise ValueError(f"expected {_PORTS_EXPECTED}, got {_show(value)}")


_DECODERS: dict[type, Callable[[object], object]] = {
    _NetworkMarker: _decode_network,
    _NetworkOrLanMarker: _decode_network_or_lan,
    _PortRangeMarker: _decode_port_range,
    IPv4Address: _decode_ipv4_address,
}

_CUSTOM_EXPECTED: dict[type, str] = {
    _NetworkMarker: _NETWORK_EXPECTED,
    _NetworkOrLanMarker: _NETWORK_OR_LAN_EXPECTED,
    _PortRangeMarker: _PORTS_EXPECTED,
    IPv4Address: _IPV4_EXPECTED,
}


def _dec_hook(type_: type, value: Any) -> Any:
    decoder = _DECODERS.get(type_)
    if decoder is None:
        # msgspec turns this into a ValidationError naming the key path
        raise TypeError(f"no decoder for {type_!r}")
    return decoder(value)


# -- constrained scalars ----------------------------------------------------------------------

#: What the kernel accepts as a name (dev_valid_name), restricted to printable ASCII.
_IFNAME = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(?!\.\.?$)[!-.0-9;-~]{1,15}$",
        description="a network interface name (1-15 characters, no '/', ':' or spaces)",
    ),
]
_LIFETIME = Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)]
_COUNT = Annotated[int, msgspec.Meta(ge=1)]
_UUID = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="a UUID like 2fac1234-31f8-11b4-a222-08002b34c003",
    ),
]
_PATH = Annotated[str, msgspec.Meta(min_length=1)]
#: sun_path holds 108 bytes including the terminating NUL.
_SOCKET_PATH = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=107,
        description="a socket path of 1-107 characters (the AF_UNIX limit)",
    ),
]


# -- the tree ---------------------------------------------------------------------------------


#: The port STUN servers listen on (RFC 8489 §18.5), when ``wan.stun.server`` names none.
STUN_PORT = 3478
_STUN_EXPECTED = (
    'HOST or HOST:PORT with an IPv4 address or a host name, like "stun.example.net" or '
    '"198.51.100.2:3478"'
)
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
)


def parse_stun_server(text: str) -> tuple[str, int]:
    """``"stun.example.net"``, ``"198.51.100.2:3478"`` as (host, port), the port 3478 when
    none is given; ``ValueError`` says why not. IPv6 servers are refused: the question asked
    is what the WAN's IPv4 address looks like from outside."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(STUN_PORT)
    if host.startswith("[") or ":" in host:
        raise ValueError(
            f"expected {_STUN_EXPECTED}, got {_show(text)}: an IPv6 server cannot tell what "
            "the WAN's IPv4 address looks like from outside"
        )
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected {_STUN_EXPECTED} (port 1-65535), got {_show(text)}")
    try:
        IPv4Address(host)
    except ValueError:
        last_label = host.rstrip(".").rsplit(".", 1)[-1]
        if _HOSTNAME_RE.fullmatch(host) is None or last_label.isdigit():
            raise ValueError(f"expected {_STUN_EXPECTED}, got {_show(text)}") from None
    return host, int(port_text)


class StunConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A STUN server, asked what address the Internet sees when the WAN address is private."""

    server: Annotated[str, msgspec.Meta(min_length=1)]
    #: Seconds between checks (and between retries after the server did not answer).
    interval: Annotated[int, msgspec.Meta(ge=30, le=86400)] = 300

    def __post_init__(self) -> None:
        try:
            parse_stun_server(self.server)
        except ValueError as error:
            raise ValueError(f"server: {error}") from None

    @property
    def host(self) -> str:
        return parse_stun_server(self.server)[0]

    @property
    def port(self) -> int:
        return parse_stun_server(self.server)[1]

    @property
    def address_text(self) -> str:
        """``host:port``, as the logs name the server."""
        host, port = parse_stun_server(self.server)
        return f"{host}:{port}"


class WanConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The upstream side: where mappings are reachable from."""

    interface: _IFNAME
    #: Fixed external IPv4 address; None: learned from the interface at run time.
    external_address: IPv4Address | None = None
    #: Asked whether a private WAN address is behind another NAT; None: no STUN.
    stun: StunConfig | None = None
    #: A private WAN address (RFC 1918, RFC 6598 CGNAT, ...): "warn" logs it and serves;
    #: "refuse" answers every mapping request as if there were no external address, unless
    #: STUN shows nothing translates it.
    private_address: Literal["warn", "refuse"] = "warn"


class LanConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One LAN interface; its own subnets are learned at run time."""

    interface: _IFNAME
    #: Extra prefixes counted as LAN (e.g. routed subnets behind another router).
    prefixes: tuple[_Network, ...] = ()


class LifetimeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Lease limits in seconds, per protocol."""

    upnp_max: _LIFETIME = 604800
    upnp_v1_permanent: bool = True
    natpmp_max: _LIFETIME = 86400
    pcp_min: _LIFETIME = 120
    pcp_max: _LIFETIME = 86400
    pinhole_max: _LIFETIME = 86400

    def __post_init__(self) -> None:
        if self.pcp_min > self.pcp_max:
            raise ValueError(
                f"pcp_min: expected at most pcp_max ({self.pcp_max}), got {self.pcp_min}"
            )


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ACL entry; the first rule matching a request decides."""

    action: Literal["allow", "deny"]
    #: The internal hosts it applies to; None ("lan" in YAML): any LAN address.
    internal: _NetworkOrLan = None
    internal_ports: _Ports = PortRange(1, 65535)
    external_ports: _Ports = PortRange(1, 65535)
    proto: Literal["tcp", "udp", "any"] = "any"


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who may map what, and how many."""

    secure_mode: bool = True
    default: Literal["allow", "deny"] = "deny"
    rules: tuple[Rule, ...] = (
        Rule(
            action="allow",
            internal=None,
            internal_ports=PortRange(1, 65535),
            external_ports=PortRange(1024, 65535),
            proto="any",
        ),
    )
    reserved_tcp_ports: tuple[_Ports, ...] = ()
    reserved_udp_ports: tuple[_Ports, ...] = ()
    max_mappings_per_client: _COUNT = 128
    max_mappings: _COUNT = 8192
    allow_third_party: bool = False


class UpnpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The UPnP IGD front-end."""

    enabled: bool = True
    #: 0: pick a free port at start.
    http_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    igd_version: Literal[1, 2] = 2
    igd1_user_agents: tuple[Annotated[str, msgspec.Meta(min_length=1)], ...] = (
        "Microsoft",
        "FDSSDP",
        "Xbox",
    )
    friendly_name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "portgate router"
    #: None: derived by the daemon (stable per host).
    uuid: _UUID | None = None
    notify_interval: Annotated[int, msgspec.Meta(ge=30, le=86400)] = 900
    ipv6: bool = True


class NatPmpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True


class PcpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    ipv6: bool = True


class StateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    lease_file: _PATH = "/var/lib/portgate/leases.sqlite3"
    keep_mappings_on_stop: bool = True


class ControlConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    socket: _SOCKET_PATH = "/run/portgate/control.sock"


_NFT_NAME = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$",
        description="a letter, then up to 31 letters, digits, '_' or '-'",
    ),
]
_PRIORITY = Annotated[int, msgspec.Meta(ge=-1000, le=1000)]
_JUMP = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(inet|ip6) [A-Za-z][A-Za-z0-9_-]{0,31} [A-Za-z][A-Za-z0-9_-]{0,31}$",
        description="'FAMILY TABLE CHAIN' with family inet or ip6, like 'inet fw4 forward_wan'",
    ),
]


class NftConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The nftables backend: one ``inet`` table of our own."""

    table: _NFT_NAME = "portgate"
    dnat_priority: _PRIORITY = -100
    snat_priority: _PRIORITY = 100
    forward_priority: _PRIORITY = 0
    hairpin: bool = True
    ipv6_firewall: bool = False
    forward_jump: _JUMP | None = None
    check_interval: Annotated[float, msgspec.Meta(ge=0.5, le=60)] = 2.0
    verify_interval: Annotated[
        float,
        msgspec.Meta(
            ge=0, le=86400, description="seconds from 0 (never) to 86400 between full checks"
        ),
    ] = 0.0


class BackendConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    type: Literal["nft", "memory"] = "nft"
    nft: NftConfig = NftConfig()


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


_LISTEN_EXPECTED = 'ADDRESS:PORT with an IP address, like "127.0.0.1:9567" or "[::1]:9567"'


def parse_listen(text: str) -> tuple[IPv4Address | IPv6Address, int]:
    """``"127.0.0.1:9567"`` or ``"[::1]:9567"`` as (address, port); ``ValueError`` says why not.

    A wildcard address (0.0.0.0, ::) is refused: it would serve on the WAN side too.
    """
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: the port is ambiguous
    try:
        address = ip_address(host)
    except ValueError:
        raise ValueError(f"expected {_LISTEN_EXPECTED}, got {_show(text)}") from None
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected {_LISTEN_EXPECTED} (port 1-65535), got {_show(text)}")
    if address.is_unspecified:
        raise ValueError(
            f"expected a loopback or admin address, got {_show(text)}: a wildcard address "
            "would serve the metrics on every interface, the WAN included"
        )
    return address, int(port_text)


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The optional Prometheus endpoint (plain HTTP, no authentication)."""

    enabled: bool = False
    listen: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1:9567"

    def __post_init__(self) -> None:
        try:
            parse_listen(self.listen)
        except ValueError as error:
            raise ValueError(f"listen: {error}") from None

    @property
    def address(self) -> IPv4Address | IPv6Address:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


_CLIENT_CONNECTIONS = Annotated[
    int, msgspec.Meta(ge=1, le=1024, description="a number of connections from 1 to 1024")
]
_CONNECTIONS = Annotated[
    int, msgspec.Meta(ge=1, le=4096, description="a number of connections from 1 to 4096")
]
_CLIENT_SUBSCRIPTIONS = Annotated[
    int, msgspec.Meta(ge=1, le=1024, description="a number of subscriptions from 1 to 1024")
]
_SUBSCRIPTIONS = Annotated[
    int, msgspec.Meta(ge=1, le=16384, description="a number of subscriptions from 1 to 16384")
]
_RATE = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=1_000_000, description="requests per second, an integer from 1 to 1000000"
    ),
]
_BURST = Annotated[
    int,
    msgspec.Meta(ge=1, le=1_000_000, description="a number of requests from 1 to 1000000"),
]


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Caps that keep one LAN host from crowding out the others, per client address and in
    all (the mapping quotas are policy.max_mappings_per_client and policy.max_mappings)."""

    http_connections_per_client: _CLIENT_CONNECTIONS = 8
    http_connections: _CONNECTIONS = 64
    http_requests_per_second: _RATE = 500
    http_request_burst: _BURST = 10000
    gena_subscriptions_per_client: _CLIENT_SUBSCRIPTIONS = 16
    gena_subscriptions: _SUBSCRIPTIONS = 256
    udp5351_requests_per_second: _RATE = 1000
    udp5351_request_burst: _BURST = 2000

    def __post_init__(self) -> None:
        for per_client, total in (
            ("http_connections_per_client", "http_connections"),
            ("gena_subscriptions_per_client", "gena_subscriptions"),
        ):
            low, high = getattr(self, per_client), getattr(self, total)
            if low > high:
                raise ValueError(f"{per_client}: expected at most {total} ({high}), got {low}")


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration."""

    wan: WanConfig
    lan: tuple[LanConfig, ...]
    lifetimes: LifetimeConfig = LifetimeConfig()
    policy: PolicyConfig = PolicyConfig()
    upnp: UpnpConfig = UpnpConfig()
    natpmp: NatPmpConfig = NatPmpConfig()
    pcp: PcpConfig = PcpConfig()
    limits: LimitsConfig = LimitsConfig()
    state: StateConfig = StateConfig()
    control: ControlConfig = ControlConfig()
    backend: BackendConfig = BackendConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()

    def __post_init__(self) -> None:
        if self.metrics.enabled and self.metrics.address == self.wan.external_address:
            raise ValueError(
                "metrics.listen: expected a loopback or admin address, got the external "
                f"address {self.metrics.listen!r}"
            )
        if not self.lan:
            raise ValueError("lan: expected at least one LAN interface, got an empty list")
        first_use: dict[str, int] = {}
        for index, lan in enumerate(self.lan):
            if lan.interface == self.wan.interface:
                raise ValueError(
                    f"lan[{index}].interface: expected an interface other than wan.interface, "
                    f"got {lan.interface!r}"
                )
            if lan.interface in first_use:
                raise ValueError(
                    f"lan[{index}].interface: {lan.interface!r} is already "
                    f"lan[{first_use[lan.interface]}]; each LAN interface may appear once"
                )
            first_use[lan.interface] = index


# -- reading ----------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that rejects a key repeated in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; any problem is one ``ConfigError`` line."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError as error:
        raise ConfigError(f"{source}: config file not found") from error
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{source}: cannot read config file: not UTF-8 text (byte offset {error.start})"
        ) from error
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"{source}: cannot read config file: {reason}") from error
    return parse_config(text, source)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate YAML text; ``source`` names it in error messages."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: {_yaml_error_text(error, text)}") from error
    if data is None:
        raise ConfigError(
            f"{source}: the config is empty; expected a mapping with at least wan and lan"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_show(data)}")
    problem = _find_bad_key(data, (), set())
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    try:
        return msgspec.convert(data, Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{source}: {_one_line(_explain(str(error), data))}") from error


def _yaml_error_text(error: yaml.YAMLError, text: str) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "
        what = error.problem or error.context or "syntax error"
        if error.problem and error.context:
            what += f" ({error.context}"
            if error.context_mark is not None and error.context_mark is not mark:
                what += f" started at line {error.context_mark.line + 1}"
                what += f", column {error.context_mark.column + 1}"
            what += ")"
        return _one_line(f"{where}invalid YAML: {what}")
    if isinstance(error, yaml.reader.ReaderError):
        position = int(error.position)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return _one_line(
            f"line {line}, column {column}: invalid YAML: "
            f"unacceptable character #x{int(error.character):04x}: {error.reason}"
        )
    return _one_line(f"invalid YAML: {error}")


_Path = tuple[str | int, ...]


def _find_bad_key(node: object, path: _Path, open_nodes: set[int]) -> str | None:
    """Non-string keys (``yes:`` is a boolean in YAML) and alias cycles, found before msgspec,
    which reports neither with a usable path."""
    if not isinstance(node, (dict, list)):
        return None
    where = _format_path(path) or "top level"
    if id(node) in open_nodes:
        return f"{where}: a YAML alias refers to its own ancestor"
    open_nodes.add(id(node))
    try:
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    hint = " (quote it)" if isinstance(key, (bool, int, float)) else ""
                    return f"{where}: expected keys to be strings, got {_show(key)}{hint}"
                problem = _find_bad_key(value, (*path, key), open_nodes)
                if problem is not None:
                    return problem
        else:
            for index, item in enumerate(node):
                problem = _find_bad_key(item, (*path, index), open_nodes)
                if problem is not None:
                    return problem
        return None
    finally:
        open_nodes.discard(id(node))


# -- error messages ---------------------------------------------------------------------------

_LOCATION_RE = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT_RE = re.compile(r"\.([^.\[]+)|\[([0-9]+)\]")
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `(?P<key>.*)`$", re.DOTALL)
_MISSING_RE = re.compile(r"^Object missing required field `(?P<key>.*)`$", re.DOTALL)
#: Our own messages (dec_hook, __post_init__) are lower case; a leading key path is relative.
_RELATIVE_RE = re.compile(
    r"^(?P<key>[a-z_][a-z0-9_]*(?:\[[0-9]+\])*(?:\.[a-z_][a-z0-9_]*(?:\[[0-9]+\])*)*): "
    r"(?P<rest>.*)$",
    re.DOTALL,
)
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _explain(raw: str, data: object) -> str:
    """Turn a msgspec ValidationError text into ``<key path>: <what was expected>``."""
    located = _LOCATION_RE.match(raw)
    assert located is not None  # the pattern matches any text
    message = located["message"]
    path: _Path = tuple(
        name if name else int(index) for name, index in _SEGMENT_RE.findall(located["path"] or "")
    )
    if unknown := _UNKNOWN_RE.match(message):
        key = unknown["key"]
        known = _known_keys(path)
        shown = key if _KEY_RE.fullmatch(key) else repr(key)
        suffix = f" (expected one of: {', '.join(known)})" if known else ""
        return f"{_join(_format_path(path), shown)}: unknown key{suffix}"
    if missing := _MISSING_RE.match(message):
        return f"{_format_path((*path, missing['key']))}: missing required key"
    if message[:1].islower():
        if relative := _RELATIVE_RE.match(message):
            return f"{_join(_format_path(path), relative['key'])}: {relative['rest']}"
        return f"{_format_path(path) or 'top level'}: {message}"
    expected = _describe(_type_at(path))
    found, value = _value_at(data, path)
    got = _show(value) if found else "nothing"
    where = _format_path(path) or "top level"
    if expected is None:
        return f"{where}: {message}"
    return f"{where}: expected {expected}, got {got}"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _format_path(path: _Path) -> str:
    """``("policy", "rules", 0, "internal")`` as ``policy.rules[0].internal``."""
    text = ""
    for segment in path:
        text = f"{text}[{segment}]" if isinstance(segment, int) else _join(text, segment)
    return text


def _value_at(data: object, path: _Path) -> tuple[bool, object]:
    for segment in path:
        if isinstance(data, dict):
            if segment not in data:
                return False, None
            data = data[segment]
        elif isinstance(segment, int) and isinstance(data, list) and segment < len(data):
            data = data[segment]
        else:
            return False, None
    return True, data


@functools.cache
def _config_type() -> mi.Type:
    return mi.type_info(Config)


def _unwrap(type_: mi.Type) -> mi.Type:
    while True:
        if isinstance(type_, mi.Metadata):
            type_ = type_.type
        elif isinstance(type_, mi.UnionType):
            others = [t for t in type_.types if not isinstance(t, mi.NoneType)]
            if len(others) != 1:
                return type_
            type_ = others[0]
        else:
            return type_


def _type_at(path: _Path) -> mi.Type | None:
    type_: mi.Type = _config_type()
    for segment in path:
        inner = _unwrap(type_)
        if isinstance(segment, str) and isinstance(inner, mi.StructType):
            fields = {field.encode_name: field.type for field in inner.fields}
            if segment not in fields:
                return None
            type_ = fields[segment]
        elif isinstance(segment, int) and isinstance(inner, mi.VarTupleType):
            type_ = inner.item_type
        else:
            return None
    return type_


def _known_keys(path: _Path) -> list[str]:
    type_ = _type_at(path)
    if type_ is None:
        return []
    inner = _unwrap(type_)
    if not isinstance(inner, mi.StructType):
        return []
    return [field.encode_name for field in inner.fields]


def _describe(type_: mi.Type | None) -> str | None:
    """What a value of this type looks like, in the words of the YAML file."""
    if isinstance(type_, mi.Metadata):
        description = (type_.extra_json_schema or {}).get("description")
        return str(description) if description else _describe(type_.type)
    if isinstance(type_, mi.UnionType):
        parts = [_describe(member) for member in type_.types]
        return None if None in parts else " or ".join(str(part) for part in parts)
    if isinstance(type_, mi.IntType):
        return "an integer" + _bounds(type_.ge, type_.le)
    if isinstance(type_, mi.StrType):
        if type_.min_length is not None and type_.max_length is not None:
            return f"a string of {type_.min_length} to {type_.max_length} characters"
        if type_.min_length == 1:
            return "a non-empty string"
        return "a string"
    if isinstance(type_, mi.BoolType):
        return "true or false"
    if isinstance(type_, mi.NoneType):
        return "null"
    if isinstance(type_, mi.LiteralType):
        return "one of " + ", ".join(_show(value) for value in type_.values)
    if isinstance(type_, mi.VarTupleType):
        return "a list"
    if isinstance(type_, mi.StructType):
        return "a mapping"
    if isinstance(type_, mi.CustomType):
        return _CUSTOM_EXPECTED.get(type_.cls)
    return None


def _bounds(ge: int | None, le: int | None) -> str:
    if ge is not None and le is not None:
        return f" from {ge} to {le}"
    if ge is not None:
        return f" >= {ge}"
    if le is not None:
        return f" <= {le}"
    return ""


def _show(value: object) -> str:
    """A value as the message shows it after "got"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(text: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


# -- writing ----------------------------------------------------------------------------------


def dump_config(config: Config) -> str:
    """The effective config, defaults included, as YAML that ``parse_config`` reads back."""
    # Not allow_unicode: PyYAML would then write U+0085 and U+2028 raw, and read them back as
    # line breaks; escaped, every string survives the round trip.
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=False)


def _plain(value: object) -> object:
    if isinstance(value, msgspec.Struct):
        plain = {
            field.encode_name: _plain(getattr(value, field.name))
            for field in msgspec.structs.fields(value)
        }
        if isinstance(value, Rule) and value.internal is None:
            plain["internal"] = "lan"
        return plain
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, PortRange) and value.low == value.high:
        return value.low
    if isinstance(value, (PortRange, IPv4Network, IPv6Network, IPv4Address)):
        return str(value)
    return value

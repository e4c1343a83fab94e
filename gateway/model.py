"""Frozen values shared by the core, the front-ends and the backends.

Nothing here does I/O or knows about time sources: ``now`` is always a float of monotonic
seconds passed in by the caller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

#: Lifetime value meaning "no expiry" in results (PCP answers 2**32-1 for such entries).
PERMANENT = None


class Proto(enum.Enum):
    """Transport protocol of a mapping, with its IANA protocol number."""

    TCP = "tcp"
    UDP = "udp"

    @property
    def number(self) -> int:
        return 6 if self is Proto.TCP else 17

    @classmethod
    def from_number(cls, number: int) -> Proto:
        if number == 6:
            return cls.TCP
        if number == 17:
            return cls.UDP
        raise ValueError(f"unsupported IP protocol number {number}")


class Origin(enum.Enum):
    """Who created a mapping. STATIC is the administrator (config file or admin CLI)."""

    STATIC = "static"
    UPNP = "upnp"
    NATPMP = "natpmp"
    PCP = "pcp"


class Kind(enum.Enum):
    """PORT_MAP: IPv4 NAT (DNAT external -> internal). PINHOLE: IPv6 firewall opening."""

    PORT_MAP = "port_map"
    PINHOLE = "pinhole"


class ChangeKind(enum.Enum):
    ADDED = "add"
    REFRESHED = "refresh"
    UPDATED = "update"
    REMOVED = "remove"
    EXPIRED = "expire"


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An address and a port; port 0 means "any port" where a filter allows it."""

    address: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0-65535")

    def __str__(self) -> str:
        if isinstance(self.address, IPv6Address):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class RemoteFilter:
    """Which remote peers may use a mapping: a prefix and a port (0 = any port).

    UPnP's RemoteHost is a /32 (or /128) with port 0; PCP FILTER carries a prefix and a port.
    """

    prefix: IPNetwork
    port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0-65535")

    @classmethod
    def host(cls, address: IPAddress, port: int = 0) -> RemoteFilter:
        return cls(ip_network(address), port)

    def admits(self, peer: Endpoint) -> bool:
        return peer.address in self.prefix and self.port in (0, peer.port)

    def __str__(self) -> str:
        return f"{self.prefix}" + (f" port {self.port}" if self.port else "")


@dataclass(frozen=True, slots=True, order=True)
class MappingKey:
    """The uniqueness key of a port mapping: (protocol, external address, external port).

    For a pinhole (no NAT) the "external" endpoint is the internal one.
    """

    proto: Proto
    external: Endpoint

    def __str__(self) -> str:
        return f"{self.proto.value} {self.external}"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who asked: the protocol, the client's source address and, for PCP, the nonce.

    ``third_party`` marks a PCP request that used THIRD_PARTY (internal address != client).
    """

    origin: Origin
    client: IPAddress
    nonce: bytes | None = None
    third_party: bool = False

    @property
    def is_admin(self) -> bool:
        return self.origin is Origin.STATIC


@dataclass(frozen=True, slots=True)
class Mapping:
    """One entry of the shared table.

    ``uid`` is the table-wide identity (stable for the entry's life; the UPnP pinhole UniqueID
    and the store's primary key). ``expires`` is monotonic seconds, None for permanent.
    """

    uid: int
    kind: Kind
    key: MappingKey
    internal: Endpoint
    owner: Owner
    description: str = ""
    filters: tuple[RemoteFilter, ...] = ()
    enabled: bool = True
    expires: float | None = None
    created: float = 0.0
    lifetime: int | None = None  # the granted lifetime at the last add/refresh, seconds

    @property
    def proto(self) -> Proto:
        return self.key.proto

    @property
    def external(self) -> Endpoint:
        return self.key.external

    def remaining(self, now: float) -> int | None:
        """Whole seconds left, None when permanent; never negative."""
        if self.expires is None:
            return None
        return max(0, int(self.expires - now + 0.5))

    def describe(self) -> str:
        if self.kind is Kind.PINHOLE:
            text = f"{self.proto.value} pinhole {self.internal}"
        else:
            text = f"{self.proto.value} {self.external} -> {self.internal}"
        if self.filters:
            text += " from " + ",".join(str(f) for f in self.filters)
        return text


@dataclass(frozen=True, slots=True)
class Change:
    """One step of the table's history: ``before`` is None for an add, ``after`` for a removal."""

    kind: ChangeKind
    before: Mapping | None
    after: Mapping | None

    @property
    def mapping(self) -> Mapping:
        found = self.after if self.after is not None else self.before
        assert found is not None
        return found

    @property
    def touches_kernel(self) -> bool:
        """False for a pure lease refresh that leaves the kernel's view as it was."""
        if self.kind is not ChangeKind.REFRESHED:
            return True
        return kernel_view(self.before) != kernel_view(self.after)


@dataclass(frozen=True, slots=True)
class KernelEntry:
    """What a backend installs for a mapping: everything but bookkeeping."""

    kind: Kind
    key: MappingKey
    internal: Endpoint
    filters: tuple[RemoteFilter, ...] = field(default=())

    def canonical(self) -> KernelEntry:
        """The same entry with its filters in a fixed order (backends read them back sorted)."""
        ordered = tuple(
            sorted(
                set(self.filters),
                key=lambda f: (
                    f.prefix.version,
                    int(f.prefix.network_address),
                    f.prefix.prefixlen,
                    f.port,
                ),
            )
        )
        return KernelEntry(self.kind, self.key, self.internal, ordered)


def kernel_view(mapping: Mapping | None) -> KernelEntry | None:
    if mapping is None or not mapping.enabled:
        return None
    return KernelEntry(mapping.kind, mapping.key, mapping.internal, mapping.filters)

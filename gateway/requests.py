"""Protocol-neutral commands the front-ends send to the gateway, and the results they get.

Every front-end (UPnP, NAT-PMP, PCP, the admin CLI) turns its wire request into one of these
commands; the same rules then apply to all of them (see ``gateway.table``).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from gateway.model import (
    Endpoint,
    IPAddress,
    Mapping,
    MappingKey,
    Origin,
    Owner,
    Proto,
    RemoteFilter,
)


@dataclass(frozen=True, slots=True)
class MapPort:
    """Create or refresh a port mapping (IPv4 NAT).

    ``external_port`` 0 means "any". ``exact`` asks for that port or an error (UPnP
    AddPortMapping, PCP PREFER_FAILURE, admin); otherwise another free port is chosen.
    ``lifetime`` is the value the client sent, in seconds; the table clamps it per origin
    (``upnp_v1`` selects the IGD:1 rule where 0 asks for a permanent lease).
    """

    owner: Owner
    proto: Proto
    internal: Endpoint
    external_port: int
    lifetime: int
    description: str = ""
    filters: tuple[RemoteFilter, ...] = ()
    exact: bool = False
    enabled: bool = True
    upnp_v1: bool = False


@dataclass(frozen=True, slots=True)
class UnmapPort:
    """Delete the mapping with this external key (UPnP DeletePortMapping, admin delete)."""

    owner: Owner
    key: MappingKey


@dataclass(frozen=True, slots=True)
class UnmapInternal:
    """Delete the requester's mapping of this internal endpoint (NAT-PMP / PCP lifetime 0).

    Deleting something that does not exist succeeds (RFC 6886 §3.4, RFC 6887 §15).
    """

    owner: Owner
    proto: Proto
    internal: Endpoint


@dataclass(frozen=True, slots=True)
class UnmapRange:
    """Delete the requester's UPnP mappings with external ports in [start, end].

    ``manage`` (UPnP NewManage) asks to delete other clients' UPnP mappings too; it is
    honoured only where the policy lets clients manage each other's (secure mode off)."""

    owner: Owner
    proto: Proto
    start: int
    end: int
    manage: bool = False


@dataclass(frozen=True, slots=True)
class Flush:
    """Delete many mappings at once: NAT-PMP "delete all" or the admin's flush.

    Non-admin owners only ever flush their own mappings of their own origin.
    """

    owner: Owner
    client: IPAddress | None = None
    proto: Proto | None = None
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class GetMapping:
    """The port mapping at this external key (UPnP GetSpecificPortMappingEntry)."""

    key: MappingKey


@dataclass(frozen=True, slots=True)
class GetMappingByIndex:
    """The n-th mapping in creation order (UPnP GetGenericPortMappingEntry)."""

    index: int
    kind: str = "port_map"


@dataclass(frozen=True, slots=True)
class GetByUid:
    """A mapping or pinhole by its table-wide id (UPnP pinhole UniqueID)."""

    uid: int


@dataclass(frozen=True, slots=True)
class ListMappings:
    """Mappings sorted by (protocol, external port), filtered; ``limit`` caps the count."""

    proto: Proto | None = None
    start: int = 0
    end: int = 65535
    client: IPAddress | None = None
    limit: int | None = None
    include_pinholes: bool = False
    #: only the entries to this internal endpoint (an index lookup: PCP asks before each MAP)
    internal: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class GetExternalAddress:
    """The gateway's current external IPv4 address (None while unknown)."""


@dataclass(frozen=True, slots=True)
class OpenPinhole:
    """Open (or refresh) an IPv6 firewall pinhole to ``internal`` (UPnP AddPinhole, PCP MAP
    on IPv6 without NAT)."""

    owner: Owner
    proto: Proto
    internal: Endpoint
    lifetime: int
    filters: tuple[RemoteFilter, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class UpdatePinhole:
    """Give pinhole ``uid`` a new lease time (UPnP UpdatePinhole)."""

    owner: Owner
    uid: int
    lifetime: int


@dataclass(frozen=True, slots=True)
class ClosePinhole:
    """Close pinhole ``uid`` (UPnP DeletePinhole)."""

    owner: Owner
    uid: int


Request = (
    MapPort
    | UnmapPort
    | UnmapInternal
    | UnmapRange
    | Flush
    | GetMapping
    | GetMappingByIndex
    | GetByUid
    | ListMappings
    | GetExternalAddress
    | OpenPinhole
    | UpdatePinhole
    | ClosePinhole
)

#: Requests that may change the table (and so wait for the backend).
MUTATING = (
    MapPort,
    UnmapPort,
    UnmapInternal,
    UnmapRange,
    Flush,
    OpenPinhole,
    UpdatePinhole,
    ClosePinhole,
)


@dataclass(frozen=True, slots=True)
class Granted:
    """A mapping exists for the client. ``lifetime`` is what to tell it (remaining seconds,
    None when permanent). ``owned`` is False when the client got an entry of another origin
    that it does not own (PCP/NAT-PMP meeting a UPnP or static mapping, protocols.md §7.2)."""

    mapping: Mapping
    lifetime: int | None
    created: bool = True
    owned: bool = True


@dataclass(frozen=True, slots=True)
class Removed:
    mappings: tuple[Mapping, ...]


@dataclass(frozen=True, slots=True)
class Found:
    mapping: Mapping
    lifetime: int | None


@dataclass(frozen=True, slots=True)
class Listing:
    mappings: tuple[Mapping, ...]
    now: float


@dataclass(frozen=True, slots=True)
class ExternalAddress:
    address: IPv4Address | None


Result = Granted | Removed | Found | Listing | ExternalAddress

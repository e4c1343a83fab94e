"""The shared mapping table as its users see it: protocols.md §7.2 (ownership and conflicts),
§7.3 (lifetimes), quotas, the ACL, expiry, lookups, re-homing, pinholes and rollback.

Every refusal is checked through ``refused``, which also asserts that a refused request leaves
the table exactly as it was.
"""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, ip_address

import pytest

from gateway.allocator import Allocator
from gateway.config import LifetimeConfig, PortRange, Rule
from gateway.errors import GatewayError, Reason
from gateway.model import (
    Change,
    ChangeKind,
    Endpoint,
    Kind,
    Mapping,
    MappingKey,
    Origin,
    Owner,
    Proto,
    RemoteFilter,
)
from gateway.requests import (
    ClosePinhole,
    ExternalAddress,
    Flush,
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
    UnmapInternal,
    UnmapPort,
    UnmapRange,
    UpdatePinhole,
)
from gateway.table import MappingTable
from tests.gateway.conftest import EXTERNAL, ep, make_policy, make_table, owner

NONCE_A = b"a" * 12
NONCE_B = b"b" * 12
ADMIN = Owner(Origin.STATIC, IPv4Address("127.0.0.1"))
HOST = "192.168.1.10"
OTHER = "192.168.1.11"
HOST6 = "2001:db8:1::10"
OTHER6 = "2001:db8:1::11"
NEW_EXTERNAL = IPv4Address("198.51.100.7")


# -- builders (arguments default to a valid request) -----------------------------------------------


def key(port: int, proto: Proto = Proto.TCP, address: IPv4Address = EXTERNAL) -> MappingKey:
    return MappingKey(proto, Endpoint(address, port))


def upnp(
    internal: str = f"{HOST}:5000",
    port: int = 6000,
    *,
    client: str | None = None,
    lifetime: int = 3600,
    exact: bool = True,
    proto: Proto = Proto.TCP,
    upnp_v1: bool = False,
    description: str = "",
    enabled: bool = True,
) -> MapPort:
    """UPnP AddPortMapping (exact) or AddAnyPortMapping (exact=False)."""
    inner = ep(internal)
    return MapPort(
        owner(Origin.UPNP, client or str(inner.address)),
        proto,
        inner,
        port,
        lifetime,
        description=description,
        exact=exact,
        enabled=enabled,
        upnp_v1=upnp_v1,
    )


def natpmp(
    internal: str = f"{HOST}:5000", port: int = 0, *, lifetime: int = 7200, proto: Proto = Proto.TCP
) -> MapPort:
    """A NAT-PMP mapping request: the internal address is always the source."""
    inner = ep(internal)
    return MapPort(owner(Origin.NATPMP, str(inner.address)), proto, inner, port, lifetime)


def pcp_owner(client: str = HOST, nonce: bytes = NONCE_A) -> Owner:
    return owner(Origin.PCP, client, nonce)


def pcp(
    internal: str = f"{HOST}:5000",
    port: int = 0,
    *,
    nonce: bytes = NONCE_A,
    lifetime: int = 3600,
    exact: bool = False,
    proto: Proto = Proto.TCP,
    filters: tuple[RemoteFilter, ...] = (),
) -> MapPort:
    """PCP MAP; ``exact`` is PREFER_FAILURE."""
    inner = ep(internal)
    return MapPort(
        pcp_owner(str(inner.address), nonce),
        proto,
        inner,
        port,
        lifetime,
        exact=exact,
        filters=filters,
    )


def static(
    internal: str = f"{HOST}:5000",
    port: int = 6000,
    *,
    lifetime: int = 0,
    exact: bool = True,
    proto: Proto = Proto.TCP,
) -> MapPort:
    """The administrator's mapping (config file or admin CLI)."""
    return MapPort(ADMIN, proto, ep(internal), port, lifetime, exact=exact)


def pinhole(
    internal: str = f"[{HOST6}]:5000",
    *,
    client: str | None = None,
    origin: Origin = Origin.UPNP,
    nonce: bytes | None = None,
    lifetime: int = 3600,
    proto: Proto = Proto.TCP,
    filters: tuple[RemoteFilter, ...] = (),
) -> OpenPinhole:
    inner = ep(internal)
    return OpenPinhole(
        owner(origin, client or str(inner.address), nonce),
        proto,
        inner,
        lifetime,
        filters=filters,
    )


def remote(address: str, port: int = 0) -> tuple[RemoteFilter, ...]:
    return (RemoteFilter.host(ip_address(address), port),)


# -- applying requests -----------------------------------------------------------------------------


def contents(table: MappingTable) -> dict[int, Mapping]:
    return {m.uid: m for m in table}


def grant(table: MappingTable, request: Request, now: float = 0.0) -> tuple[Granted, list[Change]]:
    result, changes = table.apply(request, now)
    assert isinstance(result, Granted), result
    return result, changes


def granted(table: MappingTable, request: Request, now: float = 0.0) -> Mapping:
    return grant(table, request, now)[0].mapping


def removed(table: MappingTable, request: Request, now: float = 0.0) -> tuple[Mapping, ...]:
    result, changes = table.apply(request, now)
    assert isinstance(result, Removed), result
    assert [c.kind for c in changes] == [ChangeKind.REMOVED] * len(result.mappings)
    assert [c.before for c in changes] == list(result.mappings)
    return result.mappings


def refused(table: MappingTable, request: Request, now: float = 0.0) -> GatewayError:
    before = contents(table)
    deadline = table.next_deadline()
    with pytest.raises(GatewayError) as caught:
        table.apply(request, now)
    assert contents(table) == before, "a refused request changed the table"
    assert table.next_deadline() == deadline
    return caught.value


def ports(mappings: tuple[Mapping, ...] | list[Mapping]) -> list[int]:
    return [m.external.port for m in mappings]


# -- UPnP AddPortMapping / AddAnyPortMapping -------------------------------------------------------


def test_upnp_add_maps_the_requested_external_port_to_the_internal_client(
    table: MappingTable,
) -> None:
    result, changes = grant(table, upnp(f"{HOST}:5000", 6000, description="game"), now=10.0)
    mapping = result.mapping
    assert mapping.key == key(6000)
    assert mapping.internal == ep(f"{HOST}:5000")
    assert mapping.owner == owner(Origin.UPNP, HOST)
    assert mapping.description == "game"
    assert mapping.expires == 3610.0
    assert (result.lifetime, result.created, result.owned) == (3600, True, True)
    assert changes == [Change(ChangeKind.ADDED, None, mapping)]
    assert table.by_key(key(6000)) == mapping


def test_upnp_add_by_the_same_internal_client_updates_the_entry_in_place(
    table: MappingTable,
) -> None:
    first = granted(table, upnp(f"{HOST}:5000", 6000, description="old"))
    result, changes = grant(
        table, upnp(f"{HOST}:5001", 6000, description="new", lifetime=100), now=50.0
    )
    updated = result.mapping
    assert updated.uid == first.uid
    assert updated.internal == ep(f"{HOST}:5001")
    assert updated.description == "new"
    assert updated.expires == 150.0
    assert result.created is False
    assert changes == [Change(ChangeKind.UPDATED, first, updated)]
    assert list(table) == [updated]


def test_upnp_add_repeated_unchanged_is_a_refresh_that_leaves_the_kernel_alone(
    table: MappingTable,
) -> None:
    first = granted(table, upnp())
    result, changes = grant(table, upnp(), now=1000.0)
    assert result.mapping.expires == 4600.0
    assert [c.kind for c in changes] == [ChangeKind.REFRESHED]
    assert changes[0].before == first
    assert not changes[0].touches_kernel


def test_a_disabled_mapping_is_kept_and_enabling_it_reaches_the_kernel(
    table: MappingTable,
) -> None:
    disabled = granted(table, upnp(enabled=False))
    assert disabled.enabled is False
    assert table.by_key(key(6000)) == disabled  # the port stays taken
    result, changes = grant(table, upnp(enabled=True), now=10.0)
    assert result.mapping.enabled is True
    assert [c.kind for c in changes] == [ChangeKind.UPDATED]
    assert changes[0].touches_kernel


def test_upnp_add_of_a_port_held_by_another_upnp_client_is_a_conflict(
    table: MappingTable,
) -> None:
    held = granted(table, upnp(f"{HOST}:5000", 6000))
    error = refused(table, upnp(f"{OTHER}:5000", 6000), now=100.0)
    assert error.reason is Reason.CONFLICT
    assert error.mapping == held
    assert error.lifetime == 3500


@pytest.mark.parametrize(
    "holder",
    [natpmp(f"{HOST}:5000", 6000), pcp(f"{HOST}:5000", 6000), static(f"{HOST}:5000", 6000)],
    ids=["natpmp", "pcp", "static"],
)
def test_upnp_add_of_a_port_held_by_another_mechanism_is_a_foreign_conflict(
    table: MappingTable, holder: MapPort
) -> None:
    held = granted(table, holder)
    assert held.external.port == 6000
    # even the same internal client cannot take over another mechanism's entry
    error = refused(table, upnp(f"{HOST}:5000", 6000))
    assert error.reason is Reason.CONFLICT_FOREIGN
    assert error.mapping == held
    assert table.by_key(key(6000)) == held


def test_upnp_add_any_picks_the_nearest_free_port_above_first(table: MappingTable) -> None:
    granted(table, upnp(f"{OTHER}:5000", 6000))
    assert granted(table, upnp(port=6000, exact=False)).external.port == 6001


def test_upnp_add_any_goes_below_when_the_port_above_is_taken(table: MappingTable) -> None:
    granted(table, upnp(f"{OTHER}:5000", 6000))
    granted(table, upnp(f"{OTHER}:5001", 6001))
    assert granted(table, upnp(port=6000, exact=False)).external.port == 5999


def test_upnp_add_any_with_port_zero_picks_an_unprivileged_port(table: MappingTable) -> None:
    mapping = granted(table, upnp(port=0, exact=False))
    assert 1024 <= mapping.external.port <= 65535


def test_upnp_add_any_of_a_free_port_grants_that_port(table: MappingTable) -> None:
    assert granted(table, upnp(port=6000, exact=False)).external.port == 6000


def test_an_exact_mapping_needs_an_external_port(table: MappingTable) -> None:
    assert refused(table, upnp(port=0)).reason is Reason.BAD_REQUEST


def test_internal_port_zero_is_a_bad_request(table: MappingTable) -> None:
    assert refused(table, upnp(f"{HOST}:0", 6000)).reason is Reason.BAD_REQUEST
    assert refused(table, natpmp(f"{HOST}:0")).reason is Reason.BAD_REQUEST


def test_port_mappings_need_an_ipv4_internal_address(table: MappingTable) -> None:
    request = MapPort(owner(Origin.UPNP, HOST6), Proto.TCP, ep(f"[{HOST6}]:5000"), 6000, 60)
    assert refused(table, request).reason is Reason.UNSUPPORTED


def test_tcp_and_udp_mappings_of_one_port_are_independent(table: MappingTable) -> None:
    tcp = granted(table, upnp(f"{HOST}:5000", 6000, proto=Proto.TCP))
    udp = granted(table, upnp(f"{OTHER}:5000", 6000, proto=Proto.UDP))
    assert (table.by_key(key(6000, Proto.TCP)), table.by_key(key(6000, Proto.UDP))) == (tcp, udp)


def test_several_external_ports_may_point_at_one_internal_endpoint(table: MappingTable) -> None:
    granted(table, upnp(f"{HOST}:5000", 6000))
    granted(table, upnp(f"{HOST}:5000", 7000))
    assert sorted(ports(list(table))) == [6000, 7000]


# -- NAT-PMP ---------------------------------------------------------------------------------------


def test_natpmp_map_grants_the_suggested_port_when_free(table: MappingTable) -> None:
    result, changes = grant(table, natpmp(port=6000, lifetime=7200), now=5.0)
    assert result.mapping.external == Endpoint(EXTERNAL, 6000)
    assert result.mapping.owner == owner(Origin.NATPMP, HOST)
    assert (result.lifetime, result.mapping.expires) == (7200, 7205.0)
    assert [c.kind for c in changes] == [ChangeKind.ADDED]


def test_natpmp_map_again_returns_the_same_entry_and_refreshes_its_lease(
    table: MappingTable,
) -> None:
    first = granted(table, natpmp(port=6000, lifetime=100))
    # a renewal suggests some other port: the existing mapping wins (RFC 6886 §3.3)
    result, changes = grant(table, natpmp(port=7000, lifetime=100), now=60.0)
    assert result.mapping.uid == first.uid
    assert result.mapping.external.port == 6000
    assert result.mapping.expires == 160.0
    assert result.created is False and result.owned is True
    assert [c.kind for c in changes] == [ChangeKind.REFRESHED]
    assert len(table) == 1


@pytest.mark.parametrize(
    "holder",
    [upnp(f"{HOST}:5000", 6000), pcp(f"{HOST}:5000", 6000), static(f"{HOST}:5000", 6000)],
    ids=["upnp", "pcp", "static"],
)
def test_natpmp_map_returns_another_origins_entry_for_its_endpoint_without_refreshing_it(
    table: MappingTable, holder: MapPort
) -> None:
    held = granted(table, holder)
    result, changes = grant(table, natpmp(f"{HOST}:5000", port=9000), now=100.0)
    assert result.mapping == held
    assert result.created is False
    assert result.owned is False
    assert result.lifetime == held.remaining(100.0)
    assert changes == []
    assert list(table) == [held]


def test_natpmp_map_of_a_taken_suggested_port_gets_another_port(table: MappingTable) -> None:
    granted(table, upnp(f"{OTHER}:5000", 6000))
    mapping = granted(table, natpmp(f"{HOST}:5000", port=6000))
    assert mapping.external.port == 6001
    assert len(table) == 2


def test_natpmp_delete_removes_the_clients_mapping(table: MappingTable) -> None:
    mapping = granted(table, natpmp(f"{HOST}:5000", 6000))
    request = UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5000"))
    assert removed(table, request) == (mapping,)
    assert len(table) == 0


def test_natpmp_delete_of_nothing_succeeds(table: MappingTable) -> None:
    request = UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5000"))
    assert table.apply(request, 0.0) == (Removed(()), [])


def test_natpmp_delete_of_the_other_protocols_mapping_succeeds_as_nothing(
    table: MappingTable,
) -> None:
    granted(table, natpmp(f"{HOST}:5000", 6000, proto=Proto.UDP))
    request = UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5000"))
    assert removed(table, request) == ()
    assert len(table) == 1


@pytest.mark.parametrize(
    "holder",
    [upnp(f"{HOST}:5000", 6000), pcp(f"{HOST}:5000", 6000), static(f"{HOST}:5000", 6000)],
    ids=["upnp", "pcp", "static"],
)
def test_natpmp_delete_of_another_origins_mapping_is_refused(
    table: MappingTable, holder: MapPort
) -> None:
    held = granted(table, holder)
    request = UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5000"))
    error = refused(table, request)
    assert error.reason is Reason.NOT_OWNER
    assert error.mapping == held


def test_natpmp_delete_spares_another_origins_mapping_of_the_same_endpoint(
    table: MappingTable,
) -> None:
    mine = granted(table, natpmp(f"{HOST}:5000", 6000))
    theirs = granted(table, upnp(f"{HOST}:5000", 7000))
    request = UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5000"))
    assert removed(table, request) == (mine,)
    assert list(table) == [theirs]


def test_natpmp_delete_all_removes_only_that_clients_natpmp_mappings_of_that_protocol(
    table: MappingTable,
) -> None:
    doomed = [
        granted(table, natpmp(f"{HOST}:5000", 6000)),
        granted(table, natpmp(f"{HOST}:5001", 6001)),
    ]
    kept = [
        granted(table, natpmp(f"{HOST}:5000", 6000, proto=Proto.UDP)),
        granted(table, upnp(f"{HOST}:5002", 6002)),
        granted(table, pcp(f"{HOST}:5003", 6003)),
        granted(table, natpmp(f"{OTHER}:5000", 7000)),
    ]
    request = Flush(owner(Origin.NATPMP, HOST), proto=Proto.TCP)
    assert removed(table, request) == tuple(doomed)
    assert sorted(m.uid for m in table) == [m.uid for m in kept]


def test_a_client_flush_cannot_reach_other_clients_or_origins(table: MappingTable) -> None:
    mine = granted(table, natpmp(f"{HOST}:5000", 6000))
    others = [
        granted(table, natpmp(f"{OTHER}:5000", 7000)),
        granted(table, upnp(f"{HOST}:5001", 7001)),
    ]
    request = Flush(owner(Origin.NATPMP, HOST), client=ip_address(OTHER), origin=Origin.UPNP)
    assert removed(table, request) == (mine,)
    assert list(table) == others


def test_a_pcp_flush_spares_mappings_made_under_another_nonce(table: MappingTable) -> None:
    mine = granted(table, pcp(f"{HOST}:5000", 6000, nonce=NONCE_A))
    theirs = granted(table, pcp(f"{HOST}:5001", 6001, nonce=NONCE_B))
    assert removed(table, Flush(pcp_owner(nonce=NONCE_A))) == (mine,)
    assert list(table) == [theirs]


def test_an_admin_flush_removes_what_it_names(table: MappingTable) -> None:
    natpmp_other = granted(table, natpmp(f"{OTHER}:5000", 7000))
    upnp_host = granted(table, upnp(f"{HOST}:5001", 7001))
    natpmp_host = granted(table, natpmp(f"{HOST}:5000", 6000))
    static_host = granted(table, static(f"{HOST}:5002", 7002))
    assert removed(table, Flush(ADMIN, origin=Origin.NATPMP)) == (natpmp_other, natpmp_host)
    assert removed(table, Flush(ADMIN, client=ip_address(HOST))) == (upnp_host,)
    assert list(table) == [static_host]
    assert removed(table, Flush(ADMIN)) == (static_host,)
    assert len(table) == 0


# -- PCP -------------------------------------------------------------------------------------------


def test_pcp_map_with_the_same_nonce_refreshes_the_existing_mapping(table: MappingTable) -> None:
    first = granted(table, pcp(port=6000, lifetime=600))
    result, changes = grant(table, pcp(port=9000, lifetime=1200), now=300.0)
    assert result.mapping.uid == first.uid
    assert result.mapping.external.port == 6000
    assert (result.lifetime, result.mapping.expires) == (1200, 1500.0)
    assert result.created is False and result.owned is True
    assert [c.kind for c in changes] == [ChangeKind.REFRESHED]


def test_pcp_map_with_another_nonce_is_refused_with_the_remaining_lifetime(
    table: MappingTable,
) -> None:
    held = granted(table, pcp(port=6000, lifetime=3600))
    error = refused(table, pcp(port=6000, nonce=NONCE_B), now=600.0)
    assert error.reason is Reason.NOT_OWNER
    assert error.lifetime == 3000
    assert error.mapping == held


@pytest.mark.parametrize(
    ("holder", "lifetime"),
    [
        (upnp(f"{HOST}:5000", 6000, lifetime=3600), 3500),
        (natpmp(f"{HOST}:5000", 6000, lifetime=3600), 3500),
        (static(f"{HOST}:5000", 6000), None),
    ],
    ids=["upnp", "natpmp", "static"],
)
def test_pcp_map_meeting_another_mechanisms_entry_gets_it_without_taking_ownership(
    table: MappingTable, holder: MapPort, lifetime: int | None
) -> None:
    held = granted(table, holder)
    result, changes = grant(table, pcp(f"{HOST}:5000", port=9000), now=100.0)
    assert result.mapping == held
    assert result.owned is False and result.created is False
    assert result.lifetime == lifetime
    assert changes == []
    assert list(table) == [held]
    assert held.owner.nonce is None


def test_pcp_map_with_prefer_failure_gets_a_free_suggested_port(table: MappingTable) -> None:
    assert granted(table, pcp(port=6000, exact=True)).external.port == 6000


def test_pcp_prefer_failure_on_a_port_held_by_another_pcp_client_is_a_conflict(
    table: MappingTable,
) -> None:
    granted(table, pcp(f"{OTHER}:5000", 6000, nonce=NONCE_B))
    assert refused(table, pcp(f"{HOST}:5000", 6000, exact=True)).reason is Reason.CONFLICT


@pytest.mark.parametrize(
    "holder",
    [upnp(f"{OTHER}:5000", 6000), natpmp(f"{OTHER}:5000", 6000), static(f"{OTHER}:5000", 6000)],
    ids=["upnp", "natpmp", "static"],
)
def test_pcp_prefer_failure_on_a_port_held_by_another_mechanism_is_a_foreign_conflict(
    table: MappingTable, holder: MapPort
) -> None:
    granted(table, holder)
    error = refused(table, pcp(f"{HOST}:5000", 6000, exact=True))
    assert error.reason is Reason.CONFLICT_FOREIGN


def test_pcp_map_without_prefer_failure_gets_another_port(table: MappingTable) -> None:
    granted(table, upnp(f"{OTHER}:5000", 6000))
    assert granted(table, pcp(f"{HOST}:5000", 6000)).external.port == 6001


def test_pcp_refresh_with_a_new_filter_updates_the_kernel_entry(table: MappingTable) -> None:
    granted(table, pcp(port=6000))
    filters = remote("198.51.100.20", 443)
    result, changes = grant(table, pcp(port=6000, filters=filters), now=10.0)
    assert result.mapping.filters == filters
    assert [c.kind for c in changes] == [ChangeKind.UPDATED]
    assert changes[0].touches_kernel


def test_pcp_delete_with_the_same_nonce_removes_the_mapping(table: MappingTable) -> None:
    mapping = granted(table, pcp(port=6000))
    request = UnmapInternal(pcp_owner(), Proto.TCP, ep(f"{HOST}:5000"))
    assert removed(table, request) == (mapping,)


def test_pcp_delete_with_another_nonce_is_refused(table: MappingTable) -> None:
    held = granted(table, pcp(port=6000, lifetime=3600))
    request = UnmapInternal(pcp_owner(nonce=NONCE_B), Proto.TCP, ep(f"{HOST}:5000"))
    error = refused(table, request, now=100.0)
    assert error.reason is Reason.NOT_OWNER
    assert (error.mapping, error.lifetime) == (held, 3500)


@pytest.mark.parametrize(
    "holder",
    [upnp(f"{HOST}:5000", 6000), natpmp(f"{HOST}:5000", 6000), static(f"{HOST}:5000", 6000)],
    ids=["upnp", "natpmp", "static"],
)
def test_pcp_delete_of_another_mechanisms_mapping_is_refused(
    table: MappingTable, holder: MapPort
) -> None:
    granted(table, holder)
    request = UnmapInternal(pcp_owner(), Proto.TCP, ep(f"{HOST}:5000"))
    assert refused(table, request).reason is Reason.NOT_OWNER


# -- UPnP DeletePortMapping and DeletePortMappingRange ---------------------------------------------


def test_upnp_delete_removes_the_clients_mapping(table: MappingTable) -> None:
    mapping = granted(table, upnp())
    assert removed(table, UnmapPort(owner(Origin.UPNP, HOST), key(6000))) == (mapping,)
    assert table.by_key(key(6000)) is None


def test_upnp_delete_of_a_missing_mapping_is_not_found(table: MappingTable) -> None:
    error = refused(table, UnmapPort(owner(Origin.UPNP, HOST), key(6000)))
    assert error.reason is Reason.NOT_FOUND


@pytest.mark.parametrize(
    "holder",
    [natpmp(f"{HOST}:5000", 6000), pcp(f"{HOST}:5000", 6000), static(f"{HOST}:5000", 6000)],
    ids=["natpmp", "pcp", "static"],
)
def test_upnp_delete_of_another_mechanisms_mapping_is_refused(
    table: MappingTable, holder: MapPort
) -> None:
    held = granted(table, holder)
    error = refused(table, UnmapPort(owner(Origin.UPNP, HOST), key(6000)))
    assert error.reason is Reason.NOT_OWNER
    assert error.mapping == held


def test_upnp_delete_of_another_clients_mapping_is_refused_in_secure_mode(
    table: MappingTable,
) -> None:
    granted(table, upnp(f"{HOST}:5000", 6000))
    error = refused(table, UnmapPort(owner(Origin.UPNP, OTHER), key(6000)))
    assert error.reason is Reason.NOT_OWNER


def test_upnp_delete_of_another_clients_mapping_is_allowed_without_secure_mode() -> None:
    table = make_table(secure_mode=False)
    mapping = granted(table, upnp(f"{HOST}:5000", 6000))
    assert removed(table, UnmapPort(owner(Origin.UPNP, OTHER), key(6000))) == (mapping,)


def test_the_admin_deletes_any_mapping(table: MappingTable) -> None:
    mapping = granted(table, pcp(port=6000))
    assert removed(table, UnmapPort(ADMIN, key(6000))) == (mapping,)


def test_upnp_delete_range_removes_only_the_callers_upnp_mappings_of_that_protocol_in_range(
    table: MappingTable,
) -> None:
    doomed = [
        granted(table, upnp(f"{HOST}:5000", 6000)),
        granted(table, upnp(f"{HOST}:5001", 6500)),
    ]
    kept = [
        granted(table, upnp(f"{HOST}:5002", 6501)),
        granted(table, upnp(f"{HOST}:5003", 6100, proto=Proto.UDP)),
        granted(table, upnp(f"{OTHER}:5000", 6200)),
        granted(table, natpmp(f"{HOST}:5004", 6300)),
        granted(table, upnp(f"{HOST}:5005", 5999)),
    ]
    request = UnmapRange(owner(Origin.UPNP, HOST), Proto.TCP, 6000, 6500)
    assert removed(table, request) == tuple(doomed)
    assert sorted(m.uid for m in table) == [m.uid for m in kept]


def test_upnp_delete_range_with_start_after_end_is_a_bad_request(table: MappingTable) -> None:
    granted(table, upnp(port=6000))
    request = UnmapRange(owner(Origin.UPNP, HOST), Proto.TCP, 6001, 5999)
    assert refused(table, request).reason is Reason.BAD_REQUEST


def test_upnp_delete_range_matching_nothing_of_the_callers_is_not_found(
    table: MappingTable,
) -> None:
    granted(table, upnp(f"{OTHER}:5000", 6000))
    granted(table, natpmp(f"{HOST}:5000", 6001))
    request = UnmapRange(owner(Origin.UPNP, HOST), Proto.TCP, 1, 65535)
    assert refused(table, request).reason is Reason.NOT_FOUND


# -- who may map what: secure mode, the admin, reserved ports, the ACL -----------------------------


def test_secure_mode_refuses_a_mapping_to_another_host(table: MappingTable) -> None:
    request = upnp(f"{OTHER}:5000", 6000, client=HOST)
    assert refused(table, request).reason is Reason.THIRD_PARTY


def test_without_secure_mode_a_client_may_map_for_another_lan_host() -> None:
    table = make_table(secure_mode=False)
    mapping = granted(table, upnp(f"{OTHER}:5000", 6000, client=HOST))
    assert mapping.internal.address == ip_address(OTHER)
    assert mapping.owner.client == ip_address(HOST)


def test_pcp_third_party_is_refused_unless_allowed() -> None:
    third = Owner(Origin.PCP, ip_address(HOST), NONCE_A, third_party=True)
    request = MapPort(third, Proto.TCP, ep(f"{OTHER}:5000"), 6000, 600)
    assert refused(make_table(secure_mode=False), request).reason is Reason.THIRD_PARTY
    assert granted(make_table(allow_third_party=True), request).internal == ep(f"{OTHER}:5000")


def test_the_admin_bypasses_the_acl_and_secure_mode(table: MappingTable) -> None:
    mapping = granted(table, static(f"{OTHER}:22", 22))
    assert mapping.key == key(22)
    assert mapping.expires is None


def test_the_admin_may_not_map_a_reserved_port(table: MappingTable) -> None:
    request = static(f"{HOST}:5351", 5351, proto=Proto.UDP)
    assert refused(table, request).reason is Reason.RESERVED_PORT


@pytest.mark.parametrize("port", [5350, 5351])
def test_reserved_udp_ports_are_never_granted(table: MappingTable, port: int) -> None:
    request = upnp(f"{HOST}:{port}", port, proto=Proto.UDP)
    assert refused(table, request).reason is Reason.RESERVED_PORT
    pcp_request = pcp(f"{HOST}:{port}", port, proto=Proto.UDP, exact=True)
    assert refused(table, pcp_request).reason is Reason.RESERVED_PORT


@pytest.mark.parametrize(("wanted", "given"), [(5350, 5349), (5351, 5352)])
def test_reserved_udp_ports_are_never_allocated(
    table: MappingTable, wanted: int, given: int
) -> None:
    mapping = granted(table, natpmp(f"{HOST}:{wanted}", wanted, proto=Proto.UDP))
    assert mapping.external.port == given


def test_the_reserved_udp_ports_are_free_for_tcp(table: MappingTable) -> None:
    assert granted(table, upnp(f"{HOST}:5351", 5351, proto=Proto.TCP)).external.port == 5351


def test_configured_reserved_ports_are_refused_and_skipped_ties_going_above() -> None:
    table = make_table(reserved_tcp_ports=(PortRange(8000, 8100),))
    assert refused(table, upnp(port=8050)).reason is Reason.RESERVED_PORT
    # 7999 and 8101 are both 51 away from 8050: the port above wins the tie
    assert granted(table, natpmp(port=8050)).external.port == 8101


def test_allocation_stays_inside_the_ports_the_acl_allows() -> None:
    rules = (Rule(action="allow", external_ports=PortRange(5349, 5352), proto="udp"),)
    table = make_table(rules=rules)
    given = [
        granted(table, natpmp(f"{HOST}:{port}", 0, proto=Proto.UDP)).external.port
        for port in (5000, 5001)
    ]
    assert sorted(given) == [5349, 5352]
    assert refused(table, natpmp(f"{HOST}:5002", proto=Proto.UDP)).reason is Reason.NO_PORTS


@pytest.mark.parametrize("port", [22, 80, 1023])
def test_the_default_rules_refuse_external_ports_below_1024(table: MappingTable, port: int) -> None:
    # refused for that port alone: the rules allow the host other ports (PCP then answers
    # CANNOT_PROVIDE_EXTERNAL rather than NOT_AUTHORIZED)
    assert refused(table, upnp(f"{HOST}:{port}", port)).reason is Reason.PORT_DENIED
    assert refused(table, pcp(f"{HOST}:{port}", port, exact=True)).reason is Reason.PORT_DENIED


def test_a_low_port_request_without_exact_gets_the_first_unprivileged_port(
    table: MappingTable,
) -> None:
    assert granted(table, upnp(f"{HOST}:80", 80, exact=False)).external.port == 1024
    assert granted(table, natpmp(f"{HOST}:81", 81)).external.port == 1025


def test_the_default_rules_allow_low_internal_ports(table: MappingTable) -> None:
    assert granted(table, upnp(f"{HOST}:22", 2222)).internal.port == 22


def test_with_no_rules_the_default_action_decides() -> None:
    denied = make_table(rules=(), default="deny")
    assert refused(denied, upnp(port=6000)).reason is Reason.POLICY_DENIED
    assert refused(denied, natpmp(port=6000)).reason is Reason.NO_PORTS
    allowed = make_table(rules=(), default="allow")
    assert granted(allowed, upnp(f"{HOST}:80", 80)).external.port == 80


def test_the_first_matching_rule_wins() -> None:
    deny_first = (
        Rule(action="deny", external_ports=PortRange(7000, 7999)),
        Rule(action="allow"),
    )
    table = make_table(rules=deny_first)
    assert refused(table, upnp(port=7000)).reason is Reason.PORT_DENIED
    assert granted(table, upnp(port=8000)).external.port == 8000
    table = make_table(rules=tuple(reversed(deny_first)))
    assert granted(table, upnp(port=7000)).external.port == 7000


def test_a_rule_applies_only_to_its_protocol() -> None:
    table = make_table(rules=(Rule(action="allow", proto="udp"),))
    assert refused(table, upnp(port=6000, proto=Proto.TCP)).reason is Reason.POLICY_DENIED
    assert granted(table, upnp(port=6000, proto=Proto.UDP)).proto is Proto.UDP


def test_a_rule_applies_only_to_its_internal_ports() -> None:
    table = make_table(rules=(Rule(action="allow", internal_ports=PortRange(1024, 65535)),))
    assert refused(table, upnp(f"{HOST}:22", 2222)).reason is Reason.POLICY_DENIED
    assert granted(table, upnp(f"{HOST}:2222", 2222)).internal.port == 2222


def test_an_update_in_place_cannot_move_a_mapping_to_an_internal_port_the_acl_denies() -> None:
    table = make_table(rules=(Rule(action="allow", internal_ports=PortRange(1024, 65535)),))
    held = granted(table, upnp(f"{HOST}:2222", 6000))
    assert refused(table, upnp(f"{HOST}:22", 6000)).reason is Reason.POLICY_DENIED
    assert table.by_key(key(6000)) == held


def test_add_any_moving_a_mapping_to_a_denied_internal_port_gets_a_new_allowed_port() -> None:
    rules = (
        Rule(
            action="deny", internal_ports=PortRange(1, 1023), external_ports=PortRange(6000, 6999)
        ),
        Rule(action="allow"),
    )
    table = make_table(rules=rules)
    held = granted(table, upnp(f"{HOST}:2222", 6000))
    moved = granted(table, upnp(f"{HOST}:22", 6000, exact=False))
    assert (moved.external.port, moved.internal.port) == (5999, 22)
    assert table.by_key(key(6000)) == held


def test_a_rule_applies_only_to_its_internal_hosts() -> None:
    rules = (Rule(action="allow", internal=IPv4Network("192.168.1.0/28")),)
    table = make_table(rules=rules, secure_mode=False)
    assert granted(table, upnp(f"{HOST}:5000", 6000)).internal.address == ip_address(HOST)
    assert refused(table, upnp("192.168.1.20:5000", 6001)).reason is Reason.POLICY_DENIED


def test_a_lan_rule_covers_every_lan_host() -> None:
    table = make_table(rules=(Rule(action="allow", internal=None),), default="deny")
    assert granted(table, upnp("192.168.1.200:5000", 6000)).external.port == 6000


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",  # outside the LAN
        "192.168.1.1",  # the gateway itself
        "192.168.1.0",  # the network address
        "192.168.1.255",  # the broadcast address
        "224.0.0.251",  # multicast
        "127.0.0.1",  # loopback
        "0.0.0.0",  # unspecified
        "255.255.255.255",  # limited broadcast
        "169.254.10.1",  # link-local
    ],
)
def test_mappings_to_addresses_that_are_not_lan_hosts_are_denied(address: str) -> None:
    table = make_table(secure_mode=False)
    request = upnp(f"{address}:5000", 6000, client=HOST)
    assert refused(table, request).reason is Reason.POLICY_DENIED
    assert refused(table, static(f"{address}:5000", 6000)).reason is Reason.POLICY_DENIED


@pytest.mark.parametrize("client", ["10.0.0.5", "192.168.1.1", "198.51.100.9"])
def test_requests_from_outside_the_lan_or_from_the_gateway_are_refused(
    table: MappingTable, client: str
) -> None:
    request = MapPort(owner(Origin.NATPMP, client), Proto.TCP, ep(f"{HOST}:5000"), 0, 60)
    assert refused(table, request).reason is Reason.NOT_LAN


# -- quotas and missing external address -----------------------------------------------------------


def test_a_client_over_its_quota_is_refused_and_others_are_not() -> None:
    table = make_table(max_mappings_per_client=2)
    granted(table, upnp(f"{HOST}:5000", 6000))
    granted(table, natpmp(f"{HOST}:5001", 6001))
    assert refused(table, upnp(f"{HOST}:5002", 6002)).reason is Reason.QUOTA
    assert refused(table, natpmp(f"{HOST}:5002")).reason is Reason.QUOTA
    assert refused(table, pcp(f"{HOST}:5002")).reason is Reason.QUOTA
    granted(table, upnp(f"{OTHER}:5000", 7000))


def test_pinholes_count_against_the_quota() -> None:
    table = make_table(max_mappings_per_client=1)
    granted(table, pinhole(f"[{HOST6}]:5000"))
    assert refused(table, pinhole(f"[{HOST6}]:5001")).reason is Reason.QUOTA


def test_quota_does_not_stop_refreshing_or_updating_a_mapping() -> None:
    table = make_table(max_mappings_per_client=1)
    granted(table, upnp(f"{HOST}:5000", 6000))
    assert granted(table, upnp(f"{HOST}:5001", 6000), now=5.0).internal.port == 5001


def test_a_deletion_makes_room_within_the_quota() -> None:
    table = make_table(max_mappings_per_client=1)
    granted(table, upnp(f"{HOST}:5000", 6000))
    removed(table, UnmapPort(owner(Origin.UPNP, HOST), key(6000)))
    assert granted(table, upnp(f"{HOST}:5001", 6001)).external.port == 6001


def test_a_full_table_refuses_every_client_but_the_admin() -> None:
    table = make_table(max_mappings=2)
    granted(table, upnp(f"{HOST}:5000", 6000))
    granted(table, pinhole(f"[{OTHER6}]:5000"))
    assert refused(table, upnp(f"{OTHER}:5000", 7000)).reason is Reason.TABLE_FULL
    assert refused(table, pinhole(f"[{HOST6}]:5000")).reason is Reason.TABLE_FULL
    assert granted(table, static(f"{OTHER}:5000", 7000)).external.port == 7000


def test_mapping_without_an_external_address_is_refused() -> None:
    table = MappingTable(make_policy(), Allocator(random.Random(1)), None)
    assert refused(table, upnp()).reason is Reason.NO_EXTERNAL_ADDRESS
    assert refused(table, natpmp()).reason is Reason.NO_EXTERNAL_ADDRESS
    assert table.apply(GetExternalAddress(), 0.0) == (ExternalAddress(None), [])
    # IPv6 pinholes need no external IPv4 address
    assert granted(table, pinhole()).kind is Kind.PINHOLE


# -- lifetimes (protocols.md §7.3) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "lifetimes", "granted_lifetime"),
    [
        (upnp(lifetime=0, upnp_v1=True), LifetimeConfig(), None),
        (upnp(lifetime=0, upnp_v1=True), LifetimeConfig(upnp_v1_permanent=False), 604800),
        (
            upnp(lifetime=0, upnp_v1=True),
            LifetimeConfig(upnp_v1_permanent=False, upnp_max=3600),
            3600,
        ),
        (upnp(lifetime=5000, upnp_v1=True), LifetimeConfig(upnp_max=3600), 3600),
        (upnp(lifetime=0), LifetimeConfig(), 604800),
        (upnp(lifetime=604801), LifetimeConfig(), 604800),
        (upnp(lifetime=10**9), LifetimeConfig(upnp_max=10**9), 604800),
        (upnp(lifetime=7200), LifetimeConfig(), 7200),
        (natpmp(lifetime=100000), LifetimeConfig(), 86400),
        (natpmp(lifetime=7200), LifetimeConfig(natpmp_max=3600), 3600),
        (natpmp(lifetime=1), LifetimeConfig(), 1),
        (pcp(lifetime=30), LifetimeConfig(), 120),
        (pcp(lifetime=100000), LifetimeConfig(), 86400),
        (pcp(lifetime=5000), LifetimeConfig(pcp_min=600, pcp_max=3600), 3600),
        (pcp(lifetime=300), LifetimeConfig(pcp_min=600, pcp_max=3600), 600),
        (static(lifetime=0), LifetimeConfig(), None),
        (static(lifetime=10**6), LifetimeConfig(), 10**6),
    ],
    ids=[
        "upnp-v1-0-permanent",
        "upnp-v1-0-max",
        "upnp-v1-0-policy-max",
        "upnp-v1-clamped",
        "upnp-v2-0",
        "upnp-v2-over-week",
        "upnp-v2-week-cap",
        "upnp-v2-as-asked",
        "natpmp-clamped",
        "natpmp-policy-max",
        "natpmp-as-asked",
        "pcp-min",
        "pcp-max",
        "pcp-policy-max",
        "pcp-policy-min",
        "static-0",
        "static-long",
    ],
)
def test_lifetimes_are_clamped_per_origin(
    request_: MapPort, lifetimes: LifetimeConfig, granted_lifetime: int | None
) -> None:
    table = make_table(lifetimes=lifetimes)
    result, _ = grant(table, request_, now=1000.0)
    assert result.lifetime == granted_lifetime
    assert result.mapping.lifetime == granted_lifetime
    expected_expiry = None if granted_lifetime is None else 1000.0 + granted_lifetime
    assert result.mapping.expires == expected_expiry


@pytest.mark.parametrize("request_", [natpmp(lifetime=0), pcp(lifetime=0)], ids=["natpmp", "pcp"])
def test_lifetime_zero_cannot_create_a_natpmp_or_pcp_mapping(
    table: MappingTable, request_: MapPort
) -> None:
    assert refused(table, request_).reason is Reason.BAD_LIFETIME


def test_a_negative_lifetime_is_refused(table: MappingTable) -> None:
    assert refused(table, upnp(lifetime=-1)).reason is Reason.BAD_LIFETIME


# -- expiry ----------------------------------------------------------------------------------------


def test_a_mapping_expires_exactly_at_its_deadline(table: MappingTable) -> None:
    mapping = granted(table, natpmp(lifetime=100), now=0.0)
    assert table.expire(99.9) == []
    assert table.expire(100.0) == [Change(ChangeKind.EXPIRED, mapping, None)]
    assert len(table) == 0
    assert refused(table, GetMapping(mapping.key), now=100.0).reason is Reason.NOT_FOUND


def test_next_deadline_is_the_earliest_expiry_and_ignores_permanent_entries(
    table: MappingTable,
) -> None:
    assert table.next_deadline() is None
    granted(table, static(port=6000))
    assert table.next_deadline() is None
    granted(table, natpmp(f"{HOST}:5001", lifetime=500), now=10.0)
    granted(table, natpmp(f"{HOST}:5002", lifetime=200), now=20.0)
    assert table.next_deadline() == 220.0


def test_a_refresh_moves_the_deadline(table: MappingTable) -> None:
    granted(table, natpmp(lifetime=100), now=0.0)
    granted(table, natpmp(lifetime=100), now=60.0)
    assert table.next_deadline() == 160.0
    assert table.expire(100.0) == []
    assert [c.kind for c in table.expire(160.0)] == [ChangeKind.EXPIRED]


def test_a_deleted_mapping_leaves_no_deadline_behind(table: MappingTable) -> None:
    granted(table, natpmp(lifetime=100))
    removed(table, UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5000")))
    assert table.next_deadline() is None
    assert table.expire(1000.0) == []


def test_nothing_outlives_its_lease(table: MappingTable) -> None:
    lifetimes = [300, 100, 200, 100, 7200]
    for port, lifetime in enumerate(lifetimes, start=5000):
        granted(table, natpmp(f"{HOST}:{port}", lifetime=lifetime))
    granted(table, static(f"{OTHER}:5000", 6000))
    granted(table, pinhole(lifetime=150))
    changes = table.expire(200.0)
    assert all(c.kind is ChangeKind.EXPIRED for c in changes)
    assert sorted(c.mapping.expires or 0 for c in changes) == [100.0, 100.0, 150.0, 200.0]
    assert all(m.expires is None or m.expires > 200.0 for m in table)
    assert table.next_deadline() == 300.0


# -- reading the table -----------------------------------------------------------------------------


def test_get_by_index_walks_port_mappings_in_creation_order(table: MappingTable) -> None:
    made = [
        granted(table, upnp(f"{HOST}:5000", 7000)),
        granted(table, natpmp(f"{HOST}:5001", 6000)),
        granted(table, upnp(f"{HOST}:5002", 6500, proto=Proto.UDP)),
    ]
    granted(table, pinhole())
    granted(table, upnp(f"{HOST}:5003", 7000))  # an update keeps its place
    walked = []
    for index in range(3):
        result, changes = table.apply(GetMappingByIndex(index), 0.0)
        assert isinstance(result, Found) and changes == []
        walked.append(result.mapping.uid)
    assert walked == [m.uid for m in made]
    assert refused(table, GetMappingByIndex(3)).reason is Reason.NOT_FOUND
    assert refused(table, GetMappingByIndex(-1)).reason is Reason.NOT_FOUND


def test_get_by_index_skips_removed_mappings(table: MappingTable) -> None:
    first = granted(table, upnp(f"{HOST}:5000", 6000))
    second = granted(table, upnp(f"{HOST}:5001", 6001))
    removed(table, UnmapPort(owner(Origin.UPNP, HOST), first.key))
    assert table.apply(GetMappingByIndex(0), 0.0) == (Found(second, 3600), [])
    assert refused(table, GetMappingByIndex(1)).reason is Reason.NOT_FOUND


def test_get_mapping_finds_by_external_key_with_the_remaining_lease(table: MappingTable) -> None:
    mapping = granted(table, upnp(lifetime=3600), now=0.0)
    assert table.apply(GetMapping(key(6000)), 600.4) == (Found(mapping, 3000), [])
    assert refused(table, GetMapping(key(6000, Proto.UDP))).reason is Reason.NOT_FOUND
    assert refused(table, GetMapping(key(6001))).reason is Reason.NOT_FOUND


def test_get_mapping_reports_permanent_entries_without_a_lifetime(table: MappingTable) -> None:
    mapping = granted(table, static())
    assert table.apply(GetMapping(key(6000)), 10**6) == (Found(mapping, None), [])


def test_get_by_uid_finds_mappings_and_pinholes(table: MappingTable) -> None:
    mapping = granted(table, upnp())
    hole = granted(table, pinhole(lifetime=100))
    assert table.apply(GetByUid(mapping.uid), 0.0) == (Found(mapping, 3600), [])
    assert table.apply(GetByUid(hole.uid), 40.0) == (Found(hole, 60), [])
    assert refused(table, GetByUid(hole.uid + 1)).reason is Reason.NOT_FOUND


def test_list_is_sorted_by_protocol_and_port(table: MappingTable) -> None:
    granted(table, upnp(f"{HOST}:5000", 7000))
    granted(table, upnp(f"{HOST}:5001", 6000, proto=Proto.UDP))
    granted(table, natpmp(f"{OTHER}:5000", 6000))
    granted(table, upnp(f"{HOST}:5002", 6500))
    granted(table, pinhole())
    result, changes = table.apply(ListMappings(), 5.0)
    assert isinstance(result, Listing) and changes == []
    assert result.now == 5.0
    assert [(m.proto, m.external.port) for m in result.mappings] == [
        (Proto.TCP, 6000),
        (Proto.TCP, 6500),
        (Proto.TCP, 7000),
        (Proto.UDP, 6000),
    ]


def test_list_filters_by_protocol_range_client_and_limit(table: MappingTable) -> None:
    granted(table, upnp(f"{HOST}:5000", 7000))
    granted(table, upnp(f"{HOST}:5001", 6000, proto=Proto.UDP))
    granted(table, natpmp(f"{OTHER}:5000", 6000))
    granted(table, upnp(f"{HOST}:5002", 6500))

    def listed(request: ListMappings) -> list[tuple[str, int]]:
        result, _ = table.apply(request, 0.0)
        assert isinstance(result, Listing)
        return [(m.proto.value, m.external.port) for m in result.mappings]

    assert listed(ListMappings(proto=Proto.UDP)) == [("udp", 6000)]
    assert listed(ListMappings(start=6000, end=6500)) == [
        ("tcp", 6000),
        ("tcp", 6500),
        ("udp", 6000),
    ]
    assert listed(ListMappings(client=ip_address(HOST), proto=Proto.TCP)) == [
        ("tcp", 6500),
        ("tcp", 7000),
    ]
    assert listed(ListMappings(limit=2)) == [("tcp", 6000), ("tcp", 6500)]
    assert listed(ListMappings(client=ip_address("192.168.1.99"))) == []
    here = Endpoint(ip_address(HOST), 5001)
    assert listed(ListMappings(internal=here)) == [("udp", 6000)]
    assert listed(ListMappings(internal=here, proto=Proto.TCP)) == []
    there = Endpoint(ip_address(OTHER), 5000)
    assert listed(ListMappings(internal=there)) == [("tcp", 6000)]
    assert listed(ListMappings(internal=there, client=ip_address(HOST))) == []


def test_list_includes_pinholes_only_when_asked(table: MappingTable) -> None:
    mapping = granted(table, upnp())
    hole = granted(table, pinhole())
    result, _ = table.apply(ListMappings(include_pinholes=True), 0.0)
    assert isinstance(result, Listing)
    assert set(result.mappings) == {mapping, hole}


def test_get_external_address_reports_the_current_address(table: MappingTable) -> None:
    assert table.apply(GetExternalAddress(), 0.0) == (ExternalAddress(EXTERNAL), [])
    table.set_external_address(NEW_EXTERNAL)
    assert table.apply(GetExternalAddress(), 0.0) == (ExternalAddress(NEW_EXTERNAL), [])


# -- external address changes ----------------------------------------------------------------------


def test_a_new_external_address_rehomes_every_port_mapping_and_keeps_pinholes(
    table: MappingTable,
) -> None:
    maps = [granted(table, upnp(port=6000)), granted(table, natpmp(f"{HOST}:5001", 7000))]
    hole = granted(table, pinhole())
    changes = table.set_external_address(NEW_EXTERNAL)
    assert [c.kind for c in changes] == [ChangeKind.UPDATED, ChangeKind.UPDATED]
    assert [c.before for c in changes] == maps
    for before, change in zip(maps, changes, strict=True):
        assert change.after == replace(before, key=key(before.external.port, address=NEW_EXTERNAL))
    assert table.by_key(key(6000)) is None
    assert table.by_key(key(6000, address=NEW_EXTERNAL)) == changes[0].after
    assert table.get(hole.uid) == hole
    # new mappings use the new address, and the old ports stay taken
    assert granted(table, natpmp(f"{HOST}:5002", 6000)).external == Endpoint(NEW_EXTERNAL, 6001)


def test_setting_the_same_external_address_again_changes_nothing(table: MappingTable) -> None:
    granted(table, upnp())
    assert table.set_external_address(EXTERNAL) == []


def test_restored_mappings_are_rehomed_to_the_current_external_address(
    table: MappingTable,
) -> None:
    old = Mapping(
        uid=41,
        kind=Kind.PORT_MAP,
        key=key(6000, address=NEW_EXTERNAL),
        internal=ep(f"{HOST}:5000"),
        owner=owner(Origin.UPNP, HOST),
    )
    assert table.restore([old]) == []
    changes = table.set_external_address(EXTERNAL)
    assert changes == [Change(ChangeKind.UPDATED, old, replace(old, key=key(6000)))]
    assert table.by_key(key(6000)) == replace(old, key=key(6000))


def test_losing_the_external_address_keeps_mappings_and_refuses_new_ones(
    table: MappingTable,
) -> None:
    mapping = granted(table, upnp())
    assert table.set_external_address(None) == []
    assert list(table) == [mapping]
    assert refused(table, natpmp(f"{HOST}:5001")).reason is Reason.NO_EXTERNAL_ADDRESS
    # and the refresh of an existing one too: nothing can be granted without an address
    assert refused(table, upnp()).reason is Reason.NO_EXTERNAL_ADDRESS


# -- IPv6 pinholes ---------------------------------------------------------------------------------


def test_a_pinhole_opens_to_an_ipv6_host(table: MappingTable) -> None:
    result, changes = grant(table, pinhole(lifetime=600), now=1.0)
    hole = result.mapping
    assert hole.kind is Kind.PINHOLE
    assert hole.internal == ep(f"[{HOST6}]:5000")
    assert hole.key == MappingKey(Proto.TCP, ep(f"[{HOST6}]:5000"))
    assert (result.lifetime, hole.expires) == (600, 601.0)
    assert [c.kind for c in changes] == [ChangeKind.ADDED]
    assert table.by_key(hole.key) is None  # pinholes are not port mappings


def test_a_pinhole_needs_an_ipv6_internal_address(table: MappingTable) -> None:
    assert refused(table, pinhole(f"{HOST}:5000")).reason is Reason.UNSUPPORTED


@pytest.mark.parametrize("lifetime", [0, 86401, -1])
def test_a_upnp_pinhole_lease_outside_1_to_86400_is_refused(
    table: MappingTable, lifetime: int
) -> None:
    assert refused(table, pinhole(lifetime=lifetime)).reason is Reason.BAD_LIFETIME


@pytest.mark.parametrize("lifetime", [1, 86400])
def test_a_upnp_pinhole_lease_at_the_limits_is_granted(table: MappingTable, lifetime: int) -> None:
    assert grant(table, pinhole(lifetime=lifetime))[0].lifetime == lifetime


def test_a_upnp_pinhole_lease_is_capped_by_the_policy() -> None:
    table = make_table(lifetimes=LifetimeConfig(pinhole_max=3600))
    assert grant(table, pinhole(lifetime=7200))[0].lifetime == 3600


def test_the_same_pinhole_by_the_same_client_is_refreshed_under_the_same_uid(
    table: MappingTable,
) -> None:
    first = granted(table, pinhole(lifetime=600), now=0.0)
    result, changes = grant(table, pinhole(lifetime=600), now=300.0)
    assert result.mapping.uid == first.uid
    assert result.mapping.expires == 900.0
    assert result.created is False
    assert [c.kind for c in changes] == [ChangeKind.REFRESHED]
    assert len(table) == 1


def test_pinholes_differing_in_remote_host_are_separate(table: MappingTable) -> None:
    wildcard = granted(table, pinhole())
    narrow = granted(table, pinhole(filters=remote("2001:db8:ffff::1")))
    assert wildcard.uid != narrow.uid
    assert len(table) == 2


def test_a_pinhole_to_another_host_is_refused_in_secure_mode(table: MappingTable) -> None:
    assert refused(table, pinhole(f"[{HOST6}]:5000", client=OTHER6)).reason is Reason.THIRD_PARTY


def test_a_upnp_pinhole_matching_a_pcp_pinhole_is_not_the_clients(table: MappingTable) -> None:
    held = granted(table, pinhole(origin=Origin.PCP, nonce=NONCE_A))
    error = refused(table, pinhole())
    assert error.reason is Reason.NOT_OWNER
    assert error.mapping == held


def test_update_pinhole_gives_the_owner_a_new_lease(table: MappingTable) -> None:
    hole = granted(table, pinhole(lifetime=600), now=0.0)
    request = UpdatePinhole(owner(Origin.UPNP, HOST6), hole.uid, 1200)
    result, changes = grant(table, request, now=100.0)
    assert result.mapping.uid == hole.uid
    assert (result.lifetime, result.mapping.expires) == (1200, 1300.0)
    assert [c.kind for c in changes] == [ChangeKind.REFRESHED]
    assert table.next_deadline() == 1300.0


def test_update_pinhole_checks_owner_existence_and_lease(table: MappingTable) -> None:
    hole = granted(table, pinhole(lifetime=600))
    mapping = granted(table, upnp())
    other = UpdatePinhole(owner(Origin.UPNP, OTHER6), hole.uid, 600)
    assert refused(table, other).reason is Reason.NOT_OWNER
    missing = UpdatePinhole(owner(Origin.UPNP, HOST6), hole.uid + 100, 600)
    assert refused(table, missing).reason is Reason.NOT_FOUND
    not_a_pinhole = UpdatePinhole(owner(Origin.UPNP, HOST), mapping.uid, 600)
    assert refused(table, not_a_pinhole).reason is Reason.NOT_FOUND
    too_long = UpdatePinhole(owner(Origin.UPNP, HOST6), hole.uid, 86401)
    assert refused(table, too_long).reason is Reason.BAD_LIFETIME


def test_close_pinhole_removes_the_owners_pinhole(table: MappingTable) -> None:
    hole = granted(table, pinhole())
    assert removed(table, ClosePinhole(owner(Origin.UPNP, HOST6), hole.uid)) == (hole,)
    assert refused(table, GetByUid(hole.uid)).reason is Reason.NOT_FOUND


def test_close_pinhole_of_another_client_is_refused_with_the_remaining_lease(
    table: MappingTable,
) -> None:
    hole = granted(table, pinhole(lifetime=600), now=0.0)
    error = refused(table, ClosePinhole(owner(Origin.UPNP, OTHER6), hole.uid), now=100.0)
    assert error.reason is Reason.NOT_OWNER
    assert error.lifetime == 500


def test_close_pinhole_of_a_missing_uid_or_a_port_mapping_is_not_found(
    table: MappingTable,
) -> None:
    mapping = granted(table, upnp())
    request = ClosePinhole(owner(Origin.UPNP, HOST), mapping.uid)
    assert refused(table, request).reason is Reason.NOT_FOUND
    request = ClosePinhole(owner(Origin.UPNP, HOST6), mapping.uid + 1)
    assert refused(table, request).reason is Reason.NOT_FOUND


def test_a_pcp_pinhole_with_the_same_nonce_is_refreshed(table: MappingTable) -> None:
    first = granted(table, pinhole(origin=Origin.PCP, nonce=NONCE_A, lifetime=600), now=0.0)
    result, changes = grant(
        table, pinhole(origin=Origin.PCP, nonce=NONCE_A, lifetime=900), now=60.0
    )
    assert result.mapping.uid == first.uid
    assert result.mapping.expires == 960.0
    assert [c.kind for c in changes] == [ChangeKind.REFRESHED]


def test_a_pcp_pinhole_with_another_nonce_is_refused_with_the_remaining_lease(
    table: MappingTable,
) -> None:
    held = granted(table, pinhole(origin=Origin.PCP, nonce=NONCE_A, lifetime=600), now=0.0)
    error = refused(table, pinhole(origin=Origin.PCP, nonce=NONCE_B), now=200.0)
    assert error.reason is Reason.NOT_OWNER
    assert (error.mapping, error.lifetime) == (held, 400)


def test_a_pcp_pinhole_lease_is_clamped_like_pcp_mappings(table: MappingTable) -> None:
    assert grant(table, pinhole(origin=Origin.PCP, nonce=NONCE_A, lifetime=30))[0].lifetime == 120
    request = pinhole(f"[{HOST6}]:5001", origin=Origin.PCP, nonce=NONCE_A, lifetime=0)
    assert refused(table, request).reason is Reason.BAD_LIFETIME


def test_a_pcp_pinhole_is_deleted_with_its_nonce_only(table: MappingTable) -> None:
    hole = granted(table, pinhole(origin=Origin.PCP, nonce=NONCE_A))
    internal = ep(f"[{HOST6}]:5000")
    other = UnmapInternal(owner(Origin.PCP, HOST6, NONCE_B), Proto.TCP, internal)
    assert refused(table, other).reason is Reason.NOT_OWNER
    mine = UnmapInternal(owner(Origin.PCP, HOST6, NONCE_A), Proto.TCP, internal)
    assert removed(table, mine) == (hole,)


# -- rollback --------------------------------------------------------------------------------------


POPULATED_PINHOLE_UID = 1  # pinholes take ids in 1-65535, port maps from 65536


def _populated() -> MappingTable:
    table = make_table(secure_mode=False)
    granted(table, upnp(f"{HOST}:5000", 6000, lifetime=100))
    granted(table, natpmp(f"{HOST}:5001", 6001, lifetime=200))
    granted(table, pcp(f"{OTHER}:5000", 6002, lifetime=300))
    granted(table, static(f"{OTHER}:5001", 6003))
    assert granted(table, pinhole(lifetime=400)).uid == POPULATED_PINHOLE_UID
    return table


def _observable(table: MappingTable) -> object:
    """Everything a client could learn from the table."""
    listing, _ = table.apply(ListMappings(include_pinholes=True), 0.0)
    assert isinstance(listing, Listing)
    by_index = []
    index = 0
    while True:
        try:
            found, _ = table.apply(GetMappingByIndex(index), 0.0)
        except GatewayError:
            break
        assert isinstance(found, Found)
        by_index.append(found.mapping.uid)
        index += 1
    return (
        contents(table),
        listing.mappings,
        by_index,
        table.next_deadline(),
        {m.key: table.by_key(m.key) for m in table},
        {c: table.count_for(ip_address(c)) for c in (HOST, OTHER, HOST6)},
        len(table),
    )


@pytest.mark.parametrize(
    "request_",
    [
        upnp(f"{OTHER}:5002", 7000),
        upnp(f"{HOST}:5009", 6000, description="moved"),
        upnp(f"{HOST}:5000", 6000, lifetime=5000),
        natpmp(f"{HOST}:5001", lifetime=900),
        pcp(f"{OTHER}:5000", lifetime=900),
        UnmapPort(ADMIN, key(6000)),
        UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5001")),
        UnmapRange(owner(Origin.UPNP, HOST), Proto.TCP, 1, 65535),
        Flush(ADMIN),
        pinhole(lifetime=50),
        ClosePinhole(ADMIN, POPULATED_PINHOLE_UID),
    ],
    ids=[
        "add",
        "update",
        "refresh",
        "natpmp-refresh",
        "pcp-refresh",
        "delete",
        "unmap-internal",
        "unmap-range",
        "flush",
        "pinhole-refresh",
        "pinhole-close",
    ],
)
def test_revert_restores_the_exact_previous_table(request_: Request) -> None:
    table = _populated()
    before = _observable(table)
    _, changes = table.apply(request_, 50.0)
    assert changes
    assert _observable(table) != before
    table.revert(changes)
    assert _observable(table) == before


def test_revert_undoes_expiry_and_rehoming() -> None:
    table = _populated()
    before = _observable(table)
    changes = table.expire(250.0)
    changes += table.set_external_address(NEW_EXTERNAL)
    assert len(changes) == 2 + 2
    table.revert(changes)
    table.set_external_address(EXTERNAL)  # revert leaves the address itself to the caller
    assert _observable(table) == before


def test_a_reverted_add_does_not_give_its_uid_away(table: MappingTable) -> None:
    _, changes = grant(table, upnp(port=6000))
    table.revert(changes)
    assert len(table) == 0
    assert granted(table, upnp(port=6000)).uid > changes[0].mapping.uid


def test_a_reverted_delete_is_found_again_by_its_internal_endpoint(table: MappingTable) -> None:
    mapping = granted(table, natpmp(port=6000, lifetime=100))
    request = UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5000"))
    _, changes = table.apply(request, 10.0)
    table.revert(changes)
    refreshed = granted(table, natpmp(port=0, lifetime=100), now=20.0)
    assert (refreshed.uid, refreshed.external) == (mapping.uid, mapping.external)


def test_add_any_for_another_internal_port_gets_its_own_port(table: MappingTable) -> None:
    first = granted(table, upnp(f"{HOST}:5000", 6000))
    second = granted(table, upnp(f"{HOST}:5001", 6000, exact=False))
    assert second.external.port != 6000
    assert table.get(first.uid) == first  # the first mapping is untouched
    again = table.apply(upnp(f"{HOST}:5000", 6000, exact=False, lifetime=60), 0.0)[0]
    assert isinstance(again, Granted) and again.mapping.uid == first.uid  # same one: refreshed


def test_delete_range_touches_others_only_when_asked_to_manage_and_allowed() -> None:
    table = make_table(secure_mode=False)
    mine = granted(table, upnp(f"{HOST}:5000", 6000))
    theirs = granted(table, upnp(f"{OTHER}:5000", 6001, client=OTHER))
    result, _ = table.apply(UnmapRange(owner(Origin.UPNP, HOST), Proto.TCP, 6000, 6001), 0.0)
    assert isinstance(result, Removed) and [m.uid for m in result.mappings] == [mine.uid]
    result, _ = table.apply(
        UnmapRange(owner(Origin.UPNP, HOST), Proto.TCP, 6000, 6001, manage=True), 0.0
    )
    assert isinstance(result, Removed) and [m.uid for m in result.mappings] == [theirs.uid]


# -- NAT-PMP companion ports (RFC 6886 §3.3) -----------------------------------------------------


def test_a_natpmp_mapping_keeps_the_other_transport_s_port_from_other_hosts(
    table: MappingTable,
) -> None:
    held = granted(table, natpmp(f"{HOST}:5000", 6000))
    assert held.external.port == 6000
    # not created for the client ...
    assert table.by_key(key(6000, Proto.UDP)) is None
    # ... but no other host gets UDP 6000, whichever protocol it asks with
    assert granted(table, natpmp(f"{OTHER}:5000", 6000, proto=Proto.UDP)).external.port != 6000
    assert granted(table, pcp(f"{OTHER}:5001", 6000, proto=Proto.UDP)).external.port != 6000
    error = refused(table, upnp(f"{OTHER}:5002", 6000, proto=Proto.UDP))
    assert error.reason is Reason.CONFLICT_FOREIGN and error.mapping == held
    assert refused(table, pcp(f"{OTHER}:5003", 6000, proto=Proto.UDP, exact=True)).reason is (
        Reason.CONFLICT_FOREIGN
    )
    # the client itself may take it
    assert granted(table, natpmp(f"{HOST}:5000", 6000, proto=Proto.UDP)).external.port == 6000


def test_the_companion_port_is_free_again_once_the_lease_ends(table: MappingTable) -> None:
    granted(table, natpmp(f"{HOST}:5000", 6000))
    request = UnmapInternal(owner(Origin.NATPMP, HOST), Proto.TCP, ep(f"{HOST}:5000"))
    table.apply(request, 1.0)
    assert granted(table, upnp(f"{OTHER}:5000", 6000, proto=Proto.UDP)).external.port == 6000


def test_only_natpmp_mappings_keep_a_companion_port(table: MappingTable) -> None:
    granted(table, upnp(f"{HOST}:5000", 6000))
    granted(table, pcp(f"{HOST}:5001", 6001, exact=True))
    assert granted(table, upnp(f"{OTHER}:5000", 6000, proto=Proto.UDP)).external.port == 6000
    assert granted(table, natpmp(f"{OTHER}:5001", 6001, proto=Proto.UDP)).external.port == 6001

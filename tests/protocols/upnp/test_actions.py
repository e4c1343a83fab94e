"""Every control action against the real gateway core, and every error path
(protocols.md §3.6-§3.12, §7.2)."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest
from lxml import etree

from gateway.config import PortRange, Rule
from gateway.errors import Reason
from gateway.model import Kind, MappingKey, Origin, Proto
from gateway.ports import GatewayEvent
from gateway.requests import GetMapping, MapPort
from protocols.upnp.actions import (
    ACTIONS,
    UPNP_ERROR_FOR_REASON,
    Dialect,
    IgdState,
    LinkCounters,
    Success,
    SysfsLinkInfo,
    UpnpFault,
    error_description,
    parse_arguments,
)
from protocols.upnp.description import SPECS, Service, UpnpSettings
from protocols.upnp.soap import CONTROL_NS, Cdata
from tests.gateway.conftest import EXTERNAL, ep, owner
from tests.protocols.upnp.igd_rig import (
    CLIENT,
    CLIENT6,
    COMMON,
    FW,
    IP,
    L3F,
    OTHER,
    OTHER6,
    ROOT_UUID,
    Rig,
    add_args,
    key_args,
    list_args,
    pinhole_args,
    range_args,
)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def mapping_at(rig: Rig, port: int, proto: Proto = Proto.TCP):  # type: ignore[no-untyped-def]
    return rig.table.by_key(MappingKey(proto, ep(f"{EXTERNAL}:{port}")))


# -- the tables ------------------------------------------------------------------------------


def test_every_reason_has_a_code_in_every_dialect() -> None:
    for dialect in Dialect:
        assert set(UPNP_ERROR_FOR_REASON[dialect]) == set(Reason), dialect


def test_the_action_table_holds_exactly_the_actions_of_the_scpds() -> None:
    declared = {(spec.service, action.name) for spec in SPECS.values() for action in spec.actions}
    assert set(ACTIONS) == declared


def test_error_descriptions_are_the_standard_names() -> None:
    assert error_description(IP, 718) == "ConflictInMappingEntry"
    assert error_description(FW, 708) == "WildCardNotPermittedInSrcIP"
    assert error_description(IP, 708) == "InvalidLayer2Address"
    assert error_description(L3F, 402) == "Invalid Args"
    assert error_description(COMMON, 606) == "Action not authorized"


# -- argument parsing (pure) -----------------------------------------------------------------


def parse(action: str, raw: list[tuple[str, str | None]], version: int = 2):  # type: ignore[no-untyped-def]
    spec = SPECS[IP]
    found = spec.action(action, version)
    assert found is not None
    return parse_arguments(spec, found, version, raw)


def test_arguments_are_typed_by_their_state_variable() -> None:
    args = parse("AddPortMapping", add_args(external=" 8080 ", enabled="true", lease="0"))
    assert args.number("NewExternalPort") == 8080
    assert args.flag("NewEnabled") is True
    assert args.text("NewProtocol") == "TCP"
    for word, value in (("yes", True), ("No", False), ("0", False), ("FALSE", False)):
        assert parse("AddPortMapping", add_args(enabled=word)).flag("NewEnabled") is value


@pytest.mark.parametrize(
    "raw",
    [
        add_args()[:-1],  # one missing
        [*add_args(), ("NewFoo", "1")],  # one extra
        [*add_args(), ("NewLeaseDuration", "1")],  # one twice
        add_args(external="+80"),
        add_args(external="-1"),
        add_args(external="0x50"),
        add_args(external="70000"),
        add_args(lease="4294967296"),
        add_args(lease="12345678901"),
        add_args(enabled="maybe"),
        [(n, None) if n == "NewProtocol" else (n, v) for n, v in add_args()],
    ],
)
def test_bad_arguments_are_402(raw: list[tuple[str, str | None]]) -> None:
    with pytest.raises(UpnpFault) as caught:
        parse("AddPortMapping", raw)
    assert caught.value.code == 402


def test_an_overlong_string_argument_is_605() -> None:
    with pytest.raises(UpnpFault) as caught:
        parse("AddPortMapping", add_args(description="x" * 2000))
    assert caught.value.code == 605


# -- AddPortMapping ------------------------------------------------------------------------------


def test_add_port_mapping_creates_an_upnp_mapping_owned_by_the_caller(rig: Rig) -> None:
    assert rig.ok("AddPortMapping", add_args(description="game <&>")) == {}
    mapping = mapping_at(rig, 8080)
    assert mapping is not None
    assert mapping.owner.origin is Origin.UPNP
    assert mapping.owner.client == IPv4Address(CLIENT)
    assert mapping.internal == ep(f"{CLIENT}:8080")
    assert mapping.description == "game <&>"
    assert mapping.remaining(rig.service.now()) == 3600
    assert len(rig.backend.snapshot()) == 1
    rig.reactor.advance(100)
    assert rig.ok("GetSpecificPortMappingEntry", key_args()) == {
        "NewInternalPort": "8080",
        "NewInternalClient": CLIENT,
        "NewEnabled": "1",
        "NewPortMappingDescription": "game <&>",
        "NewLeaseDuration": "3500",
    }


def test_the_same_client_updates_its_mapping_in_place(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args(internal=80))
    rig.ok("AddPortMapping", add_args(internal=81, enabled="0"))
    mapping = mapping_at(rig, 8080)
    assert mapping is not None and mapping.internal.port == 81 and not mapping.enabled
    assert len(rig.table) == 1
    assert rig.backend.snapshot() == frozenset()  # disabled: not in the kernel


@pytest.mark.parametrize("version", [1, 2])
def test_another_upnp_client_on_the_port_is_718(rig: Rig, version: int) -> None:
    rig.ok("AddPortMapping", add_args(client=OTHER), client=OTHER)
    assert rig.fault("AddPortMapping", add_args(), version=version) == 718


@pytest.mark.parametrize(("version", "code"), [(2, 729), (1, 718)])
def test_a_port_held_by_another_mechanism_is_729_or_718_for_v1(
    rig: Rig, version: int, code: int
) -> None:
    rig.natpmp_map(8080)
    assert rig.fault("AddPortMapping", add_args(), version=version) == code


def test_mapping_to_another_host_is_606_in_secure_mode(rig: Rig) -> None:
    assert rig.fault("AddPortMapping", add_args(client=OTHER)) == 606
    assert rig.fault("AddPortMapping", add_args(client=OTHER), version=1) == 606
    assert len(rig.table) == 0


def test_mapping_to_another_host_is_allowed_without_secure_mode(tmp_path: Path) -> None:
    rig = Rig(tmp_path, secure_mode=False)
    rig.ok("AddPortMapping", add_args(client=OTHER))
    mapping = mapping_at(rig, 8080)
    assert mapping is not None and mapping.internal.address == IPv4Address(OTHER)


@pytest.mark.parametrize(("version", "code"), [(2, 606), (1, 718)])
def test_a_port_the_acl_refuses_is_606_or_718_for_v1(rig: Rig, version: int, code: int) -> None:
    assert rig.fault("AddPortMapping", add_args(external=80, internal=80), version=version) == code


def test_a_reserved_port_is_a_conflict_with_another_mechanism(rig: Rig) -> None:
    assert rig.fault("AddPortMapping", add_args(external=5351, proto="UDP")) == 729


@pytest.mark.parametrize(
    ("args", "version", "code"),
    [
        (add_args(external=0), 2, 716),
        (add_args(external=0), 1, 716),
        (add_args(internal=0), 2, 732),
        (add_args(internal=0), 1, 402),
        (add_args(client=""), 2, 715),
        (add_args(client="*"), 2, 715),
        (add_args(client="0.0.0.0"), 1, 715),
        (add_args(client="host.lan"), 2, 402),
        (add_args(client=CLIENT6), 2, 402),
        (add_args(proto="ICMP"), 2, 402),
        (add_args(remote="evil.example"), 2, 402),
        (add_args(client="192.168.1.1"), 2, 606),  # the gateway itself
        (add_args(client="127.0.0.1"), 2, 606),
    ],
)
def test_wildcards_and_bad_values_have_their_codes(
    rig: Rig, args: list[tuple[str, str | None]], version: int, code: int
) -> None:
    assert rig.fault("AddPortMapping", args, version=version) == code
    assert len(rig.table) == 0


def test_protocol_names_are_read_without_regard_to_case(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args(proto="udp"))
    assert mapping_at(rig, 8080, Proto.UDP) is not None


def test_v2_lease_zero_and_overlong_leases_become_one_week(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args(external=8080, lease=0))
    rig.ok("AddPortMapping", add_args(external=8081, lease=10_000_000))
    for port in (8080, 8081):
        mapping = mapping_at(rig, port)
        assert mapping is not None and mapping.remaining(rig.service.now()) == 604800


def test_v1_lease_zero_asks_for_a_permanent_mapping(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args(lease=0), version=1)
    mapping = mapping_at(rig, 8080)
    assert mapping is not None and mapping.expires is None
    assert rig.ok("GetSpecificPortMappingEntry", key_args(), version=1)["NewLeaseDuration"] == "0"


def test_a_specific_remote_host_is_kept_and_read_back(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args(remote="198.51.100.7"))
    entry = rig.ok("GetGenericPortMappingEntry", [("NewPortMappingIndex", "0")])
    assert entry["NewRemoteHost"] == "198.51.100.7"


@pytest.mark.parametrize(("version", "code"), [(2, 728), (1, 501)])
def test_a_full_quota_is_728_or_501_for_v1(tmp_path: Path, version: int, code: int) -> None:
    rig = Rig(tmp_path, max_mappings_per_client=1)
    rig.ok("AddPortMapping", add_args(external=8080), version=version)
    assert rig.fault("AddPortMapping", add_args(external=8081), version=version) == code


def test_without_an_external_address_mapping_fails_and_the_address_is_empty(rig: Rig) -> None:
    rig.service.set_external_address(None)
    assert rig.fault("AddPortMapping", add_args()) == 501
    assert rig.ok("GetExternalIPAddress") == {"NewExternalIPAddress": ""}


def test_a_backend_failure_is_501_and_leaves_nothing(rig: Rig) -> None:
    rig.backend.fail_next()
    assert rig.fault("AddPortMapping", add_args()) == 501
    assert len(rig.table) == 0


# -- AddAnyPortMapping ---------------------------------------------------------------------------


def test_add_any_grants_the_wanted_port_when_free(rig: Rig) -> None:
    assert rig.ok("AddAnyPortMapping", add_args(external=9000)) == {"NewReservedPort": "9000"}


def test_add_any_picks_another_port_when_the_wanted_one_is_taken(rig: Rig) -> None:
    rig.natpmp_map(9000)
    reserved = int(rig.ok("AddAnyPortMapping", add_args(external=9000))["NewReservedPort"])
    assert reserved != 9000
    mapping = mapping_at(rig, reserved)
    assert mapping is not None and mapping.owner.client == IPv4Address(CLIENT)


def test_add_any_with_port_zero_lets_the_gateway_choose(rig: Rig) -> None:
    reserved = int(rig.ok("AddAnyPortMapping", add_args(external=0))["NewReservedPort"])
    assert 1024 <= reserved <= 65535


def test_add_any_is_728_when_no_port_is_left(tmp_path: Path) -> None:
    only = (Rule(action="allow", external_ports=PortRange(9000, 9000)),)
    rig = Rig(tmp_path, rules=only)
    rig.ok("AddAnyPortMapping", add_args(external=9000, client=OTHER), client=OTHER)
    assert rig.fault("AddAnyPortMapping", add_args(external=9000)) == 728


def test_add_any_is_not_an_igd1_action(rig: Rig) -> None:
    assert rig.fault("AddAnyPortMapping", add_args(), version=1) == 401


# -- DeletePortMapping ---------------------------------------------------------------------------


def test_delete_removes_the_callers_mapping(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args())
    assert rig.ok("DeletePortMapping", key_args()) == {}
    assert len(rig.table) == 0
    assert rig.backend.snapshot() == frozenset()


@pytest.mark.parametrize("version", [1, 2])
def test_deleting_a_missing_mapping_is_714(rig: Rig, version: int) -> None:
    assert rig.fault("DeletePortMapping", key_args(), version=version) == 714


@pytest.mark.parametrize(("version", "code"), [(2, 606), (1, 714)])
def test_deleting_another_clients_mapping_is_606_or_714_for_v1(
    rig: Rig, version: int, code: int
) -> None:
    rig.ok("AddPortMapping", add_args(client=OTHER), client=OTHER)
    assert rig.fault("DeletePortMapping", key_args(), version=version) == code
    rig.natpmp_map(9000, client=CLIENT)
    assert rig.fault("DeletePortMapping", key_args(external=9000), version=version) == code
    assert len(rig.table) == 2


def test_delete_with_port_zero_or_a_bad_protocol_is_402(rig: Rig) -> None:
    assert rig.fault("DeletePortMapping", key_args(external=0)) == 402
    assert rig.fault("DeletePortMapping", key_args(proto="SCTP")) == 402


def test_get_specific_finds_mappings_of_any_origin_and_714_for_none(rig: Rig) -> None:
    rig.natpmp_map(9000)
    entry = rig.ok("GetSpecificPortMappingEntry", key_args(external=9000))
    assert entry["NewInternalClient"] == OTHER
    assert rig.fault("GetSpecificPortMappingEntry", key_args(external=9001)) == 714
    assert rig.fault("GetSpecificPortMappingEntry", key_args(external=0)) == 402


def test_get_and_delete_work_while_the_external_address_is_unknown(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args())
    rig.service.set_external_address(None)
    assert rig.ok("GetSpecificPortMappingEntry", key_args())["NewInternalClient"] == CLIENT
    assert rig.fault("GetSpecificPortMappingEntry", key_args(external=9)) == 714
    rig.ok("DeletePortMapping", key_args())
    assert len(rig.table) == 0


# -- DeletePortMappingRange ------------------------------------------------------------------------


def test_delete_range_removes_the_callers_mappings_in_the_range(rig: Rig) -> None:
    for port in (5000, 5001, 6000):
        rig.ok("AddPortMapping", add_args(external=port))
    rig.ok("AddPortMapping", add_args(external=5002, proto="UDP"))
    rig.ok("AddPortMapping", add_args(external=5003, client=OTHER), client=OTHER)
    rig.natpmp_map(5004, client=CLIENT)
    assert rig.ok("DeletePortMappingRange", range_args(5000, 5999)) == {}
    left = sorted((m.proto.value, m.external.port) for m in rig.table)
    assert left == [("tcp", 5003), ("tcp", 5004), ("tcp", 6000), ("udp", 5002)]


def test_delete_range_codes(rig: Rig) -> None:
    assert rig.fault("DeletePortMappingRange", range_args(6000, 5000)) == 733
    assert rig.fault("DeletePortMappingRange", range_args(5000, 6000)) == 730
    rig.ok("AddPortMapping", add_args(external=5500, client=OTHER), client=OTHER)
    assert rig.fault("DeletePortMappingRange", range_args(5000, 6000)) == 606
    assert rig.fault("DeletePortMappingRange", range_args(), version=1) == 401


# -- GetListOfPortMappings -------------------------------------------------------------------------

P = "{urn:schemas-upnp-org:gw:WANIPConnection}"


def listing(rig: Rig, **kw: object) -> list[dict[str, str]]:
    client = str(kw.pop("client", CLIENT))
    text = rig.ok("GetListOfPortMappings", list_args(**kw), client=client)["NewPortListing"]  # type: ignore[arg-type]
    root = etree.fromstring(text.encode(), etree.XMLParser(resolve_entities=False))
    assert root.tag == f"{P}PortMappingList"
    assert root.get("{http://www.w3.org/2001/XMLSchema-instance}schemaLocation", "").startswith(
        "urn:schemas-upnp-org:gw:WANIPConnection "
    )
    entries = []
    for entry in root:
        assert entry.tag == f"{P}PortMappingEntry"
        names = [child.tag.removeprefix(P) for child in entry]
        assert names == [
            "NewRemoteHost",
            "NewExternalPort",
            "NewProtocol",
            "NewInternalPort",
            "NewInternalClient",
            "NewEnabled",
            "NewDescription",
            "NewLeaseTime",
        ]
        entries.append({child.tag.removeprefix(P): child.text or "" for child in entry})
    return entries


def test_the_port_listing_parses_back_in_port_order(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args(external=7001, description="b]]>c <x/> & 'q'"))
    rig.ok("AddPortMapping", add_args(external=7000, internal=22, remote="198.51.100.9"))
    rig.reactor.advance(10)
    entries = listing(rig, number=1000)
    assert [e["NewExternalPort"] for e in entries] == ["7000", "7001"]
    assert entries[0] == {
        "NewRemoteHost": "198.51.100.9",
        "NewExternalPort": "7000",
        "NewProtocol": "TCP",
        "NewInternalPort": "22",
        "NewInternalClient": CLIENT,
        "NewEnabled": "1",
        "NewDescription": "test",
        "NewLeaseTime": "3590",
    }
    assert entries[1]["NewDescription"] == "b]]>c <x/> & 'q'"


def test_the_port_listing_goes_out_as_cdata(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args())
    reply = rig.reply("GetListOfPortMappings", list_args())
    assert isinstance(reply, Success)
    [(name, value)] = reply.outs
    assert name == "NewPortListing" and isinstance(value, Cdata)
    assert value.value.startswith("<p:PortMappingList ")


def test_the_listing_filters_by_range_protocol_and_count(rig: Rig) -> None:
    for port in range(5000, 5010):
        rig.ok("AddPortMapping", add_args(external=port))
    rig.ok("AddPortMapping", add_args(external=5005, proto="UDP"))
    assert len(listing(rig, start=5002, end=5004)) == 3
    assert len(listing(rig, number=4)) == 4
    assert len(listing(rig, number=0)) == 10
    assert [e["NewProtocol"] for e in listing(rig, proto="UDP")] == ["UDP"]


def test_without_manage_a_client_lists_only_its_own_mappings(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args(external=7000))
    rig.ok("AddPortMapping", add_args(external=7001, client=OTHER), client=OTHER)
    rig.natpmp_map(7002)
    assert [e["NewExternalPort"] for e in listing(rig, manage="1")] == ["7000", "7001", "7002"]
    assert [e["NewExternalPort"] for e in listing(rig, manage="0")] == ["7000"]


def test_listing_codes(rig: Rig) -> None:
    assert rig.fault("GetListOfPortMappings", list_args(number=10)) == 730
    assert rig.fault("GetListOfPortMappings", list_args(9, 8, number=10)) == 733
    assert rig.fault("GetListOfPortMappings", list_args(), version=1) == 401
    assert rig.fault("GetListOfPortMappings", range_args()) == 402


# -- GetGenericPortMappingEntry ------------------------------------------------------------------


def test_generic_entries_are_indexed_until_713(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args(external=7000, lease=0), version=1)
    rig.natpmp_map(6000)
    first = rig.ok("GetGenericPortMappingEntry", [("NewPortMappingIndex", "0")], version=1)
    assert first == {
        "NewRemoteHost": "",
        "NewExternalPort": "7000",
        "NewProtocol": "TCP",
        "NewInternalPort": "8080",
        "NewInternalClient": CLIENT,
        "NewEnabled": "1",
        "NewPortMappingDescription": "test",
        "NewLeaseDuration": "0",
    }
    second = rig.ok("GetGenericPortMappingEntry", [("NewPortMappingIndex", "1")])
    assert second["NewExternalPort"] == "6000"
    assert rig.fault("GetGenericPortMappingEntry", [("NewPortMappingIndex", "2")]) == 713
    assert rig.fault("GetGenericPortMappingEntry", [("NewPortMappingIndex", "2")], version=1) == 713


# -- connection state ----------------------------------------------------------------------------


def test_connection_information(rig: Rig) -> None:
    assert rig.ok("GetExternalIPAddress") == {"NewExternalIPAddress": str(EXTERNAL)}
    assert rig.ok("GetConnectionTypeInfo") == {
        "NewConnectionType": "IP_Routed",
        "NewPossibleConnectionTypes": "IP_Routed",
    }
    assert rig.ok("GetNATRSIPStatus") == {"NewRSIPAvailable": "0", "NewNATEnabled": "1"}
    rig.reactor.advance(42)
    assert rig.ok("GetStatusInfo") == {
        "NewConnectionStatus": "Connected",
        "NewLastConnectionError": "ERROR_NONE",
        "NewUptime": "42",
    }
    rig.service.set_external_address(None)
    status = rig.ok("GetStatusInfo")
    assert (status["NewConnectionStatus"], status["NewUptime"]) == ("Disconnected", "0")


def test_connection_control_is_read_only(rig: Rig) -> None:
    assert rig.ok("SetConnectionType", [("NewConnectionType", "IP_Routed")]) == {}
    assert rig.fault("SetConnectionType", [("NewConnectionType", "IP_Bridged")]) == 731
    assert rig.fault("SetConnectionType", [("NewConnectionType", "PPPoE")]) == 402
    assert rig.ok("RequestConnection") == {}
    assert rig.fault("ForceTermination") == 606
    rig.service.set_external_address(None)
    assert rig.fault("RequestConnection") == 704


# -- dispatch ------------------------------------------------------------------------------------


def test_a_v1_client_gets_its_own_namespace_back(rig: Rig) -> None:
    reply = rig.reply("GetExternalIPAddress", version=1)
    assert isinstance(reply, Success)
    assert reply.namespace == "urn:schemas-upnp-org:service:WANIPConnection:1"


@pytest.mark.parametrize(
    ("action", "namespace", "code"),
    [
        ("NoSuchAction", None, 401),
        ("GetExternalIPAddress", "urn:schemas-upnp-org:service:WANIPConnection:3", 401),
        ("GetExternalIPAddress", "urn:schemas-upnp-org:service:WANPPPConnection:1", 401),
        ("GetExternalIPAddress", "urn:schemas-upnp-org:service:Layer3Forwarding:1", 401),
        ("GetExternalIPAddress", "urn:other", 401),
        ("RequestTermination", None, 602),
        ("GetAutoDisconnectTime", None, 602),
    ],
)
def test_unknown_actions_and_foreign_namespaces(
    rig: Rig, action: str, namespace: str | None, code: int
) -> None:
    assert rig.fault(action, namespace=namespace) == code


def test_a_forced_igd1_gateway_answers_only_v1_namespaces(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings=UpnpSettings(uuid=ROOT_UUID, igd_version=1))
    assert rig.fault("GetExternalIPAddress", version=2) == 401
    assert rig.ok("GetExternalIPAddress", version=1)["NewExternalIPAddress"] == str(EXTERNAL)
    assert rig.fault("GetFirewallStatus", service=FW, version=1) == 401


def test_an_unexpected_error_is_501(rig: Rig) -> None:
    class Broken:
        def counters(self) -> LinkCounters:
            raise RuntimeError("boom")

    rig.dispatcher._link = Broken()  # type: ignore[assignment]
    assert rig.fault("GetTotalBytesSent", service=COMMON, version=1) == 501


# -- QueryStateVariable ----------------------------------------------------------------------------


def query(rig: Rig, name: str, service: Service = IP, view: int = 2) -> str | int:
    reply = rig.reply(
        "QueryStateVariable", [("varName", name)], namespace=CONTROL_NS, service=service, view=view
    )
    if isinstance(reply, Success):
        assert reply.namespace == CONTROL_NS
        [(out, value)] = reply.outs
        assert out == "return" and isinstance(value, str)
        return value
    return reply.code


def test_query_state_variable(rig: Rig) -> None:
    rig.ok("AddPortMapping", add_args())
    assert query(rig, "PortMappingNumberOfEntries") == "1"
    assert query(rig, "ConnectionStatus") == "Connected"
    assert query(rig, "ExternalIPAddress") == str(EXTERNAL)
    assert query(rig, "SystemUpdateID") == "2"
    assert query(rig, "SystemUpdateID", view=1) == 404
    assert query(rig, "PhysicalLinkStatus", COMMON) == "Up"
    assert query(rig, "InboundPinholeAllowed", FW) == "1"
    assert query(rig, "NoSuchVariable") == 404
    assert query(rig, "A_ARG_TYPE_Manage") == 404
    bad = rig.reply("QueryStateVariable", [("name", "x")], namespace=CONTROL_NS)
    assert getattr(bad, "code", None) == 402


# -- WANCommonInterfaceConfig, Layer3Forwarding ---------------------------------------------------


def test_common_link_properties_and_counters(rig: Rig) -> None:
    assert rig.ok("GetCommonLinkProperties", service=COMMON, version=1) == {
        "NewWANAccessType": "Ethernet",
        "NewLayer1UpstreamMaxBitRate": "0",
        "NewLayer1DownstreamMaxBitRate": "0",
        "NewPhysicalLinkStatus": "Up",
    }
    assert rig.fault("GetTotalBytesSent", service=COMMON, version=1) == 501
    rig.link.counters_value = LinkCounters(2**32 + 5, 7, 8, 9)
    assert rig.ok("GetTotalBytesSent", service=COMMON, version=1) == {"NewTotalBytesSent": "5"}
    assert rig.ok("GetTotalBytesReceived", service=COMMON, version=1) == {
        "NewTotalBytesReceived": "7"
    }
    assert rig.ok("GetTotalPacketsSent", service=COMMON, version=1) == {"NewTotalPacketsSent": "8"}
    assert rig.ok("GetTotalPacketsReceived", service=COMMON, version=1) == {
        "NewTotalPacketsReceived": "9"
    }


def test_the_default_connection_service_names_our_wan_ip_connection(rig: Rig) -> None:
    wanconn = rig.settings.wanconn_uuid
    for view in (1, 2):
        value = rig.ok("GetDefaultConnectionService", service=L3F, version=1, view=view)
        assert value == {
            "NewDefaultConnectionService": (
                f"uuid:{wanconn}:WANConnectionDevice:{view},urn:upnp-org:serviceId:WANIPConn1"
            )
        }
    name = "NewDefaultConnectionService"
    good = f"uuid:{wanconn}:WANConnectionDevice:2,urn:upnp-org:serviceId:WANIPConn1"
    assert rig.ok("SetDefaultConnectionService", [(name, good)], service=L3F, version=1) == {}
    for value, code in (
        (good.replace(wanconn, ROOT_UUID), 720),
        (good.replace("WANIPConn1", "WANPPPConn1"), 721),
        ("garbage", 723),
        (f"uuid:{wanconn}:WANDevice:2,urn:upnp-org:serviceId:WANIPConn1", 723),
    ):
        assert (
            rig.fault("SetDefaultConnectionService", [(name, value)], service=L3F, version=1)
            == code
        )


# -- WANIPv6FirewallControl ------------------------------------------------------------------------


def fw(
    rig: Rig,
    action: str,
    args: tuple[tuple[str, str | None], ...] | list[tuple[str, str | None]] = (),
    client: str = CLIENT6,
) -> dict[str, str] | int:
    reply = rig.reply(action, args, service=FW, version=1, client=client)
    if isinstance(reply, Success):
        return {name: str(value) for name, value in reply.outs}
    return reply.code


def test_pinholes_open_refresh_update_and_close(rig: Rig) -> None:
    assert fw(rig, "GetFirewallStatus") == {"FirewallEnabled": "1", "InboundPinholeAllowed": "1"}
    first = fw(rig, "AddPinhole", pinhole_args(remote="2001:db8:99::1", remote_port=443))
    assert isinstance(first, dict)
    uid = first["UniqueID"]
    pinhole = rig.table.get(int(uid))
    assert pinhole is not None and pinhole.kind is Kind.PINHOLE
    assert pinhole.internal == ep(f"[{CLIENT6}]:5000")
    assert [str(f) for f in pinhole.filters] == ["2001:db8:99::1/128 port 443"]
    again = fw(rig, "AddPinhole", pinhole_args(remote="2001:db8:99::1", remote_port=443, lease=60))
    assert again == {"UniqueID": uid}
    assert len(rig.table) == 1
    assert fw(rig, "UpdatePinhole", [("UniqueID", uid), ("NewLeaseTime", "100")]) == {}
    assert rig.table.get(int(uid)).remaining(rig.service.now()) == 100  # type: ignore[union-attr]
    assert fw(rig, "GetPinholePackets", [("UniqueID", uid)]) == {"PinholePackets": "0"}
    assert fw(rig, "CheckPinholeWorking", [("UniqueID", uid)]) == 709
    rig.link.packets[int(uid)] = 12
    assert fw(rig, "GetPinholePackets", [("UniqueID", uid)]) == {"PinholePackets": "12"}
    assert fw(rig, "CheckPinholeWorking", [("UniqueID", uid)]) == {"IsWorking": "1"}
    assert fw(rig, "DeletePinhole", [("UniqueID", uid)]) == {}
    assert len(rig.table) == 0
    assert fw(rig, "DeletePinhole", [("UniqueID", uid)]) == 704


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (pinhole_args(client=""), 708),
        (pinhole_args(port=0), 706),
        (pinhole_args(protocol=65535), 707),
        (pinhole_args(protocol=136), 705),
        (pinhole_args(protocol=1), 705),
        (pinhole_args(lease=0), 402),
        (pinhole_args(lease=86401), 402),
        (pinhole_args(client="192.168.1.10"), 402),
        (pinhole_args(remote="example.com"), 402),
        (pinhole_args(client=OTHER6), 606),
        (pinhole_args(port=80), 606),
        (pinhole_args(client="2001:db8:1::1"), 606),  # the gateway itself
    ],
)
def test_add_pinhole_codes(rig: Rig, args: list[tuple[str, str | None]], code: int) -> None:
    assert fw(rig, "AddPinhole", args) == code
    assert len(rig.table) == 0


def test_another_clients_pinhole_is_606(rig: Rig) -> None:
    made = fw(rig, "AddPinhole", pinhole_args(client=OTHER6), client=OTHER6)
    assert isinstance(made, dict)
    uid = made["UniqueID"]
    for action, args in (
        ("UpdatePinhole", [("UniqueID", uid), ("NewLeaseTime", "100")]),
        ("DeletePinhole", [("UniqueID", uid)]),
        ("GetPinholePackets", [("UniqueID", uid)]),
        ("CheckPinholeWorking", [("UniqueID", uid)]),
    ):
        assert fw(rig, action, args) == 606, action
    assert fw(rig, "AddPinhole", pinhole_args(client=OTHER6)) == 606
    assert fw(rig, "GetPinholePackets", [("UniqueID", "999")]) == 704
    rig.ok("AddPortMapping", add_args())
    port_map = next(m.uid for m in rig.table if m.kind is Kind.PORT_MAP)
    assert port_map > 65535  # port maps never share the 16-bit UniqueID space
    assert fw(rig, "GetPinholePackets", [("UniqueID", str(port_map))]) == 402


def test_pinholes_can_be_disabled(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings=UpnpSettings(uuid=ROOT_UUID, ipv6=False))
    assert fw(rig, "GetFirewallStatus") == {"FirewallEnabled": "1", "InboundPinholeAllowed": "0"}
    assert fw(rig, "AddPinhole", pinhole_args(client="")) == 703
    assert fw(rig, "DeletePinhole", [("UniqueID", "1")]) == 703


def test_outbound_pinhole_timeout(rig: Rig) -> None:
    args = pinhole_args(lease=None)
    assert fw(rig, "GetOutboundPinholeTimeout", args) == 501
    rig.link.timeouts[Proto.TCP] = 432000
    assert fw(rig, "GetOutboundPinholeTimeout", args) == {"OutboundPinholeTimeout": "432000"}
    assert fw(rig, "GetOutboundPinholeTimeout", pinhole_args(protocol=65535, lease=None)) == 707


# -- state variables ----------------------------------------------------------------------------


def test_the_state_follows_the_table_and_tells_its_listeners(rig: Rig) -> None:
    heard: list[tuple[Service, frozenset[str]]] = []
    rig.state.listen(lambda service, names: heard.append((service, names)))
    start = rig.state.system_update_id
    rig.ok("AddPortMapping", add_args())
    assert rig.state.mapping_count == 1
    assert rig.state.system_update_id == start + 1
    assert heard == [(IP, frozenset({"SystemUpdateID", "PortMappingNumberOfEntries"}))]
    heard.clear()
    rig.ok("AddPortMapping", add_args())  # a pure refresh: nothing visible changed
    assert rig.state.system_update_id == start + 1
    assert heard == []
    rig.ok("AddPortMapping", add_args(description="renamed"))
    assert rig.state.system_update_id == start + 2
    assert heard == [(IP, frozenset({"SystemUpdateID"}))]
    heard.clear()
    rig.reactor.advance(3601)  # expiry
    assert rig.state.mapping_count == 0
    assert heard == [(IP, frozenset({"SystemUpdateID", "PortMappingNumberOfEntries"}))]


def test_the_state_tells_of_external_address_changes(rig: Rig) -> None:
    heard: list[tuple[Service, frozenset[str]]] = []
    rig.state.listen(lambda service, names: heard.append((service, names)))
    rig.service.set_external_address(IPv4Address("198.51.100.1"))
    assert heard == [(IP, frozenset({"ExternalIPAddress"}))]
    heard.clear()
    rig.service.set_external_address(None)
    assert (IP, frozenset({"ExternalIPAddress", "ConnectionStatus"})) in heard
    assert (COMMON, frozenset({"PhysicalLinkStatus"})) in heard
    assert dict(rig.state.values(IP, 2))["ConnectionStatus"] == "Disconnected"
    assert dict(rig.state.values(COMMON, 1))["PhysicalLinkStatus"] == "Down"


def test_the_initial_count_includes_restored_leases(tmp_path: Path) -> None:
    first = Rig(tmp_path)
    first.ok("AddPortMapping", add_args())
    first.service.stop(keep_mappings=True)
    second = Rig(tmp_path)
    assert second.state.mapping_count == 1
    assert dict(second.state.values(IP, 2))["PortMappingNumberOfEntries"] == "1"


def test_a_change_applied_before_the_state_and_committed_after_counts_once(rig: Rig) -> None:
    pending = rig.service.handle(
        MapPort(owner(Origin.UPNP, CLIENT), Proto.TCP, ep(f"{CLIENT}:80"), 8080, 60, exact=True)
    )
    state = IgdState(rig.service, rig.settings)
    rig.settle(pending)  # type: ignore[arg-type]
    assert state.mapping_count == 1


def test_closing_the_state_stops_listening(rig: Rig) -> None:
    heard: list[GatewayEvent] = []
    rig.state.listen(lambda service, names: heard.append(names))  # type: ignore[arg-type]
    rig.state.close()
    rig.ok("AddPortMapping", add_args())
    assert heard == []
    assert rig.gateway(GetMapping(MappingKey(Proto.TCP, ep(f"{EXTERNAL}:8080"))))


# -- the WAN link from sysfs -----------------------------------------------------------------------


def test_sysfs_link_info_reads_counters_and_conntrack_timeouts(tmp_path: Path) -> None:
    statistics = tmp_path / "sys" / "class" / "net" / "wan0" / "statistics"
    statistics.mkdir(parents=True)
    for name, value in (("tx_bytes", 1), ("rx_bytes", 2), ("tx_packets", 3), ("rx_packets", 4)):
        (statistics / name).write_text(f"{value}\n")
    netfilter = tmp_path / "proc" / "sys" / "net" / "netfilter"
    netfilter.mkdir(parents=True)
    (netfilter / "nf_conntrack_udp_timeout_stream").write_text("120\n")
    link = SysfsLinkInfo("wan0", tmp_path / "sys", tmp_path / "proc")
    assert link.counters() == LinkCounters(1, 2, 3, 4)
    assert link.outbound_pinhole_timeout(Proto.UDP) == 120
    assert link.outbound_pinhole_timeout(Proto.TCP) is None
    assert link.pinhole_packets(1) is None
    assert SysfsLinkInfo("nope", tmp_path / "sys").counters() is None


def test_the_client_that_maps_is_the_owner_even_for_static_lookalikes(rig: Rig) -> None:
    rig.gateway(
        MapPort(
            owner(Origin.STATIC, "192.168.1.1"), Proto.TCP, ep(f"{CLIENT}:22"), 2222, 0, exact=True
        )
    )
    assert rig.fault("AddPortMapping", add_args(external=2222)) == 729
    assert rig.fault("DeletePortMapping", key_args(external=2222)) == 606
    assert ip_address(
        rig.ok("GetSpecificPortMappingEntry", key_args(external=2222))["NewInternalClient"]
    ) == IPv4Address(CLIENT)

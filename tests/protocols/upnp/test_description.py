"""The device description and SCPDs (protocols.md §2): well-formed, both views, stable ids."""

from __future__ import annotations

import pytest
from lxml import etree

from protocols.upnp.description import (
    DEVICE_NS,
    SERVICE_NS,
    SPECS,
    Descriptions,
    Service,
    UpnpSettings,
    UrlLayout,
    choose_view,
    parse_service_type,
    service_type,
)

ROOT_UUID = "2fac1234-31f8-11b4-a222-08002b34c003"
D = f"{{{DEVICE_NS}}}"
S = f"{{{SERVICE_NS}}}"


def settings(**overrides: object) -> UpnpSettings:
    values: dict[str, object] = {"uuid": ROOT_UUID}
    values.update(overrides)
    return UpnpSettings(**values)  # type: ignore[arg-type]


def docs(**overrides: object) -> Descriptions:
    return Descriptions(settings(**overrides), UrlLayout("0123456789abcdef"))


def parse(data: bytes) -> etree._Element:
    assert data.startswith(b'<?xml version="1.0"?>')
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))


def devices(root: etree._Element) -> list[etree._Element]:
    return list(root.iter(f"{D}device"))


def services(root: etree._Element) -> dict[str, etree._Element]:
    return {s.findtext(f"{D}serviceType") or "": s for s in root.iter(f"{D}service")}


def test_the_igd2_view_has_the_tree_of_section_2_3() -> None:
    root = parse(docs().view(2, "192.168.1.1").description)
    assert root.get("configId") == str(docs().config_id)
    assert root.findtext(f"{D}specVersion/{D}major") == "1"
    assert root.findtext(f"{D}specVersion/{D}minor") == "1"
    igd, wan, connection = devices(root)
    assert igd.findtext(f"{D}deviceType") == ("urn:schemas-upnp-org:device:InternetGatewayDevice:2")
    assert wan.findtext(f"{D}deviceType") == "urn:schemas-upnp-org:device:WANDevice:2"
    assert connection.findtext(f"{D}deviceType") == (
        "urn:schemas-upnp-org:device:WANConnectionDevice:2"
    )
    assert connection.getparent().getparent() is wan  # type: ignore[union-attr]
    assert wan.getparent().getparent() is igd  # type: ignore[union-attr]
    found = services(root)
    assert sorted(found) == sorted(
        [
            "urn:schemas-upnp-org:service:Layer3Forwarding:1",
            "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
            "urn:schemas-upnp-org:service:WANIPConnection:2",
            "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1",
        ]
    )
    ip = found["urn:schemas-upnp-org:service:WANIPConnection:2"]
    assert ip.findtext(f"{D}serviceId") == "urn:upnp-org:serviceId:WANIPConn1"
    assert ip.findtext(f"{D}SCPDURL") == "/WANIPCn.xml"
    assert ip.findtext(f"{D}controlURL") == "/0123456789abcdef/ctl/IPConn"
    assert ip.findtext(f"{D}eventSubURL") == "/0123456789abcdef/evt/IPConn"
    assert ip.getparent().getparent() is connection  # type: ignore[union-attr]
    assert igd.findtext(f"{D}presentationURL") == "http://192.168.1.1/"
    # the elements UDA 1.1 requires on every device
    for device in (igd, wan, connection):
        for tag in ("deviceType", "friendlyName", "manufacturer", "modelName", "UDN"):
            assert device.findtext(f"{D}{tag}"), tag


def test_the_igd1_view_has_only_version_1_types_and_no_firewall_control() -> None:
    root = parse(docs().view(1, "192.168.1.1").description)
    types = [d.findtext(f"{D}deviceType") or "" for d in devices(root)]
    assert all(t.endswith(":1") for t in types)
    assert sorted(services(root)) == [
        "urn:schemas-upnp-org:service:Layer3Forwarding:1",
        "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
        "urn:schemas-upnp-org:service:WANIPConnection:1",
    ]
    assert "/WANIP6FC.xml" not in docs().view(1, "192.168.1.1").scpds


def scpd(view: int, path: str = "/WANIPCn.xml") -> etree._Element:
    return parse(docs().view(view, "192.168.1.1").scpds[path])


def action_names(root: etree._Element) -> list[str]:
    return [a.findtext(f"{S}name") or "" for a in root.iter(f"{S}action")]


def variable_names(root: etree._Element) -> list[str]:
    return [v.findtext(f"{S}name") or "" for v in root.iter(f"{S}stateVariable")]


V2_ACTIONS = {"AddAnyPortMapping", "DeletePortMappingRange", "GetListOfPortMappings"}
V2_VARIABLES = {"SystemUpdateID", "A_ARG_TYPE_Manage", "A_ARG_TYPE_PortListing"}


def test_the_v1_scpd_leaves_out_the_v2_actions_and_variables() -> None:
    v1, v2 = scpd(1), scpd(2)
    assert set(action_names(v2)) >= V2_ACTIONS
    assert set(variable_names(v2)) >= V2_VARIABLES
    assert not V2_ACTIONS & set(action_names(v1))
    assert not V2_VARIABLES & set(variable_names(v1))
    assert set(action_names(v2)) - set(action_names(v1)) == V2_ACTIONS


def test_the_v2_scpd_declares_the_lease_range_of_igd2() -> None:
    for variable in scpd(2).iter(f"{S}stateVariable"):
        if variable.findtext(f"{S}name") == "PortMappingLeaseDuration":
            assert variable.findtext(f"{S}allowedValueRange/{S}maximum") == "604800"
            break
    else:
        pytest.fail("no PortMappingLeaseDuration")


@pytest.mark.parametrize("view", [1, 2])
def test_every_scpd_is_consistent(view: int) -> None:
    for path, data in docs().view(view, "192.168.1.1").scpds.items():
        root = parse(data)
        assert root.tag == f"{S}scpd"
        names = set(variable_names(root))
        for action in root.iter(f"{S}action"):
            directions = [a.findtext(f"{S}direction") for a in action.iter(f"{S}argument")]
            assert directions == sorted(directions, key=lambda d: d != "in"), path
            for argument in action.iter(f"{S}argument"):
                assert argument.findtext(f"{S}relatedStateVariable") in names, path
        for variable in root.iter(f"{S}stateVariable"):
            assert variable.get("sendEvents") in ("yes", "no")
            assert variable.findtext(f"{S}dataType") in ("string", "ui2", "ui4", "boolean")


def test_the_evented_variables_are_those_of_section_4_1() -> None:
    expected = {
        Service.WAN_IP_CONNECTION: {
            "PossibleConnectionTypes",
            "ConnectionStatus",
            "ExternalIPAddress",
            "PortMappingNumberOfEntries",
            "SystemUpdateID",
        },
        Service.WAN_COMMON_INTERFACE_CONFIG: {"PhysicalLinkStatus"},
        Service.LAYER3_FORWARDING: {"DefaultConnectionService"},
        Service.WAN_IPV6_FIREWALL_CONTROL: {"FirewallEnabled", "InboundPinholeAllowed"},
    }
    for service, names in expected.items():
        assert set(SPECS[service].evented(2)) == names
    assert "SystemUpdateID" not in SPECS[Service.WAN_IP_CONNECTION].evented(1)


def test_the_view_follows_the_user_agent_and_the_force_rule() -> None:
    plain = settings()
    assert choose_view(plain, None) == 2
    assert choose_view(plain, "Linux/6.1 UPnP/1.1 MiniUPnPc/2.2.4") == 2
    assert choose_view(plain, "Microsoft-Windows/10.0 UPnP/1.0") == 1
    assert choose_view(plain, "Xbox/10.0 UPnP/1.0") == 1
    assert choose_view(plain, "FDSSDP") == 1
    assert choose_view(settings(igd1_user_agents=()), "Microsoft-Windows/10.0") == 2
    assert choose_view(settings(igd1_user_agents=("Sonos",)), "Sonos/1.0") == 1
    assert choose_view(settings(igd_version=1), "MiniUPnPc") == 1


def test_the_embedded_device_uuids_are_stable_and_distinct() -> None:
    a, b = settings(), settings()
    assert (a.wan_uuid, a.wanconn_uuid) == (b.wan_uuid, b.wanconn_uuid)
    assert len({a.uuid, a.wan_uuid, a.wanconn_uuid}) == 3
    root = parse(docs().view(2, "192.168.1.1").description)
    udns = [d.findtext(f"{D}UDN") for d in devices(root)]
    assert udns == [f"uuid:{a.uuid}", f"uuid:{a.wan_uuid}", f"uuid:{a.wanconn_uuid}"]
    other = settings(uuid="00000000-0000-4000-8000-000000000001")
    assert other.wan_uuid != a.wan_uuid


def test_the_config_id_ignores_the_boot_prefix_and_follows_the_settings() -> None:
    first = Descriptions(settings(), UrlLayout("aaaaaaaaaaaaaaaa"))
    second = Descriptions(settings(), UrlLayout("bbbbbbbbbbbbbbbb"))
    renamed = Descriptions(settings(friendly_name="other"), UrlLayout("aaaaaaaaaaaaaaaa"))
    assert first.config_id == second.config_id
    assert first.config_id != renamed.config_id
    assert 0 <= first.config_id <= 16777215


def test_control_urls_get_an_unguessable_prefix_per_boot() -> None:
    one, two = UrlLayout.random(), UrlLayout.random()
    assert one.prefix != two.prefix
    assert len(one.prefix) >= 16
    assert one.control_path(Service.WAN_IP_CONNECTION).startswith(f"/{one.prefix}/")
    assert one.event_path(Service.WAN_IP_CONNECTION).startswith(f"/{one.prefix}/")
    assert one.description_path == "/rootDesc.xml"
    with pytest.raises(ValueError):
        UrlLayout("../etc")


def test_each_view_is_rendered_once_per_host() -> None:
    descriptions = docs()
    assert descriptions.view(2, "192.168.1.1") is descriptions.view(2, "192.168.1.1")
    assert descriptions.view(1, "192.168.1.1") is not descriptions.view(2, "192.168.1.1")


def test_the_presentation_url_names_the_lan_address_or_the_configured_url() -> None:
    v6 = parse(docs().view(2, "fd00::1").description)
    assert v6.findtext(f".//{D}presentationURL") == "http://[fd00::1]/"
    fixed = parse(docs(presentation_url="http://router.lan/").view(2, "10.0.0.1").description)
    assert fixed.findtext(f".//{D}presentationURL") == "http://router.lan/"


def test_markup_in_the_friendly_name_is_escaped() -> None:
    root = parse(docs(friendly_name="A & B <router>").view(2, "192.168.1.1").description)
    assert root.findtext(f".//{D}friendlyName") == "A & B <router>"


@pytest.mark.parametrize(
    "overrides",
    [
        {"uuid": "not-a-uuid"},
        {"friendly_name": ""},
        {"friendly_name": "x" * 65},
        {"friendly_name": "bell\x07"},
        {"igd_version": 3},
        {"igd1_user_agents": ("",)},
        {"wan_access_type": "Carrier pigeon"},
        {"server": "a\r\nb"},
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        settings(**overrides)


def test_service_types_parse_back() -> None:
    for service in Service:
        assert parse_service_type(service_type(service, 1)) == (service, 1)
    assert parse_service_type("urn:schemas-upnp-org:service:WANPPPConnection:1") is None
    assert parse_service_type("urn:schemas-upnp-org:service:WANIPConnection:x") is None
    assert parse_service_type("urn:schemas-upnp-org:service:WANIPConnection:0") is None

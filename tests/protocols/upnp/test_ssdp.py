"""The SSDP codec: searches as real control points send them, every row of protocols.md §1.3,
the messages of §1.4/§1.6 byte for byte, and what must be dropped."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.upnp.ssdp import (
    HOST_IPV4,
    HOST_IPV6_LINK,
    MAX_MESSAGE,
    Answer,
    DeviceIdentity,
    Notification,
    Search,
    SsdpDecodeError,
    answers,
    decode_notify,
    decode_response,
    decode_search,
    encode_alive,
    encode_byebye,
    encode_search_response,
    encode_update,
    http_location,
    notifications,
)

R = "2fac1234-31f8-11b4-a222-08002b34c003"
W = "2fac1234-31f8-11b4-a222-08002b34c004"
C = "2fac1234-31f8-11b4-a222-08002b34c005"
SERVER = "Linux/6.1 UPnP/1.1 portgate/0.1"
BOOT = 1700000000
URN_D = "urn:schemas-upnp-org:device:"
URN_S = "urn:schemas-upnp-org:service:"


def identity(**overrides: object) -> DeviceIdentity:
    values: dict[str, object] = {
        "root_uuid": R,
        "wan_uuid": W,
        "wanconn_uuid": C,
        "server": SERVER,
        "location": http_location(5000),
        "boot_id": BOOT,
        "config_id": 7,
    }
    values.update(overrides)
    return DeviceIdentity(**values)  # type: ignore[arg-type]


IGD2 = identity()
IGD1 = identity(igd_version=1)


def search(st: str, mx: int | None = 3, unicast: bool = False) -> Search:
    return Search(st=st, mx=mx, unicast=unicast)


def msearch(*headers: str, start: str = "M-SEARCH * HTTP/1.1", end: str = "\r\n\r\n") -> bytes:
    """A search with the given header lines (defaults: a valid multicast ssdp:all)."""
    lines = list(headers) or [
        "HOST: 239.255.255.250:1900",
        'MAN: "ssdp:discover"',
        "MX: 2",
        "ST: ssdp:all",
    ]
    return ("\r\n".join([start, *lines]) + end).encode("latin-1")


# -- searches as real clients send them ---------------------------------------------------------

# miniupnpc 2.3.x, miniupnpc/src/minissdpc.c ssdpDiscoverDevices(), MSearchMsgFmt:
#   "M-SEARCH * HTTP/1.1\r\n" "HOST: %s:" XSTR(SSDP_PORT) "\r\n" "ST: %s\r\n"
#   "MAN: \"ssdp:discover\"\r\n" "MX: %u\r\n" "\r\n"
# upnpc calls upnpDiscover(2000, ...) -> MX = 2000/1000 = 2; upnpDiscover() in miniupnpc.c
# searches, in order, for the four targets below; HOST is "[FF05::C]" then "[FF02::C]" on IPv6.
MINIUPNPC_FMT = (
    'M-SEARCH * HTTP/1.1\r\nHOST: {host}:1900\r\nST: {st}\r\nMAN: "ssdp:discover"\r\nMX: 2\r\n\r\n'
)
MINIUPNPC_TARGETS = [
    URN_D + "InternetGatewayDevice:1",
    URN_S + "WANIPConnection:1",
    URN_S + "WANPPPConnection:1",
    "upnp:rootdevice",
]

# Windows' SSDP service layout ("Host:", "ST:", "Man:", "MX:3", no space after the colons),
# verbatim from a raw IPv6 frame (fe80:: -> ff02::c, UDP 53396 -> 1900) kept as a test fixture
# in a public packet-filter project: a Windows Connect Now search for WFADevice.
WINDOWS_WFA = (
    b"M-SEARCH * HTTP/1.1\r\nHost:[FF02::C]:1900\r\n"
    b"ST:urn:schemas-wifialliance-org:device:WFADevice:1\r\n"
    b'Man:"ssdp:discover"\r\nMX:3\r\n\r\n'
)
# The same layout with the target Windows' NAT traversal (and the Xbox) search for.
WINDOWS_IGD = (
    b"M-SEARCH * HTTP/1.1\r\nHost:239.255.255.250:1900\r\n"
    b"ST:urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b'Man:"ssdp:discover"\r\nMX:3\r\n\r\n'
)

# async-upnp-client (StevenLooman/async_upnp_client), async_upnp_client/ssdp.py:
# build_ssdp_search_packet() -> build_ssdp_packet("M-SEARCH * HTTP/1.1", {"HOST": ...,
# "MAN": '"ssdp:discover"', "MX": ..., "ST": ...}) joining "key:value" with CRLF, then CRLF CRLF;
# SSDP_MX = 4. Home Assistant's SSDP scanner searches ssdp:all and the IGD types this way.
ASYNC_UPNP_CLIENT_ALL = (
    b'M-SEARCH * HTTP/1.1\r\nHOST:239.255.255.250:1900\r\nMAN:"ssdp:discover"\r\n'
    b"MX:4\r\nST:ssdp:all\r\n\r\n"
)
ASYNC_UPNP_CLIENT_IGD2_V6 = (
    b'M-SEARCH * HTTP/1.1\r\nHOST:[ff02::c]:1900\r\nMAN:"ssdp:discover"\r\n'
    b"MX:4\r\nST:urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\n\r\n"
)

# GSSDP (used by GUPnP), libgssdp/gssdp-protocol.h SSDP_DISCOVERY_REQUEST:
#   "M-SEARCH * HTTP/1.1\r\n" "Host: " SSDP_ADDR ":" SSDP_PORT_STR "\r\n"
#   "Man: \"ssdp:discover\"\r\n" "ST: %s\r\n" "MX: %d\r\n" "User-Agent: %s GSSDP/" VERSION
#   "\r\n\r\n"; SSDP_DEFAULT_MX 3. (The User-Agent value here is illustrative.)
GSSDP_ROOT = (
    b"M-SEARCH * HTTP/1.1\r\nHost: 239.255.255.250:1900\r\n"
    b'Man: "ssdp:discover"\r\nST: upnp:rootdevice\r\nMX: 3\r\n'
    b"User-Agent: Linux/6.1 UPnP/1.0 GSSDP/1.6.3\r\n\r\n"
)

# libtorrent 2.x, src/upnp.cpp upnp::discover_device_impl(): note the extra CRLF pair at the
# end; libtorrent sends the same bytes to the group and unicast to the default gateway.
LIBTORRENT = (
    b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nST:upnp:rootdevice\r\n"
    b'MAN:"ssdp:discover"\r\nMX:3\r\n\r\n\r\n'
)


@pytest.mark.parametrize("host", ["239.255.255.250", "[FF02::C]", "[FF05::C]"])
def test_miniupnpc_searches_are_answered_per_table(host: str) -> None:
    got = []
    for target in MINIUPNPC_TARGETS:
        parsed = decode_search(MINIUPNPC_FMT.format(host=host, st=target).encode(), multicast=True)
        assert parsed.mx == 2 and not parsed.unicast and parsed.host == f"{host}:1900"
        got.append(answers(parsed, IGD2))
    assert got == [
        [Answer(URN_D + "InternetGatewayDevice:1", f"uuid:{R}::{URN_D}InternetGatewayDevice:1")],
        [Answer(URN_S + "WANIPConnection:1", f"uuid:{C}::{URN_S}WANIPConnection:1")],
        [],  # we have no WANPPPConnection (protocols.md §1.3: not recommended)
        [Answer("upnp:rootdevice", f"uuid:{R}::upnp:rootdevice")],
    ]


def test_windows_searches_parse_and_only_ours_are_answered() -> None:
    wfa = decode_search(WINDOWS_WFA, multicast=True)
    assert wfa.st == "urn:schemas-wifialliance-org:device:WFADevice:1" and wfa.mx == 3
    assert answers(wfa, IGD2) == []
    igd = decode_search(WINDOWS_IGD, multicast=True)
    assert answers(igd, IGD2) == [
        Answer(URN_D + "InternetGatewayDevice:1", f"uuid:{R}::{URN_D}InternetGatewayDevice:1")
    ]


def test_async_upnp_client_ssdp_all_gets_every_row() -> None:
    parsed = decode_search(ASYNC_UPNP_CLIENT_ALL, multicast=True)
    assert parsed == Search(st="ssdp:all", mx=4, unicast=False, host="239.255.255.250:1900")
    assert [(a.st, a.usn) for a in answers(parsed, IGD2)] == list(notifications(IGD2))
    v6 = decode_search(ASYNC_UPNP_CLIENT_IGD2_V6, multicast=True)
    assert answers(v6, IGD2) == [
        Answer(URN_D + "InternetGatewayDevice:2", f"uuid:{R}::{URN_D}InternetGatewayDevice:2")
    ]
    assert answers(v6, IGD1) == []


def test_gssdp_search_keeps_its_user_agent() -> None:
    parsed = decode_search(GSSDP_ROOT, multicast=True)
    assert parsed.user_agent == "Linux/6.1 UPnP/1.0 GSSDP/1.6.3"
    assert answers(parsed, IGD2) == [Answer("upnp:rootdevice", f"uuid:{R}::upnp:rootdevice")]


def test_libtorrent_search_with_trailing_blank_line_is_accepted_multicast_and_unicast() -> None:
    assert decode_search(LIBTORRENT, multicast=True).st == "upnp:rootdevice"
    unicast = decode_search(LIBTORRENT, multicast=False)
    assert unicast.unicast and unicast.mx == 3


# -- protocols.md §1.3, row by row ---------------------------------------------------------------

IGD2_ROWS = [
    ("upnp:rootdevice", f"uuid:{R}::upnp:rootdevice"),
    (f"uuid:{R}", f"uuid:{R}"),
    (URN_D + "InternetGatewayDevice:2", f"uuid:{R}::{URN_D}InternetGatewayDevice:2"),
    (URN_S + "Layer3Forwarding:1", f"uuid:{R}::{URN_S}Layer3Forwarding:1"),
    (f"uuid:{W}", f"uuid:{W}"),
    (URN_D + "WANDevice:2", f"uuid:{W}::{URN_D}WANDevice:2"),
    (URN_S + "WANCommonInterfaceConfig:1", f"uuid:{W}::{URN_S}WANCommonInterfaceConfig:1"),
    (f"uuid:{C}", f"uuid:{C}"),
    (URN_D + "WANConnectionDevice:2", f"uuid:{C}::{URN_D}WANConnectionDevice:2"),
    (URN_S + "WANIPConnection:2", f"uuid:{C}::{URN_S}WANIPConnection:2"),
    (URN_S + "WANIPv6FirewallControl:1", f"uuid:{C}::{URN_S}WANIPv6FirewallControl:1"),
]


def test_ssdp_all_answers_every_row_root_first() -> None:
    assert [tuple(a) for a in answers(search("ssdp:all"), IGD2)] == IGD2_ROWS


def test_ssdp_all_in_the_igd1_view_has_no_v2_types_and_no_ipv6_firewall() -> None:
    rows = [tuple(a) for a in answers(search("ssdp:all"), IGD1)]
    assert len(rows) == 10
    assert all(not st.endswith(":2") for st, _ in rows)
    assert not any("WANIPv6FirewallControl" in st for st, _ in rows)
    assert (URN_S + "WANIPConnection:1", f"uuid:{C}::{URN_S}WANIPConnection:1") in rows


@pytest.mark.parametrize(
    ("st", "usn"),
    [
        ("upnp:rootdevice", f"uuid:{R}::upnp:rootdevice"),
        (f"uuid:{R}", f"uuid:{R}"),
        (f"uuid:{W}", f"uuid:{W}"),
        (f"uuid:{C}", f"uuid:{C}"),
        (URN_D + "InternetGatewayDevice:1", f"uuid:{R}::{URN_D}InternetGatewayDevice:1"),
        (URN_D + "InternetGatewayDevice:2", f"uuid:{R}::{URN_D}InternetGatewayDevice:2"),
        (URN_D + "WANDevice:1", f"uuid:{W}::{URN_D}WANDevice:1"),
        (URN_D + "WANDevice:2", f"uuid:{W}::{URN_D}WANDevice:2"),
        (URN_D + "WANConnectionDevice:1", f"uuid:{C}::{URN_D}WANConnectionDevice:1"),
        (URN_D + "WANConnectionDevice:2", f"uuid:{C}::{URN_D}WANConnectionDevice:2"),
        (URN_S + "WANIPConnection:1", f"uuid:{C}::{URN_S}WANIPConnection:1"),
        (URN_S + "WANIPConnection:2", f"uuid:{C}::{URN_S}WANIPConnection:2"),
        (URN_S + "WANIPv6FirewallControl:1", f"uuid:{C}::{URN_S}WANIPv6FirewallControl:1"),
        (URN_S + "WANCommonInterfaceConfig:1", f"uuid:{W}::{URN_S}WANCommonInterfaceConfig:1"),
        (URN_S + "Layer3Forwarding:1", f"uuid:{R}::{URN_S}Layer3Forwarding:1"),
    ],
)
def test_igd2_answers_each_target_with_the_version_searched_for(st: str, usn: str) -> None:
    assert answers(search(st), IGD2) == [Answer(st, usn)]


@pytest.mark.parametrize(
    "st",
    [
        URN_D + "InternetGatewayDevice:3",
        URN_D + "WANDevice:3",
        URN_D + "WANConnectionDevice:3",
        URN_S + "WANIPConnection:3",
        URN_S + "WANIPv6FirewallControl:2",
        URN_S + "WANCommonInterfaceConfig:2",
        URN_S + "Layer3Forwarding:2",
        URN_S + "WANPPPConnection:1",
        URN_D + "MediaServer:1",
        "urn:schemas-wifialliance-org:device:WFADevice:1",
        "urn:example-com:device:InternetGatewayDevice:1",  # a vendor domain is another type
        URN_D + "InternetGatewayDevice",  # no version
        URN_D + "InternetGatewayDevice:0",
        URN_D + "InternetGatewayDevice:01",
        URN_D + "InternetGatewayDevice:1x",
        URN_D + "InternetGatewayDevice:99999999999",
        URN_D + "internetgatewaydevice:1",  # URNs compare case-sensitively
        "uuid:00000000-0000-0000-0000-000000000000",
        f"uuid:{R}::upnp:rootdevice",
        "upnp:RootDevice",
        "ssdp:ALL",
        "ssdp:alive",
    ],
)
def test_higher_versions_and_unknown_targets_get_nothing(st: str) -> None:
    assert answers(search(st), IGD2) == []


@pytest.mark.parametrize(
    "st",
    [
        URN_D + "InternetGatewayDevice:2",
        URN_D + "WANDevice:2",
        URN_D + "WANConnectionDevice:2",
        URN_S + "WANIPConnection:2",
        URN_S + "WANIPv6FirewallControl:1",
    ],
)
def test_the_igd1_view_stops_at_version_1_and_has_no_ipv6_firewall(st: str) -> None:
    assert answers(search(st), IGD1) == []


def test_the_igd1_view_answers_version_1_targets() -> None:
    assert answers(search(URN_D + "InternetGatewayDevice:1"), IGD1) == [
        Answer(URN_D + "InternetGatewayDevice:1", f"uuid:{R}::{URN_D}InternetGatewayDevice:1")
    ]
    assert answers(search(URN_S + "WANIPConnection:1"), IGD1) == [
        Answer(URN_S + "WANIPConnection:1", f"uuid:{C}::{URN_S}WANIPConnection:1")
    ]


def test_uuid_search_matches_regardless_of_hex_case_and_echoes_the_st() -> None:
    st = f"uuid:{W.upper()}"
    assert answers(search(st), IGD2) == [Answer(st, f"uuid:{W}")]


def test_without_layer3_forwarding_it_is_neither_answered_nor_announced() -> None:
    no_l3f = identity(layer3_forwarding=False)
    assert answers(search(URN_S + "Layer3Forwarding:1"), no_l3f) == []
    assert len(notifications(no_l3f)) == 10


def test_notification_set_is_3_plus_2d_plus_k_with_the_highest_versions_only() -> None:
    igd2 = notifications(IGD2)
    assert len(igd2) == 3 + 2 * 2 + 4 == 11
    assert [tuple(n) for n in igd2] == IGD2_ROWS
    igd1 = notifications(IGD1)
    assert len(igd1) == 3 + 2 * 2 + 3 == 10
    assert all(n.nt.endswith(":1") for n in igd1 if n.nt.startswith("urn:"))
    assert igd1[0] == Notification("upnp:rootdevice", f"uuid:{R}::upnp:rootdevice")


# -- parsing rules ------------------------------------------------------------------------------


def test_header_names_are_case_insensitive() -> None:
    data = msearch("hOsT: 239.255.255.250:1900", 'mAn: "ssdp:discover"', "mx: 1", "sT: ssdp:all")
    assert decode_search(data, multicast=True).st == "ssdp:all"


@pytest.mark.parametrize(("raw", "mx"), [("1", 1), ("5", 5), ("6", 5), ("120", 5), ("0", 1)])
def test_mx_is_clamped_to_1_to_5(raw: str, mx: int) -> None:
    data = msearch('MAN: "ssdp:discover"', f"MX: {raw}", "ST: ssdp:all")
    assert decode_search(data, multicast=True).mx == mx


def test_unicast_search_needs_no_mx_and_ignores_a_bad_one() -> None:
    no_mx = decode_search(msearch('MAN: "ssdp:discover"', "ST: upnp:rootdevice"), multicast=False)
    assert no_mx == Search(st="upnp:rootdevice", mx=None, unicast=True)
    bad_mx = msearch('MAN: "ssdp:discover"', "MX: soon", "ST: upnp:rootdevice")
    assert decode_search(bad_mx, multicast=False).mx is None


def test_bare_lf_line_endings_are_accepted() -> None:
    data = (
        b'M-SEARCH * HTTP/1.1\nHOST: 239.255.255.250:1900\nMAN: "ssdp:discover"\nMX: 1\nST: x\n\n'
    )
    assert decode_search(data, multicast=True).st == "x"


MALFORMED = {
    "empty": b"",
    "notify": msearch(start="NOTIFY * HTTP/1.1"),
    "response": msearch(start="HTTP/1.1 200 OK"),
    "http/1.0": msearch(start="M-SEARCH * HTTP/1.0"),
    "lower-case method": msearch(start="m-search * HTTP/1.1"),
    "path": msearch(start="M-SEARCH / HTTP/1.1"),
    "two spaces": msearch(start="M-SEARCH  * HTTP/1.1"),
    "get": msearch(start="GET / HTTP/1.1"),
    "no MAN": msearch("MX: 1", "ST: ssdp:all"),
    "MAN unquoted": msearch("MAN: ssdp:discover", "MX: 1", "ST: ssdp:all"),
    "MAN other": msearch('MAN: "ssdp:alive"', "MX: 1", "ST: ssdp:all"),
    "MAN trailing": msearch('MAN: "ssdp:discover"; ns=01', "MX: 1", "ST: ssdp:all"),
    "MAN case": msearch('MAN: "SSDP:DISCOVER"', "MX: 1", "ST: ssdp:all"),
    "no MX": msearch('MAN: "ssdp:discover"', "ST: ssdp:all"),
    "MX word": msearch('MAN: "ssdp:discover"', "MX: three", "ST: ssdp:all"),
    "MX negative": msearch('MAN: "ssdp:discover"', "MX: -1", "ST: ssdp:all"),
    "MX fraction": msearch('MAN: "ssdp:discover"', "MX: 1.5", "ST: ssdp:all"),
    "MX empty": msearch('MAN: "ssdp:discover"', "MX:", "ST: ssdp:all"),
    "MX huge": msearch('MAN: "ssdp:discover"', "MX: 12345678901", "ST: ssdp:all"),
    "MX non-ascii digit": msearch('MAN: "ssdp:discover"', "MX: \u00b2", "ST: a"),  # superscript 2
    "no ST": msearch('MAN: "ssdp:discover"', "MX: 1"),
    "empty ST": msearch('MAN: "ssdp:discover"', "MX: 1", "ST:"),
    "ST with space": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: ssdp: all"),
    "ST too long": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: " + "a" * 300),
    "duplicate ST": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: ssdp:all", "ST: upnp:rootdevice"),
    "duplicate MAN": msearch('MAN: "ssdp:discover"', 'MAN: "ssdp:discover"', "MX: 1", "ST: a"),
    "no colon": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a", "garbage"),
    "space in name": msearch('MAN: "ssdp:discover"', "MX: 1", "S T: a"),
    "empty name": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a", ": x"),
    "folded": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a", " continued"),
    "NUL in value": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a", "USER-AGENT: a\0b"),
    "CR in value": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a\rb"),
    "no blank line": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a", end="\r\n"),
    "unterminated": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a", end=""),
    "body": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a", end="\r\n\r\nhello\r\n"),
    "too many headers": msearch(
        'MAN: "ssdp:discover"', "MX: 1", "ST: a", *[f"X-{i}: y" for i in range(40)]
    ),
    "oversize": msearch('MAN: "ssdp:discover"', "MX: 1", "ST: a", "X: " + "y" * MAX_MESSAGE),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_searches_are_dropped(name: str) -> None:
    with pytest.raises(SsdpDecodeError):
        decode_search(MALFORMED[name], multicast=True)


def test_truncated_copies_of_real_searches_are_dropped() -> None:
    for vector in (WINDOWS_IGD, ASYNC_UPNP_CLIENT_ALL, GSSDP_ROOT, LIBTORRENT):
        for cut in range(len(vector) - 2):
            with pytest.raises(SsdpDecodeError):
                decode_search(vector[:cut], multicast=True)


def test_decode_error_is_a_silent_drop_without_a_wire_code() -> None:
    with pytest.raises(SsdpDecodeError) as caught:
        decode_search(b"junk", multicast=True)
    assert caught.value.code is None and caught.value.reason


# -- encoders, byte for byte --------------------------------------------------------------------


def test_search_response_matches_section_1_4() -> None:
    location = IGD2.location_for(IPv4Address("192.168.1.1"))
    data = encode_search_response(
        IGD2, Answer("upnp:rootdevice", f"uuid:{R}::upnp:rootdevice"), location, 946684800.0
    )
    assert data == (
        b"HTTP/1.1 200 OK\r\n"
        b"CACHE-CONTROL: max-age=1800\r\n"
        b"DATE: Sat, 01 Jan 2000 00:00:00 GMT\r\n"
        b"EXT:\r\n"
        b"LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n"
        b"SERVER: Linux/6.1 UPnP/1.1 portgate/0.1\r\n"
        b"ST: upnp:rootdevice\r\n"
        b"USN: uuid:2fac1234-31f8-11b4-a222-08002b34c003::upnp:rootdevice\r\n"
        b"BOOTID.UPNP.ORG: 1700000000\r\n"
        b"CONFIGID.UPNP.ORG: 7\r\n"
        b'OPT: "http://schemas.upnp.org/upnp/1/0/"; ns=01\r\n'
        b"01-NLS: 1700000000\r\n"
        b"\r\n"
    )


def test_notify_alive_byebye_and_update_match_section_1_6() -> None:
    row = Notification("upnp:rootdevice", f"uuid:{R}::upnp:rootdevice")
    location = IGD2.location_for(IPv6Address("fe80::1"))
    assert encode_alive(IGD2, row, HOST_IPV6_LINK, location) == (
        b"NOTIFY * HTTP/1.1\r\n"
        b"HOST: [FF02::C]:1900\r\n"
        b"CACHE-CONTROL: max-age=1800\r\n"
        b"LOCATION: http://[fe80::1]:5000/rootDesc.xml\r\n"
        b"NT: upnp:rootdevice\r\n"
        b"NTS: ssdp:alive\r\n"
        b"SERVER: Linux/6.1 UPnP/1.1 portgate/0.1\r\n"
        b"USN: uuid:2fac1234-31f8-11b4-a222-08002b34c003::upnp:rootdevice\r\n"
        b"BOOTID.UPNP.ORG: 1700000000\r\n"
        b"CONFIGID.UPNP.ORG: 7\r\n"
        b'OPT: "http://schemas.upnp.org/upnp/1/0/"; ns=01\r\n'
        b"01-NLS: 1700000000\r\n"
        b"\r\n"
    )
    assert encode_byebye(IGD2, row, HOST_IPV4) == (
        b"NOTIFY * HTTP/1.1\r\n"
        b"HOST: 239.255.255.250:1900\r\n"
        b"NT: upnp:rootdevice\r\n"
        b"NTS: ssdp:byebye\r\n"
        b"USN: uuid:2fac1234-31f8-11b4-a222-08002b34c003::upnp:rootdevice\r\n"
        b"BOOTID.UPNP.ORG: 1700000000\r\n"
        b"CONFIGID.UPNP.ORG: 7\r\n"
        b"\r\n"
    )
    assert encode_update(
        IGD2, row, HOST_IPV4, "http://192.168.1.1:5000/rootDesc.xml", BOOT + 1
    ) == (
        b"NOTIFY * HTTP/1.1\r\n"
        b"HOST: 239.255.255.250:1900\r\n"
        b"LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n"
        b"NT: upnp:rootdevice\r\n"
        b"NTS: ssdp:update\r\n"
        b"USN: uuid:2fac1234-31f8-11b4-a222-08002b34c003::upnp:rootdevice\r\n"
        b"BOOTID.UPNP.ORG: 1700000000\r\n"
        b"CONFIGID.UPNP.ORG: 7\r\n"
        b"NEXTBOOTID.UPNP.ORG: 1700000001\r\n"
        b"\r\n"
    )


def test_update_needs_a_greater_next_boot_id() -> None:
    row = notifications(IGD2)[0]
    with pytest.raises(ValueError, match="next_boot_id"):
        encode_update(IGD2, row, HOST_IPV4, "http://x/", BOOT)


def test_every_message_fits_one_datagram_and_decodes() -> None:
    location = IGD2.location_for(IPv6Address("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"))
    for row in notifications(IGD2):
        assert len(encode_alive(IGD2, row, HOST_IPV6_LINK, location)) < 700
        decode_notify(encode_alive(IGD2, row, HOST_IPV6_LINK, location))
        decode_notify(encode_byebye(IGD2, row, HOST_IPV6_LINK))
        decode_notify(encode_update(IGD2, row, HOST_IPV6_LINK, location, BOOT + 5))


# -- DeviceIdentity -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"root_uuid": "not-a-uuid"}, "root_uuid"),
        ({"wan_uuid": W.upper()}, "wan_uuid"),
        ({"wanconn_uuid": R}, "distinct"),
        ({"server": "x\r\nEVIL: 1"}, "server"),
        ({"server": ""}, "server"),
        ({"boot_id": -1}, "boot_id"),
        ({"boot_id": 2**31}, "boot_id"),
        ({"config_id": 16777216}, "config_id"),
        ({"igd_version": 3}, "igd_version"),
        ({"max_age": 0}, "max_age"),
    ],
)
def test_identity_refuses_what_would_break_the_wire(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        identity(**overrides)


def test_location_is_checked_against_header_injection() -> None:
    bad = identity(location=lambda address: f"http://{address}/\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="location"):
        bad.location_for(IPv4Address("192.168.1.1"))


def test_http_location_brackets_ipv6_literals() -> None:
    location = http_location(49152, "/a1b2/rootDesc.xml")
    assert location(ip_address("192.168.1.1")) == "http://192.168.1.1:49152/a1b2/rootDesc.xml"
    assert location(ip_address("fe80::1")) == "http://[fe80::1]:49152/a1b2/rootDesc.xml"
    with pytest.raises(ValueError):
        http_location(0)
    with pytest.raises(ValueError):
        http_location(80, "rootDesc.xml")


# -- properties ---------------------------------------------------------------------------------


@given(st.binary(max_size=3000), st.booleans())
def test_random_bytes_only_ever_raise_the_decode_error(data: bytes, multicast: bool) -> None:
    for decode in (
        lambda: decode_search(data, multicast=multicast),
        lambda: decode_response(data),
        lambda: decode_notify(data),
    ):
        with contextlib.suppress(SsdpDecodeError):
            decode()


@given(
    st.sampled_from([WINDOWS_IGD, ASYNC_UPNP_CLIENT_ALL, GSSDP_ROOT, LIBTORRENT, WINDOWS_WFA]),
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=6),
)
def test_mutated_real_searches_only_ever_raise_the_decode_error(
    vector: bytes, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(vector)
    for position, value in flips:
        data[position % len(data)] = value
    try:
        parsed = decode_search(bytes(data), multicast=True)
    except SsdpDecodeError:
        return
    assert parsed.mx is not None and 1 <= parsed.mx <= 5
    answers(parsed, IGD2)


_HEADER_NAMES = {"host": "HOST", "man": "MAN", "mx": "MX", "st": "ST"}


@given(
    st.sampled_from(["ssdp:all", "upnp:rootdevice", f"uuid:{C}", *[row[0] for row in IGD2_ROWS]]),
    st.integers(0, 10**6),
    st.permutations(list(_HEADER_NAMES)),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.sampled_from(["", " ", "  ", "\t"]),
)
def test_any_header_order_case_and_spacing_parses(
    target: str, mx: int, order: list[str], lower: list[bool], space: str
) -> None:
    values = {"host": HOST_IPV4, "man": '"ssdp:discover"', "mx": str(mx), "st": target}
    lines = [
        f"{key if low else _HEADER_NAMES[key]}:{space}{values[key]}{space}"
        for key, low in zip(order, lower, strict=True)
    ]
    parsed = decode_search(msearch(*lines), multicast=True)
    assert parsed.st == target and parsed.mx == min(max(mx, 1), 5)
    assert answers(parsed, IGD2)


_printable = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=60
).filter(lambda s: s.strip() == s)
identities = st.builds(
    lambda ids, server, boot, config, version, age, l3f, port: DeviceIdentity(
        root_uuid=str(ids[0]),
        wan_uuid=str(ids[1]),
        wanconn_uuid=str(ids[2]),
        server=server,
        location=http_location(port),
        boot_id=boot,
        config_id=config,
        igd_version=version,
        max_age=age,
        layer3_forwarding=l3f,
    ),
    st.lists(st.uuids(), min_size=3, max_size=3, unique=True),
    _printable,
    st.integers(0, 2**31 - 2),
    st.integers(0, 16777215),
    st.sampled_from([1, 2]),
    st.integers(1, 86400),
    st.booleans(),
    st.integers(1, 65535),
)
local_addresses = st.one_of(
    st.ip_addresses(v=4).filter(lambda a: not a.is_multicast),
    st.ip_addresses(v=6).filter(lambda a: not a.is_multicast),
)


@settings(max_examples=60)
@given(identities, st.data(), local_addresses, st.floats(0, 4102444800))
def test_search_responses_round_trip(
    who: DeviceIdentity, data: st.DataObject, local: IPv4Address | IPv6Address, date: float
) -> None:
    target = data.draw(st.sampled_from([n.nt for n in notifications(who)] + ["ssdp:all"]))
    for answer in answers(search(target), who):
        location = who.location_for(local)
        parsed = decode_response(encode_search_response(who, answer, location, date))
        assert (parsed.st, parsed.usn, parsed.location) == (answer.st, answer.usn, location)
        assert (parsed.max_age, parsed.server) == (who.max_age, who.server)
        assert (parsed.boot_id, parsed.config_id) == (who.boot_id, who.config_id)
        assert parsed.nls == str(who.boot_id) and parsed.date and parsed.date.endswith(" GMT")


@settings(max_examples=60)
@given(identities, local_addresses, st.sampled_from([HOST_IPV4, HOST_IPV6_LINK]))
def test_notifies_round_trip(
    who: DeviceIdentity, local: IPv4Address | IPv6Address, host: str
) -> None:
    location = who.location_for(local)
    for row in notifications(who):
        alive = decode_notify(encode_alive(who, row, host, location))
        assert (alive.nts, alive.nt, alive.usn, alive.host) == ("ssdp:alive", *row, host)
        assert (alive.location, alive.max_age, alive.boot_id) == (
            location,
            who.max_age,
            who.boot_id,
        )
        bye = decode_notify(encode_byebye(who, row, host))
        assert (bye.nts, bye.nt, bye.usn, bye.location) == ("ssdp:byebye", *row, None)
        update = decode_notify(encode_update(who, row, host, location, who.boot_id + 1))
        assert (update.nts, update.boot_id, update.next_boot_id) == (
            "ssdp:update",
            who.boot_id,
            who.boot_id + 1,
        )

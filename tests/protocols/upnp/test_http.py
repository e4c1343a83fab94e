"""The HTTP side (protocols.md §2.1, §3.1-§3.4, §8): a real twisted.web site on a fake
transport, over the real gateway core."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from twisted.internet.address import IPv4Address as TcpV4
from twisted.internet.address import IPv6Address as TcpV6
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.model import MappingKey, Proto
from protocols.upnp.actions import Success
from protocols.upnp.description import DEVICE_NS, UrlLayout
from protocols.upnp.http import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER,
    UpnpFrontEnd,
    build_site,
    listen_http,
)
from protocols.upnp.soap import decode_fault, decode_response
from tests.gateway.conftest import EXTERNAL, LAN, ep
from tests.protocols.upnp.igd_rig import CLIENT, CLIENT6, Rig, add_args, pinhole_args

PREFIX = "0123456789abcdef01234567"
CTL = f"/{PREFIX}/ctl/IPConn"
WANIP2 = "urn:schemas-upnp-org:service:WANIPConnection:2"
MINIUPNPC = "Linux/6.1, UPnP/1.0, MiniUPnPc/2.2.4"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    transport: StringTransport
    channel: Any = None


class Http:
    """One site over the rig; each request on a fresh connection from ``peer``."""

    def __init__(self, rig: Rig, local: str = "192.168.1.1", port: int = 5000) -> None:
        self.rig = rig
        self.front = UpnpFrontEnd(
            rig.reactor, rig.service, rig.settings, LAN.contains, layout=UrlLayout(PREFIX)
        )
        self.site = self.front.site
        self.local, self.port = local, port

    def address(self, host: str, port: int) -> TcpV4 | TcpV6:
        return TcpV6("TCP", host, port) if ":" in host else TcpV4("TCP", host, port)

    def raw(self, data: bytes, peer: str = CLIENT) -> Response:
        channel = self.site.buildProtocol(self.address(peer, 40000))
        assert channel is not None
        transport = StringTransport(
            hostAddress=self.address(self.local, self.port),
            peerAddress=self.address(peer, 40000),
        )
        channel.makeConnection(transport)
        channel.dataReceived(data)
        self.rig.reactor.advance(0)
        response = parse_response(transport)
        response.channel = channel
        return response

    def host(self) -> str:
        literal = f"[{self.local}]" if ":" in self.local else self.local
        return f"{literal}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        peer: str = CLIENT,
        version: str = "HTTP/1.1",
    ) -> Response:
        lines = [f"{method} {path} {version}"]
        fields = {"Host": self.host(), "User-Agent": MINIUPNPC}
        fields.update(headers or {})
        if (body or method == "POST") and "Content-Length" not in fields:
            fields["Content-Length"] = str(len(body))
        lines += [f"{name}: {value}" for name, value in fields.items() if value is not None]
        return self.raw(("\r\n".join(lines) + "\r\n\r\n").encode() + body, peer)

    def soap(
        self,
        action: str,
        args: list[tuple[str, str | None]] = [],  # noqa: B006
        *,
        namespace: str = WANIP2,
        soapaction: str | None = None,
        path: str = CTL,
        peer: str = CLIENT,
        headers: dict[str, str] | None = None,
    ) -> Response:
        inner = "".join(f"<{n}>{v}</{n}>" for n, v in args)
        body = (
            '<?xml version="1.0"?>\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
            ' s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{namespace}">{inner}</u:{action}></s:Body></s:Envelope>'
        ).encode()
        fields = {
            "Content-Type": 'text/xml; charset="utf-8"',
            "SOAPAction": soapaction if soapaction is not None else f'"{namespace}#{action}"',
        }
        fields.update(headers or {})
        return self.request("POST", path, fields, body, peer)


def parse_response(transport: StringTransport) -> Response:
    data = transport.value()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, body, transport)


@pytest.fixture
def http(tmp_path: Path) -> Http:
    return Http(Rig(tmp_path))


# -- documents -----------------------------------------------------------------------------------


def test_the_description_is_served_as_utf8_xml(http: Http) -> None:
    response = http.request("GET", "/rootDesc.xml")
    assert response.status == 200
    assert response.headers["content-type"] == 'text/xml; charset="utf-8"'
    assert response.headers["server"] == http.rig.settings.server
    assert int(response.headers["content-length"]) == len(response.body)
    root = etree.fromstring(response.body)
    assert root.get("configId") == str(http.front.config_id)
    device_type = root.findtext(f"{{{DEVICE_NS}}}device/{{{DEVICE_NS}}}deviceType")
    assert device_type == "urn:schemas-upnp-org:device:InternetGatewayDevice:2"
    assert f"{CTL}</controlURL>".encode() in response.body
    assert b"<presentationURL>http://192.168.1.1/</presentationURL>" in response.body


def test_head_gives_the_headers_without_the_body(http: Http) -> None:
    response = http.request("HEAD", "/rootDesc.xml")
    assert response.status == 200
    assert response.body == b""
    assert int(response.headers["content-length"]) > 0


def test_windows_gets_the_igd1_view(http: Http) -> None:
    windows = {"User-Agent": "Microsoft-Windows/10.0 UPnP/1.0"}
    description = http.request("GET", "/rootDesc.xml", windows).body
    assert b"InternetGatewayDevice:1" in description
    assert b"WANIPv6FirewallControl" not in description
    assert b"AddAnyPortMapping" not in http.request("GET", "/WANIPCn.xml", windows).body
    assert b"AddAnyPortMapping" in http.request("GET", "/WANIPCn.xml").body
    assert http.request("GET", "/WANIP6FC.xml", windows).status == 404
    assert http.request("GET", "/WANIP6FC.xml").status == 200


def test_an_ipv6_lan_address_is_served_with_its_own_presentation_url(tmp_path: Path) -> None:
    http = Http(Rig(tmp_path), local="2001:db8:1::1")
    response = http.request("GET", "/rootDesc.xml", peer=CLIENT6)
    assert response.status == 200
    assert b"<presentationURL>http://[2001:db8:1::1]/</presentationURL>" in response.body


# -- HTTP rules -----------------------------------------------------------------------------------


def test_unknown_paths_wrong_methods_and_unknown_methods(http: Http) -> None:
    assert http.request("GET", "/nothing").status == 404
    assert http.request("GET", "/ctl/IPConn").status == 404  # the per-boot prefix is missing
    post = http.request("POST", "/rootDesc.xml")
    assert (post.status, post.headers["allow"]) == (405, "GET, HEAD")
    get = http.request("GET", CTL)
    assert (get.status, get.headers["allow"]) == (405, "POST")
    assert http.request("BREW", "/rootDesc.xml").status == 501
    assert http.request("M-POST", CTL).status == 405


def test_no_options_and_no_cors(http: Http) -> None:
    options = http.request("OPTIONS", CTL, {"Origin": "http://evil.example"})
    assert options.status == 403
    options = http.request("OPTIONS", CTL)
    assert options.status == 405
    assert not any(name.startswith("access-control") for name in options.headers)
    assert http.raw(b"OPTIONS * HTTP/1.1\r\nHost: 192.168.1.1:5000\r\n\r\n").status == 501


def test_connections_from_outside_the_lan_are_closed_without_an_answer(http: Http) -> None:
    for peer in ("10.9.9.9", "203.0.113.77"):
        assert http.site.buildProtocol(http.address(peer, 40000)) is None
    assert http.site.buildProtocol(http.address(CLIENT, 40000)) is not None


def test_the_host_header_must_name_our_address_and_port(http: Http) -> None:
    assert http.request("GET", "/rootDesc.xml", {"Host": "evil.example:5000"}).status == 403
    assert http.request("GET", "/rootDesc.xml", {"Host": "192.168.1.1:80"}).status == 403
    assert http.request("GET", "/rootDesc.xml", {"Host": "192.168.1.1"}).status == 403
    assert http.request("GET", "/rootDesc.xml", {"Host": "192.168.1.1:5000"}).status == 200
    no_host = b"GET /rootDesc.xml HTTP/1.1\r\nUser-Agent: x\r\n\r\n"
    assert http.raw(no_host).status == 400
    old = b"GET /rootDesc.xml HTTP/1.0\r\n\r\n"
    assert http.raw(old).status == 200
    twice = b"GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nHost: evil\r\n\r\n"
    assert http.raw(twice).status == 400


def test_port_80_may_be_left_out_of_the_host_header(tmp_path: Path) -> None:
    http = Http(Rig(tmp_path), port=80)
    assert http.request("GET", "/rootDesc.xml", {"Host": "192.168.1.1"}).status == 200


def test_a_foreign_origin_is_refused(http: Http) -> None:
    evil = http.soap("GetExternalIPAddress", headers={"Origin": "http://evil.example"})
    assert evil.status == 403
    assert http.soap("GetExternalIPAddress", headers={"Origin": "null"}).status == 403
    own = http.soap("GetExternalIPAddress", headers={"Origin": "http://192.168.1.1:5000"})
    assert own.status == 200


def test_an_oversize_body_is_refused_before_it_is_read(http: Http) -> None:
    response = http.request("POST", CTL, {"Content-Length": "20000"})
    assert response.status == 413
    assert response.transport.disconnecting
    chunked = (
        (
            f'POST {CTL} HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nSOAPAction: "{WANIP2}#X"\r\n'
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + b"".join(b"1000\r\n" + b"x" * 4096 + b"\r\n" for _ in range(5))
        + b"0\r\n\r\n"
    )
    response = http.raw(chunked)
    assert response.status == 413
    assert response.transport.disconnecting


def test_an_oversize_header_block_is_refused(http: Http) -> None:
    response = http.request("GET", "/rootDesc.xml", {"X-Junk": "x" * 9000})
    assert response.status == 400


def test_connections_are_bounded_per_peer_and_in_time(http: Http) -> None:
    peer = TcpV4("TCP", CLIENT, 1)
    channels = [http.site.buildProtocol(peer) for _ in range(MAX_CONNECTIONS_PER_PEER)]
    assert all(channel is not None for channel in channels)
    assert http.site.buildProtocol(peer) is None
    assert http.site.buildProtocol(TcpV4("TCP", "192.168.1.30", 1)) is not None
    transport = StringTransport(hostAddress=TcpV4("TCP", "192.168.1.1", 5000), peerAddress=peer)
    channels[0].makeConnection(transport)  # type: ignore[union-attr]
    channels[0].connectionLost(Failure(ConnectionDone()))  # type: ignore[union-attr]
    assert http.site.buildProtocol(peer) is not None
    slow = http.site.buildProtocol(TcpV4("TCP", "192.168.1.31", 1))
    slow_transport = StringTransport()
    slow.makeConnection(slow_transport)  # type: ignore[union-attr]
    for _ in range(13):
        slow.dataReceived(b"X")  # type: ignore[union-attr]
        http.rig.reactor.advance(10)
    assert slow_transport.disconnecting


def test_at_the_total_cap_a_new_peer_displaces_the_busiest_peers_oldest_connection(
    http: Http,
) -> None:
    """Many addresses of one attacker cannot hold every slot (tests/robustness too)."""
    held: list[tuple[Any, StringTransport]] = []
    for index in range(MAX_CONNECTIONS // MAX_CONNECTIONS_PER_PEER):
        peer = TcpV4("TCP", f"192.168.1.{100 + index}", 1)
        for _ in range(MAX_CONNECTIONS_PER_PEER):
            channel = http.site.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer)
            channel.makeConnection(transport)
            held.append((channel, transport))
    newcomer = TcpV4("TCP", "192.168.1.30", 1)
    assert http.site.buildProtocol(newcomer) is not None
    assert held[0][1].disconnected  # the first peer's oldest connection made room
    assert not any(transport.disconnected for _, transport in held[1:])
    held[0][0].connectionLost(Failure(ConnectionDone()))  # its loss is not counted twice
    # the per-peer cap still holds
    assert http.site.buildProtocol(TcpV4("TCP", "192.168.1.101", 1)) is None


# -- SOAP -----------------------------------------------------------------------------------------


def test_a_control_request_maps_a_port(http: Http) -> None:
    response = http.soap("AddPortMapping", add_args(description="a &amp; b"))
    assert response.status == 200
    assert response.headers["content-type"] == 'text/xml; charset="utf-8"'
    assert "ext" in response.headers
    assert decode_response(response.body) == (WANIP2, "AddPortMapping", {})
    mapping = http.rig.table.by_key(MappingKey(Proto.TCP, ep(f"{EXTERNAL}:8080")))
    assert mapping is not None and mapping.description == "a & b"
    reply = http.soap("GetExternalIPAddress")
    assert decode_response(reply.body)[2] == {"NewExternalIPAddress": str(EXTERNAL)}


def test_a_refusal_is_a_soap_fault_with_status_500(http: Http) -> None:
    response = http.soap("AddPortMapping", add_args(external=0))
    assert response.status == 500
    assert decode_fault(response.body) == (716, "WildCardNotPermittedInExtPort")


def test_a_v1_namespace_is_echoed(http: Http) -> None:
    v1 = "urn:schemas-upnp-org:service:WANIPConnection:1"
    response = http.soap("GetExternalIPAddress", namespace=v1)
    assert decode_response(response.body)[0] == v1


@pytest.mark.parametrize(
    ("soapaction", "status"),
    [("", 400), ("nonsense", 400), (f'"{WANIP2}"', 400)],
)
def test_a_missing_or_malformed_soapaction_is_400(http: Http, soapaction: str, status: int) -> None:
    assert http.soap("GetExternalIPAddress", soapaction=soapaction).status == status
    body = http.soap("GetExternalIPAddress").body  # a well-formed call still works
    assert decode_response(body)[1] == "GetExternalIPAddress"


def test_the_soapaction_header_is_required(http: Http) -> None:
    response = http.request("POST", CTL, {"Content-Type": "text/xml"}, b"<x/>")
    assert response.status == 400


def test_the_soapaction_must_match_the_body_and_the_control_url(http: Http) -> None:
    mismatch = http.soap("GetExternalIPAddress", soapaction=f'"{WANIP2}#AddPortMapping"')
    assert (mismatch.status, decode_fault(mismatch.body)[0]) == (500, 401)
    l3f = "urn:schemas-upnp-org:service:Layer3Forwarding:1"
    wrong_service = http.soap("GetDefaultConnectionService", namespace=l3f)
    assert decode_fault(wrong_service.body)[0] == 401
    right = http.soap("GetDefaultConnectionService", namespace=l3f, path=f"/{PREFIX}/ctl/L3F")
    assert right.status == 200


def test_unquoted_soapaction_and_bare_text_xml_are_accepted(http: Http) -> None:
    response = http.soap(
        "GetExternalIPAddress",
        soapaction=f"{WANIP2}#GetExternalIPAddress",
        headers={"Content-Type": "text/xml"},
    )
    assert response.status == 200


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "text/xml; charset=iso-8859-1"]
)
def test_a_non_xml_content_type_is_415(http: Http, content_type: str) -> None:
    assert http.soap("GetExternalIPAddress", headers={"Content-Type": content_type}).status == 415


def test_hostile_xml_in_a_control_request_is_400(http: Http) -> None:
    body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a SYSTEM "file:///etc/passwd">]><x>&a;</x>'
    headers = {"Content-Type": "text/xml", "SOAPAction": f'"{WANIP2}#AddPortMapping"'}
    response = http.request("POST", CTL, headers, body)
    assert response.status == 400
    assert b"root:" not in response.body


def test_an_ipv6_client_opens_a_pinhole(tmp_path: Path) -> None:
    http = Http(Rig(tmp_path), local="2001:db8:1::1")
    fw = "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1"
    response = http.soap(
        "AddPinhole", pinhole_args(), namespace=fw, path=f"/{PREFIX}/ctl/IP6FCtl", peer=CLIENT6
    )
    assert response.status == 200
    assert decode_response(response.body)[2]["UniqueID"].isdigit()


def test_an_unexpected_error_is_a_generic_failure_without_traceback(http: Http) -> None:
    def broken(*args: object) -> Deferred[object]:
        raise RuntimeError("secret internals")

    http.front.dispatcher.call = broken  # type: ignore[method-assign, assignment]
    response = http.soap("GetExternalIPAddress")
    assert response.status == 500
    assert b"secret" not in response.body and b"Traceback" not in response.body

    def failing(*args: object) -> Deferred[object]:
        return fail(RuntimeError("secret internals"))

    http.front.dispatcher.call = failing  # type: ignore[method-assign, assignment]
    response = http.soap("GetExternalIPAddress")
    assert response.status == 500
    assert decode_fault(response.body) == (501, "Action Failed")
    assert b"secret" not in response.body


def test_a_reply_to_a_vanished_client_is_dropped(http: Http) -> None:
    waiting: Deferred[object] = Deferred()
    http.front.dispatcher.call = lambda *args: waiting  # type: ignore[method-assign, assignment, return-value]
    response = http.soap("GetExternalIPAddress")
    assert response.status == 0  # nothing written yet
    response.transport.loseConnection()
    response.channel.connectionLost(Failure(ConnectionDone()))
    waiting.callback(Success(WANIP2, "GetExternalIPAddress", (("NewExternalIPAddress", ""),)))
    assert b"HTTP/1.1 200" not in response.transport.value()


# -- GENA over HTTP -------------------------------------------------------------------------------


def test_subscribe_and_unsubscribe_over_http(http: Http) -> None:
    sent: list[object] = []
    http.front.events._send_notify = lambda message: sent.append(message) or Deferred()  # type: ignore[assignment, func-returns-value]
    evt = f"/{PREFIX}/evt/IPConn"
    response = http.request(
        "SUBSCRIBE",
        evt,
        {"Callback": f"<http://{CLIENT}:6000/evt>", "NT": "upnp:event", "Timeout": "Second-300"},
    )
    assert response.status == 200
    assert response.headers["timeout"] == "Second-1800"
    sid = response.headers["sid"]
    assert sid.startswith("uuid:")
    assert response.headers["content-length"] == "0"
    assert len(sent) == 1  # the initial event went out on the next turn
    stranger = http.request(
        "SUBSCRIBE", evt, {"Callback": "<http://192.168.1.99:80/>", "NT": "upnp:event"}
    )
    assert stranger.status == 412
    assert http.request("SUBSCRIBE", evt, {"SID": sid, "NT": "upnp:event"}).status == 400
    assert http.request("SUBSCRIBE", evt, {"SID": sid}).status == 200
    assert http.request("UNSUBSCRIBE", evt, {"SID": sid}).status == 200
    assert http.request("UNSUBSCRIBE", evt, {"SID": sid}).status == 412
    assert http.request("GET", evt).status == 405


def test_listen_http_listens_on_the_given_lan_address(http: Http) -> None:
    reactor = http.rig.reactor
    listen_http(reactor, "192.168.1.1", 0, http.front)
    port, factory, _, interface = reactor.tcpServers[-1]
    assert (port, interface) == (0, "192.168.1.1")
    assert factory is http.front.site
    assert factory.displayTracebacks is False
    assert build_site(http.front) is not http.front.site
    assert http.front.location("192.168.1.1", 5000) == "http://192.168.1.1:5000/rootDesc.xml"
    assert http.front.location("fd00::1", 5000) == "http://[fd00::1]:5000/rootDesc.xml"


def test_stopping_the_front_end_stops_listening_to_the_gateway(http: Http) -> None:
    http.front.stop()
    count = http.front.state.mapping_count
    http.soap("AddPortMapping", add_args())
    assert http.front.state.mapping_count == count

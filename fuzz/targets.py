"""Fuzz targets for every codec: one function of ``bytes`` each, shared by the bounded
Hypothesis run of ``make test`` (tests/robustness/test_fuzz.py) and the coverage-guided atheris
run for maintainers (``python -m fuzz``, docs/fuzzing.md).

A target feeds the input to a decoder. The codec's own decode error is the one expected way
out: the target swallows it (and, where the server answers such an error on the wire, checks
that the answer it would send is itself well formed). Anything else escaping is a bug. When
the input decodes, the target checks what the rest of the daemon relies on: the value
re-encodes and decodes back to itself, and the answers the server would build from it are
valid messages of the protocol.

Where a decoder takes more than the datagram (a source address, the multicast flag, the
opcode an option list belongs to), the first byte of the input chooses them, so one byte
string drives every branch and a corpus file replays exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from protocols.natpmp import codec as natpmp
from protocols.pcp import codec as pcp
from protocols.pcp import options as pcp_options
from protocols.stun import codec as stun
from protocols.upnp import soap, ssdp

__all__ = ["TARGETS", "Target"]

IPAddress = IPv4Address | IPv6Address

#: Sources a PCP request may claim to come from (None: the codec skips the address check).
_PCP_SOURCES: tuple[IPAddress | None, ...] = (
    None,
    IPv4Address("192.168.1.10"),
    IPv6Address("fd00::10"),
    IPv6Address("fe80::10"),
)
_ROOT_UUID = "5d3f6a3e-2b0c-4c51-9a4e-0d5b2f7c1e01"
_IDENTITY = ssdp.DeviceIdentity(
    root_uuid=_ROOT_UUID,
    wan_uuid="5d3f6a3e-2b0c-4c51-9a4e-0d5b2f7c1e02",
    wanconn_uuid="5d3f6a3e-2b0c-4c51-9a4e-0d5b2f7c1e03",
    server="Linux/6.1 UPnP/2.0 portgate/0.1",
    location=ssdp.http_location(5000),
    boot_id=1,
    config_id=1,
)


@dataclass(frozen=True)
class Target:
    """A fuzz target: ``run(data)`` returns normally for every input, or exposes a bug."""

    name: str
    run: Callable[[bytes], None]
    seeds: tuple[bytes, ...]
    #: the largest input worth generating (the codec refuses longer ones up front)
    max_size: int


# -- NAT-PMP ---------------------------------------------------------------------------------


def natpmp_request(data: bytes) -> None:
    try:
        request = natpmp.decode_request(data)
    except natpmp.NatPmpDecodeError as error:
        if error.result is not None:
            # the server answers the 8-byte error header; a client must read it back
            answer = natpmp.ErrorResponse(error.opcode, error.result, 12345)
            assert natpmp.decode_response(natpmp.encode_response(answer)) == answer
        return
    assert natpmp.decode_request(natpmp.encode_request(request)) == request


def natpmp_response(data: bytes) -> None:
    try:
        response = natpmp.decode_response(data)
    except natpmp.NatPmpDecodeError:
        return
    assert natpmp.decode_response(natpmp.encode_response(response)) == response


# -- PCP -------------------------------------------------------------------------------------


def _pcp_context(first: int) -> tuple[IPAddress | None, tuple[int, ...]]:
    source = _PCP_SOURCES[first % len(_PCP_SOURCES)]
    opcodes = (0, 1, 2) if first & 0x10 else (0, 1)  # PEER on or off
    return source, opcodes


def pcp_request(data: bytes) -> None:
    if not data:
        return
    source, opcodes = _pcp_context(data[0])
    datagram = data[1:]
    try:
        request = pcp.decode_request(datagram, source, opcodes=opcodes)
    except pcp.PcpDecodeError as error:
        if error.result is not None:
            # the error response copies the request: a client must be able to read it
            answer = pcp.encode_error(
                error.request,
                error.result,
                pcp.error_lifetime(error.result),
                777,
                parsed=error.parsed,
            )
            assert len(answer) <= pcp.MAX_MESSAGE and len(answer) % 4 == 0
            decoded = pcp.decode_response(answer)
            assert decoded.result == error.result
        return
    again = pcp.decode_request(pcp.encode_request(request), source, opcodes=opcodes)
    assert again == request, (again, request)
    # the success answer the handler would build from it
    success = pcp.Response(request.opcode, pcp.ResultCode.SUCCESS, 600, 777, request.body)
    assert pcp.decode_response(pcp.encode_response(success)) == success


def pcp_response(data: bytes) -> None:
    try:
        pcp.decode_response(data)
    except pcp.PcpDecodeError:
        return


def pcp_option_list(data: bytes) -> None:
    if len(data) < 3:
        return
    opcode = data[0] % 3
    lifetime = 0 if data[1] & 1 else 600
    suggested = 0 if data[1] & 2 else 4000
    payload = data[2:]
    try:
        options = pcp_options.decode_options(payload, opcode, lifetime, suggested)
    except pcp_options.OptionError:
        return
    encoded = pcp_options.encode_options(options)
    assert pcp_options.decode_options(encoded, opcode, lifetime, suggested) == options
    try:
        pcp_options.read_options(payload)
    except pcp_options.OptionError as error:
        raise AssertionError(
            f"decode_options accepted what read_options refuses: {error}"
        ) from None


# -- SSDP ------------------------------------------------------------------------------------


def ssdp_search(data: bytes) -> None:
    if not data:
        return
    multicast = bool(data[0] & 1)
    try:
        search = ssdp.decode_search(data[1:], multicast=multicast)
    except ssdp.SsdpDecodeError:
        return
    if multicast:
        assert search.mx is not None and 1 <= search.mx <= ssdp.MAX_MX
    location = _IDENTITY.location_for(IPv4Address("192.168.1.1"))
    for row in ssdp.answers(search, _IDENTITY):
        reply = ssdp.encode_search_response(_IDENTITY, row, location, 1_700_000_000.0)
        assert len(reply) <= ssdp.MAX_MESSAGE
        parsed = ssdp.decode_response(reply)
        assert (parsed.st, parsed.usn) == (row.st, row.usn)


def ssdp_other(data: bytes) -> None:
    with contextlib.suppress(ssdp.SsdpDecodeError):
        ssdp.decode_response(data)
    with contextlib.suppress(ssdp.SsdpDecodeError):
        ssdp.decode_notify(data)


# -- SOAP ------------------------------------------------------------------------------------


def soap_request(data: bytes) -> None:
    try:
        call = soap.decode_request(data)
    except soap.SoapDecodeError as error:
        assert error.status in (400, 413), error.status
        return
    outs = [(name, value) for name, value in call.arguments if value is not None]
    try:
        reply = soap.encode_response(call.namespace, call.action, outs)
    except ValueError:
        # an argument name that is not an XML name cannot be echoed; the real actions only
        # ever send their own fixed out-argument names
        reply = soap.encode_response(call.namespace, call.action)
    namespace, action, _ = soap.decode_response(reply)
    assert (namespace, action) == (call.namespace, call.action)
    text = " ".join(value or "" for _, value in call.arguments)
    code, description = soap.decode_fault(soap.encode_fault(402, text))
    assert code == 402 and len(description) <= soap.MAX_FAULT_DESCRIPTION


def soap_action_header(data: bytes) -> None:
    try:
        action = soap.parse_soapaction(data.decode("latin-1"))
    except soap.SoapDecodeError as error:
        assert error.status == 400
        return
    assert action.name and action.namespace


# -- STUN ------------------------------------------------------------------------------------


def stun_response(data: bytes) -> None:
    """What the WAN check's client reads from a STUN server (or from anyone spoofing one)."""
    try:
        response = stun.decode_response(data)
    except stun.StunDecodeError:
        return
    if isinstance(response, stun.BindingSuccess):
        for xor in (True, False):
            again = stun.encode_success(response.transaction_id, response.mapped, xor=xor)
            assert stun.decode_response(again) == response
    else:
        again = stun.encode_error(response.transaction_id, response.code, response.reason)
        assert stun.decode_response(again) == response


def stun_request(data: bytes) -> None:
    try:
        request = stun.decode_request(data)
    except stun.StunDecodeError:
        return
    assert stun.decode_request(stun.encode_request(request.transaction_id)) == request


# -- seeds -----------------------------------------------------------------------------------


def _pcp_seeds() -> tuple[bytes, ...]:
    client4, client6 = ip_address("192.168.1.10"), ip_address("fd00::10")
    map4 = pcp.MapData(b"nonce-nonce!", 6, 8080, 8080, IPv4Address(0))
    map6 = pcp.MapData(b"nonce-nonce!", 17, 9000, 0, IPv6Address(0))
    peer = pcp.PeerData(
        b"peer-nonce!!", 6, 7000, 7000, IPv4Address(0), 443, ip_address("203.0.113.9")
    )
    options = pcp_options.Options(
        prefer_failure=True,
        filters=(pcp_options.Filter(128, 0, ip_address("203.0.113.9")),),
        description="game",
    )
    requests = [
        pcp.Request(pcp.Opcode.ANNOUNCE, 0, client4),
        pcp.Request(pcp.Opcode.MAP, 600, client4, map4),
        pcp.Request(pcp.Opcode.MAP, 600, client4, map4, options),
        pcp.Request(pcp.Opcode.MAP, 0, client4, map4),
        pcp.Request(pcp.Opcode.MAP, 600, client6, map6),
        pcp.Request(pcp.Opcode.PEER, 600, client4, peer),
        pcp.Request(pcp.Opcode.MAP, 600, client4, map4, pcp_options.Options(third_party=client6)),
    ]
    # the first byte picks the source: 1 is 192.168.1.10 (PEER on: | 0x10), 2 is fd00::10
    encoded = [
        bytes([0x11 if r.client_address.version == 4 else 0x12]) + pcp.encode_request(r)
        for r in requests
    ]
    return (*encoded, b"\x00\x01\x01\x00", b"\x11\x02\x81")


def _pcp_response_seeds() -> tuple[bytes, ...]:
    map4 = pcp.MapData(b"nonce-nonce!", 6, 8080, 8080, IPv4Address("203.0.113.1"))
    return (
        pcp.encode_announce(1234),
        pcp.encode_response(pcp.Response(1, pcp.ResultCode.SUCCESS, 600, 1234, map4)),
        pcp.encode_response(
            pcp.Response(
                1, 0, 600, 1, map4, pcp_options.Options(description="x", prefer_failure=True)
            )
        ),
    )


def _natpmp_seeds() -> tuple[bytes, ...]:
    return (
        b"\x00\x00",
        natpmp.encode_request(natpmp.MapRequest(natpmp.Opcode.MAP_TCP, 8080, 8080, 3600)),
        natpmp.encode_request(natpmp.MapRequest(natpmp.Opcode.MAP_UDP, 0, 0, 0)),
        b"\x01\x00",
        b"\x00\x05",
    )


def _natpmp_response_seeds() -> tuple[bytes, ...]:
    return tuple(
        natpmp.encode_response(r)
        for r in (
            natpmp.PublicAddressResponse(0, 100, IPv4Address("203.0.113.1")),
            natpmp.MapResponse(natpmp.Opcode.MAP_TCP, 0, 100, 8080, 8080, 3600),
            natpmp.ErrorResponse(5, natpmp.ResultCode.UNSUPPORTED_OPCODE, 100),
        )
    )


def _option_seeds() -> tuple[bytes, ...]:
    full = pcp_options.encode_options(
        pcp_options.Options(
            third_party=ip_address("192.168.1.20"),
            prefer_failure=True,
            filters=(pcp_options.Filter(120, 80, ip_address("198.51.100.0")),),
            description="seed",
        )
    )
    return (b"\x01\x00" + full, b"\x01\x00", b"\x02\x00" + pcp_options.encode_option(200, b"junk"))


_STUN_ID = bytes(range(1, 13))
#: RFC 5769 §2.2: the sample IPv4 response (SOFTWARE, XOR-MAPPED-ADDRESS 192.0.2.1:32853,
#: MESSAGE-INTEGRITY, FINGERPRINT).
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001"
    "a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96"
)


def _stun_response_seeds() -> tuple[bytes, ...]:
    v4 = stun.MappedAddress(IPv4Address("198.51.100.1"), 54321)
    v6 = stun.MappedAddress(IPv6Address("2001:db8::1"), 3478)
    return (
        RFC5769_IPV4_RESPONSE,
        stun.encode_success(_STUN_ID, v4),
        stun.encode_success(_STUN_ID, v4, xor=False, software="portgate", fingerprint=True),
        stun.encode_success(_STUN_ID, v6, fingerprint=True),
        stun.encode_error(_STUN_ID, 400, "Bad Request"),
    )


def _stun_request_seeds() -> tuple[bytes, ...]:
    return (
        stun.encode_request(_STUN_ID),
        stun.encode_request(_STUN_ID, fingerprint=True),
    )


_SEARCHES = (
    b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
    b"MX: 2\r\nST: ssdp:all\r\n\r\n",
    b"M-SEARCH * HTTP/1.1\r\nHost:239.255.255.250:1900\r\n"
    b'ST:urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nMan:"ssdp:discover"\r\nMX:3\r\n\r\n',
    b'M-SEARCH * HTTP/1.1\r\nHOST:[ff02::c]:1900\r\nMAN:"ssdp:discover"\r\nMX:4\r\n'
    b"ST:urn:schemas-upnp-org:service:WANIPConnection:2\r\n\r\n",
    b'M-SEARCH * HTTP/1.1\r\nHOST: 192.168.1.1:1900\r\nMAN: "ssdp:discover"\r\n'
    b"ST: uuid:" + _ROOT_UUID.encode() + b"\r\nUSER-AGENT: x/1 UPnP/2.0 y/1\r\n\r\n",
)


def _ssdp_other_seeds() -> tuple[bytes, ...]:
    location = _IDENTITY.location_for(IPv4Address("192.168.1.1"))
    rows = ssdp.answers(ssdp.Search(st="ssdp:all", mx=2, unicast=False), _IDENTITY)
    notes = ssdp.notifications(_IDENTITY)
    return (
        ssdp.encode_search_response(_IDENTITY, rows[0], location, 1_700_000_000.0),
        ssdp.encode_alive(_IDENTITY, notes[0], ssdp.HOST_IPV4, location),
        ssdp.encode_byebye(_IDENTITY, notes[1], ssdp.HOST_IPV4),
    )


_WANIP2 = "urn:schemas-upnp-org:service:WANIPConnection:2"
_ENVELOPE = (
    '<?xml version="1.0"?>\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>{body}</s:Body>'
    "</s:Envelope>"
)
_SOAP_SEEDS = (
    _ENVELOPE.format(body=f'<u:GetExternalIPAddress xmlns:u="{_WANIP2}"></u:GetExternalIPAddress>'),
    _ENVELOPE.format(
        body=f'<u:AddPortMapping xmlns:u="{_WANIP2}"><NewRemoteHost></NewRemoteHost>'
        "<NewExternalPort>8080</NewExternalPort><NewProtocol>TCP</NewProtocol>"
        "<NewInternalPort>80</NewInternalPort><NewInternalClient>192.168.1.10</NewInternalClient>"
        "<NewEnabled>1</NewEnabled><NewPortMappingDescription>a &amp; b</NewPortMappingDescription>"
        "<NewLeaseDuration>3600</NewLeaseDuration></u:AddPortMapping>"
    ),
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>',
    "<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'><s:Header/><s:Body>"
    f"<u:GetStatusInfo xmlns:u='{_WANIP2}'><![CDATA[x]]><!-- c --></u:GetStatusInfo>"
    "</s:Body></s:Envelope>",
)


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("natpmp-request", natpmp_request, _natpmp_seeds(), 64),
        Target("natpmp-response", natpmp_response, _natpmp_response_seeds(), 64),
        Target("pcp-request", pcp_request, _pcp_seeds(), pcp.MAX_MESSAGE + 8),
        Target("pcp-response", pcp_response, _pcp_response_seeds(), pcp.MAX_MESSAGE + 8),
        Target("pcp-options", pcp_option_list, _option_seeds(), 1100),
        Target(
            "ssdp-search",
            ssdp_search,
            tuple(bytes([flag]) + s for s in _SEARCHES for flag in (0, 1)),
            ssdp.MAX_MESSAGE + 8,
        ),
        Target("ssdp-response-notify", ssdp_other, _ssdp_other_seeds(), ssdp.MAX_MESSAGE + 8),
        Target(
            "soap-request",
            soap_request,
            tuple(s.encode() for s in _SOAP_SEEDS),
            soap.MAX_BODY + 64,
        ),
        Target("stun-response", stun_response, _stun_response_seeds(), stun.MAX_MESSAGE + 8),
        Target("stun-request", stun_request, _stun_request_seeds(), 256),
        Target(
            "soap-action",
            soap_action_header,
            (f'"{_WANIP2}#AddPortMapping"'.encode(), b"urn:x#y"),
            600,
        ),
    )
}

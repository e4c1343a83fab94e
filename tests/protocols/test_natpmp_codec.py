"""NAT-PMP codec: byte vectors with provenance, truncated and overlong copies, Hypothesis.

Sources of the vectors:
- RFC 6886 §3.2 (public address request/response), §3.3 (mapping request/response), §3.5
  (result codes) and erratum 3618 (the error header's opcode has the top bit set);
- libnatpmp (miniupnp/libnatpmp @ 134fc89e, 2025-04-03), ``natpmp.c``:
  ``sendpublicaddressrequest`` writes ``{0, 0}``; ``sendnewportmappingrequest`` writes
  ``0, protocol(1 UDP/2 TCP), 0, 0, private port, public port, lifetime``, big endian; natpmpc's
  default lifetime is 3600 (``natpmpc.c``); ``readnatpmpresponse`` reads the result at 2, the
  epoch at 4, the address at 8 or private/public port at 8/10 and the lifetime at 12;
- libtorrent (arvidn/libtorrent @ 069017e3), ``src/natpmp.cpp`` ``send_map_request`` (NAT-PMP
  branch): the same 12-byte layout.
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.natpmp.codec import (
    ErrorResponse,
    MapRequest,
    MapResponse,
    NatPmpDecodeError,
    Opcode,
    PublicAddressRequest,
    PublicAddressResponse,
    ResultCode,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

# natpmpc -a 6881 6881 tcp  (libnatpmp sendnewportmappingrequest, lifetime 3600)
NATPMPC_MAP_TCP = bytes.fromhex("0002 0000 1ae1 1ae1 00000e10")
# natpmpc -a 6881 6881 udp 0  (delete)
NATPMPC_DELETE_UDP = bytes.fromhex("0001 0000 1ae1 1ae1 00000000")
# natpmpc -a 0 0 tcp 0  (delete all TCP mappings of this host, natpmpc's usage text)
NATPMPC_DELETE_ALL_TCP = bytes.fromhex("0002 0000 0000 0000 00000000")
# RFC 6886 §3.2 public address response: SSSoE 1000, 203.0.113.1
ADDRESS_RESPONSE = bytes.fromhex("0080 0000 000003e8 cb007101")
# RFC 6886 §3.3 mapping response: TCP 6881 -> 6881 for 3600 s, SSSoE 1000
MAP_RESPONSE = bytes.fromhex("0082 0000 000003e8 1ae1 1ae1 00000e10")
# RFC 6886 §3.5 + erratum 3618: unsupported version (a PCP MAP request's first bytes)
UNSUPPORTED_VERSION = bytes.fromhex("0081 0001 000003e8")


def test_public_address_request_is_two_bytes() -> None:
    assert decode_request(b"\x00\x00") == PublicAddressRequest()
    assert encode_request(PublicAddressRequest()) == b"\x00\x00"


def test_natpmpc_map_request_decodes() -> None:
    assert decode_request(NATPMPC_MAP_TCP) == MapRequest(Opcode.MAP_TCP, 6881, 6881, 3600)
    assert encode_request(MapRequest(Opcode.MAP_TCP, 6881, 6881, 3600)) == NATPMPC_MAP_TCP


def test_natpmpc_delete_and_delete_all_decode() -> None:
    assert decode_request(NATPMPC_DELETE_UDP) == MapRequest(Opcode.MAP_UDP, 6881, 6881, 0)
    assert decode_request(NATPMPC_DELETE_ALL_TCP) == MapRequest(Opcode.MAP_TCP, 0, 0, 0)


def test_reserved_field_is_ignored() -> None:
    with_reserved = NATPMPC_MAP_TCP[:2] + b"\xbe\xef" + NATPMPC_MAP_TCP[4:]
    assert decode_request(with_reserved) == decode_request(NATPMPC_MAP_TCP)


def test_overlong_requests_are_read_up_to_their_length() -> None:
    assert decode_request(NATPMPC_MAP_TCP + b"\x00" * 4) == decode_request(NATPMPC_MAP_TCP)
    assert decode_request(b"\x00\x00\x01\x02") == PublicAddressRequest()


@pytest.mark.parametrize("length", range(2, 12))
def test_truncated_map_requests_are_dropped(length: int) -> None:
    with pytest.raises(NatPmpDecodeError) as caught:
        decode_request(NATPMPC_MAP_TCP[:length])
    assert caught.value.result is None


@pytest.mark.parametrize("data", [b"", b"\x00"])
def test_shorter_than_two_bytes_is_dropped(data: bytes) -> None:
    with pytest.raises(NatPmpDecodeError) as caught:
        decode_request(data)
    assert caught.value.result is None


def test_a_response_opcode_is_dropped() -> None:
    with pytest.raises(NatPmpDecodeError) as caught:
        decode_request(ADDRESS_RESPONSE)
    assert caught.value.result is None


@pytest.mark.parametrize("version", [1, 2, 3, 255])
def test_other_versions_are_unsupported(version: int) -> None:
    with pytest.raises(NatPmpDecodeError) as caught:
        decode_request(bytes((version, 1)) + NATPMPC_MAP_TCP[2:])
    assert caught.value.result is ResultCode.UNSUPPORTED_VERSION
    assert caught.value.opcode == 1


@pytest.mark.parametrize("opcode", [3, 4, 99, 127])
def test_unknown_opcodes_are_unsupported(opcode: int) -> None:
    with pytest.raises(NatPmpDecodeError) as caught:
        decode_request(bytes((0, opcode)))
    assert caught.value.result is ResultCode.UNSUPPORTED_OPCODE
    assert caught.value.opcode == opcode


def test_public_address_response_layout() -> None:
    response = PublicAddressResponse(ResultCode.SUCCESS, 1000, IPv4Address("203.0.113.1"))
    assert encode_response(response) == ADDRESS_RESPONSE
    assert decode_response(ADDRESS_RESPONSE) == response


def test_map_response_layout() -> None:
    response = MapResponse(Opcode.MAP_TCP, ResultCode.SUCCESS, 1000, 6881, 6881, 3600)
    assert encode_response(response) == MAP_RESPONSE
    assert decode_response(MAP_RESPONSE) == response


def test_error_header_sets_the_opcodes_top_bit() -> None:
    response = ErrorResponse(1, ResultCode.UNSUPPORTED_VERSION, 1000)
    assert encode_response(response) == UNSUPPORTED_VERSION
    assert decode_response(UNSUPPORTED_VERSION) == response


def test_libnatpmp_reads_our_map_response_fields() -> None:
    # readnatpmpresponse: result at 2, epoch at 4, private port 8, public port 10, lifetime 12
    data = encode_response(MapResponse(Opcode.MAP_UDP, ResultCode.SUCCESS, 77, 5000, 45000, 7200))
    assert data[1] == 129
    assert int.from_bytes(data[2:4], "big") == 0
    assert int.from_bytes(data[4:8], "big") == 77
    assert int.from_bytes(data[8:10], "big") == 5000
    assert int.from_bytes(data[10:12], "big") == 45000
    assert int.from_bytes(data[12:16], "big") == 7200


@pytest.mark.parametrize(
    "data",
    [ADDRESS_RESPONSE[:7], ADDRESS_RESPONSE[:10], MAP_RESPONSE[:12], b"\x01" + MAP_RESPONSE[1:]],
)
def test_truncated_or_foreign_responses_do_not_decode(data: bytes) -> None:
    with pytest.raises(NatPmpDecodeError):
        decode_response(data)


def test_unknown_result_codes_survive_decoding() -> None:
    data = bytes.fromhex("0082 0009 00000001 0001 0000 00000000")
    response = decode_response(data)
    assert isinstance(response, MapResponse) and response.result == 9


# -- Hypothesis ------------------------------------------------------------------------------

ports = st.integers(0, 65535)
uint32 = st.integers(0, 2**32 - 1)
map_requests = st.builds(
    MapRequest, st.sampled_from([Opcode.MAP_UDP, Opcode.MAP_TCP]), ports, ports, uint32
)
requests = st.one_of(st.just(PublicAddressRequest()), map_requests)
results = st.sampled_from(list(ResultCode))
responses = st.one_of(
    st.builds(PublicAddressResponse, results, uint32, st.ip_addresses(v=4)),
    st.builds(
        MapResponse,
        st.sampled_from([Opcode.MAP_UDP, Opcode.MAP_TCP]),
        results,
        uint32,
        ports,
        ports,
        uint32,
    ),
    st.builds(ErrorResponse, st.integers(0, 127), results, uint32),
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_the_decode_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(NatPmpDecodeError):
            decode(data)


@settings(deadline=None)
@given(requests)
def test_requests_round_trip(request: PublicAddressRequest | MapRequest) -> None:
    assert decode_request(encode_request(request)) == request


@settings(deadline=None)
@given(responses)
def test_responses_round_trip(
    response: PublicAddressResponse | MapResponse | ErrorResponse,
) -> None:
    assert decode_response(encode_response(response)) == response

"""PCP codec and options: byte vectors with provenance, the RFC 6887 §8.3 processing order,
truncated and overlong copies, Hypothesis.

Sources of the vectors:
- RFC 6887 §7.1 (request header, Figure 2), §7.2 (response header, Figure 3), §7.3 (option
  header, Figure 4), §11.1 (MAP opcode, Figure 9), §12.1 (PEER opcode, Figure 10), §13.1
  (THIRD_PARTY, Figure 12), §13.2 (PREFER_FAILURE, Figure 13), §13.3 (FILTER, Figure 14),
  §14.1.3 (unsolicited ANNOUNCE), §5 (IPv4-mapped addresses);
- RFC 7220 §4 (DESCRIPTION, option 128);
- libtorrent (arvidn/libtorrent @ 069017e3), ``src/natpmp.cpp``: ``send_map_request`` (PCP
  branch) writes version 2, opcode 1, 2 reserved bytes, the lifetime, the socket's local address
  IPv4-mapped, the 12-byte nonce, IANA protocol, 3 reserved bytes, local port, external port and
  ``::ffff:0.0.0.0`` as the external address of a LAN host; ``on_reply`` accepts only 60-byte
  MAP responses, reads the result at 3, the lifetime at 4, the epoch at 8, skips 12 reserved
  bytes, then nonce, protocol, 3 reserved, private port, public port, external address.
"""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocols.pcp.codec import (
    HEADER_SIZE,
    LONG_LIFETIME,
    MAP_SIZE,
    PEER_SIZE,
    SHORT_LIFETIME,
    MapData,
    Opcode,
    PcpDecodeError,
    PeerData,
    Request,
    Response,
    ResultCode,
    decode_request,
    decode_response,
    encode_announce,
    encode_error,
    encode_request,
    encode_response,
    error_lifetime,
)
from protocols.pcp.options import (
    Filter,
    OptionCode,
    Options,
    decode_address,
    encode_address,
    encode_option,
    truncate_description,
)

CLIENT = IPv4Address("192.168.1.10")
CLIENT_V6 = IPv6Address("2001:db8:1::10")
NONCE = bytes(range(1, 13))
MAPPED_ZERO = IPv4Address(0)
PEER = IPv4Address("198.51.100.20")

# libtorrent send_map_request, PCP branch: TCP 6881, lifetime 3600, from 192.168.1.10
LIBTORRENT_MAP = bytes.fromhex(
    "02 01 0000 00000e10"
    "00000000 00000000 0000ffff c0a8010a"  # client address, IPv4-mapped
    "0102030405060708090a0b0c"  # nonce
    "06 000000 1ae1 1ae1"  # protocol, reserved, internal port, suggested external port
    "00000000 00000000 0000ffff 00000000"  # ::ffff:0.0.0.0, no preference
)
# RFC 6887 §14.1.3: unsolicited ANNOUNCE, epoch 42
ANNOUNCE_42 = bytes.fromhex("02 80 00 00 00000000 0000002a" + "00" * 12)


def map_request(
    *,
    lifetime: int = 3600,
    client: IPv4Address | IPv6Address = CLIENT,
    protocol: int = 6,
    internal_port: int = 6881,
    external_port: int = 6881,
    external: IPv4Address | IPv6Address = MAPPED_ZERO,
    options: Options | None = None,
    extra: bytes = b"",
) -> bytes:
    """A MAP request whose arguments default to valid values."""
    body = MapData(NONCE, protocol, internal_port, external_port, external)
    request = Request(Opcode.MAP, lifetime, client, body, options or Options())
    return encode_request(request, extra)


def peer_request(
    *,
    remote: IPv4Address | IPv6Address = PEER,
    remote_port: int = 443,
    options: Options | None = None,
    extra: bytes = b"",
) -> bytes:
    body = PeerData(NONCE, 6, 6881, 0, MAPPED_ZERO, remote_port, remote)
    return encode_request(Request(Opcode.PEER, 600, CLIENT, body, options or Options()), extra)


def result_of(data: bytes, source: IPv4Address | IPv6Address | None = CLIENT) -> ResultCode | None:
    with pytest.raises(PcpDecodeError) as caught:
        decode_request(data, source)
    return caught.value.result


# -- vectors ---------------------------------------------------------------------------------


def test_libtorrent_map_request_decodes() -> None:
    request = decode_request(LIBTORRENT_MAP, CLIENT)
    assert request == Request(Opcode.MAP, 3600, CLIENT, MapData(NONCE, 6, 6881, 6881, MAPPED_ZERO))
    assert request.raw == LIBTORRENT_MAP
    assert map_request() == LIBTORRENT_MAP


def test_map_response_has_the_layout_libtorrent_reads() -> None:
    body = MapData(NONCE, 6, 6881, 40001, IPv4Address("203.0.113.1"))
    data = encode_response(Response(Opcode.MAP, ResultCode.SUCCESS, 7200, 99, body))
    assert len(data) == MAP_SIZE == 60
    assert data[0] == 2 and data[1] == 0x81 and data[2] == 0 and data[3] == 0
    assert struct.unpack_from("!II", data, 4) == (7200, 99)
    assert data[12:24] == b"\x00" * 12
    assert data[24:36] == NONCE
    assert data[36] == 6 and data[37:40] == b"\x00\x00\x00"
    assert struct.unpack_from("!HH", data, 40) == (6881, 40001)
    assert data[44:60] == bytes.fromhex("00000000 00000000 0000ffff cb007101")
    assert decode_response(data).body == body


def test_unsolicited_announce_layout() -> None:
    assert encode_announce(42) == ANNOUNCE_42
    response = decode_response(ANNOUNCE_42)
    assert (response.opcode, response.result, response.lifetime, response.epoch) == (0, 0, 0, 42)


def test_peer_request_layout() -> None:
    data = peer_request()
    assert len(data) == PEER_SIZE == 80
    assert struct.unpack_from("!HH", data, 60) == (443, 0)
    assert data[64:80] == encode_address(IPv4Address("198.51.100.20"))
    request = decode_request(data, CLIENT)
    assert isinstance(request.body, PeerData)
    assert request.body.remote_address == IPv4Address("198.51.100.20")


def test_option_layouts() -> None:
    # Figure 4: code, reserved, length (without padding), data padded to 4
    assert encode_option(128, b"abcde") == bytes.fromhex("80 00 0005 6162636465 000000")
    options = Options(
        third_party=IPv4Address("192.168.1.20"),
        prefer_failure=True,
        filters=(Filter(120, 80, IPv4Address("198.51.100.0")),),
        description="web",
    )
    request = map_request(options=options)
    assert request[MAP_SIZE:] == bytes.fromhex(
        "01 00 0010 00000000 00000000 0000ffff c0a80114"  # THIRD_PARTY (Figure 12)
        "02 00 0000"  # PREFER_FAILURE (Figure 13)
        "03 00 0014 00 78 0050 00000000 00000000 0000ffff c6336400"  # FILTER (Figure 14)
        "80 00 0003 776562 00"  # DESCRIPTION (RFC 7220)
    )
    assert decode_request(request, CLIENT).options == options


def test_ipv4_mapped_detection_checks_all_96_bits() -> None:
    assert decode_address(bytes.fromhex("00" * 10 + "ffff" + "c0a8010a")) == CLIENT
    assert decode_address(bytes(16)) == IPv6Address("::")
    assert decode_address(bytes.fromhex("00" * 10 + "ffff" + "00" * 4)) == IPv4Address(0)
    not_mapped = bytes.fromhex("0001" + "00" * 8 + "ffff" + "c0a8010a")
    assert isinstance(decode_address(not_mapped), IPv6Address)
    assert encode_address(IPv4Address(0)) != encode_address(IPv6Address("::"))


# -- processing order (RFC 6887 §8.3) --------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x02"])
def test_shorter_than_two_bytes_is_dropped(data: bytes) -> None:
    assert result_of(data) is None


def test_r_bit_set_is_dropped_even_with_a_bad_version() -> None:
    assert result_of(b"\x03\x81" + LIBTORRENT_MAP[2:]) is None
    assert result_of(ANNOUNCE_42) is None


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_other_versions_get_unsupp_version_even_when_short(version: int) -> None:
    for data in (bytes((version, 1)), bytes((version,)) + LIBTORRENT_MAP[1:]):
        with pytest.raises(PcpDecodeError) as caught:
            decode_request(data, CLIENT)
        assert caught.value.result is ResultCode.UNSUPP_VERSION
        assert not caught.value.parsed


@pytest.mark.parametrize("length", [2, 4, 20, 23])
def test_shorter_than_24_bytes_is_dropped(length: int) -> None:
    assert result_of(LIBTORRENT_MAP[:length]) is None


@pytest.mark.parametrize("length", [24, 28, 56, 59, 61, 62, 63])
def test_map_too_short_or_not_a_multiple_of_4_is_malformed(length: int) -> None:
    with pytest.raises(PcpDecodeError) as caught:
        decode_request((LIBTORRENT_MAP + b"\x00" * 4)[:length], CLIENT)
    assert caught.value.result is ResultCode.MALFORMED_REQUEST
    assert not caught.value.parsed


def test_peer_shorter_than_80_is_malformed() -> None:
    assert result_of(peer_request()[:76]) is ResultCode.MALFORMED_REQUEST


def test_longer_than_1100_is_malformed() -> None:
    data = map_request(extra=encode_option(200, b"x" * 1040))
    assert len(data) == 1104
    assert result_of(data) is ResultCode.MALFORMED_REQUEST
    largest = map_request(extra=encode_option(200, b"x" * 1036))
    assert len(largest) == 1100
    assert decode_request(largest, CLIENT).options == Options()


def test_client_address_must_be_the_source() -> None:
    assert result_of(LIBTORRENT_MAP, IPv4Address("192.168.1.11")) is ResultCode.ADDRESS_MISMATCH
    assert result_of(LIBTORRENT_MAP, CLIENT_V6) is ResultCode.ADDRESS_MISMATCH
    assert decode_request(LIBTORRENT_MAP, None).client_address == CLIENT


def test_address_mismatch_comes_before_the_opcode_check() -> None:
    unknown = bytes((2, 5)) + LIBTORRENT_MAP[2:]
    assert result_of(unknown, IPv4Address("192.168.1.11")) is ResultCode.ADDRESS_MISMATCH
    assert result_of(unknown) is ResultCode.UNSUPP_OPCODE


@pytest.mark.parametrize("opcode", [3, 4, 63, 64, 96, 127])
def test_unknown_opcodes_are_unsupported(opcode: int) -> None:
    assert result_of(bytes((2, opcode)) + LIBTORRENT_MAP[2:24]) is ResultCode.UNSUPP_OPCODE


def test_disabled_peer_is_an_unsupported_opcode() -> None:
    with pytest.raises(PcpDecodeError) as caught:
        decode_request(peer_request(), CLIENT, opcodes=(Opcode.ANNOUNCE, Opcode.MAP))
    assert caught.value.result is ResultCode.UNSUPP_OPCODE


def test_opcode_checks_come_before_options() -> None:
    data = bytes((2, 9)) + LIBTORRENT_MAP[2:] + encode_option(1, b"\x00")
    assert result_of(data) is ResultCode.UNSUPP_OPCODE


def test_announce_request_decodes_with_lifetime_and_options_tolerated() -> None:
    data = bytes.fromhex("02 00 0000 00000000") + encode_address(CLIENT)
    assert decode_request(data, CLIENT) == Request(Opcode.ANNOUNCE, 0, CLIENT)
    with_optional = data + encode_option(OptionCode.DESCRIPTION, b"hi")
    assert decode_request(with_optional, CLIENT).options == Options()


# -- options (RFC 6887 §7.3, §13) ------------------------------------------------------------


def test_unknown_mandatory_option_is_unsupported() -> None:
    assert result_of(map_request(extra=encode_option(13, b"\x00" * 4))) is ResultCode.UNSUPP_OPTION
    assert result_of(map_request(extra=encode_option(5, b""))) is ResultCode.UNSUPP_OPTION


def test_unknown_optional_option_is_skipped() -> None:
    request = decode_request(map_request(extra=encode_option(200, b"abc")), CLIENT)
    assert request.options == Options()


@pytest.mark.parametrize(
    "extra",
    [
        b"\x01\x00\x00\x10" + b"\x00" * 12,  # THIRD_PARTY running past the end
        b"\x80\x00\x00\x09" + b"\x00" * 8,  # padding missing
    ],
)
def test_option_running_past_the_end_is_malformed(extra: bytes) -> None:
    assert result_of(map_request(extra=extra)) is ResultCode.MALFORMED_OPTION


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (OptionCode.THIRD_PARTY, b"\x00" * 4),
        (OptionCode.PREFER_FAILURE, b"\x00" * 4),
        (OptionCode.FILTER, b"\x00" * 16),
    ],
)
def test_fixed_size_option_of_the_wrong_length_is_malformed(code: int, data: bytes) -> None:
    assert result_of(map_request(extra=encode_option(code, data))) is ResultCode.MALFORMED_OPTION


def test_single_options_appearing_twice_are_malformed() -> None:
    twice = Options(third_party=IPv4Address("192.168.1.20"))
    one = map_request(options=twice)[MAP_SIZE:]
    assert result_of(map_request(extra=one + one)) is ResultCode.MALFORMED_OPTION
    pf = encode_option(OptionCode.PREFER_FAILURE, b"")
    assert result_of(map_request(extra=pf + pf)) is ResultCode.MALFORMED_OPTION
    desc = encode_option(OptionCode.DESCRIPTION, b"a")
    assert result_of(map_request(extra=desc + desc)) is ResultCode.MALFORMED_OPTION


def test_several_filters_are_allowed() -> None:
    filters = (
        Filter(128, 80, IPv4Address("198.51.100.1")),
        Filter(104, 0, IPv4Address("198.51.100.0")),
    )
    request = decode_request(map_request(options=Options(filters=filters)), CLIENT)
    assert request.options.filters == filters


def test_the_first_fault_in_order_of_appearance_wins() -> None:
    unknown = encode_option(77, b"")
    malformed = encode_option(OptionCode.THIRD_PARTY, b"\x00" * 4)
    assert result_of(map_request(extra=unknown + malformed)) is ResultCode.UNSUPP_OPTION
    assert result_of(map_request(extra=malformed + unknown)) is ResultCode.MALFORMED_OPTION


def test_prefer_failure_and_filter_make_no_sense_in_a_delete() -> None:
    pf = Options(prefer_failure=True)
    assert result_of(map_request(lifetime=0, options=pf)) is ResultCode.MALFORMED_OPTION
    filters = Options(filters=(Filter(128, 0, IPv4Address("198.51.100.1")),))
    assert result_of(map_request(lifetime=0, options=filters)) is ResultCode.MALFORMED_OPTION


def test_prefer_failure_needs_a_suggested_port() -> None:
    data = map_request(external_port=0, options=Options(prefer_failure=True))
    assert result_of(data) is ResultCode.MALFORMED_OPTION


def test_options_valid_only_for_map() -> None:
    pf = encode_option(OptionCode.PREFER_FAILURE, b"")
    assert result_of(peer_request(extra=pf)) is ResultCode.MALFORMED_REQUEST
    one_filter = Options(filters=(Filter(128, 0, IPv4Address("198.51.100.1")),))
    filt = map_request(options=one_filter)[MAP_SIZE:]
    assert result_of(peer_request(extra=filt)) is ResultCode.UNSUPP_OPTION
    announce = bytes.fromhex("02 00 0000 00000000") + encode_address(CLIENT)
    third = encode_option(OptionCode.THIRD_PARTY, encode_address(IPv4Address("192.168.1.20")))
    assert result_of(announce + third) is ResultCode.UNSUPP_OPTION


@pytest.mark.parametrize(
    ("prefix", "address"),
    [
        (95, IPv4Address("198.51.100.0")),
        (129, IPv4Address("198.51.100.0")),
        (129, IPv6Address("2001:db8::")),
    ],
)
def test_filter_prefix_length_out_of_range_is_malformed(
    prefix: int, address: IPv4Address | IPv6Address
) -> None:
    data = struct.pack("!BBH", 0, prefix, 0) + encode_address(address)
    extra = encode_option(OptionCode.FILTER, data)
    client = CLIENT if isinstance(address, IPv4Address) else CLIENT_V6
    ext = MAPPED_ZERO if isinstance(address, IPv4Address) else IPv6Address("::")
    assert result_of(map_request(client=client, external=ext, extra=extra), client) is (
        ResultCode.MALFORMED_OPTION
    )


def test_filter_of_the_other_family_is_malformed() -> None:
    options = Options(filters=(Filter(128, 0, IPv6Address("2001:db8::1")),))
    assert result_of(map_request(options=options)) is ResultCode.MALFORMED_OPTION


def test_third_party_naming_the_client_is_a_malformed_request() -> None:
    data = map_request(options=Options(third_party=CLIENT))
    assert result_of(data) is ResultCode.MALFORMED_REQUEST


def test_description_invalid_utf8_is_ignored() -> None:
    request = decode_request(map_request(extra=encode_option(128, b"\xff\xfe")), CLIENT)
    assert request.options.description is None


def test_description_is_truncated_on_a_character_boundary() -> None:
    assert truncate_description("é" * 100) == "é" * 64
    assert truncate_description("short") == "short"


def test_protocol_zero_with_a_port_is_malformed() -> None:
    assert result_of(map_request(protocol=0)) is ResultCode.MALFORMED_REQUEST
    request = decode_request(map_request(protocol=0, internal_port=0), CLIENT)
    assert isinstance(request.body, MapData) and request.body.protocol == 0


@pytest.mark.parametrize(
    "remote",
    [IPv4Address("127.0.0.1"), IPv4Address("224.0.0.1"), IPv4Address(0), IPv6Address("::1")],
)
def test_peer_with_an_unusable_remote_is_malformed(remote: IPv4Address | IPv6Address) -> None:
    assert result_of(peer_request(remote=remote)) is ResultCode.MALFORMED_REQUEST


def test_peer_with_remote_port_zero_is_malformed() -> None:
    assert result_of(peer_request(remote_port=0)) is ResultCode.MALFORMED_REQUEST


# -- error responses (RFC 6887 §8.3) ---------------------------------------------------------


def test_error_response_copies_the_request() -> None:
    data = map_request(extra=encode_option(200, b"opt"))
    error = encode_error(data, ResultCode.NOT_AUTHORIZED, 1234, 77)
    assert len(error) == len(data)
    assert error[:4] == bytes((2, 0x81, 0, ResultCode.NOT_AUTHORIZED))
    assert struct.unpack_from("!II", error, 4) == (1234, 77)
    assert error[12:24] == b"\x00" * 12
    assert error[24:] == data[24:]


def test_error_response_to_an_unparsed_request_keeps_the_address_bits() -> None:
    data = LIBTORRENT_MAP + b"\x00\x00"
    error = encode_error(data, ResultCode.MALFORMED_REQUEST, 1800, 5, parsed=False)
    assert len(error) == 64
    assert error[12:24] == data[12:24]
    assert error[62:] == b"\x00\x00"


def test_error_response_is_truncated_to_1100() -> None:
    data = map_request(extra=encode_option(200, b"x" * 1040))
    assert len(encode_error(data, ResultCode.MALFORMED_REQUEST, 1800, 0, parsed=False)) == 1100


def test_unsupp_version_answers_with_a_24_byte_version_2_header() -> None:
    for data in (b"\x01\x01", b"\x03" + LIBTORRENT_MAP[1:]):
        error = encode_error(data, ResultCode.UNSUPP_VERSION, LONG_LIFETIME, 9, parsed=False)
        assert len(error) == HEADER_SIZE
        assert error[0] == 2 and error[3] == ResultCode.UNSUPP_VERSION
        response = decode_response(error)
        assert response.result is ResultCode.UNSUPP_VERSION and response.body is None


def test_error_lifetimes_are_short_or_long() -> None:
    assert error_lifetime(ResultCode.NETWORK_FAILURE) == SHORT_LIFETIME == 30
    assert error_lifetime(ResultCode.NO_RESOURCES) == 30
    assert error_lifetime(ResultCode.USER_EX_QUOTA) == 30
    assert error_lifetime(ResultCode.NOT_AUTHORIZED) == LONG_LIFETIME == 1800
    assert error_lifetime(ResultCode.UNSUPP_VERSION) == 1800
    assert error_lifetime(ResultCode.ADDRESS_MISMATCH) == 1800


def test_error_copy_of_malformed_options_still_decodes_for_a_client() -> None:
    data = map_request(extra=b"\x01\x00\x00\x10" + b"\x00" * 12)
    response = decode_response(encode_error(data, ResultCode.MALFORMED_OPTION, 1800, 0))
    assert response.result is ResultCode.MALFORMED_OPTION
    assert response.options == Options()


@pytest.mark.parametrize(
    "data",
    [
        ANNOUNCE_42[:20],
        ANNOUNCE_42 + b"\x00",
        LIBTORRENT_MAP,  # R bit clear: a request
        encode_response(Response(Opcode.MAP, 0, 1, 1, MapData(NONCE, 6, 1, 1, MAPPED_ZERO)))[:56],
    ],
)
def test_not_a_response_does_not_decode(data: bytes) -> None:
    with pytest.raises(PcpDecodeError):
        decode_response(data)


# -- Hypothesis ------------------------------------------------------------------------------

uint32 = st.integers(0, 2**32 - 1)
ports = st.integers(0, 65535)
nonces = st.binary(min_size=12, max_size=12)
ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(IPv6Address).filter(lambda a: a.ipv4_mapped is None)


def _filters(family: st.SearchStrategy[IPv4Address | IPv6Address]) -> st.SearchStrategy[Filter]:
    def build(address: IPv4Address | IPv6Address, port: int, data: st.DataObject) -> Filter:
        low = 96 if isinstance(address, IPv4Address) else 1
        prefix = data.draw(st.one_of(st.just(0), st.integers(low, 128)))
        return Filter(prefix, port, address)

    return st.builds(build, family, ports, st.data())


@st.composite
def requests(draw: st.DrawFn) -> Request:
    v6 = draw(st.booleans())
    family: st.SearchStrategy[IPv4Address | IPv6Address] = ipv6 if v6 else ipv4
    client = draw(family)
    opcode = draw(st.sampled_from(list(Opcode)))
    lifetime = draw(uint32)
    if opcode is Opcode.ANNOUNCE:
        return Request(opcode, lifetime, client)
    third_party = draw(st.one_of(st.none(), family.filter(lambda a: a != client)))
    description = draw(st.one_of(st.none(), st.text(max_size=40).filter(lambda t: "\0" not in t)))
    protocol = draw(st.integers(1, 255))
    internal_port = draw(st.integers(1, 65535))
    zeros: list[IPv4Address | IPv6Address] = [IPv4Address(0), IPv6Address("::")]
    external = draw(st.one_of(family, st.sampled_from(zeros)))
    if opcode is Opcode.MAP:
        external_port = draw(ports)
        prefer = lifetime > 0 and external_port > 0 and draw(st.booleans())
        filters = tuple(draw(st.lists(_filters(family), max_size=3))) if lifetime else ()
        body: MapData | PeerData = MapData(
            draw(nonces), protocol, internal_port, external_port, external
        )
        options = Options(third_party, prefer, filters, description)
    else:
        remote = draw(family.filter(lambda a: not (a.is_unspecified or a.is_loopback)))
        assume(not remote.is_multicast)
        body = PeerData(
            draw(nonces),
            protocol,
            internal_port,
            draw(ports),
            external,
            draw(st.integers(1, 65535)),
            remote,
        )
        options = Options(third_party=third_party, description=description)
    return Request(opcode, lifetime, client, body, options)


@st.composite
def responses(draw: st.DrawFn) -> Response:
    opcode = draw(st.sampled_from(list(Opcode)))
    address = st.one_of(ipv4, ipv6)
    body: MapData | PeerData | None = None
    options = Options()
    if opcode is Opcode.MAP:
        body = MapData(
            draw(nonces), draw(st.integers(0, 255)), draw(ports), draw(ports), draw(address)
        )
        options = Options(
            draw(st.one_of(st.none(), address)),
            draw(st.booleans()),
            tuple(draw(st.lists(_filters(address), max_size=2))),
        )
    elif opcode is Opcode.PEER:
        body = PeerData(
            draw(nonces),
            draw(st.integers(0, 255)),
            draw(ports),
            draw(ports),
            draw(address),
            draw(ports),
            draw(address),
        )
    result = draw(st.sampled_from(list(ResultCode)))
    return Response(opcode, result, draw(uint32), draw(uint32), body, options)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.one_of(st.none(), ipv4, ipv6))
def test_random_bytes_raise_only_the_decode_error(
    data: bytes, source: IPv4Address | IPv6Address | None
) -> None:
    with contextlib.suppress(PcpDecodeError):
        decode_request(data, source)
    with contextlib.suppress(PcpDecodeError):
        decode_response(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2), uint32)
def test_random_options_after_a_valid_header_raise_only_the_decode_error(
    tail: bytes, opcode: int, lifetime: int
) -> None:
    head = {0: HEADER_SIZE, 1: MAP_SIZE, 2: PEER_SIZE}[opcode]
    base = bytearray(peer_request())[:head]
    base[1] = opcode
    struct.pack_into("!I", base, 4, lifetime)
    data = bytes(base) + tail + b"\x00" * (-len(tail) % 4)
    for source in (CLIENT, None):
        with contextlib.suppress(PcpDecodeError):
            decode_request(data, source)


@settings(deadline=None)
@given(requests())
def test_requests_round_trip(request: Request) -> None:
    assert decode_request(encode_request(request)) == request


@settings(deadline=None)
@given(responses())
def test_responses_round_trip(response: Response) -> None:
    assert decode_response(encode_response(response)) == response

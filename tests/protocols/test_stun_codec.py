"""STUN codec: byte vectors with provenance, damaged copies, Hypothesis.

Sources of the vectors:
- RFC 5769 §2.2 and §2.3: the sample IPv4 and IPv6 Binding success responses (SOFTWARE
  "test vector", XOR-MAPPED-ADDRESS 192.0.2.1:32853 / [2001:db8:1234:5678:11:2233:4455:6677]:
  32853, MESSAGE-INTEGRITY, FINGERPRINT), checked here by their own FINGERPRINT;
- coturn 4.6.1 (Debian 12's ``coturn``, ``turnserver --stun-only``), captured in the
  namespace lab of tests/robustness/test_cgnat.py: its answer to our bare Binding request sent
  from 198.51.100.2:40000 (XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN, SOFTWARE);
- RFC 8489 §5 (header, magic cookie), §14 (attribute layout and padding), §14.2 / §14.1
  (XOR-MAPPED-ADDRESS / MAPPED-ADDRESS), §14.7 (FINGERPRINT), §14.8 (ERROR-CODE).
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.stun.codec import (
    MAGIC_COOKIE,
    MAX_MESSAGE,
    Attribute,
    BindingError,
    BindingRequest,
    BindingSuccess,
    MappedAddress,
    StunDecodeError,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_success,
)

RFC5769_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
RFC5769_IPV4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"  # SOFTWARE "test vector" (padding: a space)
    "002000080001a147e112a643"  # XOR-MAPPED-ADDRESS
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"  # MESSAGE-INTEGRITY
    "80280004c07d4c96"  # FINGERPRINT
)
RFC5769_IPV6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)
COTURN_ID = b"portgatecgt!"
COTURN_4_6_1 = bytes.fromhex(
    "0101003c2112a442706f72746761746563677421"
    "002000080001bd52e721c040"  # XOR-MAPPED-ADDRESS 198.51.100.2:40000
    "0001000800019c40c6336402"  # MAPPED-ADDRESS, the same
    "802b000800010d96c6336402"  # RESPONSE-ORIGIN 198.51.100.2:3478 (optional, skipped)
    "80220014436f7475726e2d342e362e312027476f72737427"  # SOFTWARE "Coturn-4.6.1 'Gorst'"
)
TID = bytes(range(1, 13))
V4 = MappedAddress(IPv4Address("198.51.100.1"), 54321)


def header(kind: int, length: int, tid: bytes = TID, cookie: int = MAGIC_COOKIE) -> bytes:
    return struct.pack("!HHI12s", kind, length, cookie, tid)


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def message(kind: int, *attributes: bytes, tid: bytes = TID) -> bytes:
    body = b"".join(attributes)
    return header(kind, len(body), tid) + body


# -- vectors -----------------------------------------------------------------------------------


def test_rfc5769_ipv4_sample_response() -> None:
    assert decode_response(RFC5769_IPV4) == BindingSuccess(
        RFC5769_ID, MappedAddress(IPv4Address("192.0.2.1"), 32853)
    )


def test_rfc5769_ipv6_sample_response() -> None:
    assert decode_response(RFC5769_IPV6) == BindingSuccess(
        RFC5769_ID, MappedAddress(IPv6Address("2001:db8:1234:5678:11:2233:4455:6677"), 32853)
    )


def test_coturn_answer_to_our_request() -> None:
    assert decode_response(COTURN_4_6_1) == BindingSuccess(
        COTURN_ID, MappedAddress(IPv4Address("198.51.100.2"), 40000)
    )


def test_a_bare_binding_request_is_the_20_byte_header() -> None:
    assert encode_request(TID) == bytes.fromhex("000100002112a442") + TID
    assert decode_request(encode_request(TID)) == BindingRequest(TID)


def test_a_fingerprinted_request_carries_a_valid_fingerprint() -> None:
    data = encode_request(TID, fingerprint=True)
    assert len(data) == 28 and data[2:4] == b"\x00\x08"
    crc = (zlib.crc32(data[:20]) ^ 0x5354554E) & 0xFFFFFFFF
    assert data[20:] == attribute(Attribute.FINGERPRINT, struct.pack("!I", crc))
    assert decode_request(data) == BindingRequest(TID)


def test_xor_mapped_address_is_xored_with_the_cookie() -> None:
    data = encode_success(TID, V4)
    # 198.51.100.1 ^ 21 12 a4 42 = e7 21 c0 43; 54321 ^ 0x2112 = 0xf523
    assert data[20:] == attribute(Attribute.XOR_MAPPED_ADDRESS, bytes.fromhex("0001f523e721c043"))
    assert decode_response(data) == BindingSuccess(TID, V4)


def test_a_classic_rfc3489_answer_with_only_mapped_address_is_read() -> None:
    data = message(0x0101, attribute(Attribute.MAPPED_ADDRESS, bytes.fromhex("0001d431c6336401")))
    assert decode_response(data) == BindingSuccess(TID, V4)
    assert encode_success(TID, V4, xor=False) == data


def test_xor_mapped_address_wins_over_mapped_address() -> None:
    other = MappedAddress(IPv4Address("192.0.2.9"), 1)
    data = message(
        0x0101,
        attribute(Attribute.MAPPED_ADDRESS, encode_success(TID, other, xor=False)[24:]),
        encode_success(TID, V4)[20:],
    )
    assert decode_response(data) == BindingSuccess(TID, V4)


def test_the_first_of_a_repeated_attribute_counts() -> None:
    first = encode_success(TID, V4)[20:]
    second = encode_success(TID, MappedAddress(IPv4Address("192.0.2.9"), 1))[20:]
    assert decode_response(message(0x0101, first, second)) == BindingSuccess(TID, V4)


def test_optional_unknown_attributes_are_skipped() -> None:
    response_origin = attribute(0x802B, bytes.fromhex("00010d96c6336402"))
    data = message(0x0101, response_origin, encode_success(TID, V4)[20:])
    assert decode_response(data) == BindingSuccess(TID, V4)


def test_attributes_after_message_integrity_are_ignored() -> None:
    integrity = attribute(Attribute.MESSAGE_INTEGRITY, bytes(20))
    unknown_required = attribute(0x7777, b"x")
    data = message(0x0101, encode_success(TID, V4)[20:], integrity, unknown_required)
    assert decode_response(data) == BindingSuccess(TID, V4)


def test_an_error_response() -> None:
    data = encode_error(TID, 420, "Unknown Attribute")
    assert data[20:28] == bytes.fromhex("0009001500000414")
    assert decode_response(data) == BindingError(TID, 420, "Unknown Attribute")


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(b"", "shorter than the 20-byte header", id="empty"),
        pytest.param(RFC5769_IPV4[:19], "shorter than the 20-byte header", id="short-header"),
        pytest.param(RFC5769_IPV4[:-4], "does not match", id="truncated"),
        pytest.param(RFC5769_IPV4 + bytes(4), "does not match", id="trailing-bytes"),
        pytest.param(bytes(MAX_MESSAGE + 1), "longer than", id="overlong"),
        pytest.param(header(0x0101, 2) + b"\x00\x00", "multiple of 4", id="odd-length"),
        pytest.param(header(0x0101, 0, cookie=0x2112A443), "magic cookie", id="bad-cookie"),
        pytest.param(header(0xC101, 0), "two top bits", id="top-bits"),
        pytest.param(header(0x0001, 0), "not a Binding response", id="a-request"),
        pytest.param(header(0x0111, 0), "without ERROR-CODE", id="error-without-code"),
        pytest.param(header(0x0101, 0), "without XOR-MAPPED-ADDRESS", id="success-empty"),
        pytest.param(
            message(0x0101, struct.pack("!HH", 0x0020, 12) + bytes(8)),
            "runs past the end",
            id="attribute-overrun",
        ),
        pytest.param(
            message(0x0101, attribute(0x0020, bytes.fromhex("0003f523e721c043"))),
            "unknown address family",
            id="bad-family",
        ),
        pytest.param(
            message(0x0101, attribute(0x0020, bytes.fromhex("0001f523e721c0"))),
            "expected 4",
            id="short-ipv4",
        ),
        pytest.param(
            message(0x0101, attribute(0x0020, bytes.fromhex("0002f523e721c043"))),
            "expected 16",
            id="ipv6-family-ipv4-length",
        ),
        pytest.param(message(0x0101, attribute(0x0020, b"\x00")), "too short", id="tiny-address"),
        pytest.param(
            message(0x0101, attribute(0x0024, b"\x00\x00\x00\x01")),
            "comprehension-required",
            id="unknown-required",
        ),
        pytest.param(RFC5769_IPV4[:-1] + b"\x97", "FINGERPRINT 0x", id="wrong-fingerprint"),
        pytest.param(
            message(
                0x0101,
                attribute(Attribute.FINGERPRINT, bytes(4)),
                encode_success(TID, V4)[20:],
            ),
            "not the last attribute",
            id="fingerprint-not-last",
        ),
        pytest.param(
            message(0x0111, attribute(Attribute.ERROR_CODE, bytes.fromhex("00000764"))),
            "not a code 300-699",
            id="error-class-7",
        ),
        pytest.param(
            message(0x0111, attribute(Attribute.ERROR_CODE, bytes.fromhex("000004ff"))),
            "not a code 300-699",
            id="error-number-255",
        ),
        pytest.param(
            message(0x0111, attribute(Attribute.ERROR_CODE, bytes.fromhex("00000400ff"))),
            "not UTF-8",
            id="error-reason-not-utf8",
        ),
    ],
)
def test_malformed_responses_are_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(StunDecodeError) as caught:
        decode_response(data)
    assert why in str(caught.value)


def test_a_response_is_not_a_request() -> None:
    with pytest.raises(StunDecodeError, match="not a Binding request"):
        decode_request(encode_success(TID, V4))


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_request(b"short"),
        lambda: encode_error(TID, 299, "x"),
        lambda: encode_error(TID, 400, "x" * 764),
        lambda: MappedAddress(IPv4Address(1), 65536),
    ],
)
def test_encoders_refuse_values_that_cannot_be_sent(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError):
        call()


# -- properties ---------------------------------------------------------------------------------

tids = st.binary(min_size=12, max_size=12)
addresses = st.one_of(
    st.builds(IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(IPv6Address, st.integers(0, 2**128 - 1)),
)
mapped = st.builds(MappedAddress, addresses, st.integers(0, 65535))


@given(tids, mapped, st.booleans(), st.none() | st.text(max_size=40), st.booleans())
def test_success_round_trips(
    tid: bytes, where: MappedAddress, xor: bool, software: str | None, fingerprint: bool
) -> None:
    data = encode_success(tid, where, xor=xor, software=software, fingerprint=fingerprint)
    assert len(data) % 4 == 0
    assert decode_response(data) == BindingSuccess(tid, where)


@given(tids, st.integers(300, 699), st.text(max_size=120))
def test_error_round_trips(tid: bytes, code: int, reason: str) -> None:
    assert decode_response(encode_error(tid, code, reason)) == BindingError(tid, code, reason)


@given(tids, st.booleans())
def test_request_round_trips(tid: bytes, fingerprint: bool) -> None:
    assert decode_request(encode_request(tid, fingerprint=fingerprint)) == BindingRequest(tid)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_the_decode_error(data: bytes) -> None:
    for decode in (decode_response, decode_request):
        with contextlib.suppress(StunDecodeError):
            decode(data)


@settings(max_examples=500)
@given(st.binary(max_size=120), st.sampled_from((0x0101, 0x0111, 0x0001)))
def test_random_attributes_behind_a_valid_header_raise_only_the_decode_error(
    body: bytes, kind: int
) -> None:
    data = header(kind, len(body)) + body
    for decode in (decode_response, decode_request):
        with contextlib.suppress(StunDecodeError):
            decode(data)

"""STUN Binding messages (RFC 8489, which obsoletes RFC 5389) as a pure codec: bytes in,
frozen values out, and the reverse. No sockets, no Twisted, no clock.

Client side (what the gateway uses): ``encode_request`` builds a Binding request with a
caller-chosen 96-bit transaction id; ``decode_response`` turns a datagram into a
``BindingSuccess`` (the mapped address the server saw, from XOR-MAPPED-ADDRESS, or from
MAPPED-ADDRESS when a classic RFC 3489 server sends only that) or a ``BindingError``, or raises
``StunDecodeError``. Server side (tests, fuzzing): ``decode_request``, ``encode_success`` and
``encode_error``. Checking that a response answers *our* request (its transaction id) is the
client's job.

Layout (RFC 8489 §5, §14; integers big endian)::

    type(2) length(2) magic cookie 0x2112A442(4) transaction id(12) attributes(length)
    attribute: type(2) length(2) value(length) padding to a multiple of 4

The decoder is strict and bounded: a message longer than ``MAX_MESSAGE``, a length field that
does not match the datagram or is not a multiple of 4, the two top bits of the type set, a
wrong magic cookie, an attribute running past the end, a malformed address or error code, an
unknown comprehension-required attribute (type below 0x8000; RFC 8489 §7.3.3: such a response
is discarded), a FINGERPRINT that does not match or is not the last attribute: all raise
``StunDecodeError`` and nothing else. Attributes after MESSAGE-INTEGRITY other than
FINGERPRINT are ignored (§14.5); of an attribute repeated, the first counts (§14).
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

__all__ = [
    "DEFAULT_PORT",
    "MAGIC_COOKIE",
    "MAX_MESSAGE",
    "TRANSACTION_ID_SIZE",
    "Attribute",
    "BindingError",
    "BindingRequest",
    "BindingSuccess",
    "MappedAddress",
    "MessageType",
    "Response",
    "StunDecodeError",
    "decode_request",
    "decode_response",
    "encode_error",
    "encode_request",
    "encode_success",
]

#: The port STUN servers listen on for UDP and TCP (RFC 8489 §18.5).
DEFAULT_PORT = 3478
MAGIC_COOKIE = 0x2112A442
TRANSACTION_ID_SIZE = 12
#: Longer than any STUN answer over UDP on a 1500-byte link; longer input is refused unread.
MAX_MESSAGE = 2048
#: RFC 8489 §14.8: the reason phrase is at most 763 bytes.
MAX_REASON = 763
_FINGERPRINT_XOR = 0x5354554E

_HEADER = struct.Struct("!HHI12s")
_ATTRIBUTE = struct.Struct("!HH")
_ADDRESS = struct.Struct("!BBH")  # reserved, family, port
_ERROR = struct.Struct("!HBB")  # reserved, class, number
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02


class MessageType(enum.IntEnum):
    """The Binding method's four classes (RFC 8489 §5, §18.2)."""

    BINDING_REQUEST = 0x0001
    BINDING_INDICATION = 0x0011
    BINDING_SUCCESS = 0x0101
    BINDING_ERROR = 0x0111


class Attribute(enum.IntEnum):
    """Attribute types this codec knows (RFC 8489 §18.3, and RFC 3489's classic ones)."""

    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489
    CHANGE_REQUEST = 0x0003  # RFC 3489 / RFC 5780
    SOURCE_ADDRESS = 0x0004  # RFC 3489
    CHANGED_ADDRESS = 0x0005  # RFC 3489
    USERNAME = 0x0006
    PASSWORD = 0x0007  # RFC 3489
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REFLECTED_FROM = 0x000B  # RFC 3489
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028


_KNOWN = frozenset(int(a) for a in Attribute)
_MESSAGE_INTEGRITY = frozenset({Attribute.MESSAGE_INTEGRITY, Attribute.MESSAGE_INTEGRITY_SHA256})


class StunDecodeError(ValueError):
    """Not a STUN message this codec accepts; ``str()`` says why, in one line."""


@dataclass(frozen=True, slots=True)
class MappedAddress:
    """The transport address a STUN server saw a request come from."""

    address: IPv4Address | IPv6Address
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} is not within 0-65535")

    def __str__(self) -> str:
        if isinstance(self.address, IPv6Address):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class BindingRequest:
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class BindingSuccess:
    transaction_id: bytes
    mapped: MappedAddress


@dataclass(frozen=True, slots=True)
class BindingError:
    """An error response: ``code`` 300-699 (e.g. 400 Bad Request) and its reason phrase."""

    transaction_id: bytes
    code: int
    reason: str


Response = BindingSuccess | BindingError


# -- encoding --------------------------------------------------------------------------------


def _check_transaction_id(transaction_id: bytes) -> None:
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise ValueError(
            f"a STUN transaction id is {TRANSACTION_ID_SIZE} bytes, got {len(transaction_id)}"
        )


def _attribute(kind: int, value: bytes) -> bytes:
    return _ATTRIBUTE.pack(kind, len(value)) + value + bytes(-len(value) % 4)


def _message(kind: MessageType, transaction_id: bytes, attributes: bytes) -> bytes:
    _check_transaction_id(transaction_id)
    return _HEADER.pack(kind, len(attributes), MAGIC_COOKIE, transaction_id) + attributes


def _xor_mask(transaction_id: bytes, size: int) -> bytes:
    return (MAGIC_COOKIE.to_bytes(4, "big") + transaction_id)[:size]


def _xored(data: bytes, mask: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, mask, strict=True))


def _encode_address(mapped: MappedAddress, transaction_id: bytes, xor: bool) -> bytes:
    family = _FAMILY_IPV4 if isinstance(mapped.address, IPv4Address) else _FAMILY_IPV6
    packed = mapped.address.packed
    port = mapped.port
    if xor:
        port ^= MAGIC_COOKIE >> 16
        packed = _xored(packed, _xor_mask(transaction_id, len(packed)))
    return _ADDRESS.pack(0, family, port) + packed


def _with_fingerprint(message: bytes) -> bytes:
    """Append FINGERPRINT (RFC 8489 §14.7): the length field counts it before the CRC."""
    grown = message[:2] + struct.pack("!H", len(message) - 20 + 8) + message[4:]
    crc = (zlib.crc32(grown) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
    return grown + _attribute(Attribute.FINGERPRINT, struct.pack("!I", crc))


def encode_request(transaction_id: bytes, *, fingerprint: bool = False) -> bytes:
    """A Binding request without attributes (all a server needs), optionally fingerprinted."""
    message = _message(MessageType.BINDING_REQUEST, transaction_id, b"")
    return _with_fingerprint(message) if fingerprint else message


def encode_success(
    transaction_id: bytes,
    mapped: MappedAddress,
    *,
    xor: bool = True,
    software: str | None = None,
    fingerprint: bool = False,
) -> bytes:
    """A Binding success response carrying ``mapped`` as XOR-MAPPED-ADDRESS (``xor``) or as
    a classic MAPPED-ADDRESS."""
    kind = Attribute.XOR_MAPPED_ADDRESS if xor else Attribute.MAPPED_ADDRESS
    attributes = _attribute(kind, _encode_address(mapped, transaction_id, xor))
    if software is not None:
        attributes += _attribute(Attribute.SOFTWARE, software.encode("utf-8"))
    message = _message(MessageType.BINDING_SUCCESS, transaction_id, attributes)
    return _with_fingerprint(message) if fingerprint else message


def encode_error(transaction_id: bytes, code: int, reason: str) -> bytes:
    """A Binding error response with ERROR-CODE ``code`` (300-699) and ``reason``."""
    if not 300 <= code <= 699:
        raise ValueError(f"a STUN error code is within 300-699, got {code}")
    text = reason.encode("utf-8")
    if len(text) > MAX_REASON:
        raise ValueError(f"a STUN reason phrase is at most {MAX_REASON} bytes, got {len(text)}")
    value = _ERROR.pack(0, code // 100, code % 100) + text
    return _message(
        MessageType.BINDING_ERROR, transaction_id, _attribute(Attribute.ERROR_CODE, value)
    )


# -- decoding --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Parsed:
    kind: int
    transaction_id: bytes
    #: the first value of each attribute type that counts, in order of appearance
    attributes: dict[int, bytes]


def _parse(data: bytes) -> _Parsed:
    if len(data) > MAX_MESSAGE:
        raise StunDecodeError(f"message of {len(data)} bytes, longer than {MAX_MESSAGE}")
    if len(data) < _HEADER.size:
        raise StunDecodeError(f"message of {len(data)} bytes, shorter than the 20-byte header")
    kind, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if kind & 0xC000:
        raise StunDecodeError(f"the two top bits of the type 0x{kind:04x} are not zero")
    if cookie != MAGIC_COOKIE:
        raise StunDecodeError(f"magic cookie 0x{cookie:08x}, expected 0x{MAGIC_COOKIE:08x}")
    if length % 4:
        raise StunDecodeError(f"length {length} is not a multiple of 4")
    if _HEADER.size + length != len(data):
        raise StunDecodeError(
            f"length field {length} does not match the {len(data) - _HEADER.size} bytes "
            "after the header"
        )
    attributes: dict[int, bytes] = {}
    position = _HEADER.size
    integrity_seen = False
    while position < len(data):
        if len(data) - position < _ATTRIBUTE.size:
            raise StunDecodeError(f"attribute header cut short at byte {position}")
        attribute, size = _ATTRIBUTE.unpack_from(data, position)
        start = position + _ATTRIBUTE.size
        end = start + size
        padded = start + size + (-size % 4)
        if padded > len(data):
            raise StunDecodeError(
                f"attribute 0x{attribute:04x} of {size} bytes runs past the end of the message"
            )
        value = data[start:end]
        if attribute == Attribute.FINGERPRINT:
            _check_fingerprint(data, position, value, padded)
        elif integrity_seen:
            pass  # RFC 8489 §14.5: everything after MESSAGE-INTEGRITY is ignored
        elif attribute < 0x8000 and attribute not in _KNOWN:
            raise StunDecodeError(f"unknown comprehension-required attribute 0x{attribute:04x}")
        else:
            attributes.setdefault(attribute, value)
            integrity_seen = attribute in _MESSAGE_INTEGRITY
        position = padded
    return _Parsed(kind, transaction_id, attributes)


def _check_fingerprint(data: bytes, position: int, value: bytes, end: int) -> None:
    if end != len(data):
        raise StunDecodeError("FINGERPRINT is not the last attribute")
    if len(value) != 4:
        raise StunDecodeError(f"FINGERPRINT of {len(value)} bytes, expected 4")
    (got,) = struct.unpack("!I", value)
    expected = (zlib.crc32(data[:position]) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
    if got != expected:
        raise StunDecodeError(f"FINGERPRINT 0x{got:08x} does not match (0x{expected:08x})")


def _decode_address(value: bytes, transaction_id: bytes, xor: bool, name: str) -> MappedAddress:
    if len(value) < _ADDRESS.size:
        raise StunDecodeError(f"{name} of {len(value)} bytes is too short")
    _reserved, family, port = _ADDRESS.unpack_from(value)
    packed = value[_ADDRESS.size :]
    expected = {_FAMILY_IPV4: 4, _FAMILY_IPV6: 16}.get(family)
    if expected is None:
        raise StunDecodeError(f"{name} has unknown address family 0x{family:02x}")
    if len(packed) != expected:
        raise StunDecodeError(
            f"{name} has {len(packed)} address bytes for family 0x{family:02x}, expected {expected}"
        )
    if xor:
        port ^= MAGIC_COOKIE >> 16
        packed = _xored(packed, _xor_mask(transaction_id, len(packed)))
    address = IPv4Address(packed) if family == _FAMILY_IPV4 else IPv6Address(packed)
    return MappedAddress(address, port)


def _decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < _ERROR.size:
        raise StunDecodeError(f"ERROR-CODE of {len(value)} bytes is too short")
    if len(value) - _ERROR.size > MAX_REASON:
        raise StunDecodeError(f"ERROR-CODE reason longer than {MAX_REASON} bytes")
    _reserved, klass, number = _ERROR.unpack_from(value)
    klass &= 0x07  # the 21 bits above it are reserved (RFC 8489 §14.8)
    if not 3 <= klass <= 6 or number > 99:
        raise StunDecodeError(f"ERROR-CODE class {klass} number {number} is not a code 300-699")
    try:
        reason = value[_ERROR.size :].decode("utf-8")
    except UnicodeDecodeError:
        raise StunDecodeError("ERROR-CODE reason is not UTF-8") from None
    return klass * 100 + number, reason


def decode_response(data: bytes) -> Response:
    """A Binding success or error response; ``StunDecodeError`` for anything else."""
    parsed = _parse(data)
    tid = parsed.transaction_id
    if parsed.kind == MessageType.BINDING_SUCCESS:
        xor_value = parsed.attributes.get(Attribute.XOR_MAPPED_ADDRESS)
        if xor_value is not None:
            mapped = _decode_address(xor_value, tid, True, "XOR-MAPPED-ADDRESS")
            return BindingSuccess(tid, mapped)
        plain = parsed.attributes.get(Attribute.MAPPED_ADDRESS)
        if plain is not None:
            return BindingSuccess(tid, _decode_address(plain, tid, False, "MAPPED-ADDRESS"))
        raise StunDecodeError("success response without XOR-MAPPED-ADDRESS or MAPPED-ADDRESS")
    if parsed.kind == MessageType.BINDING_ERROR:
        error = parsed.attributes.get(Attribute.ERROR_CODE)
        if error is None:
            raise StunDecodeError("error response without ERROR-CODE")
        code, reason = _decode_error_code(error)
        return BindingError(tid, code, reason)
    raise StunDecodeError(f"message type 0x{parsed.kind:04x} is not a Binding response")


def decode_request(data: bytes) -> BindingRequest:
    """A Binding request (what a STUN server reads); ``StunDecodeError`` for anything else."""
    parsed = _parse(data)
    if parsed.kind != MessageType.BINDING_REQUEST:
        raise StunDecodeError(f"message type 0x{parsed.kind:04x} is not a Binding request")
    return BindingRequest(parsed.transaction_id)

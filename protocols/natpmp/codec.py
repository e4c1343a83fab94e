"""NAT-PMP (RFC 6886) as a pure codec: bytes in, frozen values out, and the reverse.

No sockets, no Twisted, no clock: the epoch (SSSoE) is an argument of every encoder.

Server side: ``decode_request`` turns a datagram into a ``PublicAddressRequest`` or a
``MapRequest``, or raises ``NatPmpDecodeError`` whose ``result`` is the code to answer with
(None: drop silently); ``encode_response`` builds the answer. Client side (tests, diagnostics):
``encode_request`` and ``decode_response``.

Layouts (protocols.md §5.1, RFC 6886 §3.2-§3.5; all integers big endian):

- public address request: ``vers=0 op=0`` (2 bytes);
- public address response: ``vers op=128 result(2) SSSoE(4) address(4)`` (12 bytes);
- mapping request: ``vers op(1 UDP, 2 TCP) reserved(2) internal(2) suggested(2) lifetime(4)``
  (12 bytes);
- mapping response: ``vers op+128 result(2) SSSoE(4) internal(2) external(2) lifetime(4)``
  (16 bytes);
- error header for an unsupported version or opcode: ``vers op+128 result(2) SSSoE(4)``
  (8 bytes; RFC 6886 erratum 3618 sets the opcode's top bit, as miniupnpd does).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

__all__ = [
    "RESPONSE_BIT",
    "VERSION",
    "ErrorResponse",
    "MapRequest",
    "MapResponse",
    "NatPmpDecodeError",
    "Opcode",
    "PublicAddressRequest",
    "PublicAddressResponse",
    "Request",
    "Response",
    "ResultCode",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

VERSION = 0
RESPONSE_BIT = 0x80
_UINT32_MAX = 2**32 - 1

_HEADER = struct.Struct("!BBH")  # version, opcode, result / reserved
_MAP_REQUEST = struct.Struct("!BBHHHI")
_ADDRESS_RESPONSE = struct.Struct("!BBHI4s")
_MAP_RESPONSE = struct.Struct("!BBHIHHI")
_ERROR_RESPONSE = struct.Struct("!BBHI")


class Opcode(enum.IntEnum):
    """Request opcodes (RFC 6886 §3.2, §3.3); a response carries ``opcode | 0x80``."""

    PUBLIC_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class ResultCode(enum.IntEnum):
    """RFC 6886 §3.5. Clients treat any code they do not know as fatal."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2  # "Not Authorized/Refused": disabled, policy, someone else's mapping
    NETWORK_FAILURE = 3  # e.g. no external address (no DHCP lease on the WAN)
    OUT_OF_RESOURCES = 4  # no ports left, quota
    UNSUPPORTED_OPCODE = 5


class NatPmpDecodeError(Exception):
    """A request that gets no mapping. ``result`` is the code to answer with in the 8-byte
    error header (``opcode`` echoed with the top bit set), or None to drop the datagram."""

    def __init__(self, result: ResultCode | None, message: str, *, opcode: int = 0) -> None:
        super().__init__(message)
        self.result = result
        self.message = message
        self.opcode = opcode


# -- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicAddressRequest:
    """Opcode 0: what is the external address?"""


@dataclass(frozen=True, slots=True)
class MapRequest:
    """Opcode 1 (UDP) or 2 (TCP). ``lifetime`` 0 deletes; ``internal_port`` 0 with lifetime 0
    deletes all of the client's mappings of that protocol; ``external_port`` 0 means "any"."""

    opcode: Opcode
    internal_port: int
    external_port: int
    lifetime: int

    def __post_init__(self) -> None:
        if self.opcode not in (Opcode.MAP_UDP, Opcode.MAP_TCP):
            raise ValueError(f"a mapping request has opcode 1 or 2, not {self.opcode}")
        _check_port(self.internal_port)
        _check_port(self.external_port)
        _check_uint32(self.lifetime)

    @property
    def is_tcp(self) -> bool:
        return self.opcode is Opcode.MAP_TCP


Request = PublicAddressRequest | MapRequest


def decode_request(data: bytes) -> Request:
    """One request datagram, checked in the order of protocols.md §5.3.

    Shorter than 2 bytes, a response opcode (top bit set) or a mapping request shorter than
    12 bytes: dropped (None). Version other than 0: UNSUPPORTED_VERSION. Opcode 3-127:
    UNSUPPORTED_OPCODE. Bytes after the request are ignored, like the reserved field.
    """
    if len(data) < 2:
        raise NatPmpDecodeError(None, f"datagram of {len(data)} byte(s) is too short")
    version, opcode = data[0], data[1]
    if opcode & RESPONSE_BIT:
        raise NatPmpDecodeError(None, f"opcode {opcode} is a response", opcode=opcode)
    if version != VERSION:
        raise NatPmpDecodeError(
            ResultCode.UNSUPPORTED_VERSION, f"version {version} is not 0", opcode=opcode
        )
    if opcode == Opcode.PUBLIC_ADDRESS:
        return PublicAddressRequest()
    if opcode not in (Opcode.MAP_UDP, Opcode.MAP_TCP):
        raise NatPmpDecodeError(
            ResultCode.UNSUPPORTED_OPCODE, f"opcode {opcode} is not supported", opcode=opcode
        )
    if len(data) < _MAP_REQUEST.size:
        raise NatPmpDecodeError(
            None, f"mapping request of {len(data)} bytes is shorter than 12", opcode=opcode
        )
    _, _, _reserved, internal, external, lifetime = _MAP_REQUEST.unpack_from(data)
    return MapRequest(Opcode(opcode), internal, external, lifetime)


def encode_request(request: Request) -> bytes:
    """The client's datagram (libnatpmp's ``sendpublicaddressrequest`` and
    ``sendnewportmappingrequest`` layouts)."""
    if isinstance(request, PublicAddressRequest):
        return bytes((VERSION, Opcode.PUBLIC_ADDRESS))
    return _MAP_REQUEST.pack(
        VERSION,
        request.opcode,
        0,
        request.internal_port,
        request.external_port,
        request.lifetime,
    )


# -- responses -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicAddressResponse:
    """Opcode 128. ``address`` is 0.0.0.0 whenever ``result`` is not SUCCESS."""

    result: ResultCode | int
    epoch: int
    address: IPv4Address

    def __post_init__(self) -> None:
        _check_uint16(int(self.result))
        _check_uint32(self.epoch)


@dataclass(frozen=True, slots=True)
class MapResponse:
    """Opcode 128 + request opcode. On errors ``external_port`` and ``lifetime`` are 0 unless
    the request is echoed (a refused delete)."""

    opcode: Opcode
    result: ResultCode | int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int

    def __post_init__(self) -> None:
        if self.opcode not in (Opcode.MAP_UDP, Opcode.MAP_TCP):
            raise ValueError(f"a mapping response answers opcode 1 or 2, not {self.opcode}")
        _check_uint16(int(self.result))
        _check_uint32(self.epoch)
        _check_port(self.internal_port)
        _check_port(self.external_port)
        _check_uint32(self.lifetime)


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The 8-byte answer to an unsupported version or opcode; ``opcode`` is the request's
    (sent with the top bit set)."""

    opcode: int
    result: ResultCode | int
    epoch: int

    def __post_init__(self) -> None:
        if not 0 <= self.opcode < RESPONSE_BIT:
            raise ValueError(f"request opcode {self.opcode} is outside 0-127")
        _check_uint16(int(self.result))
        _check_uint32(self.epoch)


Response = PublicAddressResponse | MapResponse | ErrorResponse


def encode_response(response: Response) -> bytes:
    if isinstance(response, PublicAddressResponse):
        return _ADDRESS_RESPONSE.pack(
            VERSION,
            RESPONSE_BIT | Opcode.PUBLIC_ADDRESS,
            response.result,
            response.epoch,
            response.address.packed,
        )
    if isinstance(response, MapResponse):
        return _MAP_RESPONSE.pack(
            VERSION,
            RESPONSE_BIT | response.opcode,
            response.result,
            response.epoch,
            response.internal_port,
            response.external_port,
            response.lifetime,
        )
    return _ERROR_RESPONSE.pack(
        VERSION, RESPONSE_BIT | response.opcode, response.result, response.epoch
    )


def decode_response(data: bytes) -> Response:
    """A gateway's answer, read as libnatpmp's ``readnatpmpresponse`` does, plus length checks.

    An 8-byte answer is an ``ErrorResponse``; longer ones are read by opcode (trailing bytes
    ignored). Anything else raises ``NatPmpDecodeError(None)``.
    """
    if len(data) < _ERROR_RESPONSE.size:
        raise NatPmpDecodeError(None, f"response of {len(data)} byte(s) is too short")
    version, opcode, result, epoch = _ERROR_RESPONSE.unpack_from(data)
    if version != VERSION:
        raise NatPmpDecodeError(None, f"response version {version} is not 0")
    if not opcode & RESPONSE_BIT:
        raise NatPmpDecodeError(None, f"opcode {opcode} is not a response")
    request_opcode = opcode & ~RESPONSE_BIT
    code = _result_code(result)
    if len(data) == _ERROR_RESPONSE.size:
        return ErrorResponse(request_opcode, code, epoch)
    if request_opcode == Opcode.PUBLIC_ADDRESS:
        if len(data) < _ADDRESS_RESPONSE.size:
            raise NatPmpDecodeError(None, f"address response of {len(data)} bytes")
        return PublicAddressResponse(code, epoch, IPv4Address(data[8:12]))
    if request_opcode in (Opcode.MAP_UDP, Opcode.MAP_TCP):
        if len(data) < _MAP_RESPONSE.size:
            raise NatPmpDecodeError(None, f"mapping response of {len(data)} bytes")
        _, _, _, _, internal, external, lifetime = _MAP_RESPONSE.unpack_from(data)
        return MapResponse(Opcode(request_opcode), code, epoch, internal, external, lifetime)
    raise NatPmpDecodeError(None, f"response opcode {opcode} is not known")


# -- helpers ---------------------------------------------------------------------------------


def _result_code(value: int) -> ResultCode | int:
    try:
        return ResultCode(value)
    except ValueError:
        return value


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")


def _check_uint16(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} does not fit 16 bits")


def _check_uint32(value: int) -> None:
    if not 0 <= value <= _UINT32_MAX:
        raise ValueError(f"{value} does not fit 32 bits")

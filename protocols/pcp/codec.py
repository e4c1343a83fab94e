"""PCP (RFC 6887) as a pure codec: bytes in, frozen values out, and the reverse.

No sockets, no Twisted, no clock: the epoch is an argument of every encoder.

Server side:

- ``decode_request(data, source)`` applies RFC 6887 §8.3 in order (protocols.md §6.6): fewer
  than 2 bytes or the R bit set: dropped; a version other than 2: UNSUPP_VERSION; fewer than 24
  bytes: dropped; over 1100 bytes, not a multiple of 4 or too short for the opcode:
  MALFORMED_REQUEST; client address field not the packet's source: ADDRESS_MISMATCH; unknown
  (or disabled) opcode: UNSUPP_OPCODE; then the options (``options.decode_options``) and the
  opcode's own checks (§11.1, §12.1). Failures raise ``PcpDecodeError`` carrying the result code
  (None: drop) and the request bytes an error response copies.
- ``encode_response`` builds a success response (or a Mapping Update); ``encode_error`` the copy
  of a request that answers it with an error; ``encode_announce`` the unsolicited ANNOUNCE.

Client side (tests, diagnostics): ``encode_request`` and ``decode_response``.

Layouts (all integers big endian; addresses are 16 bytes, IPv4 as ``::ffff:a.b.c.d``):

- request header (24): ``version=2 R|opcode reserved(2) lifetime(4) client_address(16)``;
- response header (24): ``version R|opcode reserved(1) result(1) lifetime(4) epoch(4)
  reserved(12)``;
- MAP data (36): ``nonce(12) protocol reserved(3) internal_port(2) external_port(2)
  external_address(16)``;
- PEER data (56): MAP data, then ``remote_port(2) reserved(2) remote_address(16)``;
- ANNOUNCE: no data.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from protocols.pcp.options import (
    Fault,
    OptionError,
    Options,
    decode_address,
    decode_options,
    encode_address,
    encode_options,
    read_options,
)

__all__ = [
    "HEADER_SIZE",
    "LONG_LIFETIME",
    "MAP_SIZE",
    "MAX_MESSAGE",
    "PEER_SIZE",
    "RESPONSE_BIT",
    "SHORT_LIFETIME",
    "UINT32_MAX",
    "VERSION",
    "MapData",
    "Opcode",
    "PcpDecodeError",
    "PeerData",
    "Request",
    "Response",
    "ResultCode",
    "decode_request",
    "decode_response",
    "encode_announce",
    "encode_error",
    "encode_request",
    "encode_response",
    "error_lifetime",
]

IPAddress = IPv4Address | IPv6Address

VERSION = 2
RESPONSE_BIT = 0x80
HEADER_SIZE = 24
MAP_SIZE = HEADER_SIZE + 36
PEER_SIZE = HEADER_SIZE + 56
MAX_MESSAGE = 1100
UINT32_MAX = 2**32 - 1
#: Recommended error lifetimes (RFC 6887 §7.4): short errors 30 s, long ones 30 min.
SHORT_LIFETIME = 30
LONG_LIFETIME = 1800

_REQUEST_HEADER = struct.Struct("!BBHI16s")
_RESPONSE_HEADER = struct.Struct("!BBBBII12s")
_MAP_DATA = struct.Struct("!12sB3sHH16s")
_PEER_TAIL = struct.Struct("!HH16s")


class Opcode(enum.IntEnum):
    ANNOUNCE = 0
    MAP = 1
    PEER = 2


class ResultCode(enum.IntEnum):
    """RFC 6887 §7.4."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


_KNOWN_OPCODES = frozenset(int(opcode) for opcode in Opcode)
_SHORT_ERRORS = frozenset(
    {ResultCode.NETWORK_FAILURE, ResultCode.NO_RESOURCES, ResultCode.USER_EX_QUOTA}
)


def error_lifetime(result: ResultCode) -> int:
    """The recommended lifetime of an error response: 30 s for the short (transient) errors,
    30 min for the long ones. CANNOT_PROVIDE_EXTERNAL "depends"; without better knowledge it
    is treated as short."""
    if result in _SHORT_ERRORS or result is ResultCode.CANNOT_PROVIDE_EXTERNAL:
        return SHORT_LIFETIME
    return LONG_LIFETIME


class PcpDecodeError(Exception):
    """A request that is answered with an error (``result``) or dropped (``result`` None).

    ``request`` is the datagram as received (the error response is a copy of it);
    ``parsed`` is False when the header itself could not be used (UNSUPP_VERSION and the
    MALFORMED_REQUEST of a bad length): then the response keeps the request's bytes 12-23,
    otherwise those reserved bytes are zeroed.
    """

    def __init__(
        self,
        result: ResultCode | None,
        message: str,
        *,
        request: bytes = b"",
        parsed: bool = True,
    ) -> None:
        super().__init__(message)
        self.result = result
        self.message = message
        self.request = request
        self.parsed = parsed


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapData:
    """MAP opcode data. In a request ``external_*`` is the suggestion (zero address of the
    family and port 0: no preference); in a response the assigned endpoint."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: IPAddress

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        _check_uint8(self.protocol)
        _check_port(self.internal_port)
        _check_port(self.external_port)


@dataclass(frozen=True, slots=True)
class PeerData:
    """PEER opcode data: MAP's fields plus the remote peer."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: IPAddress
    remote_port: int
    remote_address: IPAddress

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        _check_uint8(self.protocol)
        _check_port(self.internal_port)
        _check_port(self.external_port)
        _check_port(self.remote_port)


Body = MapData | PeerData | None


@dataclass(frozen=True, slots=True)
class Request:
    """A request. ``body`` is None for ANNOUNCE, ``MapData`` for MAP, ``PeerData`` for PEER.
    ``raw`` is the datagram it was decoded from (not part of equality)."""

    opcode: Opcode
    lifetime: int
    client_address: IPAddress
    body: Body = None
    options: Options = field(default_factory=Options)
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_uint32(self.lifetime)
        wanted = _BODY_FOR[self.opcode]
        if not isinstance(self.body, wanted):
            raise ValueError(f"opcode {self.opcode.name} needs a {wanted}, got {self.body!r}")

    @property
    def internal_address(self) -> IPAddress:
        """THIRD_PARTY's address when present, else the client's own."""
        if self.options.third_party is not None:
            return self.options.third_party
        return self.client_address


@dataclass(frozen=True, slots=True)
class Response:
    """A response as read by a client (or built by the server). ``body`` may be None for an
    answer too short to carry the opcode's data (e.g. UNSUPP_VERSION)."""

    opcode: int
    result: ResultCode | int
    lifetime: int
    epoch: int
    body: Body = None
    options: Options = field(default_factory=Options)
    version: int = VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.opcode < RESPONSE_BIT:
            raise ValueError(f"opcode {self.opcode} is outside 0-127")
        _check_uint8(int(self.result))
        _check_uint8(self.version)
        _check_uint32(self.lifetime)
        _check_uint32(self.epoch)


_BODY_FOR: dict[Opcode, type | tuple[type, ...]] = {
    Opcode.ANNOUNCE: type(None),
    Opcode.MAP: MapData,
    Opcode.PEER: PeerData,
}


# -- server side -----------------------------------------------------------------------------


def decode_request(
    data: bytes,
    source: IPAddress | None = None,
    *,
    opcodes: Collection[int] = (Opcode.ANNOUNCE, Opcode.MAP, Opcode.PEER),
) -> Request:
    """One request datagram from ``source`` (None: skip the ADDRESS_MISMATCH and THIRD_PARTY
    checks). ``opcodes`` are the ones the server serves; others draw UNSUPP_OPCODE."""
    if len(data) < 2:
        raise PcpDecodeError(None, f"datagram of {len(data)} byte(s)", request=data)
    if data[1] & RESPONSE_BIT:
        raise PcpDecodeError(None, "the R bit is set: a response", request=data)
    if data[0] != VERSION:
        raise PcpDecodeError(
            ResultCode.UNSUPP_VERSION,
            f"version {data[0]} is not supported",
            request=data,
            parsed=False,
        )
    if len(data) < HEADER_SIZE:
        raise PcpDecodeError(None, f"request of {len(data)} bytes is shorter than 24", request=data)
    opcode = data[1]
    minimum = _MINIMUM_SIZE.get(opcode, HEADER_SIZE)
    if len(data) > MAX_MESSAGE or len(data) % 4 or len(data) < minimum:
        raise PcpDecodeError(
            ResultCode.MALFORMED_REQUEST,
            f"request of {len(data)} bytes (opcode {opcode}) has a bad length",
            request=data,
            parsed=False,
        )
    _, _, _, lifetime, client_field = _REQUEST_HEADER.unpack_from(data)
    if source is not None and client_field != encode_address(source):
        raise PcpDecodeError(
            ResultCode.ADDRESS_MISMATCH,
            f"client address {decode_address(client_field)} is not the source {source}",
            request=data,
        )
    if opcode not in opcodes or opcode not in _KNOWN_OPCODES:
        raise PcpDecodeError(
            ResultCode.UNSUPP_OPCODE, f"opcode {opcode} is not supported", request=data
        )
    op = Opcode(opcode)
    client = decode_address(client_field)
    body: Body = None
    if op is Opcode.MAP:
        body = _decode_map(data)
    elif op is Opcode.PEER:
        body = _decode_peer(data)
    try:
        options = decode_options(
            data[minimum:],
            op,
            lifetime,
            body.external_port if isinstance(body, MapData) else 0,
        )
    except OptionError as error:
        raise PcpDecodeError(_FAULT_RESULT[error.fault], error.message, request=data) from None
    request = Request(op, lifetime, client, body, options, raw=data)
    _check_semantics(request, source)
    return request


_MINIMUM_SIZE: dict[int, int] = {Opcode.MAP: MAP_SIZE, Opcode.PEER: PEER_SIZE}
_FAULT_RESULT = {
    Fault.UNSUPPORTED: ResultCode.UNSUPP_OPTION,
    Fault.MALFORMED: ResultCode.MALFORMED_OPTION,
    Fault.MALFORMED_REQUEST: ResultCode.MALFORMED_REQUEST,
}


def _decode_map(data: bytes) -> MapData:
    nonce, protocol, _reserved, internal, external, address = _MAP_DATA.unpack_from(
        data, HEADER_SIZE
    )
    return MapData(nonce, protocol, internal, external, decode_address(address))


def _decode_peer(data: bytes) -> PeerData:
    head = _decode_map(data)
    remote_port, _reserved, remote = _PEER_TAIL.unpack_from(data, MAP_SIZE)
    return PeerData(
        head.nonce,
        head.protocol,
        head.internal_port,
        head.external_port,
        head.external_address,
        remote_port,
        decode_address(remote),
    )


def _check_semantics(request: Request, source: IPAddress | None) -> None:
    """The opcode-level checks that need no state (RFC 6887 §11.1, §12.1, §13.1, §13.3)."""

    def fail(result: ResultCode, message: str) -> PcpDecodeError:
        return PcpDecodeError(result, message, request=request.raw)

    third_party = request.options.third_party
    if third_party is not None and source is not None and third_party.packed == source.packed:
        raise fail(ResultCode.MALFORMED_REQUEST, "THIRD_PARTY names the client itself")
    internal = request.internal_address
    body = request.body
    for item in request.options.filters:
        if not item.clears and type(item.remote_address) is not type(internal):
            raise fail(
                ResultCode.MALFORMED_OPTION,
                f"FILTER {item.remote_address} is not of the family of {internal}",
            )
    if isinstance(body, MapData) and body.protocol == 0 and body.internal_port != 0:
        raise fail(ResultCode.MALFORMED_REQUEST, "protocol 0 (all) with an internal port")
    if isinstance(body, PeerData):
        if body.protocol == 0 or body.internal_port == 0 or body.remote_port == 0:
            raise fail(
                ResultCode.MALFORMED_REQUEST, "PEER needs a protocol, internal and remote port"
            )
        remote = body.remote_address
        if type(remote) is not type(internal):
            raise fail(
                ResultCode.MALFORMED_REQUEST,
                f"remote peer {remote} is not of the family of {internal}",
            )
        if remote.is_unspecified or remote.is_loopback or remote.is_multicast:
            raise fail(ResultCode.MALFORMED_REQUEST, f"remote peer {remote} is not a host")


def _body_bytes(body: Body) -> bytes:
    if body is None:
        return b""
    head = _MAP_DATA.pack(
        body.nonce,
        body.protocol,
        b"\x00\x00\x00",
        body.internal_port,
        body.external_port,
        encode_address(body.external_address),
    )
    if isinstance(body, PeerData):
        head += _PEER_TAIL.pack(body.remote_port, 0, encode_address(body.remote_address))
    return head


def encode_response(response: Response) -> bytes:
    """A response built from values: header with zeroed reserved bytes, opcode data, options.

    Raises ``ValueError`` when the result would exceed 1100 bytes (the caller answers
    MALFORMED_REQUEST then, RFC 6887 §7.3)."""
    out = (
        _RESPONSE_HEADER.pack(
            response.version,
            RESPONSE_BIT | response.opcode,
            0,
            response.result,
            response.lifetime,
            response.epoch,
            b"\x00" * 12,
        )
        + _body_bytes(response.body)
        + encode_options(response.options)
    )
    if len(out) > MAX_MESSAGE:
        raise ValueError(f"a response of {len(out)} bytes exceeds {MAX_MESSAGE}")
    return out


def encode_error(
    request: bytes,
    result: ResultCode,
    lifetime: int,
    epoch: int,
    *,
    parsed: bool = True,
) -> bytes:
    """The error response to ``request``: a copy of it (at most 1100 bytes, zero-padded to a
    multiple of 4 and to at least 24) with the R bit, result, lifetime and epoch set; the
    reserved bytes 12-23 are zeroed when the request was ``parsed``. UNSUPP_VERSION answers
    with the 24-byte header alone, version 2 (RFC 6887 §9)."""
    copy = bytearray(request[:MAX_MESSAGE])
    if result is ResultCode.UNSUPP_VERSION:
        del copy[HEADER_SIZE:]
    copy += b"\x00" * (-len(copy) % 4)
    if len(copy) < HEADER_SIZE:
        copy += b"\x00" * (HEADER_SIZE - len(copy))
    copy[0] = VERSION
    copy[1] |= RESPONSE_BIT
    copy[2] = 0
    copy[3] = result
    struct.pack_into("!II", copy, 4, lifetime, epoch)
    if parsed:
        copy[12:HEADER_SIZE] = b"\x00" * 12
    return bytes(copy)


def encode_announce(epoch: int) -> bytes:
    """The unsolicited ANNOUNCE of RFC 6887 §14.1.3 (also the answer to an ANNOUNCE request):
    24 bytes, opcode 0 with R set, SUCCESS, lifetime 0."""
    return encode_response(Response(Opcode.ANNOUNCE, ResultCode.SUCCESS, 0, epoch))


# -- client side -----------------------------------------------------------------------------


def encode_request(request: Request, extra_options: bytes = b"") -> bytes:
    """A client's datagram (libtorrent's ``natpmp::send_map_request`` layout for MAP).
    ``extra_options`` (already encoded TLVs) are appended after the known ones."""
    header = _REQUEST_HEADER.pack(
        VERSION, request.opcode, 0, request.lifetime, encode_address(request.client_address)
    )
    return header + _body_bytes(request.body) + encode_options(request.options) + extra_options


def decode_response(data: bytes) -> Response:
    """A server's answer. Raises ``PcpDecodeError(None)`` for anything that is not a PCP
    response (short, R bit clear, length not a multiple of 4, options that do not parse)."""
    if len(data) < HEADER_SIZE:
        raise PcpDecodeError(None, f"response of {len(data)} byte(s)", request=data)
    if len(data) % 4 or len(data) > MAX_MESSAGE:
        raise PcpDecodeError(None, f"response of {len(data)} bytes", request=data)
    version, opcode, _reserved, result, lifetime, epoch, _ = _RESPONSE_HEADER.unpack_from(data)
    if not opcode & RESPONSE_BIT:
        raise PcpDecodeError(None, "the R bit is clear: a request", request=data)
    opcode &= ~RESPONSE_BIT
    code: ResultCode | int
    try:
        code = ResultCode(result)
    except ValueError:
        code = result
    body: Body = None
    offset = HEADER_SIZE
    if opcode == Opcode.MAP and len(data) >= MAP_SIZE:
        body, offset = _decode_map(data), MAP_SIZE
    elif opcode == Opcode.PEER and len(data) >= PEER_SIZE:
        body, offset = _decode_peer(data), PEER_SIZE
    elif opcode in (Opcode.MAP, Opcode.PEER):
        if code == ResultCode.SUCCESS:
            raise PcpDecodeError(
                None, f"opcode {opcode} response of {len(data)} bytes", request=data
            )
        offset = len(data)  # an error copy of a request too short for its opcode
    options = Options()
    if opcode in _KNOWN_OPCODES:
        try:
            options = read_options(data[offset:])
        except OptionError as error:
            # an error response copies the request, options that did not parse included
            if code == ResultCode.SUCCESS:
                raise PcpDecodeError(None, error.message, request=data) from None
    return Response(opcode, code, lifetime, epoch, body, options, version)


# -- helpers ---------------------------------------------------------------------------------


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != 12:
        raise ValueError(f"a nonce is 12 bytes, not {len(nonce)}")


def _check_uint8(value: int) -> None:
    if not 0 <= value <= 255:
        raise ValueError(f"{value} does not fit 8 bits")


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")


def _check_uint32(value: int) -> None:
    if not 0 <= value <= UINT32_MAX:
        raise ValueError(f"{value} does not fit 32 bits")

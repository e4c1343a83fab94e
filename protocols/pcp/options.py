"""PCP options (RFC 6887 §7.3, §13; RFC 7220) and the 16-byte address fields they share
with the opcodes (§5): pure bytes <-> frozen values.

An option is ``code(1) reserved(1) length(2) data`` with the data zero-padded to a multiple of
4 bytes; ``length`` excludes the padding. Codes 0-127 are mandatory to process, 128-255
optional. ``decode_options`` applies the server rules in order of appearance and raises
``OptionError`` with the first fault found; ``read_options`` is the lenient client-side reader.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

__all__ = [
    "DESCRIPTION_MAX",
    "DESCRIPTION_STORED",
    "Fault",
    "Filter",
    "OptionCode",
    "OptionError",
    "Options",
    "decode_address",
    "decode_options",
    "encode_address",
    "encode_option",
    "encode_options",
    "read_options",
    "truncate_description",
]

IPAddress = IPv4Address | IPv6Address

#: RFC 7220 §4: at most 1016 bytes of UTF-8 on the wire ...
DESCRIPTION_MAX = 1016
#: ... of which a server keeps at least 128 (we keep exactly that many).
DESCRIPTION_STORED = 128

_OPCODE_ANNOUNCE = 0
_OPCODE_MAP = 1
_OPCODE_PEER = 2
_OPTION_HEADER = struct.Struct("!BBH")
_FILTER = struct.Struct("!BBH16s")
_IPV4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


class OptionCode(enum.IntEnum):
    THIRD_PARTY = 1
    PREFER_FAILURE = 2
    FILTER = 3
    DESCRIPTION = 128  # RFC 7220


#: Where each option may appear (RFC 6887 §13.1-§13.3, RFC 7220 §4).
_VALID_FOR: dict[OptionCode, frozenset[int]] = {
    OptionCode.THIRD_PARTY: frozenset({_OPCODE_MAP, _OPCODE_PEER}),
    OptionCode.PREFER_FAILURE: frozenset({_OPCODE_MAP}),
    OptionCode.FILTER: frozenset({_OPCODE_MAP}),
    OptionCode.DESCRIPTION: frozenset({_OPCODE_MAP, _OPCODE_PEER}),
}
_FIXED_LENGTH = {
    OptionCode.THIRD_PARTY: 16,
    OptionCode.PREFER_FAILURE: 0,
    OptionCode.FILTER: _FILTER.size,
}


class Fault(enum.Enum):
    """What is wrong with the options; the codec turns it into a result code."""

    UNSUPPORTED = "unsupported"  # UNSUPP_OPTION
    MALFORMED = "malformed"  # MALFORMED_OPTION
    MALFORMED_REQUEST = "malformed_request"  # MALFORMED_REQUEST (PREFER_FAILURE in PEER)


class OptionError(Exception):
    def __init__(self, fault: Fault, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.fault = fault
        self.message = message
        self.code = code


# -- addresses -------------------------------------------------------------------------------


def encode_address(address: IPAddress) -> bytes:
    """16 bytes: IPv6 as is, IPv4 as ``::ffff:a.b.c.d`` (so 0.0.0.0 is ``::ffff:0:0``)."""
    if isinstance(address, IPv4Address):
        return _IPV4_MAPPED_PREFIX + address.packed
    return address.packed


def decode_address(data: bytes) -> IPAddress:
    """IPv4 when all of the first 96 bits are the IPv4-mapped pattern (RFC 6887 §5)."""
    if len(data) != 16:
        raise ValueError(f"an address field is 16 bytes, not {len(data)}")
    if data[:12] == _IPV4_MAPPED_PREFIX:
        return IPv4Address(data[12:])
    return IPv6Address(data)


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filter:
    """One FILTER option: remote peers in ``remote_address``/``prefix_length`` (counted on the
    128-bit field, so 96-128 for IPv4) and ``remote_port`` (0 = any) may use the mapping.
    Prefix length 0 removes every filter of the mapping (RFC 6887 §13.3)."""

    prefix_length: int
    remote_port: int
    remote_address: IPAddress

    def __post_init__(self) -> None:
        if not 0 <= self.remote_port <= 65535:
            raise ValueError(f"port {self.remote_port} is outside 0-65535")
        if self.prefix_length == 0:
            return
        low = 96 if isinstance(self.remote_address, IPv4Address) else 1
        if not low <= self.prefix_length <= 128:
            raise ValueError(
                f"prefix length {self.prefix_length} is outside {low}-128 for {self.remote_address}"
            )

    @property
    def clears(self) -> bool:
        return self.prefix_length == 0

    def network(self) -> IPv4Network | IPv6Network:
        """The remote prefix (host bits cleared); not meaningful when ``clears``."""
        if isinstance(self.remote_address, IPv4Address):
            return ip_network((self.remote_address, max(0, self.prefix_length - 96)), strict=False)
        return ip_network((self.remote_address, self.prefix_length), strict=False)


@dataclass(frozen=True, slots=True)
class Options:
    """The options of one message. ``description`` None: no DESCRIPTION option (or one that
    was not valid UTF-8, which RFC 7220 says to ignore)."""

    third_party: IPAddress | None = None
    prefer_failure: bool = False
    filters: tuple[Filter, ...] = ()
    description: str | None = None


# -- encoding --------------------------------------------------------------------------------


def encode_option(code: int, data: bytes) -> bytes:
    """One TLV, zero-padded to a multiple of 4 (any code: tests build unknown options)."""
    if not 0 <= code <= 255:
        raise ValueError(f"option code {code} is outside 0-255")
    if len(data) > 65535:
        raise ValueError(f"option data of {len(data)} bytes does not fit")
    padding = -len(data) % 4
    return _OPTION_HEADER.pack(code, 0, len(data)) + data + b"\x00" * padding


def encode_options(options: Options) -> bytes:
    """THIRD_PARTY, PREFER_FAILURE, FILTERs, DESCRIPTION, in that order."""
    out = bytearray()
    if options.third_party is not None:
        out += encode_option(OptionCode.THIRD_PARTY, encode_address(options.third_party))
    if options.prefer_failure:
        out += encode_option(OptionCode.PREFER_FAILURE, b"")
    for item in options.filters:
        out += encode_option(
            OptionCode.FILTER,
            _FILTER.pack(
                0, item.prefix_length, item.remote_port, encode_address(item.remote_address)
            ),
        )
    if options.description is not None:
        out += encode_option(OptionCode.DESCRIPTION, options.description.encode("utf-8"))
    return bytes(out)


def truncate_description(text: str, limit: int = DESCRIPTION_STORED) -> str:
    """At most ``limit`` bytes of UTF-8, cut on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


# -- decoding --------------------------------------------------------------------------------


def _tlvs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(code, data) per option; MALFORMED when a header or its data runs past the end."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < _OPTION_HEADER.size:
            raise OptionError(Fault.MALFORMED, f"option header at {offset} is truncated")
        code, _reserved, length = _OPTION_HEADER.unpack_from(data, offset)
        start = offset + _OPTION_HEADER.size
        end = start + length
        padded = start + length + (-length % 4)
        if padded > len(data):
            raise OptionError(
                Fault.MALFORMED,
                f"option {code} of length {length} runs past the end of the message",
                code=code,
            )
        yield code, data[start:end]
        offset = padded


def decode_options(data: bytes, opcode: int, lifetime: int, suggested_port: int = 0) -> Options:
    """The options of a request, processed in order of appearance (RFC 6887 §7.3).

    - unknown or misplaced mandatory option (code < 128): UNSUPPORTED; PREFER_FAILURE in a
      PEER request: MALFORMED_REQUEST (PEER implies it, §13.2);
    - unknown or misplaced optional option: skipped (and left out of the response);
    - a fixed-size option of the wrong length, a second THIRD_PARTY / PREFER_FAILURE /
      DESCRIPTION, PREFER_FAILURE or FILTER with lifetime 0, PREFER_FAILURE with suggested
      port 0, a FILTER prefix length out of range, a DESCRIPTION over 1016 bytes: MALFORMED.
    """
    third_party: IPAddress | None = None
    prefer_failure = False
    filters: list[Filter] = []
    description: str | None = None
    seen: set[OptionCode] = set()
    for raw_code, payload in _tlvs(data):
        try:
            code = OptionCode(raw_code)
        except ValueError:
            if raw_code < 128:
                raise OptionError(
                    Fault.UNSUPPORTED,
                    f"mandatory option {raw_code} is not supported",
                    code=raw_code,
                ) from None
            continue
        if opcode not in _VALID_FOR[code]:
            if code is OptionCode.PREFER_FAILURE and opcode == _OPCODE_PEER:
                raise OptionError(
                    Fault.MALFORMED_REQUEST, "PREFER_FAILURE is implied in PEER", code=raw_code
                )
            if raw_code < 128:
                raise OptionError(
                    Fault.UNSUPPORTED,
                    f"option {code.name} is not valid for opcode {opcode}",
                    code=raw_code,
                )
            continue
        if code in seen and code is not OptionCode.FILTER:
            raise OptionError(Fault.MALFORMED, f"option {code.name} appears twice", code=raw_code)
        seen.add(code)
        expected = _FIXED_LENGTH.get(code)
        if expected is not None and len(payload) != expected:
            raise OptionError(
                Fault.MALFORMED,
                f"option {code.name} has length {len(payload)}, expected {expected}",
                code=raw_code,
            )
        if code is OptionCode.THIRD_PARTY:
            third_party = decode_address(payload)
        elif code is OptionCode.PREFER_FAILURE:
            if lifetime == 0:
                raise OptionError(Fault.MALFORMED, "PREFER_FAILURE in a delete", code=raw_code)
            if suggested_port == 0:
                raise OptionError(
                    Fault.MALFORMED, "PREFER_FAILURE without a suggested port", code=raw_code
                )
            prefer_failure = True
        elif code is OptionCode.FILTER:
            if lifetime == 0:
                raise OptionError(Fault.MALFORMED, "FILTER in a delete", code=raw_code)
            filters.append(_decode_filter(payload))
        else:
            if len(payload) > DESCRIPTION_MAX:
                raise OptionError(
                    Fault.MALFORMED,
                    f"DESCRIPTION of {len(payload)} bytes exceeds {DESCRIPTION_MAX}",
                    code=raw_code,
                )
            description = _decode_text(payload)
    return Options(third_party, prefer_failure, tuple(filters), description)


def read_options(data: bytes) -> Options:
    """The options of a response (client side): known ones read, unknown ones skipped,
    no placement rules. A structure that does not parse raises ``OptionError``."""
    third_party: IPAddress | None = None
    prefer_failure = False
    filters: list[Filter] = []
    description: str | None = None
    for code, payload in _tlvs(data):
        if code == OptionCode.THIRD_PARTY and len(payload) == 16:
            third_party = decode_address(payload)
        elif code == OptionCode.PREFER_FAILURE:
            prefer_failure = True
        elif code == OptionCode.FILTER and len(payload) == _FILTER.size:
            filters.append(_decode_filter(payload))
        elif code == OptionCode.DESCRIPTION:
            description = _decode_text(payload)
    return Options(third_party, prefer_failure, tuple(filters), description)


def _decode_filter(payload: bytes) -> Filter:
    _reserved, prefix_length, port, address = _FILTER.unpack(payload)
    try:
        return Filter(prefix_length, port, decode_address(address))
    except ValueError as error:
        raise OptionError(Fault.MALFORMED, f"FILTER: {error}", code=OptionCode.FILTER) from None


def _decode_text(payload: bytes) -> str | None:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text

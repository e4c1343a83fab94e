"""SSDP, the discovery half of UPnP: a pure codec (protocols.md §1).

Bytes in, frozen values out, and the reverse; no sockets, no Twisted, no clock (the DATE of a
response is an argument). The multicast shell that uses it is ``ssdp_server``.

- ``decode_search`` turns an M-SEARCH datagram into a ``Search`` or raises ``SsdpDecodeError``
  (always a silent drop: SSDP has no error responses).
- ``answers(search, identity)`` lists the (ST, USN) rows a root IGD answers with (§1.3).
- ``encode_search_response``, ``encode_alive``, ``encode_byebye`` and ``encode_update`` build
  the messages of §1.4 and §1.6; ``notifications(identity)`` is the NT/USN set of §1.6.
- ``decode_response`` and ``decode_notify`` read those messages back (tests, diagnostics).
"""

from __future__ import annotations

import email.utils
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, NamedTuple

__all__ = [
    "HOST_IPV4",
    "HOST_IPV6_LINK",
    "HOST_IPV6_SITE",
    "MAX_MESSAGE",
    "MAX_MX",
    "Answer",
    "DeviceIdentity",
    "Notify",
    "Search",
    "SearchResponse",
    "SsdpDecodeError",
    "answers",
    "decode_notify",
    "decode_response",
    "decode_search",
    "encode_alive",
    "encode_byebye",
    "encode_search_response",
    "encode_update",
    "http_location",
    "notifications",
]

IPAddress = IPv4Address | IPv6Address

#: Largest datagram we parse. Real searches are 100-400 bytes; our own messages stay < 700.
MAX_MESSAGE = 2048
#: Most header lines in one message.
MAX_HEADERS = 32
#: Longest ST / NT / USN value we accept.
MAX_TARGET = 256
#: MX above this is treated as this (UDA 1.1 §1.3.2).
MAX_MX = 5

#: The HOST header of multicast messages, per group (UDA 2.0 Annex A spells IPv6 in capitals).
HOST_IPV4 = "239.255.255.250:1900"
HOST_IPV6_LINK = "[FF02::C]:1900"
HOST_IPV6_SITE = "[FF05::C]:1900"

MAN_DISCOVER = '"ssdp:discover"'
ST_ALL = "ssdp:all"
ST_ROOTDEVICE = "upnp:rootdevice"
OPT_VALUE = '"http://schemas.upnp.org/upnp/1/0/"; ns=01'

NTS_ALIVE = "ssdp:alive"
NTS_BYEBYE = "ssdp:byebye"
NTS_UPDATE = "ssdp:update"

IGD = "urn:schemas-upnp-org:device:InternetGatewayDevice"
WAN_DEVICE = "urn:schemas-upnp-org:device:WANDevice"
WAN_CONNECTION_DEVICE = "urn:schemas-upnp-org:device:WANConnectionDevice"
LAYER3_FORWARDING = "urn:schemas-upnp-org:service:Layer3Forwarding"
WAN_COMMON_INTERFACE_CONFIG = "urn:schemas-upnp-org:service:WANCommonInterfaceConfig"
WAN_IP_CONNECTION = "urn:schemas-upnp-org:service:WANIPConnection"
WAN_IPV6_FIREWALL_CONTROL = "urn:schemas-upnp-org:service:WANIPv6FirewallControl"

_MAX_BOOT_ID = 2**31 - 1
_MAX_CONFIG_ID = 16777215
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class SsdpDecodeError(ValueError):
    """A datagram we do not act on. SSDP has no error replies: the caller drops it silently
    (and may log ``reason`` at debug level). ``code`` is always None (no wire code)."""

    code: None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Search:
    """A well-formed M-SEARCH (§1.2).

    ``mx`` is the response window in seconds, already clamped to 1..5; None on a unicast
    search that carried no usable MX (MX does not apply to unicast searches)."""

    st: str
    mx: int | None
    unicast: bool
    user_agent: str | None = None
    host: str | None = None


class Answer(NamedTuple):
    """One search-response row: the ST to send back and the USN that goes with it."""

    st: str
    usn: str


class Notification(NamedTuple):
    """One NOTIFY row (§1.6): the NT and the USN that goes with it."""

    nt: str
    usn: str


def _check_uuid(value: str, field: str) -> str:
    try:
        parsed = uuid_module.UUID(value)
    except ValueError:
        raise ValueError(
            f"{field}: expected a UUID like 2fac1234-31f8-11b4-a222-08002b34c003, got {value!r}"
        ) from None
    if str(parsed) != value.lower() or value != value.lower():
        raise ValueError(f"{field}: expected a lower-case hyphenated UUID, got {value!r}")
    return value


def _check_header_text(value: str, field: str) -> str:
    if not value or not value.isascii() or not value.isprintable():
        raise ValueError(f"{field}: expected printable ASCII without line breaks, got {value!r}")
    return value


@dataclass(frozen=True)
class DeviceIdentity:
    """Who we are on the wire: what every SSDP message of ours carries.

    ``root_uuid``, ``wan_uuid`` and ``wanconn_uuid`` are the bare UUIDs (no ``uuid:``) of the
    InternetGatewayDevice, WANDevice and WANConnectionDevice; they must equal the UDNs of the
    description. ``location(local_address)`` returns the LOCATION URL reachable through that
    local interface address (see ``http_location``). ``boot_id`` is BOOTID.UPNP.ORG (0 to
    2**31-1, increased at each start; the Unix time at start is an accepted scheme);
    ``config_id`` is CONFIGID.UPNP.ORG (0 to 16777215, changed whenever any description
    changes). ``igd_version`` 1 removes WANIPv6FirewallControl and caps the types at :1.
    ``layer3_forwarding``: the root device has the Layer3Forwarding:1 service.
    """

    root_uuid: str
    wan_uuid: str
    wanconn_uuid: str
    server: str
    location: Callable[[IPAddress], str]
    boot_id: int
    config_id: int
    igd_version: Literal[1, 2] = 2
    max_age: int = 1800
    layer3_forwarding: bool = True

    def __post_init__(self) -> None:
        uuids = (self.root_uuid, self.wan_uuid, self.wanconn_uuid)
        for value, field in zip(uuids, ("root_uuid", "wan_uuid", "wanconn_uuid"), strict=True):
            _check_uuid(value, field)
        if len(set(uuids)) != 3:
            raise ValueError("root_uuid, wan_uuid and wanconn_uuid must be distinct")
        _check_header_text(self.server, "server")
        if self.igd_version not in (1, 2):
            raise ValueError(f"igd_version: expected 1 or 2, got {self.igd_version!r}")
        if not 0 <= self.boot_id <= _MAX_BOOT_ID:
            raise ValueError(f"boot_id: expected 0..{_MAX_BOOT_ID}, got {self.boot_id}")
        if not 0 <= self.config_id <= _MAX_CONFIG_ID:
            raise ValueError(f"config_id: expected 0..{_MAX_CONFIG_ID}, got {self.config_id}")
        if not 1 <= self.max_age <= _MAX_BOOT_ID:
            raise ValueError(f"max_age: expected a positive number of seconds, got {self.max_age}")

    def location_for(self, local: IPAddress) -> str:
        """LOCATION for a message leaving through ``local``; checked so no header injection
        can come out of a bad URL."""
        return _check_header_text(self.location(local), "location")


def http_location(port: int, path: str = "/rootDesc.xml") -> Callable[[IPAddress], str]:
    """A ``DeviceIdentity.location`` for an HTTP server listening on ``port`` of every LAN
    address: ``http://192.168.1.1:5000/rootDesc.xml``, ``http://[fe80::1]:5000/...``.
    A link-local IPv6 literal carries no zone (UDA 2.0 Annex A: the receiver adds its own)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port: expected 1..65535, got {port}")
    if not path.startswith("/"):
        raise ValueError(f"path: expected an absolute path, got {path!r}")
    _check_header_text(path, "path")

    def location(local: IPAddress) -> str:
        host = f"[{local}]" if isinstance(local, IPv6Address) else str(local)
        return f"http://{host}:{port}{path}"

    return location


# -- which targets we are (§1.3, §1.6) -------------------------------------------------------


class _Type(NamedTuple):
    base: str  # without the trailing ":version"
    version: int  # the highest version we implement
    owner: str  # the bare UUID of the device that carries it


def _types(identity: DeviceIdentity) -> list[_Type]:
    """Device and service types in tree order: each device's type, then its services."""
    v = identity.igd_version
    root, wan, conn = identity.root_uuid, identity.wan_uuid, identity.wanconn_uuid
    rows = [_Type(IGD, v, root)]
    if identity.layer3_forwarding:
        rows.append(_Type(LAYER3_FORWARDING, 1, root))
    rows += [
        _Type(WAN_DEVICE, v, wan),
        _Type(WAN_COMMON_INTERFACE_CONFIG, 1, wan),
        _Type(WAN_CONNECTION_DEVICE, v, conn),
        _Type(WAN_IP_CONNECTION, v, conn),
    ]
    if v >= 2:
        rows.append(_Type(WAN_IPV6_FIREWALL_CONTROL, 1, conn))
    return rows


def notifications(identity: DeviceIdentity) -> list[Notification]:
    """The NT/USN set of §1.6, root first: ``upnp:rootdevice``, then for each device its
    ``uuid:`` and its type, then its services; only the highest version of each type.
    3 + 2d + k rows: 11 for IGD:2 with Layer3Forwarding, 10 for IGD:1."""
    rows = [Notification(ST_ROOTDEVICE, f"uuid:{identity.root_uuid}::{ST_ROOTDEVICE}")]
    seen_devices: set[str] = set()
    for kind in _types(identity):
        if kind.owner not in seen_devices:
            seen_devices.add(kind.owner)
            rows.append(Notification(f"uuid:{kind.owner}", f"uuid:{kind.owner}"))
        target = f"{kind.base}:{kind.version}"
        rows.append(Notification(target, f"uuid:{kind.owner}::{target}"))
    return rows


def _split_version(target: str) -> tuple[str, int] | None:
    base, colon, version = target.rpartition(":")
    if not colon or not base or not version.isascii() or not version.isdigit():
        return None
    if version[0] == "0" or len(version) > 6:
        return None
    return base, int(version)


def answers(search: Search, identity: DeviceIdentity) -> list[Answer]:
    """The responses ``search`` gets from us (§1.3), in send order; empty: stay silent.

    Types match "prefix equal, version <= ours" and are answered with the version searched
    for; ``ssdp:all`` gets every row of ``notifications`` (root first)."""
    st = search.st
    if st == ST_ALL:
        return [Answer(row.nt, row.usn) for row in notifications(identity)]
    if st == ST_ROOTDEVICE:
        return [Answer(st, f"uuid:{identity.root_uuid}::{ST_ROOTDEVICE}")]
    if st[:5].lower() == "uuid:":
        wanted = st[5:].lower()
        for device in (identity.root_uuid, identity.wan_uuid, identity.wanconn_uuid):
            if wanted == device:
                return [Answer(st, f"uuid:{device}")]
        return []
    split = _split_version(st)
    if split is None:
        return []
    base, version = split
    for kind in _types(identity):
        if kind.base == base and version <= kind.version:
            return [Answer(st, f"uuid:{kind.owner}::{st}")]
    return []


# -- parsing -----------------------------------------------------------------------------------


def _parse(data: bytes) -> tuple[str, dict[str, str]]:
    """Start line and headers (names lower-cased) of an HTTPU message, strictly: size cap,
    CRLF (or bare LF) lines, token names, no folding, no duplicates, a blank line at the end
    and nothing but blank lines after it."""
    if len(data) > MAX_MESSAGE:
        raise SsdpDecodeError(f"datagram of {len(data)} bytes is over {MAX_MESSAGE}")
    if not data:
        raise SsdpDecodeError("empty datagram")
    text = data.decode("latin-1")
    lines = text.split("\n")
    if lines[-1] != "":
        raise SsdpDecodeError("the last line is not terminated")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines[:-1]]
    try:
        end = lines.index("")
    except ValueError:
        raise SsdpDecodeError("no blank line after the headers") from None
    if any(lines[end:]):
        raise SsdpDecodeError("SSDP messages have no body")
    start, header_lines = lines[0], lines[1:end]
    if len(header_lines) > MAX_HEADERS:
        raise SsdpDecodeError(f"more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= _TCHAR:
            raise SsdpDecodeError(f"malformed header line {line[:40]!r}")
        value = value.strip(" \t")
        if any((ch < " " and ch != "\t") or ch == "\x7f" for ch in value):
            raise SsdpDecodeError(f"control character in header {name!r}")
        key = name.lower()
        if key in headers:
            raise SsdpDecodeError(f"duplicate header {name!r}")
        headers[key] = value
    return start, headers


def _target(headers: dict[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value:
        raise SsdpDecodeError(f"missing {name.upper()}")
    if len(value) > MAX_TARGET or not value.isascii() or not value.isprintable() or " " in value:
        raise SsdpDecodeError(f"malformed {name.upper()}")
    return value


def _mx(value: str) -> int | None:
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return None  # not a number, or not a plausible one: a bad MX
    # MX 0 is out of range (UDA 1.1: at least 1); answering within 1 s costs nothing and
    # keeps MX 0 floods from forcing instant bursts.
    return min(max(int(value), 1), MAX_MX)


def decode_search(data: bytes, *, multicast: bool) -> Search:
    """An M-SEARCH (§1.2). ``multicast``: the datagram was sent to an SSDP group (the server
    knows from the packet's destination address); otherwise it is a unicast search, which
    needs no MX."""
    start, headers = _parse(data)
    if start != "M-SEARCH * HTTP/1.1":
        raise SsdpDecodeError(f"not a search: {start[:40]!r}")
    if headers.get("man") != MAN_DISCOVER:
        raise SsdpDecodeError('MAN is missing or not "ssdp:discover"')
    st = _target(headers, "st")
    raw_mx = headers.get("mx")
    mx = _mx(raw_mx) if raw_mx is not None else None
    if multicast and mx is None:
        raise SsdpDecodeError("multicast search without a valid MX")
    return Search(
        st=st,
        mx=mx,
        unicast=not multicast,
        user_agent=headers.get("user-agent"),
        host=headers.get("host"),
    )


def _number(headers: dict[str, str], name: str, top: int, required: bool = True) -> int | None:
    value = headers.get(name)
    if value is None:
        if required:
            raise SsdpDecodeError(f"missing {name.upper()}")
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > top:
        raise SsdpDecodeError(f"malformed {name.upper()}")
    return int(value)


def _max_age(headers: dict[str, str]) -> int:
    value = headers.get("cache-control", "")
    directive, equals, seconds = value.partition("=")
    if directive.strip().lower() != "max-age" or not equals:
        raise SsdpDecodeError("CACHE-CONTROL without max-age")
    seconds = seconds.strip()
    if not seconds.isascii() or not seconds.isdigit() or len(seconds) > 10:
        raise SsdpDecodeError("malformed CACHE-CONTROL max-age")
    return int(seconds)


@dataclass(frozen=True, slots=True)
class SearchResponse:
    """A search response (§1.4) as read back by ``decode_response``."""

    st: str
    usn: str
    location: str
    max_age: int
    server: str
    boot_id: int | None
    config_id: int | None
    date: str | None
    nls: str | None


def decode_response(data: bytes) -> SearchResponse:
    """A search response (``HTTP/1.1 200 OK``), strictly: EXT, LOCATION, ST, USN and a
    CACHE-CONTROL max-age are required."""
    start, headers = _parse(data)
    if start != "HTTP/1.1 200 OK":
        raise SsdpDecodeError(f"not a search response: {start[:40]!r}")
    if headers.get("ext") != "":
        raise SsdpDecodeError("EXT missing or not empty")
    location = headers.get("location")
    if not location:
        raise SsdpDecodeError("missing LOCATION")
    return SearchResponse(
        st=_target(headers, "st"),
        usn=_target(headers, "usn"),
        location=location,
        max_age=_max_age(headers),
        server=headers.get("server", ""),
        boot_id=_number(headers, "bootid.upnp.org", _MAX_BOOT_ID, required=False),
        config_id=_number(headers, "configid.upnp.org", _MAX_CONFIG_ID, required=False),
        date=headers.get("date"),
        nls=headers.get("01-nls"),
    )


@dataclass(frozen=True, slots=True)
class Notify:
    """A NOTIFY (§1.6) as read back by ``decode_notify``. Fields a kind does not carry are
    None (byebye: no location, max_age or server; only update has next_boot_id)."""

    nts: str
    nt: str
    usn: str
    host: str
    location: str | None
    max_age: int | None
    server: str | None
    boot_id: int | None
    config_id: int | None
    next_boot_id: int | None


def decode_notify(data: bytes) -> Notify:
    """A ``NOTIFY * HTTP/1.1`` of kind ssdp:alive, ssdp:byebye or ssdp:update."""
    start, headers = _parse(data)
    if start != "NOTIFY * HTTP/1.1":
        raise SsdpDecodeError(f"not a NOTIFY: {start[:40]!r}")
    nts = headers.get("nts")
    if nts not in (NTS_ALIVE, NTS_BYEBYE, NTS_UPDATE):
        raise SsdpDecodeError("NTS missing or unknown")
    host = headers.get("host")
    if not host:
        raise SsdpDecodeError("missing HOST")
    location = headers.get("location")
    if nts != NTS_BYEBYE and not location:
        raise SsdpDecodeError("missing LOCATION")
    next_boot_id = _number(headers, "nextbootid.upnp.org", _MAX_BOOT_ID, nts == NTS_UPDATE)
    return Notify(
        nts=nts,
        nt=_target(headers, "nt"),
        usn=_target(headers, "usn"),
        host=host,
        location=location,
        max_age=_max_age(headers) if nts == NTS_ALIVE else None,
        server=headers.get("server"),
        boot_id=_number(headers, "bootid.upnp.org", _MAX_BOOT_ID, required=False),
        config_id=_number(headers, "configid.upnp.org", _MAX_CONFIG_ID, required=False),
        next_boot_id=next_boot_id,
    )


# -- encoding ----------------------------------------------------------------------------------


def _message(start: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start]
    for name, value in headers:
        if value and (not value.isascii() or not value.isprintable()):
            raise ValueError(f"{name}: refusing a value with control characters: {value!r}")
        lines.append(f"{name}: {value}" if value else f"{name}:")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _http_date(wall: float) -> str:
    return email.utils.formatdate(wall, usegmt=True)


def encode_search_response(
    identity: DeviceIdentity, answer: Answer, location: str, date: float
) -> bytes:
    """The unicast reply to a search (§1.4). ``location`` is ``identity.location_for(local)``
    for the local address the search arrived on; ``date`` is Unix time (for DATE)."""
    boot = str(identity.boot_id)
    return _message(
        "HTTP/1.1 200 OK",
        [
            ("CACHE-CONTROL", f"max-age={identity.max_age}"),
            ("DATE", _http_date(date)),
            ("EXT", ""),
            ("LOCATION", location),
            ("SERVER", identity.server),
            ("ST", answer.st),
            ("USN", answer.usn),
            ("BOOTID.UPNP.ORG", boot),
            ("CONFIGID.UPNP.ORG", str(identity.config_id)),
            ("OPT", OPT_VALUE),
            ("01-NLS", boot),
        ],
    )


def encode_alive(
    identity: DeviceIdentity, notification: Notification, host: str, location: str
) -> bytes:
    """``NOTIFY ssdp:alive`` (§1.6), with OPT/01-NLS as miniupnpd sends them."""
    boot = str(identity.boot_id)
    return _message(
        "NOTIFY * HTTP/1.1",
        [
            ("HOST", host),
            ("CACHE-CONTROL", f"max-age={identity.max_age}"),
            ("LOCATION", location),
            ("NT", notification.nt),
            ("NTS", NTS_ALIVE),
            ("SERVER", identity.server),
            ("USN", notification.usn),
            ("BOOTID.UPNP.ORG", boot),
            ("CONFIGID.UPNP.ORG", str(identity.config_id)),
            ("OPT", OPT_VALUE),
            ("01-NLS", boot),
        ],
    )


def encode_byebye(identity: DeviceIdentity, notification: Notification, host: str) -> bytes:
    """``NOTIFY ssdp:byebye`` (§1.6): no LOCATION, CACHE-CONTROL or SERVER."""
    return _message(
        "NOTIFY * HTTP/1.1",
        [
            ("HOST", host),
            ("NT", notification.nt),
            ("NTS", NTS_BYEBYE),
            ("USN", notification.usn),
            ("BOOTID.UPNP.ORG", str(identity.boot_id)),
            ("CONFIGID.UPNP.ORG", str(identity.config_id)),
        ],
    )


def encode_update(
    identity: DeviceIdentity,
    notification: Notification,
    host: str,
    location: str,
    next_boot_id: int,
) -> bytes:
    """``NOTIFY ssdp:update`` (§1.6): BOOTID is the old value (``identity.boot_id``),
    NEXTBOOTID the new one, strictly greater."""
    if not identity.boot_id < next_boot_id <= _MAX_BOOT_ID:
        raise ValueError(f"next_boot_id {next_boot_id} must be above {identity.boot_id}")
    return _message(
        "NOTIFY * HTTP/1.1",
        [
            ("HOST", host),
            ("LOCATION", location),
            ("NT", notification.nt),
            ("NTS", NTS_UPDATE),
            ("USN", notification.usn),
            ("BOOTID.UPNP.ORG", str(identity.boot_id)),
            ("CONFIGID.UPNP.ORG", str(identity.config_id)),
            ("NEXTBOOTID.UPNP.ORG", str(next_boot_id)),
        ],
    )

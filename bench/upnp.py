"""A small UPnP IGD client over raw sockets: one TCP connection per call, as upnpc does.

Kept minimal so that the client's own cost stays small next to the daemon's: the request is
formatted by hand, the response read up to its Content-Length (or the connection's end) and
parsed with the standard library's ElementTree.
"""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from bench.lab import ns_socket

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
CONTROL_NS = "urn:schemas-upnp-org:control-1-0"
DEVICE_NS = "urn:schemas-upnp-org:device-1-0"
LISTING_NS = "urn:schemas-upnp-org:gw:WANIPConnection"
WANIP_PREFIX = "urn:schemas-upnp-org:service:WANIPConnection:"
USER_AGENT = "portgate-bench/1.0 UPnP/2.0"
LISTING_FIELDS = (
    "NewRemoteHost",
    "NewExternalPort",
    "NewProtocol",
    "NewInternalPort",
    "NewInternalClient",
    "NewEnabled",
    "NewDescription",
    "NewLeaseTime",
)


class UpnpError(Exception):
    """No usable answer: the connection failed, was cut, or the answer was not HTTP."""


@dataclass(frozen=True, slots=True)
class SoapAnswer:
    status: int
    values: dict[str, str] = field(default_factory=dict)
    fault: int | None = None  # the UPnP errorCode of a fault
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.fault is None


def http_exchange(
    namespace: str, host: str, port: int, request: bytes, timeout: float = 30.0
) -> tuple[int, bytes, float]:
    """Send one request on a new connection; return (status, body, seconds from the connect
    to the end of the answer)."""
    sock = ns_socket(namespace)
    try:
        sock.settimeout(timeout)
        try:
            start = time.perf_counter()
            sock.connect((host, port))
            sock.sendall(request)
            status, body = _read_response(sock)
            return status, body, time.perf_counter() - start
        except OSError as error:
            raise UpnpError(f"{type(error).__name__}: {error}") from error
    finally:
        sock.close()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise UpnpError("the connection closed before the headers ended")
        buffer += chunk
    head, body = buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise UpnpError(f"not an HTTP answer: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, _read_chunked(sock, body)
    length = headers.get("content-length")
    if length is not None:
        wanted = int(length)
        chunks = [body]
        have = len(body)
        while have < wanted:
            chunk = sock.recv(max(65536, wanted - have))
            if not chunk:
                raise UpnpError(f"the connection closed after {have} of {wanted} body bytes")
            chunks.append(chunk)
            have += len(chunk)
        return status, b"".join(chunks)[:wanted]
    chunks = [body]
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return status, b"".join(chunks)


def _read_chunked(sock: socket.socket, data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        while b"\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                raise UpnpError("the connection closed inside a chunked body")
            data += more
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        while len(data) < size + 2:
            more = sock.recv(65536)
            if not more:
                raise UpnpError("the connection closed inside a chunk")
            data += more
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2 :]


@dataclass
class IgdClient:
    """Talks to one gateway's WANIPConnection from one LAN namespace."""

    namespace: str
    host: str
    port: int
    control_path: str = ""
    service_type: str = ""
    timeout: float = 30.0

    def discover(self) -> None:
        """Read the root description and find WANIPConnection's control URL."""
        request = (
            f"GET /rootDesc.xml HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"User-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n"
        ).encode()
        status, body, _ = http_exchange(self.namespace, self.host, self.port, request, self.timeout)
        if status != 200:
            raise UpnpError(f"GET /rootDesc.xml answered {status}")
        root = ET.fromstring(body)
        for service in root.iter(f"{{{DEVICE_NS}}}service"):
            kind = service.findtext(f"{{{DEVICE_NS}}}serviceType", "")
            if kind.startswith(WANIP_PREFIX):
                url = service.findtext(f"{{{DEVICE_NS}}}controlURL", "")
                if "://" in url:
                    url = "/" + url.split("://", 1)[1].split("/", 1)[1]
                self.control_path = url
                self.service_type = kind
                return
        raise UpnpError("no WANIPConnection service in the root description")

    def call(self, action: str, **args: object) -> SoapAnswer:
        """One action. The control URL is found again when it answers 404 (portgate makes
        new URLs at each start)."""
        if not self.control_path:
            self.discover()
        answer = self._call(action, args)
        if answer.status == 404:
            self.discover()
            answer = self._call(action, args)
        return answer

    def _call(self, action: str, args: dict[str, object]) -> SoapAnswer:
        inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in args.items())
        body = (
            '<?xml version="1.0"?>\r\n'
            f'<s:Envelope xmlns:s="{SOAP_ENV}" '
            's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{self.service_type}">{inner}</u:{action}>'
            "</s:Body></s:Envelope>\r\n"
        ).encode()
        request = (
            f"POST {self.control_path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            f"Content-Length: {len(body)}\r\n"
            'Content-Type: text/xml; charset="utf-8"\r\n'
            f'SOAPAction: "{self.service_type}#{action}"\r\n'
            "Connection: close\r\n\r\n"
        ).encode() + body
        status, data, seconds = http_exchange(
            self.namespace, self.host, self.port, request, self.timeout
        )
        return _soap_answer(status, data, seconds)

    # -- the actions the benchmark uses ------------------------------------------------------

    def add(
        self, port: int, client: str, internal: int, lease: int = 3600, desc: str = "bench"
    ) -> SoapAnswer:
        return self.call(
            "AddPortMapping",
            NewRemoteHost="",
            NewExternalPort=port,
            NewProtocol="TCP",
            NewInternalPort=internal,
            NewInternalClient=client,
            NewEnabled=1,
            NewPortMappingDescription=desc,
            NewLeaseDuration=lease,
        )

    def get(self, port: int) -> SoapAnswer:
        return self.call(
            "GetSpecificPortMappingEntry",
            NewRemoteHost="",
            NewExternalPort=port,
            NewProtocol="TCP",
        )

    def delete(self, port: int) -> SoapAnswer:
        return self.call(
            "DeletePortMapping", NewRemoteHost="", NewExternalPort=port, NewProtocol="TCP"
        )

    def generic(self, index: int) -> SoapAnswer:
        return self.call("GetGenericPortMappingEntry", NewPortMappingIndex=index)

    def list_all(self, wanted: int = 65535) -> SoapAnswer:
        return self.call(
            "GetListOfPortMappings",
            NewStartPort=0,
            NewEndPort=65535,
            NewProtocol="TCP",
            NewManage=1,
            NewNumberOfPorts=wanted,
        )

    def external_address(self) -> SoapAnswer:
        return self.call("GetExternalIPAddress")


def _soap_answer(status: int, data: bytes, seconds: float) -> SoapAnswer:
    if status == 404:
        return SoapAnswer(status, {}, None, seconds)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise UpnpError(f"HTTP {status} with a body that is not XML: {error}") from error
    body = root.find(f"{{{SOAP_ENV}}}Body")
    if body is None or len(body) == 0:
        raise UpnpError(f"HTTP {status} without a SOAP body")
    first = body[0]
    if first.tag == f"{{{SOAP_ENV}}}Fault":
        code = first.find(f".//{{{CONTROL_NS}}}errorCode")
        if code is None:
            code = next((e for e in first.iter() if e.tag.endswith("errorCode")), None)
        fault = int(code.text or 0) if code is not None else 0
        return SoapAnswer(status, {}, fault, seconds)
    values = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in first}
    return SoapAnswer(status, values, None, seconds)


@dataclass(frozen=True, slots=True)
class Listing:
    entries: int
    well_formed: bool
    problem: str = ""


def read_listing(text: str) -> Listing:
    """Count the PortMappingEntry elements of a NewPortListing and check each is complete."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        return Listing(0, False, f"not well-formed XML: {error}")
    if root.tag != f"{{{LISTING_NS}}}PortMappingList":
        return Listing(0, False, f"root element is {root.tag}")
    count = 0
    for entry in root:
        if entry.tag != f"{{{LISTING_NS}}}PortMappingEntry":
            return Listing(count, False, f"unexpected element {entry.tag}")
        names = [child.tag.rsplit("}", 1)[-1] for child in entry]
        if tuple(names) != LISTING_FIELDS:
            return Listing(count, False, f"entry {count} has fields {names}")
        count += 1
    return Listing(count, True)

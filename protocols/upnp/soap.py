"""SOAP 1.1 envelopes for UPnP control (protocols.md §3): the only XML parser of the daemon.

Pure: bytes in, frozen values out, and back. Hostile input is refused before and during
parsing (protocols.md §8.4): the size is capped first; the body must be UTF-8 (or declare
US-ASCII) and contain no DOCTYPE or ENTITY declaration; lxml runs with entity resolution, DTD
loading, network access and huge trees off; element count and depth are capped after parsing
(the size cap bounds the parser's own work). Every refusal is a ``SoapDecodeError`` carrying the
HTTP status to answer.

Responses and faults are built with lxml, so client-supplied strings are always escaped;
characters XML cannot carry are replaced and long fault descriptions are cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree  # type: ignore[import-untyped, unused-ignore]  # stubs: types-lxml

__all__ = [
    "CONTROL_NS",
    "ENCODING_STYLE",
    "MAX_BODY",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "SOAP_ENV_NS",
    "Cdata",
    "SoapAction",
    "SoapDecodeError",
    "SoapRequest",
    "decode_fault",
    "decode_request",
    "decode_response",
    "encode_fault",
    "encode_response",
    "parse_soapaction",
    "parse_xml",
    "xml_text",
]

SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
ENCODING_STYLE = "http://schemas.xmlsoap.org/soap/encoding/"
CONTROL_NS = "urn:schemas-upnp-org:control-1-0"

#: Largest request body we parse (protocols.md §8.4).
MAX_BODY = 16384
#: Envelope > Body > action > argument is 4 deep; a Header adds a little.
MAX_DEPTH = 12
MAX_ELEMENTS = 256
MAX_SOAPACTION = 512
#: Fault descriptions longer than this are cut (they may quote client input).
MAX_FAULT_DESCRIPTION = 200

XML_DECLARATION = b'<?xml version="1.0"?>\n'

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
_MARKUP_DECLARATION = re.compile(r"<!\s*(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.I)
_ACTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_UTF8_NAMES = {"utf-8", "utf8", "us-ascii", "ascii"}


def xml_text(value: str, limit: int | None = None) -> str:
    """``value`` made safe for an XML text node: characters XML 1.0 forbids become U+FFFD and
    the text is cut to ``limit`` characters. Escaping ``& < >`` is left to lxml."""
    if limit is not None and len(value) > limit:
        value = value[:limit]
    return _NOT_XML.sub("\ufffd", value)


class SoapDecodeError(Exception):
    """A request we refuse before it reaches an action; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SoapAction:
    """The SOAPACTION header: ``"<namespace>#<name>"``."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class SoapRequest:
    """One action call. ``arguments`` keeps the order and any duplicates the client sent; a
    value is None when the argument element had child elements (not a simple value)."""

    namespace: str
    action: str
    arguments: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class Cdata:
    """An out-argument value to send as a CDATA section (GetListOfPortMappings' listing:
    miniupnpc's parser reads CDATA but does not decode entities, protocols.md §3.7)."""

    value: str


# -- parsing ---------------------------------------------------------------------------------


def parse_soapaction(header: str | None) -> SoapAction:
    """Accept ``"urn:...:WANIPConnection:2#AddPortMapping"`` with or without the quotes."""
    if header is None:
        raise SoapDecodeError(400, "missing SOAPACTION header")
    text = header.strip()
    if len(text) > MAX_SOAPACTION:
        raise SoapDecodeError(400, "SOAPACTION header too long")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].strip()
    namespace, sep, name = text.rpartition("#")
    if not sep or not namespace or not _ACTION_NAME.fullmatch(name):
        raise SoapDecodeError(400, "malformed SOAPACTION header")
    if not namespace.isascii() or any(ch.isspace() or ch == '"' for ch in namespace):
        raise SoapDecodeError(400, "malformed SOAPACTION header")
    return SoapAction(namespace, name)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        dtd_validation=False,
        no_network=True,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
        recover=False,
    )


def parse_xml(data: bytes, max_size: int = MAX_BODY) -> etree._Element:
    """Parse an untrusted document under every rule of this module; returns the root."""
    if len(data) > max_size:
        raise SoapDecodeError(413, f"body of {len(data)} bytes exceeds {max_size}")
    if data.startswith((b"\xfe\xff", b"\xff\xfe", b"\x00")) or (
        len(data) > 1 and data[1:2] == b"\x00"
    ):
        raise SoapDecodeError(400, "the body must be UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SoapDecodeError(400, "the body is not valid UTF-8") from None
    declared = _DECLARATION.match(data.removeprefix(b"\xef\xbb\xbf"))
    if declared is not None and declared.group(1).decode().lower() not in _UTF8_NAMES:
        raise SoapDecodeError(400, "the body must be UTF-8")
    if _MARKUP_DECLARATION.search(text):
        raise SoapDecodeError(400, "DOCTYPE and entity declarations are not allowed")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError:
        raise SoapDecodeError(400, "the body is not well-formed XML") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise SoapDecodeError(400, "DOCTYPE is not allowed")
    _check_shape(root)
    return root


def _check_shape(root: etree._Element) -> None:
    count = 0
    stack: list[tuple[etree._Element, int]] = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        count += 1
        if count > MAX_ELEMENTS:
            raise SoapDecodeError(400, f"more than {MAX_ELEMENTS} elements")
        if depth > MAX_DEPTH:
            raise SoapDecodeError(400, f"elements nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in element if isinstance(child.tag, str))


def _elements(parent: etree._Element) -> list[etree._Element]:
    return [child for child in parent if isinstance(child.tag, str)]


def _body(root: etree._Element) -> etree._Element:
    if root.tag != f"{{{SOAP_ENV_NS}}}Envelope":
        raise SoapDecodeError(400, "the document is not a SOAP envelope")
    children = _elements(root)
    bodies = [child for child in children if child.tag == f"{{{SOAP_ENV_NS}}}Body"]
    if len(bodies) != 1:
        raise SoapDecodeError(400, "the envelope must hold exactly one Body")
    for child in children:
        if child is bodies[0]:
            break
        if child.tag != f"{{{SOAP_ENV_NS}}}Header":
            raise SoapDecodeError(400, "unexpected element before the Body")
    return bodies[0]


def decode_request(data: bytes) -> SoapRequest:
    """An action call from a control point's POST body."""
    body = _body(parse_xml(data))
    calls = _elements(body)
    if len(calls) != 1:
        raise SoapDecodeError(400, "the Body must hold exactly one action element")
    call = calls[0]
    name = etree.QName(call)
    if not name.namespace:
        raise SoapDecodeError(400, "the action element has no namespace")
    arguments: list[tuple[str, str | None]] = []
    for child in _elements(call):
        value = None if _elements(child) else (child.text or "")
        arguments.append((etree.QName(child).localname, value))
    return SoapRequest(name.namespace, name.localname, tuple(arguments))


def decode_response(data: bytes) -> tuple[str, str, dict[str, str]]:
    """(namespace, action, out-arguments) of a success response (tests, tools)."""
    body = _body(parse_xml(data, max_size=16 * MAX_BODY))
    [reply] = _elements(body)
    name = etree.QName(reply)
    if not name.localname.endswith("Response") or name.namespace is None:
        raise SoapDecodeError(400, "not an action response")
    outs = {etree.QName(child).localname: child.text or "" for child in _elements(reply)}
    return name.namespace, name.localname.removesuffix("Response"), outs


def decode_fault(data: bytes) -> tuple[int, str]:
    """(errorCode, errorDescription) of a UPnPError fault (tests, tools)."""
    body = _body(parse_xml(data))
    error = body.find(f"{{{SOAP_ENV_NS}}}Fault/detail/{{{CONTROL_NS}}}UPnPError")
    if error is None:
        raise SoapDecodeError(400, "not a UPnPError fault")
    code = error.findtext(f"{{{CONTROL_NS}}}errorCode") or ""
    description = error.findtext(f"{{{CONTROL_NS}}}errorDescription") or ""
    if not code.isdigit():
        raise SoapDecodeError(400, "errorCode is not a number")
    return int(code), description


# -- building --------------------------------------------------------------------------------


def _envelope() -> tuple[etree._Element, etree._Element]:
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={"s": SOAP_ENV_NS})
    envelope.set(f"{{{SOAP_ENV_NS}}}encodingStyle", ENCODING_STYLE)
    return envelope, etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")


def _serialize(root: etree._Element) -> bytes:
    return XML_DECLARATION + etree.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def encode_response(
    namespace: str, action: str, outs: Sequence[tuple[str, str | Cdata]] = ()
) -> bytes:
    """``<u:{action}Response xmlns:u="{namespace}">`` with one element per out-argument."""
    envelope, body = _envelope()
    reply = etree.SubElement(body, f"{{{namespace}}}{action}Response", nsmap={"u": namespace})
    for name, value in outs:
        element = etree.SubElement(reply, name)
        if isinstance(value, Cdata):
            text = xml_text(value.value)
            # "]]>" cannot sit inside CDATA; such text goes out entity-escaped instead.
            element.text = etree.CDATA(text) if "]]>" not in text else text
        else:
            element.text = xml_text(value)
    return _serialize(envelope)


def encode_fault(code: int, description: str) -> bytes:
    """The UPnPError fault of protocols.md §3.4 (sent with HTTP 500)."""
    envelope, body = _envelope()
    fault = etree.SubElement(body, f"{{{SOAP_ENV_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = "s:Client"
    etree.SubElement(fault, "faultstring").text = "UPnPError"
    detail = etree.SubElement(fault, "detail")
    error = etree.SubElement(detail, f"{{{CONTROL_NS}}}UPnPError", nsmap={None: CONTROL_NS})
    etree.SubElement(error, f"{{{CONTROL_NS}}}errorCode").text = str(code)
    etree.SubElement(error, f"{{{CONTROL_NS}}}errorDescription").text = xml_text(
        description, MAX_FAULT_DESCRIPTION
    )
    return _serialize(envelope)

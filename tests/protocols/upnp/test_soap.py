"""SOAP envelopes (protocols.md §3.1-3.4) and hostile XML (§8.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from protocols.upnp.soap import (
    MAX_BODY,
    Cdata,
    SoapDecodeError,
    decode_fault,
    decode_request,
    decode_response,
    encode_fault,
    encode_response,
    parse_soapaction,
    parse_xml,
)

WANIP2 = "urn:schemas-upnp-org:service:WANIPConnection:2"


def envelope(inner: str, *, prefix: str = "s", declaration: str = '<?xml version="1.0"?>') -> bytes:
    return (
        f"{declaration}\n"
        f'<{prefix}:Envelope xmlns:{prefix}="http://schemas.xmlsoap.org/soap/envelope/" '
        f'{prefix}:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f"<{prefix}:Body>{inner}</{prefix}:Body></{prefix}:Envelope>"
    ).encode()


def call(action: str = "GetExternalIPAddress", args: str = "", ns: str = WANIP2) -> str:
    return f'<u:{action} xmlns:u="{ns}">{args}</u:{action}>'


def refused(data: bytes) -> int:
    with pytest.raises(SoapDecodeError) as caught:
        decode_request(data)
    return caught.value.status


# -- well-formed requests ------------------------------------------------------------------


def test_a_request_gives_namespace_action_and_arguments_in_order() -> None:
    body = envelope(
        call(
            "AddPortMapping",
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>8080</NewExternalPort>"
            "<NewPortMappingDescription><![CDATA[a<b]]>&amp;c</NewPortMappingDescription>",
        )
    )
    request = decode_request(body)
    assert request.namespace == WANIP2
    assert request.action == "AddPortMapping"
    assert request.arguments == (
        ("NewRemoteHost", ""),
        ("NewExternalPort", "8080"),
        ("NewPortMappingDescription", "a<b&c"),
    )


def test_prefixes_are_arbitrary_and_qualified_arguments_are_accepted() -> None:
    body = envelope(
        f'<m:GetSpecificPortMappingEntry xmlns:m="{WANIP2}">'
        "<m:NewExternalPort>1</m:NewExternalPort></m:GetSpecificPortMappingEntry>",
        prefix="SOAP-ENV",
    )
    request = decode_request(body)
    assert request.action == "GetSpecificPortMappingEntry"
    assert request.arguments == (("NewExternalPort", "1"),)


def test_a_header_element_before_the_body_is_ignored_and_a_utf8_bom_accepted() -> None:
    body = (
        b"\xef\xbb\xbf<?xml version='1.0' encoding='UTF-8'?>"
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/>'
        b"<s:Body>" + call().encode() + b"</s:Body></s:Envelope>"
    )
    assert decode_request(body).action == "GetExternalIPAddress"


def test_an_argument_with_child_elements_has_no_value() -> None:
    request = decode_request(envelope(call(args="<NewProtocol><x/></NewProtocol>")))
    assert request.arguments == (("NewProtocol", None),)


# -- SOAPACTION ----------------------------------------------------------------------------


def test_soapaction_is_accepted_with_and_without_quotes() -> None:
    for header in (
        f'"{WANIP2}#AddPortMapping"',
        f"{WANIP2}#AddPortMapping",
        f' "{WANIP2}#AddPortMapping" ',
    ):
        parsed = parse_soapaction(header)
        assert (parsed.namespace, parsed.name) == (WANIP2, "AddPortMapping")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        '""',
        f'"{WANIP2}"',
        f'"{WANIP2}#"',
        '"#AddPortMapping"',
        f'"{WANIP2}#Add Port"',
        "x" * 600 + "#A",
        f'"{WANIP2} x#A"',
    ],
)
def test_a_missing_or_malformed_soapaction_is_a_bad_request(header: str | None) -> None:
    with pytest.raises(SoapDecodeError) as caught:
        parse_soapaction(header)
    assert caught.value.status == 400


# -- hostile input -------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<u:AddPortMapping xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:2">
<NewPortMappingDescription>&lol9;</NewPortMappingDescription></u:AddPortMapping>
</s:Body></s:Envelope>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<u:AddPortMapping xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:2">
<NewPortMappingDescription>&xxe;</NewPortMappingDescription></u:AddPortMapping>
</s:Body></s:Envelope>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE foo SYSTEM "http://198.51.100.1/evil.dtd">
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD])
def test_any_doctype_is_refused_before_parsing(data: bytes) -> None:
    assert refused(data) == 400


def test_a_doctype_is_refused_even_when_spelled_oddly() -> None:
    assert refused(b'<?xml version="1.0"?>\n<!DOCTYPE\n x><x/>') == 400
    assert refused(b"<!doctype x><x/>") == 400


def test_an_undeclared_entity_reference_is_refused() -> None:
    assert refused(envelope(call(args="<NewProtocol>&xxe;</NewProtocol>"))) == 400


def test_100000_nested_elements_are_refused_by_the_size_cap() -> None:
    data = b"<a>" * 100_000 + b"</a>" * 100_000
    assert refused(data) == 413


def test_deep_nesting_is_refused_even_below_the_size_cap() -> None:
    inner = "<x>" * 40 + "</x>" * 40
    assert refused(envelope(call(args=f"<NewProtocol>{inner}</NewProtocol>"))) == 400
    deep = b"<a>" * 100_000 + b"</a>" * 100_000
    with pytest.raises(SoapDecodeError) as caught:
        parse_xml(deep, max_size=len(deep))
    assert caught.value.status == 400


def test_too_many_elements_are_refused() -> None:
    args = "<A/>" * 300
    data = envelope(call(args=args))
    assert len(data) < MAX_BODY
    assert refused(data) == 400


def test_an_oversize_body_is_refused_before_parsing() -> None:
    data = envelope(
        call(args="<NewPortMappingDescription>" + "x" * MAX_BODY + "</NewPortMappingDescription>")
    )
    assert refused(data) == 413


@pytest.mark.parametrize(
    "data",
    [
        envelope(call()).decode().encode("utf-16"),
        envelope(call()).decode().encode("utf-16-le"),
        envelope(call(args="<NewPortMappingDescription>caf\xe9</NewPortMappingDescription>"))
        .decode()
        .encode("latin-1"),
        envelope(call(), declaration='<?xml version="1.0" encoding="ISO-8859-1"?>'),
        envelope(call(), declaration='<?xml version="1.0" encoding="UTF-16"?>'),
        b"\xff\xfe\x00\x00",
    ],
)
def test_bodies_that_are_not_utf8_are_refused(data: bytes) -> None:
    assert refused(data) == 400


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml",
        b"<a>",
        envelope("").replace(b"Envelope", b"Envelop"),
        b'<x:Envelope xmlns:x="urn:other"><x:Body/></x:Envelope>',
        envelope(""),
        envelope(call() + call()),
        envelope("<GetExternalIPAddress/>"),
        envelope(call()).replace(b"</s:Envelope>", b"<s:Body/></s:Envelope>"),
        envelope(call()).replace(b"<s:Body>", b"<junk/><s:Body>"),
    ],
)
def test_documents_that_are_not_one_soap_call_are_refused(data: bytes) -> None:
    assert refused(data) == 400


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_the_decode_error(data: bytes) -> None:
    try:
        decode_request(data)
    except SoapDecodeError as error:
        assert error.status in (400, 413)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_argument_text_survives_a_round_trip(text: str) -> None:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    try:
        request = decode_request(envelope(call(args=f"<A>{escaped}</A>")))
    except SoapDecodeError:
        return  # characters XML cannot carry: refused as a whole, never half-read
    assert request.arguments == (("A", text.replace("\r\n", "\n").replace("\r", "\n")),)


# -- responses and faults ------------------------------------------------------------------


def test_a_response_escapes_client_strings_and_reads_back() -> None:
    data = encode_response(
        WANIP2,
        "GetSpecificPortMappingEntry",
        [
            ("NewInternalPort", "80"),
            ("NewPortMappingDescription", "</u:x><evil>&amp;\x01"),
            ("NewEnabled", ""),
        ],
    )
    assert data.startswith(b'<?xml version="1.0"?>')
    namespace, action, outs = decode_response(data)
    assert (namespace, action) == (WANIP2, "GetSpecificPortMappingEntry")
    assert outs == {
        "NewInternalPort": "80",
        "NewPortMappingDescription": "</u:x><evil>&amp;\ufffd",
        "NewEnabled": "",
    }
    root = etree.fromstring(data)
    reply = root[0][0]
    assert reply.tag == f"{{{WANIP2}}}GetSpecificPortMappingEntryResponse"
    assert [child.tag for child in reply] == [
        "NewInternalPort",
        "NewPortMappingDescription",
        "NewEnabled",
    ]


def test_cdata_values_go_out_as_cdata_and_fall_back_to_escaping() -> None:
    listing = '<p:PortMappingList xmlns:p="urn:x"><p:A>x &amp; y</p:A></p:PortMappingList>'
    data = encode_response(WANIP2, "GetListOfPortMappings", [("NewPortListing", Cdata(listing))])
    assert b"<NewPortListing><![CDATA[" + listing.encode() + b"]]></NewPortListing>" in data
    assert decode_response(data)[2]["NewPortListing"] == listing
    tricky = encode_response(WANIP2, "X", [("V", Cdata("a]]>b"))])
    assert decode_response(tricky)[2]["V"] == "a]]>b"


def test_a_fault_carries_code_and_escaped_truncated_description() -> None:
    data = encode_fault(718, "ConflictInMappingEntry")
    assert decode_fault(data) == (718, "ConflictInMappingEntry")
    root = etree.fromstring(data)
    fault = root[0][0]
    assert fault.tag == "{http://schemas.xmlsoap.org/soap/envelope/}Fault"
    assert fault.findtext("faultcode") == "s:Client"
    assert fault.findtext("faultstring") == "UPnPError"
    hostile = encode_fault(402, "<x>&" + "y" * 5000 + "\x00")
    code, description = decode_fault(hostile)
    assert code == 402
    assert description.startswith("<x>&y")
    assert len(description) == 200

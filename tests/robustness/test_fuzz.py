"""Bounded fuzzing of every codec (issue 7), with Hypothesis, over the targets of
``fuzz.targets``: random bytes, mutations of valid messages (bit flips, cut, spliced, repeated
and overwritten spans, rewritten length fields) and, for SOAP, documents built from hostile
XML pieces. Only the codec's own decode error may escape a decoder, and what decodes must
re-encode to itself and yield valid answers.

``make test`` runs a short, derandomized form (the same examples on every run, a few seconds
per codec). For a longer run set ``PORTGATE_FUZZ_EXAMPLES`` (e.g. 200000) and, to explore new
inputs each time, ``PORTGATE_FUZZ_RANDOM=1``; coverage-guided fuzzing with atheris is
``python -m fuzz`` (docs/fuzzing.md).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS, Target

#: Examples per target in the short form (each target runs in about a second or two).
SHORT_EXAMPLES = 400
EXAMPLES = int(os.environ.get("PORTGATE_FUZZ_EXAMPLES", SHORT_EXAMPLES))
DERANDOMIZE = os.environ.get("PORTGATE_FUZZ_RANDOM", "") not in ("1", "true", "yes")

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=DERANDOMIZE,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_INTERESTING = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 2**31, 2**32 - 1)


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...], max_size: int) -> bytes:
    """A valid seed, damaged the ways real parsers break: flipped bits, a cut, a span
    repeated or spliced from another seed, integers overwritten with edge values (length
    fields among them)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.integers(0, 6))
        at = draw(st.integers(0, max(0, len(data))))
        if action == 0 and data:
            index = at % len(data)
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif action == 1:
            del data[at:]
        elif action == 2 and data:
            end = draw(st.integers(at, len(data)))
            data[at:at] = data[at:end] * draw(st.integers(1, 8))
        elif action == 3:
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))) :]
        elif action == 4:
            data[at:at] = draw(st.binary(max_size=16))
        elif action == 5 and len(data) >= 2:
            size = draw(st.sampled_from((1, 2, 4)))
            value = draw(st.sampled_from(_INTERESTING)) & (256**size - 1)
            index = at % max(1, len(data) - size + 1)
            data[index : index + size] = value.to_bytes(size, "big")
        elif action == 6 and data:
            end = draw(st.integers(at, len(data)))
            del data[at:end]
    return bytes(data[:max_size])


_XML_PIECES = (
    "<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'>",
    "</s:Envelope>",
    "<s:Body>",
    "</s:Body>",
    "<s:Header>",
    "</s:Header>",
    "<u:AddPortMapping xmlns:u='urn:schemas-upnp-org:service:WANIPConnection:2'>",
    "</u:AddPortMapping>",
    "<NewExternalPort>",
    "</NewExternalPort>",
    "<a>",
    "</a>",
    "<a/>",
    "<x:a xmlns:x='urn:x'>",
    "</x:a>",
    "<a b='1' b='2'>",
    "<!DOCTYPE s:Envelope>",
    "<!DOCTYPE a [<!ENTITY e 'xx'>]>",
    '<!ENTITY x SYSTEM "file:///etc/passwd">',
    "<!ENTITY % p 'x'>%p;",
    "&e;",
    "&x;",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "&#65;",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "<?xml version='1.0' encoding='UTF-16'?>",
    '<?xml version="1.0"?>',
    "<?pi data?>",
    "<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' href='file:///etc/passwd'/>",
    "\ufeff",
    "\x00",
    "\ud800",
    "\u202e",
    "é",
    "]]>",
    "<",
    ">",
    "'",
    '"',
)


@st.composite
def xml_documents(draw: st.DrawFn) -> bytes:
    """Documents assembled from SOAP scaffolding and hostile XML pieces, in any order, with
    text between them; sometimes deeply nested."""
    parts = draw(
        st.lists(
            st.one_of(st.sampled_from(_XML_PIECES), st.text(max_size=12)),
            max_size=40,
        )
    )
    depth = draw(st.integers(0, 400))
    if depth:
        middle = draw(st.integers(0, len(parts)))
        parts[middle:middle] = ["<a>"] * depth + ["</a>"] * depth
    encoding = draw(st.sampled_from(("utf-8", "utf-8", "utf-16", "latin-1")))
    return "".join(parts).encode(
        encoding, errors="surrogatepass" if encoding == "utf-8" else "replace"
    )


@st.composite
def pcp_with_options(draw: st.DrawFn) -> bytes:
    """A MAP request header and body with a run of option TLVs of any code and length."""
    target = TARGETS["pcp-request"]
    head = bytearray(target.seeds[1][: 1 + 60])
    for _ in range(draw(st.integers(0, 8))):
        code = draw(st.sampled_from((1, 2, 3, 128, 129, 130, 0, 127, 255)))
        payload = draw(st.binary(max_size=40))
        declared = draw(st.one_of(st.just(len(payload)), st.integers(0, 0xFFFF)))
        head += struct.pack("!BBH", code, 0, declared) + payload
    return bytes(head)


def inputs(target: Target) -> st.SearchStrategy[bytes]:
    strategies = [
        st.binary(max_size=target.max_size),
        mutated(target.seeds, target.max_size),
    ]
    if target.name == "soap-request":
        strategies.append(xml_documents())
    if target.name == "pcp-request":
        strategies.append(pcp_with_options())
    return st.one_of(*strategies)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_only_the_codecs_own_error_escapes(name: str) -> None:
    target = TARGETS[name]

    @FUZZ_SETTINGS
    @given(inputs(target))
    def fuzz(data: bytes) -> None:
        target.run(data)

    fuzz()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_is_accepted_by_its_target(name: str) -> None:
    """The seeds are what the mutations start from (and atheris' initial corpus)."""
    target = TARGETS[name]
    for seed in target.seeds:
        target.run(seed)
        assert len(seed) <= target.max_size

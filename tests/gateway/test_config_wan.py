"""``wan.stun`` and ``wan.private_address``: values, defaults, one-line errors, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import (
    ConfigError,
    StunConfig,
    WanConfig,
    dump_config,
    parse_config,
    parse_stun_server,
)

LAN = "lan: [{interface: br-lan}]\n"


def wan(text: str) -> WanConfig:
    return parse_config(f"wan: {{interface: eth0, {text}}}\n" + LAN).wan


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"wan: {{interface: eth0, {text}}}\n" + LAN, "x.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_no_stun_and_warn_by_default() -> None:
    config = parse_config("wan: {interface: eth0}\n" + LAN).wan
    assert config.stun is None
    assert config.private_address == "warn"


def test_a_stun_server_with_its_default_port_and_interval() -> None:
    config = wan("stun: {server: 198.51.100.2}")
    assert config.stun == StunConfig(server="198.51.100.2", interval=300)
    assert (config.stun.host, config.stun.port) == ("198.51.100.2", 3478)
    assert config.stun.address_text == "198.51.100.2:3478"


def test_a_named_stun_server_with_a_port_and_refuse() -> None:
    config = wan('stun: {server: "stun.example.net:19302", interval: 60}, private_address: refuse')
    assert config.stun is not None
    assert (config.stun.host, config.stun.port, config.stun.interval) == (
        "stun.example.net",
        19302,
        60,
    )
    assert config.private_address == "refuse"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            'stun: {server: "[2001:db8::1]:3478"}',
            "x.yaml: wan.stun.server: expected HOST or HOST:PORT with an IPv4 address or a host "
            'name, like "stun.example.net" or "198.51.100.2:3478", got \'[2001:db8::1]:3478\': '
            "an IPv6 server cannot tell what the WAN's IPv4 address looks like from outside",
            id="ipv6",
        ),
        pytest.param(
            'stun: {server: "stun.example.net:0"}',
            "x.yaml: wan.stun.server: expected HOST or HOST:PORT with an IPv4 address or a host "
            'name, like "stun.example.net" or "198.51.100.2:3478" (port 1-65535), '
            "got 'stun.example.net:0'",
            id="port-0",
        ),
        pytest.param(
            'stun: {server: "stun.example.net:x"}',
            "(port 1-65535), got 'stun.example.net:x'",
            id="port-text",
        ),
        pytest.param('stun: {server: "1.2.3"}', "got '1.2.3'", id="not-quite-an-address"),
        pytest.param('stun: {server: "stun example"}', "got 'stun example'", id="space"),
        pytest.param(
            'stun: {server: "-stun.example.net"}', "got '-stun.example.net'", id="leading-dash"
        ),
        pytest.param(
            "stun: {server: ''}",
            "x.yaml: wan.stun.server: expected a non-empty string, got ''",
            id="empty",
        ),
        pytest.param("stun: {}", "x.yaml: wan.stun.server: missing required key", id="no-server"),
        pytest.param(
            "stun: {server: x, interval: 10}",
            "x.yaml: wan.stun.interval: expected an integer from 30 to 86400, got 10",
            id="interval-too-short",
        ),
        pytest.param(
            "stun: {server: x, interval: 100000}",
            "x.yaml: wan.stun.interval: expected an integer from 30 to 86400, got 100000",
            id="interval-too-long",
        ),
        pytest.param(
            "stun: {server: x, every: 10}",
            "x.yaml: wan.stun.every: unknown key (expected one of: server, interval)",
            id="unknown-key",
        ),
        pytest.param(
            "stun: stun.example.net",
            "x.yaml: wan.stun: expected a mapping or null, got 'stun.example.net'",
            id="shorthand",
        ),
        pytest.param(
            "private_address: deny",
            "x.yaml: wan.private_address: expected one of 'refuse', 'warn', got 'deny'",
            id="private-address",
        ),
    ],
)
def test_bad_values_give_one_line_naming_the_key(text: str, message: str) -> None:
    found = error_of(text)
    assert found == message or (not message.startswith("x.yaml") and message in found), found


def test_a_bad_server_also_fails_direct_construction() -> None:
    with pytest.raises(ValueError, match="server: expected HOST"):
        StunConfig(server="[::1]")


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z][a-z0-9]{0,8}){1,3}", fullmatch=True),
)


@given(hosts, st.none() | st.integers(1, 65535))
def test_stun_server_text_parses(host: str, port: int | None) -> None:
    text = host if port is None else f"{host}:{port}"
    assert parse_stun_server(text) == (host, 3478 if port is None else port)


@given(
    st.none() | st.builds(StunConfig, server=hosts, interval=st.integers(30, 86400)),
    st.sampled_from(["warn", "refuse"]),
)
def test_the_wan_section_round_trips_through_dump(stun: StunConfig | None, policy: str) -> None:
    config = parse_config("wan: {interface: eth0}\n" + LAN)
    changed = config.__class__(
        wan=WanConfig(interface="eth0", stun=stun, private_address=policy),  # type: ignore[arg-type]
        lan=config.lan,
    )
    assert parse_config(dump_config(changed)) == changed

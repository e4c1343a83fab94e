"""The ``limits`` section: its defaults are the front-ends' own, bad values are one line naming
the key, and the daemon hands every key to the front-end it belongs to."""

from __future__ import annotations

import msgspec
import pytest

from gateway.config import ConfigError, LimitsConfig, parse_config
from gateway.daemon import upnp_limits
from protocols.udp5351 import SOURCE_BURST, SOURCE_RATE, SourceLimiter
from protocols.upnp.http import UpnpLimits

BASE = "wan: {interface: eth0}\nlan: [{interface: br-lan}]\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + text, "x.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_defaults_are_the_front_ends_defaults() -> None:
    limits = parse_config(BASE).limits
    assert limits == LimitsConfig()
    assert upnp_limits(limits) == UpnpLimits()
    assert (limits.udp5351_requests_per_second, limits.udp5351_request_burst) == (
        SOURCE_RATE,
        SOURCE_BURST,
    )


def test_every_key_reaches_its_front_end() -> None:
    limits = parse_config(
        BASE + "limits:\n"
        "  http_connections_per_client: 3\n"
        "  http_connections: 30\n"
        "  http_requests_per_second: 7\n"
        "  http_request_burst: 70\n"
        "  gena_subscriptions_per_client: 4\n"
        "  gena_subscriptions: 40\n"
        "  udp5351_requests_per_second: 9\n"
        "  udp5351_request_burst: 90\n"
    ).limits
    assert upnp_limits(limits) == UpnpLimits(
        connections_per_client=3,
        connections=30,
        requests_per_second=7,
        request_burst=70,
        subscriptions_per_client=4,
        subscriptions=40,
    )
    assert set(msgspec.structs.asdict(limits)) == {
        "http_connections_per_client",
        "http_connections",
        "http_requests_per_second",
        "http_request_burst",
        "gena_subscriptions_per_client",
        "gena_subscriptions",
        "udp5351_requests_per_second",
        "udp5351_request_burst",
    }
    limiter = SourceLimiter(lambda: 0.0)
    limiter.configure(rate=limits.udp5351_requests_per_second, burst=limits.udp5351_request_burst)
    assert (limiter.rate, limiter.burst) == (9, 90)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "limits: {http_connections: 0}",
            "x.yaml: limits.http_connections: expected a number of connections from 1 to 4096,"
            " got 0",
        ),
        (
            "limits: {http_connections_per_client: 2000}",
            "x.yaml: limits.http_connections_per_client: expected a number of connections from"
            " 1 to 1024, got 2000",
        ),
        (
            "limits: {http_requests_per_second: 2.5}",
            "x.yaml: limits.http_requests_per_second: expected requests per second, an integer"
            " from 1 to 1000000, got 2.5",
        ),
        (
            "limits: {http_request_burst: many}",
            "x.yaml: limits.http_request_burst: expected a number of requests from 1 to 1000000,"
            " got 'many'",
        ),
        (
            "limits: {gena_subscriptions: -1}",
            "x.yaml: limits.gena_subscriptions: expected a number of subscriptions from 1 to"
            " 16384, got -1",
        ),
        (
            "limits: {gena_subscriptions_per_client: true}",
            "x.yaml: limits.gena_subscriptions_per_client: expected a number of subscriptions"
            " from 1 to 1024, got true",
        ),
        (
            "limits: {udp5351_requests_per_second: 0}",
            "x.yaml: limits.udp5351_requests_per_second: expected requests per second, an"
            " integer from 1 to 1000000, got 0",
        ),
        (
            "limits: {udp5351_request_burst: null}",
            "x.yaml: limits.udp5351_request_burst: expected a number of requests from 1 to"
            " 1000000, got null",
        ),
        (
            "limits: {http_connections_per_client: 65}",
            "x.yaml: limits.http_connections_per_client: expected at most http_connections"
            " (64), got 65",
        ),
        (
            "limits: {gena_subscriptions: 8}",
            "x.yaml: limits.gena_subscriptions_per_client: expected at most gena_subscriptions"
            " (8), got 16",
        ),
        (
            "limits: {http_rate: 5}",
            "x.yaml: limits.http_rate: unknown key (expected one of: http_connections_per_client,"
            " http_connections, http_requests_per_second, http_request_burst,"
            " gena_subscriptions_per_client, gena_subscriptions, udp5351_requests_per_second,"
            " udp5351_request_burst)",
        ),
        ("limits: 100", "x.yaml: limits: expected a mapping, got 100"),
    ],
)
def test_a_bad_limit_is_one_line_naming_the_key(text: str, message: str) -> None:
    assert error_of(text) == message


def test_the_mapping_quotas_stay_under_policy() -> None:
    config = parse_config(BASE + "policy: {max_mappings_per_client: 5, max_mappings: 50}\n")
    assert (config.policy.max_mappings_per_client, config.policy.max_mappings) == (5, 50)
    assert "unknown key" in error_of("limits: {max_mappings: 5}")

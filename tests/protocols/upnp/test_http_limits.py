"""The UPnP HTTP side's caps (issue 7): requests per second per client (503 with Retry-After),
connections and GENA subscriptions per client and in all, each refusal logged once per client
per minute. A real twisted.web site on fake transports over the real gateway core, with the
time on the rig's task.Clock."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address as TcpV4
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure

from protocols.ratelimit import DEFAULT_MAX_KEYS
from protocols.upnp.description import UrlLayout
from protocols.upnp.http import UpnpFrontEnd, UpnpLimits
from tests.gateway.conftest import LAN
from tests.protocols.upnp.igd_rig import CLIENT, OTHER, Rig
from tests.protocols.upnp.test_http import PREFIX, Http, Response

EVT = f"/{PREFIX}/evt/IPConn"


def limited(tmp_path: Path, **limits: Any) -> Http:
    """An ``Http`` whose front-end was built with these limits."""
    http = Http(Rig(tmp_path))
    rig = http.rig
    http.front.stop()
    http.front = UpnpFrontEnd(
        rig.reactor,
        rig.service,
        rig.settings,
        LAN.contains,
        layout=UrlLayout(PREFIX),
        limits=UpnpLimits(**limits),
    )
    http.front.events._send_notify = lambda message: Deferred()  # type: ignore[assignment]
    http.site = http.front.site
    return http


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    with capturedLogs() as events:
        yield events


def lines(events: list[LogEvent], start: str) -> list[str]:
    return [text for text in map(formatEvent, events) if text.startswith(start)]


def closed(response: Response) -> Response:
    """The client hangs up once it has its answer (as upnpc does), freeing the slot."""
    if not response.transport.disconnected:
        response.channel.connectionLost(Failure(ConnectionDone()))
    return response


def ask(http: Http, peer: str = CLIENT) -> Response:
    return closed(http.soap("GetExternalIPAddress", peer=peer))


def request(http: Http, method: str, path: str, **kw: Any) -> Response:
    return closed(http.request(method, path, **kw))


def subscribe(http: Http, peer: str) -> Response:
    return request(
        http,
        "SUBSCRIBE",
        EVT,
        headers={"Callback": f"<http://{peer}:6000/evt>", "NT": "upnp:event"},
        peer=peer,
    )


# -- requests per second --------------------------------------------------------------------


def test_over_the_rate_a_client_gets_503_with_retry_after_and_the_connection_closes(
    tmp_path: Path,
) -> None:
    http = limited(tmp_path, requests_per_second=2, request_burst=3)
    assert [ask(http).status for _ in range(3)] == [200, 200, 200]
    refused = ask(http)
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert refused.headers["content-length"] == "0"
    assert refused.body == b""
    assert refused.transport.disconnecting


def test_retry_after_says_when_the_next_token_comes(tmp_path: Path) -> None:
    http = limited(tmp_path, requests_per_second=0.1, request_burst=1)
    assert ask(http).status == 200
    assert ask(http).headers["retry-after"] == "10"
    http.rig.reactor.advance(6)
    assert ask(http).headers["retry-after"] == "4"


def test_tokens_refill_at_the_configured_rate(tmp_path: Path) -> None:
    http = limited(tmp_path, requests_per_second=5, request_burst=10)
    statuses = [ask(http).status for _ in range(30)]
    assert statuses.count(200) == 10
    http.rig.reactor.advance(1.0)
    statuses = [ask(http).status for _ in range(30)]
    assert statuses.count(200) == 5
    http.rig.reactor.advance(100.0)  # refilled, but never beyond the burst
    statuses = [ask(http).status for _ in range(30)]
    assert statuses.count(200) == 10


def test_another_client_is_not_affected(tmp_path: Path) -> None:
    http = limited(tmp_path, requests_per_second=1, request_burst=2)
    for _ in range(50):
        ask(http)
    assert ask(http).status == 503
    assert ask(http, OTHER).status == 200
    assert ask(http, OTHER).status == 200
    assert ask(http).status == 503


def test_every_kind_of_request_takes_a_token(tmp_path: Path) -> None:
    http = limited(tmp_path, requests_per_second=1, request_burst=4)
    assert request(http, "GET", "/rootDesc.xml").status == 200
    assert request(http, "GET", "/no/such/path").status == 404
    assert request(http, "BREW", "/rootDesc.xml").status == 501
    assert subscribe(http, CLIENT).status == 200
    assert request(http, "GET", "/rootDesc.xml").status == 503
    assert subscribe(http, CLIENT).status == 503
    assert ask(http).status == 503


def test_pipelined_requests_past_the_limit_are_not_served(tmp_path: Path) -> None:
    http = limited(tmp_path, requests_per_second=1, request_burst=1)
    host = http.host()
    get = f"GET /rootDesc.xml HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    response = http.raw(get * 5)
    data = response.transport.value()
    assert data.count(b"HTTP/1.1 200 ") == 1
    assert data.count(b"HTTP/1.1 503 ") == 1
    assert response.transport.disconnecting


def test_the_refusal_is_logged_once_per_client_per_minute(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    http = limited(tmp_path, requests_per_second=1, request_burst=1)
    for _ in range(20):
        ask(http)
        ask(http, OTHER)
    refused = lines(logged, "refused UPnP HTTP requests")
    assert refused == [
        f"refused UPnP HTTP requests from {client}: over 1 per second "
        "(limits.http_requests_per_second), answering 503"
        for client in (CLIENT, OTHER)
    ]
    http.rig.reactor.advance(59)
    for _ in range(5):
        ask(http)
    assert len(lines(logged, "refused UPnP HTTP requests")) == 2
    http.rig.reactor.advance(2)
    for _ in range(5):
        ask(http)
    assert len(lines(logged, "refused UPnP HTTP requests")) == 3
    assert not [event for event in logged if event.get("log_failure") is not None]


def test_the_table_of_sources_is_bounded(tmp_path: Path) -> None:
    http = limited(tmp_path, requests_per_second=1, request_burst=1)
    for index in range(DEFAULT_MAX_KEYS + 100):
        peer = f"2001:db8:1::{index + 0x100:x}"
        assert request(http, "GET", "/no/such/path", peer=peer).status == 404
    assert len(http.front.requests) == DEFAULT_MAX_KEYS
    assert len(http.front.refusals) == 0


def test_the_defaults_let_a_walk_of_a_full_default_table_through(tmp_path: Path) -> None:
    """8,192 requests at once (no time passes: the fastest client there could be): the
    burst alone covers a GetGenericPortMappingEntry walk of ``policy.max_mappings``."""
    http = Http(Rig(tmp_path))
    limits = http.front.limits
    assert limits == UpnpLimits()
    assert limits.request_burst >= 8192 + 1  # every entry, then the 713 that ends the walk
    client = ip_address(CLIENT)
    assert http.front.requests.take(client, 8192 + 1, http.front.now()) == 8192 + 1
    assert ask(http).status == 200  # and there is room to spare


# -- connections ----------------------------------------------------------------------------


def test_configured_connection_caps_apply(tmp_path: Path, logged: list[LogEvent]) -> None:
    http = limited(tmp_path, connections_per_client=2, connections=3)
    site = http.site
    mine = TcpV4("TCP", CLIENT, 1)
    held = [site.buildProtocol(mine) for _ in range(2)]
    assert all(channel is not None for channel in held)
    assert site.buildProtocol(mine) is None
    for channel in held:
        channel.makeConnection(StringTransport(peerAddress=mine))  # type: ignore[union-attr]
    other = site.buildProtocol(TcpV4("TCP", OTHER, 1))
    assert other is not None  # the third in all
    third = TcpV4("TCP", "192.168.1.30", 1)
    assert site.buildProtocol(third) is not None  # CLIENT's oldest made room
    assert held[0].transport.disconnected  # type: ignore[union-attr]
    assert site.buildProtocol(third) is None  # three in all, and nobody holds more than it
    assert lines(logged, "refused a UPnP HTTP connection") == [
        f"refused a UPnP HTTP connection from {CLIENT}: it holds 2 already "
        "(limits.http_connections_per_client)",
        "refused a UPnP HTTP connection from 192.168.1.30: 3 are open in all "
        "(limits.http_connections)",
    ]
    for _ in range(10):
        site.buildProtocol(third)
    assert len(lines(logged, "refused a UPnP HTTP connection")) == 2  # once a minute


def test_set_limits_applies_to_what_comes_next(tmp_path: Path) -> None:
    http = limited(tmp_path, connections_per_client=8, request_burst=100)
    site = http.site
    mine = TcpV4("TCP", CLIENT, 1)
    held = [site.buildProtocol(mine) for _ in range(3)]
    for channel in held:
        channel.makeConnection(StringTransport(peerAddress=mine))  # type: ignore[union-attr]
    http.front.set_limits(
        UpnpLimits(
            connections_per_client=2,
            requests_per_second=1,
            request_burst=1,
            subscriptions_per_client=1,
        )
    )
    assert all(channel is not None for channel in held)  # open ones stay
    assert site.buildProtocol(mine) is None
    for channel in held:
        channel.connectionLost(Failure(ConnectionDone()))  # type: ignore[union-attr]
    assert http.front.events.subscriptions.per_source == 1
    assert ask(http, OTHER).status == 200
    assert ask(http, OTHER).status == 503
    assert ask(http).status == 200  # its 100 tokens are capped at the new burst of 1
    assert ask(http).status == 503


# -- GENA subscriptions ---------------------------------------------------------------------


def test_configured_subscription_caps_apply(tmp_path: Path, logged: list[LogEvent]) -> None:
    http = limited(tmp_path, subscriptions_per_client=2, subscriptions=3)
    assert [subscribe(http, CLIENT).status for _ in range(3)] == [200, 200, 503]
    assert subscribe(http, OTHER).status == 200
    assert subscribe(http, OTHER).status == 503  # three in all
    assert subscribe(http, CLIENT).status == 503
    assert lines(logged, "refused a GENA subscription") == [
        f"refused a GENA subscription from {CLIENT}: it holds 2 subscriptions already "
        "(limits.gena_subscriptions_per_client)",
        f"refused a GENA subscription from {OTHER}: 3 subscriptions in all already "
        "(limits.gena_subscriptions)",
    ]
    http.rig.reactor.advance(61)
    assert subscribe(http, CLIENT).status == 503
    assert len(lines(logged, "refused a GENA subscription")) == 3


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        UpnpLimits(requests_per_second=0)
    with pytest.raises(ValueError):
        UpnpLimits(connections=0)

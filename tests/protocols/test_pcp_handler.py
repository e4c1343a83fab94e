"""The PCP handler against the real gateway core (service, table, memory backend, store),
including the cross-protocol cases of protocols.md §7.2 and Mapping Updates (§14.2)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from gateway.errors import Reason
from gateway.model import Endpoint, Kind, Origin, Owner, Proto, RemoteFilter
from gateway.ports import Listener
from gateway.requests import Granted, MapPort, Request, Result
from protocols.pcp.codec import (
    LONG_LIFETIME,
    MAP_SIZE,
    SHORT_LIFETIME,
    UINT32_MAX,
    MapData,
    Opcode,
    PeerData,
    Response,
    ResultCode,
    decode_response,
    encode_request,
)
from protocols.pcp.codec import Request as PcpRequest
from protocols.pcp.handler import PCP_RESULT_FOR_REASON, UPDATE_DELAYS, PcpHandler
from protocols.pcp.options import Filter, OptionCode, Options, encode_option
from tests.protocols.gateway_rig import (
    CLIENT,
    CLIENT_V6,
    EXTERNAL,
    NEW_EXTERNAL,
    OTHER,
    Rig,
)

NONCE = b"N" * 12
OTHER_NONCE = b"O" * 12
PEER = IPv4Address("198.51.100.20")

IPAddress = IPv4Address | IPv6Address


class PcpClient:
    """A PCP client (the codec's client side) talking to a handler; unsolicited datagrams the
    handler sends land in ``sent`` with the time they were sent."""

    def __init__(self, rig: Rig, handler: PcpHandler | None = None) -> None:
        self.rig = rig
        self.sent: list[tuple[float, bytes, tuple[str, int]]] = []
        self.handler = handler or PcpHandler(
            rig.service, scheduler=rig.reactor, send=self._capture, max_filters=2
        )

    def _capture(self, data: bytes, to: tuple[str, int]) -> None:
        self.sent.append((self.rig.reactor.seconds(), data, to))

    def raw(self, data: bytes, source: IPAddress = CLIENT, port: int = 40000) -> bytes | None:
        answer: bytes | None = self.rig.settle(
            self.handler.handle(data, source, (str(source), port))
        )
        return answer

    def send(self, request: PcpRequest, extra: bytes = b"", source: IPAddress | None = None) -> Any:
        answer = self.raw(encode_request(request, extra), source or request.client_address)
        assert answer is not None
        return decode_response(answer)

    def map(
        self,
        internal_port: int = 6881,
        *,
        external_port: int = 0,
        external: IPAddress | None = None,
        lifetime: int = 3600,
        protocol: int = 6,
        nonce: bytes = NONCE,
        options: Options | None = None,
        extra: bytes = b"",
        source: IPAddress = CLIENT,
    ) -> Response:
        if external is None:
            external = IPv4Address(0) if isinstance(source, IPv4Address) else IPv6Address("::")
        body = MapData(nonce, protocol, internal_port, external_port, external)
        request = PcpRequest(Opcode.MAP, lifetime, source, body, options or Options())
        response: Response = self.send(request, extra)
        return response

    def peer(
        self,
        internal_port: int = 6881,
        *,
        remote: IPAddress = PEER,
        remote_port: int = 443,
        external_port: int = 0,
        lifetime: int = 600,
        nonce: bytes = NONCE,
        source: IPAddress = CLIENT,
    ) -> Response:
        zero = IPv4Address(0) if isinstance(source, IPv4Address) else IPv6Address("::")
        body = PeerData(nonce, 6, internal_port, external_port, zero, remote_port, remote)
        response: Response = self.send(PcpRequest(Opcode.PEER, lifetime, source, body))
        return response


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture
def client(rig: Rig) -> PcpClient:
    return PcpClient(rig)


def body_of(response: Response) -> MapData:
    assert isinstance(response.body, MapData)
    return response.body


def natpmp_mapping(rig: Rig, internal: int, external: int, lifetime: int = 1000) -> Granted:
    result = rig.apply(
        MapPort(
            Owner(Origin.NATPMP, CLIENT), Proto.TCP, Endpoint(CLIENT, internal), external, lifetime
        )
    )
    assert isinstance(result, Granted)
    return result


# -- MAP -------------------------------------------------------------------------------------


def test_map_creates_a_mapping_and_answers_with_it(rig: Rig, client: PcpClient) -> None:
    rig.reactor.advance(12)
    response = client.map(6881, external_port=6881)
    assert (response.opcode, response.result, response.lifetime, response.epoch) == (
        Opcode.MAP,
        ResultCode.SUCCESS,
        3600,
        12,
    )
    assert body_of(response) == MapData(NONCE, 6, 6881, 6881, EXTERNAL)
    [mapping] = rig.mappings()
    assert mapping.owner == Owner(Origin.PCP, CLIENT, NONCE)
    assert mapping.internal == Endpoint(CLIENT, 6881)
    assert mapping.external == Endpoint(EXTERNAL, 6881)
    assert len(rig.backend.snapshot()) == 1


def test_success_response_is_60_bytes_with_zeroed_reserved_fields(client: PcpClient) -> None:
    body = MapData(NONCE, 17, 5000, 5000, IPv4Address(0))
    answer = client.raw(encode_request(PcpRequest(Opcode.MAP, 600, CLIENT, body)))
    assert answer is not None and len(answer) == MAP_SIZE
    assert answer[2] == 0 and answer[12:24] == b"\x00" * 12


def test_lifetimes_are_clamped_into_the_policy_range(client: PcpClient) -> None:
    assert client.map(6881, lifetime=10).lifetime == 120
    assert client.map(6882, lifetime=10**6).lifetime == 86400


def test_a_refresh_with_the_same_nonce_keeps_the_port(rig: Rig, client: PcpClient) -> None:
    first = body_of(client.map(6881))
    rig.reactor.advance(100)
    again = client.map(6881, external_port=first.external_port + 1, lifetime=1000)
    assert body_of(again).external_port == first.external_port
    assert again.lifetime == 1000
    assert len(rig.mappings()) == 1


def test_another_nonce_is_not_authorized_with_the_remaining_lifetime(
    rig: Rig, client: PcpClient
) -> None:
    client.map(6881, lifetime=3600)
    rig.reactor.advance(600)
    response = client.map(6881, nonce=OTHER_NONCE)
    assert response.result is ResultCode.NOT_AUTHORIZED
    assert response.lifetime == 3000
    assert rig.mappings()[0].owner.nonce == NONCE


def test_delete_with_the_nonce_removes_the_mapping(rig: Rig, client: PcpClient) -> None:
    client.map(6881)
    response = client.map(6881, lifetime=0)
    assert (response.result, response.lifetime) == (ResultCode.SUCCESS, 0)
    assert body_of(response) == MapData(NONCE, 6, 6881, 0, IPv4Address(0))
    assert rig.mappings() == [] and rig.backend.snapshot() == frozenset()


def test_delete_with_another_nonce_is_refused(rig: Rig, client: PcpClient) -> None:
    client.map(6881, lifetime=3600)
    rig.reactor.advance(10)
    response = client.map(6881, lifetime=0, nonce=OTHER_NONCE)
    assert (response.result, response.lifetime) == (ResultCode.NOT_AUTHORIZED, 3590)
    assert len(rig.mappings()) == 1


def test_delete_of_nothing_succeeds(client: PcpClient) -> None:
    assert client.map(7777, lifetime=0).result is ResultCode.SUCCESS


def test_a_suggested_port_held_by_someone_else_gets_another_port(client: PcpClient) -> None:
    client.map(6881, external_port=6881, source=OTHER)
    response = client.map(6881, external_port=6881)
    assert response.result is ResultCode.SUCCESS
    assert body_of(response).external_port != 6881


def test_a_bad_suggested_address_is_ignored(client: PcpClient) -> None:
    response = client.map(6881, external=IPv4Address("192.0.2.1"))
    assert response.result is ResultCode.SUCCESS
    assert body_of(response).external_address == EXTERNAL


@pytest.mark.parametrize(("protocol", "port"), [(0, 0), (6, 0), (132, 5000), (1, 0)])
def test_all_protocols_all_ports_and_other_protocols_are_unsupported(
    client: PcpClient, protocol: int, port: int
) -> None:
    for lifetime in (3600, 0):
        response = client.map(port, protocol=protocol, lifetime=lifetime)
        assert (response.result, response.lifetime) == (ResultCode.UNSUPP_PROTOCOL, LONG_LIFETIME)


def test_no_external_address_is_a_short_network_failure() -> None:
    response = PcpClient(Rig(external=None)).map(6881)
    assert (response.result, response.lifetime) == (ResultCode.NETWORK_FAILURE, SHORT_LIFETIME)


def test_quota_is_user_ex_quota(rig: Rig) -> None:
    client = PcpClient(Rig(max_mappings_per_client=1))
    client.map(6881)
    response = client.map(6882)
    assert (response.result, response.lifetime) == (ResultCode.USER_EX_QUOTA, SHORT_LIFETIME)


def test_a_backend_failure_is_no_resources_and_changes_nothing(rig: Rig, client: PcpClient) -> None:
    rig.backend.fail_next()
    assert client.map(6881).result is ResultCode.NO_RESOURCES
    assert rig.mappings() == []


def test_an_error_response_copies_the_request(client: PcpClient) -> None:
    body = MapData(NONCE, 6, 6881, 4444, IPv4Address("192.0.2.9"))
    request = encode_request(PcpRequest(Opcode.MAP, 3600, CLIENT, body), encode_option(200, b"x"))
    answer = client.raw(request, source=OTHER)  # the client address is not the source
    assert answer is not None
    assert len(answer) == len(request)
    assert answer[3] == ResultCode.ADDRESS_MISMATCH
    assert answer[24:] == request[24:]  # suggestion copied into the assigned fields, options too


# -- cross-protocol (protocols.md §7.2) ------------------------------------------------------


def test_map_meeting_a_natpmp_mapping_reports_it_without_taking_it(
    rig: Rig, client: PcpClient
) -> None:
    natpmp_mapping(rig, 6881, 16881, lifetime=1000)
    rig.reactor.advance(100)
    response = client.map(6881, external_port=6881)
    assert response.result is ResultCode.SUCCESS
    assert body_of(response).external_port == 16881
    assert response.lifetime == 900
    [mapping] = rig.mappings()
    assert mapping.owner == Owner(Origin.NATPMP, CLIENT)


def test_map_meeting_a_static_mapping_reports_a_permanent_lifetime(
    rig: Rig, client: PcpClient
) -> None:
    rig.apply(
        MapPort(Owner(Origin.STATIC, CLIENT), Proto.TCP, Endpoint(CLIENT, 22), 2222, 0, exact=True)
    )
    response = client.map(22)
    assert (body_of(response).external_port, response.lifetime) == (2222, UINT32_MAX)


def test_deleting_a_natpmp_mapping_is_not_authorized(rig: Rig, client: PcpClient) -> None:
    natpmp_mapping(rig, 6881, 16881, lifetime=1000)
    response = client.map(6881, lifetime=0)
    assert (response.result, response.lifetime) == (ResultCode.NOT_AUTHORIZED, 1000)
    assert len(rig.mappings()) == 1


# -- PREFER_FAILURE --------------------------------------------------------------------------

PREFER = Options(prefer_failure=True)


def test_prefer_failure_gets_exactly_the_suggested_port(rig: Rig, client: PcpClient) -> None:
    response = client.map(6881, external_port=40000, options=PREFER)
    assert body_of(response).external_port == 40000
    assert response.options == PREFER  # processed options are echoed


def test_prefer_failure_on_a_held_port_cannot_provide_and_changes_nothing(
    rig: Rig, client: PcpClient
) -> None:
    client.map(6881, external_port=40000, source=OTHER, lifetime=500)
    response = client.map(6881, external_port=40000, options=PREFER)
    assert response.result is ResultCode.CANNOT_PROVIDE_EXTERNAL
    assert response.lifetime == 500  # the conflicting mapping's remaining life
    assert len(rig.mappings()) == 1


def test_prefer_failure_on_a_reserved_port_cannot_provide(client: PcpClient) -> None:
    response = client.map(5351, external_port=5351, protocol=17, options=PREFER)
    assert response.result is ResultCode.CANNOT_PROVIDE_EXTERNAL


def test_prefer_failure_on_a_port_the_acl_denies_cannot_provide(
    rig: Rig, client: PcpClient
) -> None:
    """The default rules allow external ports from 1024: port 80 cannot be provided, though
    the host may map (without PREFER_FAILURE it would get another port)."""
    response = client.map(8080, external_port=80, options=PREFER)
    assert response.result is ResultCode.CANNOT_PROVIDE_EXTERNAL
    assert rig.mappings() == []
    assert body_of(client.map(8080, external_port=80)).external_port >= 1024


def test_prefer_failure_against_an_existing_mapping_with_another_port_changes_nothing(
    rig: Rig, client: PcpClient
) -> None:
    first = body_of(client.map(6881, external_port=40000, lifetime=3600))
    rig.reactor.advance(100)
    response = client.map(6881, external_port=first.external_port + 1, options=PREFER)
    assert response.result is ResultCode.CANNOT_PROVIDE_EXTERNAL
    assert rig.mappings()[0].remaining(rig.service.now()) == 3500  # not refreshed


def test_prefer_failure_meeting_another_origins_mapping_on_another_port(
    rig: Rig, client: PcpClient
) -> None:
    natpmp_mapping(rig, 6881, 16881)
    response = client.map(6881, external_port=40000, options=PREFER)
    assert response.result is ResultCode.CANNOT_PROVIDE_EXTERNAL
    assert client.map(6881, external_port=16881, options=PREFER).result is ResultCode.SUCCESS


def test_prefer_failure_with_another_external_address_cannot_provide(client: PcpClient) -> None:
    response = client.map(6881, external_port=40000, external=NEW_EXTERNAL, options=PREFER)
    assert response.result is ResultCode.CANNOT_PROVIDE_EXTERNAL
    ok = client.map(6881, external_port=40000, external=EXTERNAL, options=PREFER)
    assert ok.result is ResultCode.SUCCESS


# -- FILTER ----------------------------------------------------------------------------------


def one_filter(address: str, prefix: int = 128, port: int = 0) -> Filter:
    return Filter(prefix, port, IPv4Address(address))


def test_filter_restricts_the_mapping_and_is_echoed(rig: Rig, client: PcpClient) -> None:
    options = Options(filters=(one_filter("198.51.100.0", 120, 443),))
    response = client.map(6881, options=options)
    assert response.options == options
    assert rig.mappings()[0].filters == (RemoteFilter(IPv4Network("198.51.100.0/24"), 443),)


def test_filters_add_up_and_prefix_zero_clears_them(rig: Rig, client: PcpClient) -> None:
    client.map(6881, options=Options(filters=(one_filter("198.51.100.1"),)))
    client.map(6881, options=Options(filters=(one_filter("198.51.100.2"),)))
    assert {str(f.prefix) for f in rig.mappings()[0].filters} == {
        "198.51.100.1/32",
        "198.51.100.2/32",
    }
    client.map(6881)  # a refresh without FILTER keeps them
    assert len(rig.mappings()[0].filters) == 2
    clear_then_one = (one_filter("0.0.0.0", 0), one_filter("198.51.100.3"))
    client.map(6881, options=Options(filters=clear_then_one))
    assert [str(f.prefix) for f in rig.mappings()[0].filters] == ["198.51.100.3/32"]


def test_too_many_filters_are_excessive_remote_peers(rig: Rig, client: PcpClient) -> None:
    client.map(6881, options=Options(filters=(one_filter("198.51.100.1"),)))
    three = tuple(one_filter(f"198.51.100.{n}") for n in (2, 3))
    response = client.map(6881, options=Options(filters=three))
    assert (response.result, response.lifetime) == (ResultCode.EXCESSIVE_REMOTE_PEERS, 1800)
    assert len(rig.mappings()[0].filters) == 1


def test_a_bad_filter_prefix_is_malformed_option(client: PcpClient) -> None:
    data = struct.pack("!BBH", 0, 90, 0) + bytes(10) + b"\xff\xff" + PEER.packed
    response = client.map(6881, extra=encode_option(OptionCode.FILTER, data))
    assert (response.result, response.lifetime) == (ResultCode.MALFORMED_OPTION, 1800)


# -- THIRD_PARTY -----------------------------------------------------------------------------

THIRD = IPv4Address("192.168.1.20")


def test_third_party_is_refused_by_default_policy(rig: Rig, client: PcpClient) -> None:
    response = client.map(6881, options=Options(third_party=THIRD))
    assert (response.result, response.lifetime) == (ResultCode.UNSUPP_OPTION, LONG_LIFETIME)
    assert rig.mappings() == []


def test_third_party_when_allowed_maps_the_named_host() -> None:
    rig = Rig(allow_third_party=True)
    client = PcpClient(rig)
    response = client.map(6881, options=Options(third_party=THIRD))
    assert response.result is ResultCode.SUCCESS
    assert response.options.third_party == THIRD
    [mapping] = rig.mappings()
    assert mapping.internal == Endpoint(THIRD, 6881)
    assert mapping.owner == Owner(Origin.PCP, CLIENT, NONCE, third_party=True)
    deleted = client.map(6881, lifetime=0, options=Options(third_party=THIRD))
    assert deleted.result is ResultCode.SUCCESS and deleted.options.third_party == THIRD
    assert rig.mappings() == []


def test_third_party_naming_the_client_is_malformed(client: PcpClient) -> None:
    response = client.map(6881, options=Options(third_party=CLIENT))
    assert response.result is ResultCode.MALFORMED_REQUEST


# -- IPv6 pinholes, PEER, ANNOUNCE, DESCRIPTION -------------------------------------------------


def test_ipv6_map_opens_a_pinhole(rig: Rig, client: PcpClient) -> None:
    response = client.map(8080, source=CLIENT_V6, external_port=9999)
    assert response.result is ResultCode.SUCCESS
    assert body_of(response).external_address == CLIENT_V6
    assert body_of(response).external_port == 8080
    [mapping] = rig.mappings()
    assert mapping.kind is Kind.PINHOLE and mapping.internal == Endpoint(CLIENT_V6, 8080)
    filt = Options(filters=(Filter(48, 0, IPv6Address("2001:db8:99::")),))
    client.map(8080, source=CLIENT_V6, options=filt)
    assert rig.mappings()[0].filters == (RemoteFilter(IPv6Network("2001:db8:99::/48")),)
    assert client.map(8080, source=CLIENT_V6, lifetime=0).result is ResultCode.SUCCESS
    assert rig.mappings() == []


def test_ipv6_prefer_failure_on_another_port_cannot_provide(client: PcpClient) -> None:
    response = client.map(8080, source=CLIENT_V6, external_port=9999, options=PREFER)
    assert response.result is ResultCode.CANNOT_PROVIDE_EXTERNAL


def test_peer_creates_a_mapping_filtered_to_the_peer(rig: Rig, client: PcpClient) -> None:
    response = client.peer(6881, lifetime=0)
    assert response.result is ResultCode.SUCCESS
    assert isinstance(response.body, PeerData)
    assert response.body.remote_address == PEER and response.body.remote_port == 443
    assert response.body.external_address == EXTERNAL
    assert response.lifetime == 120  # PEER cannot delete: lifetime 0 gets the minimum
    [mapping] = rig.mappings()
    assert mapping.filters == (RemoteFilter.host(PEER, 443),)
    again = client.peer(6881, lifetime=600)
    assert isinstance(again.body, PeerData)
    assert again.body.external_port == response.body.external_port
    assert again.lifetime == 600 and len(rig.mappings()) == 1


def test_peer_reuses_the_external_port_of_an_inbound_map(rig: Rig, client: PcpClient) -> None:
    mapped = body_of(client.map(6881))
    response = client.peer(6881)
    assert isinstance(response.body, PeerData)
    assert response.body.external_port == mapped.external_port
    assert rig.mappings()[0].filters == ()  # the MAP is left as it was


def test_peer_with_another_nonce_is_not_authorized(client: PcpClient) -> None:
    client.peer(6881)
    assert client.peer(6881, nonce=OTHER_NONCE).result is ResultCode.NOT_AUTHORIZED


def test_peer_with_an_unavailable_suggested_port_cannot_provide(client: PcpClient) -> None:
    client.map(1234, external_port=45000, source=OTHER)
    assert client.peer(6881, external_port=45000).result is ResultCode.CANNOT_PROVIDE_EXTERNAL


def test_disabled_peer_is_an_unsupported_opcode(rig: Rig) -> None:
    client = PcpClient(rig, PcpHandler(rig.service, peer_enabled=False))
    assert client.peer().result is ResultCode.UNSUPP_OPCODE


def test_announce_request_tells_the_epoch(rig: Rig, client: PcpClient) -> None:
    rig.reactor.advance(7)
    response = client.send(PcpRequest(Opcode.ANNOUNCE, 0, CLIENT))
    assert (response.opcode, response.result, response.lifetime, response.epoch) == (0, 0, 0, 7)


def test_description_is_stored_truncated_and_echoed(rig: Rig, client: PcpClient) -> None:
    response = client.map(6881, options=Options(description="x" * 300))
    assert response.options.description == "x" * 128
    assert rig.mappings()[0].description == "x" * 128


def test_unknown_optional_options_are_left_out_of_the_response(client: PcpClient) -> None:
    response = client.map(6881, extra=encode_option(201, b"whatever"))
    assert response.result is ResultCode.SUCCESS and response.options == Options()


@pytest.mark.parametrize("version", [1, 3])
def test_other_versions_get_unsupp_version_2(client: PcpClient, version: int) -> None:
    answer = client.raw(bytes((version, 1)) + b"\x00" * 58)
    assert answer is not None and len(answer) == 24
    response = decode_response(answer)
    assert (response.version, response.result, response.lifetime) == (
        2,
        ResultCode.UNSUPP_VERSION,
        LONG_LIFETIME,
    )


def test_short_datagrams_and_responses_are_dropped(client: PcpClient) -> None:
    assert client.raw(b"\x02\x01" + b"\x00" * 18) is None
    assert client.raw(bytes((2, 0x81)) + b"\x00" * 58) is None


def test_every_reason_has_a_result_code() -> None:
    assert set(PCP_RESULT_FOR_REASON) == set(Reason)
    assert ResultCode.SUCCESS not in PCP_RESULT_FOR_REASON.values()


# -- Mapping Updates (RFC 6887 §14.2) ---------------------------------------------------------


def test_a_new_external_address_sends_mapping_updates(rig: Rig, client: PcpClient) -> None:
    rig.service.subscribe(client.handler.notify)
    assigned = body_of(client.map(6881, external_port=6881, options=Options(description="d")))
    rig.reactor.advance(100)
    start = rig.reactor.seconds()
    rig.service.set_external_address(NEW_EXTERNAL)
    rig.reactor.advance(0)
    rig.reactor.advance(0.25)
    rig.reactor.advance(0.5)
    assert [round(t - start, 2) for t, _, _ in client.sent] == list(UPDATE_DELAYS)
    assert {to for _, _, to in client.sent} == {(str(CLIENT), 40000)}
    update = decode_response(client.sent[0][1])
    assert update.result is ResultCode.SUCCESS
    assert body_of(update) == MapData(NONCE, 6, 6881, assigned.external_port, NEW_EXTERNAL)
    assert update.lifetime == 3500
    assert update.options == Options()  # no optional options in updates


def test_a_refresh_stops_pending_updates(rig: Rig, client: PcpClient) -> None:
    rig.service.subscribe(client.handler.notify)
    client.map(6881)
    rig.service.set_external_address(NEW_EXTERNAL)
    rig.reactor.advance(0)
    assert len(client.sent) == 1
    client.map(6881)
    rig.reactor.advance(1)
    assert len(client.sent) == 1


def test_an_expired_mapping_gets_no_update(rig: Rig, client: PcpClient) -> None:
    rig.service.subscribe(client.handler.notify)
    client.map(6881, lifetime=120)
    rig.reactor.advance(200)
    rig.service.set_external_address(NEW_EXTERNAL)
    rig.reactor.advance(1)
    assert client.sent == []


def test_prefer_failure_on_the_old_address_gets_cannot_provide_and_is_removed(
    rig: Rig, client: PcpClient
) -> None:
    rig.service.subscribe(client.handler.notify)
    client.map(6881, external_port=40000, external=EXTERNAL, options=PREFER)
    rig.service.set_external_address(NEW_EXTERNAL)
    rig.reactor.advance(0)
    rig.reactor.advance(1)
    assert len(client.sent) == 3
    assert decode_response(client.sent[0][1]).result is ResultCode.CANNOT_PROVIDE_EXTERNAL
    assert rig.mappings() == []


# -- the edge --------------------------------------------------------------------------------


class Exploding:
    """The real gateway, except that ``handle`` breaks the way a bug would."""

    def __init__(self, rig: Rig) -> None:
        self._service = rig.service

    def handle(self, request: Request) -> Deferred[Result]:
        raise RuntimeError("boom")

    @property
    def external_address(self) -> IPv4Address | None:
        return self._service.external_address

    def now(self) -> float:
        return self._service.now()

    def epoch_seconds(self) -> int:
        return self._service.epoch_seconds()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._service.subscribe(listener)


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def test_an_unexpected_failure_answers_no_resources_and_is_logged(
    rig: Rig, logged: list[LogEvent]
) -> None:
    client = PcpClient(rig, PcpHandler(Exploding(rig)))
    response = client.map(6881)
    assert (response.result, response.lifetime) == (ResultCode.NO_RESOURCES, SHORT_LIFETIME)
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["client"] == CLIENT

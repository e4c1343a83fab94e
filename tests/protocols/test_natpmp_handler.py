"""The NAT-PMP handler against the real gateway core (service, table, memory backend, store)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher

from gateway.config import LifetimeConfig
from gateway.errors import Reason
from gateway.model import Endpoint, Origin, Owner, Proto
from gateway.ports import Listener
from gateway.requests import Granted, MapPort, Request, Result
from protocols.natpmp.codec import (
    ErrorResponse,
    MapRequest,
    MapResponse,
    Opcode,
    PublicAddressRequest,
    PublicAddressResponse,
    Response,
    ResultCode,
    decode_response,
    encode_request,
)
from protocols.natpmp.handler import NATPMP_RESULT_FOR_REASON, NatPmpHandler
from tests.protocols.gateway_rig import CLIENT, CLIENT_V6, EXTERNAL, OTHER, Rig


class Client:
    """A NAT-PMP client talking to the handler."""

    def __init__(self, rig: Rig, handler: NatPmpHandler | None = None) -> None:
        self.rig = rig
        self.handler = handler or NatPmpHandler(rig.service)

    def raw(self, data: bytes, source: IPv4Address = CLIENT) -> bytes | None:
        answer: bytes | None = self.rig.settle(self.handler.handle(data, source))
        return answer

    def ask(self, request: MapRequest | PublicAddressRequest, source: IPv4Address = CLIENT) -> Any:
        answer = self.raw(encode_request(request), source)
        assert answer is not None
        return decode_response(answer)

    def map(
        self,
        internal: int,
        external: int = 0,
        lifetime: int = 7200,
        *,
        tcp: bool = True,
        source: IPv4Address = CLIENT,
    ) -> MapResponse:
        opcode = Opcode.MAP_TCP if tcp else Opcode.MAP_UDP
        response = self.ask(MapRequest(opcode, internal, external, lifetime), source)
        assert isinstance(response, MapResponse)
        return response


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture
def client(rig: Rig) -> Client:
    return Client(rig)


def upnp_mapping(rig: Rig, internal: int, external: int, lifetime: int = 3600) -> Granted:
    result = rig.apply(
        MapPort(
            Owner(Origin.UPNP, CLIENT), Proto.TCP, Endpoint(CLIENT, internal), external, lifetime
        )
    )
    assert isinstance(result, Granted)
    return result


def test_public_address_answers_the_external_address(client: Client) -> None:
    response = client.ask(PublicAddressRequest())
    assert response == PublicAddressResponse(ResultCode.SUCCESS, 0, EXTERNAL)


def test_unknown_external_address_is_a_network_failure() -> None:
    response = Client(Rig(external=None)).ask(PublicAddressRequest())
    assert response == PublicAddressResponse(ResultCode.NETWORK_FAILURE, 0, IPv4Address(0))


def test_epoch_counts_seconds_since_the_state_started(rig: Rig, client: Client) -> None:
    rig.reactor.advance(125.4)
    assert client.ask(PublicAddressRequest()).epoch == 125
    assert client.map(6881).epoch == 125


def test_map_creates_a_mapping_in_the_kernel(rig: Rig, client: Client) -> None:
    response = client.map(6881, 6881, 3600)
    assert response == MapResponse(Opcode.MAP_TCP, ResultCode.SUCCESS, 0, 6881, 6881, 3600)
    [mapping] = rig.mappings()
    assert mapping.owner == Owner(Origin.NATPMP, CLIENT)
    assert mapping.internal == Endpoint(CLIENT, 6881)
    assert mapping.external == Endpoint(EXTERNAL, 6881)
    assert mapping.description == "NAT-PMP 6881 tcp"
    assert len(rig.backend.snapshot()) == 1


def test_the_answer_waits_for_the_commit(rig: Rig) -> None:
    handler = NatPmpHandler(rig.service)
    answers: list[bytes | None] = []
    handler.handle(encode_request(MapRequest(Opcode.MAP_UDP, 5000, 5000, 60)), CLIENT).addCallback(
        answers.append
    )
    assert answers == []
    rig.reactor.advance(0)
    assert len(answers) == 1


def test_a_refresh_returns_the_same_port_and_costs_no_kernel_change(
    rig: Rig, client: Client
) -> None:
    first = client.map(6881, 0, 3600)
    batches = len(rig.backend.batches)
    rig.reactor.advance(1800)
    again = client.map(6881, first.external_port, 3600)
    assert again.external_port == first.external_port
    assert again.lifetime == 3600
    assert len(rig.backend.batches) == batches
    assert rig.mappings()[0].remaining(rig.service.now()) == 3600


def test_a_lost_ack_retransmission_gets_the_same_answer(client: Client) -> None:
    first = client.map(6881, 0)
    assert client.map(6881, 0).external_port == first.external_port


def test_a_suggested_port_held_by_another_client_gets_another_port(client: Client) -> None:
    assert client.map(6881, 6881, source=OTHER).external_port == 6881
    response = client.map(6881, 6881)
    assert response.result is ResultCode.SUCCESS
    assert response.external_port not in (0, 6881)


def test_suggested_port_zero_gets_a_free_port(client: Client) -> None:
    response = client.map(6881, 0)
    assert response.result is ResultCode.SUCCESS and response.external_port >= 1024


def test_the_lifetime_is_never_more_than_policy_allows() -> None:
    rig = Rig(lifetimes=LifetimeConfig(natpmp_max=600))
    assert Client(rig).map(6881, lifetime=7200).lifetime == 600


def test_delete_removes_the_mapping(rig: Rig, client: Client) -> None:
    client.map(6881, 6881)
    response = client.map(6881, 6881, 0)
    assert response == MapResponse(Opcode.MAP_TCP, ResultCode.SUCCESS, 0, 6881, 0, 0)
    assert rig.mappings() == [] and rig.backend.snapshot() == frozenset()


def test_delete_of_nothing_succeeds(client: Client) -> None:
    assert client.map(7000, 0, 0).result is ResultCode.SUCCESS


def test_delete_all_removes_that_protocol_of_that_client_only(rig: Rig, client: Client) -> None:
    client.map(6881)
    client.map(6882)
    client.map(6881, tcp=False)
    client.map(6881, source=OTHER)
    response = client.map(0, 0, 0)
    assert response == MapResponse(Opcode.MAP_TCP, ResultCode.SUCCESS, 0, 0, 0, 0)
    left = {(m.owner.client, m.proto, m.internal.port) for m in rig.mappings()}
    assert left == {(CLIENT, Proto.UDP, 6881), (OTHER, Proto.TCP, 6881)}


def test_internal_port_zero_with_a_lifetime_is_refused(client: Client) -> None:
    response = client.map(0, 5000, 3600)
    assert response == MapResponse(Opcode.MAP_TCP, ResultCode.NOT_AUTHORIZED, 0, 0, 0, 0)


def test_map_meeting_a_upnp_mapping_reports_it_without_taking_it(rig: Rig, client: Client) -> None:
    upnp_mapping(rig, 6881, 16881, lifetime=1000)
    rig.reactor.advance(100)
    response = client.map(6881, 6881, 7200)
    assert response.result is ResultCode.SUCCESS
    assert response.external_port == 16881
    assert response.lifetime == 900  # what is left of it, never more than asked
    [mapping] = rig.mappings()
    assert mapping.owner.origin is Origin.UPNP


def test_map_meeting_a_permanent_mapping_reports_the_requested_lifetime(
    rig: Rig, client: Client
) -> None:
    rig.apply(
        MapPort(Owner(Origin.STATIC, CLIENT), Proto.TCP, Endpoint(CLIENT, 22), 2222, 0, exact=True)
    )
    response = client.map(22, 0, 7200)
    assert (response.external_port, response.lifetime) == (2222, 7200)


def test_delete_of_a_upnp_mapping_is_refused_and_echoes_the_request(
    rig: Rig, client: Client
) -> None:
    upnp_mapping(rig, 6881, 16881)
    response = client.map(6881, 16881, 0)
    assert response == MapResponse(Opcode.MAP_TCP, ResultCode.NOT_AUTHORIZED, 0, 6881, 16881, 0)
    assert len(rig.mappings()) == 1


def test_quota_exhaustion_is_out_of_resources() -> None:
    client = Client(Rig(max_mappings_per_client=1))
    assert client.map(6881).result is ResultCode.SUCCESS
    assert client.map(6882).result is ResultCode.OUT_OF_RESOURCES


def test_no_external_address_refuses_mappings_with_network_failure() -> None:
    assert Client(Rig(external=None)).map(6881).result is ResultCode.NETWORK_FAILURE


def test_a_backend_failure_answers_network_failure_and_changes_nothing(
    rig: Rig, client: Client
) -> None:
    rig.backend.fail_next()
    assert client.map(6881).result is ResultCode.NETWORK_FAILURE
    assert rig.mappings() == []


def test_other_versions_get_the_8_byte_unsupported_version_header(client: Client) -> None:
    pcp_map = bytes((2, 1)) + b"\x00" * 58
    answer = client.raw(pcp_map)
    assert answer is not None and len(answer) == 8
    assert decode_response(answer) == ErrorResponse(1, ResultCode.UNSUPPORTED_VERSION, 0)


def test_unknown_opcode_gets_the_8_byte_unsupported_opcode_header(client: Client) -> None:
    answer = client.raw(b"\x00\x03" + b"\x00" * 10)
    assert answer is not None
    assert decode_response(answer) == ErrorResponse(3, ResultCode.UNSUPPORTED_OPCODE, 0)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x01\x00\x00", b"\x00\x80" + b"\x00" * 10])
def test_short_requests_and_responses_are_dropped(client: Client, data: bytes) -> None:
    assert client.raw(data) is None


def test_ipv6_sources_are_dropped(rig: Rig) -> None:
    handler = NatPmpHandler(rig.service)
    answer = rig.settle(handler.handle(b"\x00\x00", CLIENT_V6))
    assert answer is None


def test_every_reason_has_a_result_code() -> None:
    assert set(NATPMP_RESULT_FOR_REASON) == set(Reason)
    assert ResultCode.SUCCESS not in NATPMP_RESULT_FOR_REASON.values()


def test_the_announcement_is_the_public_address_response(rig: Rig) -> None:
    rig.reactor.advance(3)
    announcement = NatPmpHandler(rig.service).announcement()
    assert announcement is not None
    assert decode_response(announcement) == PublicAddressResponse(ResultCode.SUCCESS, 3, EXTERNAL)
    assert NatPmpHandler(Rig(external=None).service).announcement() is None


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


def test_an_unexpected_failure_answers_the_generic_failure_and_is_logged(
    rig: Rig, logged: list[LogEvent]
) -> None:
    client = Client(rig, NatPmpHandler(Exploding(rig)))
    response: Response = client.map(6881)
    assert response == MapResponse(Opcode.MAP_TCP, ResultCode.NETWORK_FAILURE, 0, 6881, 0, 0)
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["client"] == CLIENT
    assert b"boom" not in (client.raw(encode_request(PublicAddressRequest())) or b"")


def test_per_packet_lines_are_debug_only(client: Client, logged: list[LogEvent]) -> None:
    client.map(6881)
    client.raw(b"\x00\x05")
    mine = [e for e in logged if str(e.get("log_namespace", "")).startswith("portgate.natpmp")]
    assert mine, "the handler logs each packet"
    assert {e["log_level"] for e in mine} == {LogLevel.debug}

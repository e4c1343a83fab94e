"""The STUN client on a ``task.Clock`` and a fake UDP port: retransmission timing (RFC 8489
§6.2.1), time-out, garbage, replies to other transactions, error responses, resolution and
socket failures, cancellation."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, DNSLookupError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from protocols.stun.client import Retransmission, StunClient, StunError, mapped_ipv4
from protocols.stun.codec import (
    MappedAddress,
    decode_request,
    encode_error,
    encode_success,
)

SERVER = ("198.51.100.2", 3478)
SOURCE = IPv4Address("100.64.0.2")
SEEN = MappedAddress(IPv4Address("198.51.100.1"), 40000)
TID = b"transaction!"


class FakePort:
    """What ``listenUDP`` returns: a connected UDP socket that records what is sent."""

    def __init__(self, protocol: DatagramProtocol, interface: str) -> None:
        self.protocol = protocol
        self.interface = interface
        self.connected: tuple[str, int] | None = None
        self.sent: list[bytes] = []
        self.listening = True
        self.write_error: OSError | None = None
        self.connect_error: OSError | None = None
        #: what SO_ERROR says (an ICMP error waiting on the socket)
        self.pending_error = 0

    def connect(self, host: str, port: int) -> None:
        if self.connect_error is not None:
            raise self.connect_error
        self.connected = (host, port)

    def write(self, datagram: bytes) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.sent.append(datagram)

    def stopListening(self) -> None:
        self.listening = False

    def getHandle(self) -> FakePort:
        return self

    def getsockopt(self, level: int, option: int) -> int:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_ERROR)
        return self.pending_error

    def lose(self) -> None:
        """What the epoll reactor does on EPOLLERR: close the port, stop the protocol."""
        self.listening = False
        self.protocol.doStop()

    def reply(self, datagram: bytes) -> None:
        assert self.connected is not None
        self.protocol.datagramReceived(datagram, self.connected)


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []
        self.refuse_listen = False

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "") -> FakePort:
        if self.refuse_listen:
            raise CannotListenError(interface, port, OSError(99, "Cannot assign address"))
        fake = FakePort(protocol, interface)
        self.ports.append(fake)
        protocol.makeConnection(fake)  # type: ignore[arg-type]
        return fake


class Outcome:
    def __init__(self, d: Deferred[MappedAddress]) -> None:
        self.result: MappedAddress | None = None
        self.error: BaseException | None = None
        self.done = False
        d.addCallbacks(self._ok, self._failed)

    def _ok(self, value: MappedAddress) -> None:
        self.done, self.result = True, value

    def _failed(self, failure: Failure) -> None:
        self.done, self.error = True, failure.value


def client(
    reactor: FakeReactor,
    resolve: Callable[[str], Deferred[str]] | None = None,
    retransmission: Retransmission | None = None,
) -> StunClient:
    return StunClient(
        reactor,
        retransmission=retransmission,
        resolve=resolve or (lambda name: fail(AssertionError(f"no lookup expected: {name}"))),
        transaction_id=lambda: TID,
    )


def start(reactor: FakeReactor, **kw: Any) -> tuple[Outcome, FakePort]:
    outcome = Outcome(client(reactor, **kw).query(*SERVER, SOURCE))
    [port] = reactor.ports
    return outcome, port


def test_a_binding_request_goes_from_the_wan_address_to_the_server() -> None:
    reactor = FakeReactor()
    outcome, port = start(reactor)
    assert port.interface == str(SOURCE)
    assert port.connected == SERVER
    assert [decode_request(d).transaction_id for d in port.sent] == [TID]
    port.reply(encode_success(TID, SEEN))
    assert outcome.result == SEEN
    assert not port.listening
    assert reactor.getDelayedCalls() == []


def test_retransmissions_double_the_interval_then_time_out_as_rfc_8489_says() -> None:
    reactor = FakeReactor()
    outcome, port = start(reactor)
    sent_at: list[float] = [0.0]
    # RFC 8489 §6.2.1: requests at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; failure at 39.5 s
    while not outcome.done:
        [call] = reactor.getDelayedCalls()
        reactor.advance(call.getTime() - reactor.seconds() - 0.001)
        assert not outcome.done and len(port.sent) == len(sent_at), "nothing sent early"
        reactor.advance(call.getTime() - reactor.seconds())
        if not outcome.done:
            assert len(port.sent) == len(sent_at) + 1
            sent_at.append(reactor.seconds())
    assert [round(t, 3) for t in sent_at] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert round(reactor.seconds(), 3) == 39.5
    assert isinstance(outcome.error, StunError)
    assert str(outcome.error) == (
        "no answer from STUN server 198.51.100.2:3478 (7 requests in 39.5 s)"
    )
    assert len({bytes(d) for d in port.sent}) == 1, "a retransmission is the same request"
    assert not port.listening


def test_a_late_answer_after_retransmissions_still_counts() -> None:
    reactor = FakeReactor()
    outcome, port = start(reactor)
    reactor.advance(0.5)
    reactor.advance(1.0)
    assert len(port.sent) == 3
    port.reply(encode_success(TID, SEEN))
    assert outcome.result == SEEN
    assert reactor.getDelayedCalls() == []


def test_garbage_and_other_transactions_are_dropped_and_the_transaction_goes_on() -> None:
    reactor = FakeReactor()
    outcome, port = start(reactor)
    for junk in (
        b"",
        b"\x00" * 3,
        b"HTTP/1.1 200 OK\r\n\r\n",
        encode_success(TID, SEEN)[:-1],
        encode_success(b"someone else", SEEN),
        encode_error(b"someone else", 400, "Bad Request"),
        bytes(range(256)) * 10,
    ):
        port.reply(junk)
    assert not outcome.done
    reactor.advance(0.5)
    assert len(port.sent) == 2, "still retransmitting"
    port.reply(encode_success(TID, SEEN))
    assert outcome.result == SEEN


def test_an_error_response_fails_at_once_with_its_code_and_reason() -> None:
    reactor = FakeReactor()
    outcome, port = start(reactor)
    port.reply(encode_error(TID, 401, "Unauthorized\x1b[2J"))
    assert isinstance(outcome.error, StunError)
    assert str(outcome.error) == "STUN server 198.51.100.2:3478 answered error 401 Unauthorized?[2J"
    assert not port.listening and reactor.getDelayedCalls() == []


def test_an_ipv6_mapped_address_is_refused() -> None:
    reactor = FakeReactor()
    outcome, port = start(reactor)
    port.reply(encode_success(TID, MappedAddress(IPv6Address("2001:db8::1"), 1)))
    assert isinstance(outcome.error, StunError)
    assert "IPv6 address 2001:db8::1" in str(outcome.error)


def test_an_icmp_port_unreachable_fails_at_once() -> None:
    reactor = FakeReactor()
    outcome, port = start(reactor)
    port.protocol.connectionRefused()
    assert isinstance(outcome.error, StunError)
    assert "refused the request" in str(outcome.error)
    assert not port.listening and reactor.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errno.ECONNREFUSED, "refused the request (ICMP port unreachable"),
        (errno.EHOSTUNREACH, "cannot reach STUN server 198.51.100.2:3478: No route to host"),
        (0, "the socket to STUN server 198.51.100.2:3478 was closed"),
    ],
)
def test_a_socket_the_reactor_closes_on_an_icmp_error_fails_at_once(
    error: int, expected: str
) -> None:
    reactor = FakeReactor()
    outcome, port = start(reactor)
    port.pending_error = error
    port.lose()
    assert isinstance(outcome.error, StunError)
    assert expected in str(outcome.error)
    assert reactor.getDelayedCalls() == [], "no retransmission on a closed socket"


def test_a_source_address_that_is_gone_fails_with_a_reason() -> None:
    reactor = FakeReactor()
    reactor.refuse_listen = True
    outcome = Outcome(client(reactor).query(*SERVER, SOURCE))
    assert isinstance(outcome.error, StunError)
    assert str(outcome.error).startswith("cannot open a UDP socket on 100.64.0.2")


def test_an_unroutable_server_fails_with_a_reason() -> None:
    reactor = FakeReactor()
    original = reactor.listenUDP

    def listen(port: int, protocol: DatagramProtocol, interface: str = "") -> FakePort:
        fake = original(port, protocol, interface)
        fake.write_error = OSError(101, "Network is unreachable")
        return fake

    reactor.listenUDP = listen  # type: ignore[method-assign]
    outcome = Outcome(client(reactor).query(*SERVER, SOURCE))
    assert isinstance(outcome.error, StunError)
    assert str(outcome.error) == (
        "cannot send to STUN server 198.51.100.2:3478: Network is unreachable"
    )
    assert reactor.getDelayedCalls() == []


def test_a_host_name_is_resolved_first() -> None:
    reactor = FakeReactor()
    asked: list[str] = []

    def resolve(name: str) -> Deferred[str]:
        asked.append(name)
        return succeed("198.51.100.2")

    outcome = Outcome(client(reactor, resolve=resolve).query("stun.example.net", 3478, SOURCE))
    assert asked == ["stun.example.net"]
    [port] = reactor.ports
    assert port.connected == SERVER
    port.reply(encode_success(TID, SEEN))
    assert outcome.result == SEEN


def test_a_name_that_does_not_resolve_fails_with_a_reason() -> None:
    reactor = FakeReactor()
    outcome = Outcome(
        client(reactor, resolve=lambda name: fail(DNSLookupError(name))).query(
            "stun.invalid", 3478, SOURCE
        )
    )
    assert isinstance(outcome.error, StunError)
    assert str(outcome.error).startswith("cannot resolve STUN server stun.invalid: ")
    assert reactor.ports == []


def test_cancelling_closes_the_socket_and_stops_the_timers() -> None:
    reactor = FakeReactor()
    d = client(reactor).query(*SERVER, SOURCE)
    outcome = Outcome(d)
    [port] = reactor.ports
    d.cancel()
    assert outcome.done and outcome.result is None
    assert not port.listening and reactor.getDelayedCalls() == []
    port.reply(encode_success(TID, SEEN))  # too late: ignored


def test_retransmission_settings_are_bounded() -> None:
    assert Retransmission().timeout == 39.5
    assert Retransmission(rto=0.1, transmissions=2, last_wait=4).waits() == (0.1, 0.4)
    with pytest.raises(ValueError):
        Retransmission(transmissions=0)
    with pytest.raises(ValueError):
        Retransmission(rto=0)


def test_mapped_ipv4_takes_the_address() -> None:
    assert mapped_ipv4(SEEN) == IPv4Address("198.51.100.1")
    with pytest.raises(StunError):
        mapped_ipv4(MappedAddress(IPv6Address("2001:db8::1"), 1))

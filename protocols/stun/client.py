"""A STUN Binding client on the Twisted reactor: what address does the Internet see us at?

``StunClient.query(host, port, source)`` resolves ``host`` (an IPv4 literal is used as is),
opens a UDP socket bound to ``source`` (the WAN address, so the request leaves the way
mappings are reached; None lets the kernel choose), connects it to the server, and runs one
transaction (RFC 8489 §6.2.1): the request is sent at 0, RTO, 3 RTO, 7 RTO, ... (the
interval doubling each time) up to ``Rc`` times, and the transaction fails ``Rm`` times RTO after
the last one. With the RFC's defaults (RTO 0.5 s, Rc 7, Rm 16) that is 39.5 s at most.

The Deferred fires with the ``MappedAddress`` (always IPv4: the request went over IPv4) or
fails with ``StunError`` whose text is one line naming the server and what went wrong. A reply
must come from the server (the socket is connected, so the kernel drops anything else), carry
our 96-bit random transaction id and decode strictly; garbage and replies to other
transactions are dropped (logged at debug level) and the transaction goes on. Cancelling the
Deferred stops the transaction and closes its socket.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from protocols.stun.codec import (
    BindingError,
    MappedAddress,
    StunDecodeError,
    decode_response,
    encode_request,
)

__all__ = ["Retransmission", "StunClient", "StunError", "mapped_ipv4"]

log = Logger(namespace="portgate.stun")


class StunError(Exception):
    """A STUN transaction that gave no mapped address; ``str()`` is one line saying why."""


@dataclass(frozen=True, slots=True)
class Retransmission:
    """RFC 8489 §6.2.1's timers: initial ``rto`` seconds, ``transmissions`` (Rc) requests in
    all, and ``last_wait`` (Rm) times ``rto`` after the last one."""

    rto: float = 0.5
    transmissions: int = 7
    last_wait: int = 16

    def __post_init__(self) -> None:
        if not (self.rto > 0 and 1 <= self.transmissions <= 16 and 1 <= self.last_wait <= 64):
            raise ValueError(f"unusable STUN retransmission settings: {self}")

    def waits(self) -> tuple[float, ...]:
        """Seconds to wait after each transmission before the next one (or giving up)."""
        doubling = tuple(self.rto * 2**i for i in range(self.transmissions - 1))
        return (*doubling, self.rto * self.last_wait)

    @property
    def timeout(self) -> float:
        return sum(self.waits())


def mapped_ipv4(mapped: MappedAddress) -> IPv4Address:
    """The address part of what ``StunClient.query`` fired with (always IPv4)."""
    if not isinstance(mapped.address, IPv4Address):
        raise StunError(f"the STUN server answered the IPv6 address {mapped.address}")
    return mapped.address


def _random_transaction_id() -> bytes:
    return os.urandom(12)


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


class StunClient:
    def __init__(
        self,
        reactor: Any,
        *,
        retransmission: Retransmission | None = None,
        resolve: Callable[[str], Deferred[str]] | None = None,
        transaction_id: Callable[[], bytes] = _random_transaction_id,
    ) -> None:
        self._reactor = reactor
        self._retransmission = retransmission or Retransmission()
        self._resolve = resolve if resolve is not None else reactor.resolve
        self._transaction_id = transaction_id

    def query(
        self, host: str, port: int, source: IPv4Address | None = None
    ) -> Deferred[MappedAddress]:
        """Ask the STUN server at ``host:port`` what it sees; see the module docstring."""
        server = f"{host}:{port}"
        if _is_ipv4(host):
            resolved: Deferred[str] = succeed(host)
        else:
            try:
                resolved = self._resolve(host)
            except Exception as error:  # a resolver that raises instead of failing
                resolved = fail(error)

        def unresolved(failure: Failure) -> Failure:
            if not isinstance(failure.value, (StunError, CancelledError)):
                raise StunError(f"cannot resolve STUN server {host}: {failure.value}")
            return failure

        def transact(address: str) -> Deferred[MappedAddress]:
            if not _is_ipv4(address):
                raise StunError(f"STUN server {host} resolved to {address!r}, not an IPv4 address")
            transaction = _Transaction(
                self._reactor,
                server,
                (address, port),
                self._transaction_id(),
                self._retransmission,
            )
            return transaction.start(source)

        resolved.addErrback(unresolved)
        return resolved.addCallback(transact)


class _Transaction(DatagramProtocol):
    """One request and its retransmissions, on a socket of its own."""

    noisy = False  # no "Starting protocol" line per transaction

    def __init__(
        self,
        reactor: Any,
        server: str,
        address: tuple[str, int],
        transaction_id: bytes,
        retransmission: Retransmission,
    ) -> None:
        self._reactor = reactor
        self._server = server
        self._address = address
        self._transaction_id = transaction_id
        self._request = encode_request(transaction_id)
        self._waits = retransmission.waits()
        self._sent = 0
        self._timer: Any = None
        self._port: Any = None
        self._finished = False
        self.done: Deferred[MappedAddress] = Deferred(self._cancel)

    def start(self, source: IPv4Address | None) -> Deferred[MappedAddress]:
        interface = "" if source is None else str(source)
        try:
            self._port = self._reactor.listenUDP(0, self, interface=interface)
        except CannotListenError as error:
            where = interface or "any address"
            self._finish(StunError(f"cannot open a UDP socket on {where}: {error.socketError}"))
            return self.done
        try:
            self._port.connect(*self._address)
        except OSError as error:
            self._finish(StunError(f"cannot reach STUN server {self._server}: {_reason(error)}"))
            return self.done
        self._send()
        return self.done

    # -- timers ----------------------------------------------------------------------------

    def _send(self) -> None:
        self._timer = None
        if self._port is None:
            return
        try:
            self._port.write(self._request)
        except OSError as error:
            self._finish(StunError(f"cannot send to STUN server {self._server}: {_reason(error)}"))
            return
        if self._finished:  # connectionRefused during the write
            return
        wait = self._waits[self._sent]
        self._sent += 1
        self._timer = self._reactor.callLater(wait, self._next)

    def _next(self) -> None:
        self._timer = None
        if self._sent < len(self._waits):
            log.debug(
                "STUN: no answer from {server} yet, sending request {n}",
                server=self._server,
                n=self._sent + 1,
            )
            self._send()
            return
        self._finish(
            StunError(
                f"no answer from STUN server {self._server} "
                f"({self._sent} requests in {sum(self._waits):g} s)"
            )
        )

    # -- DatagramProtocol ------------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._finished:
            return
        try:
            response = decode_response(datagram)
        except StunDecodeError as error:
            log.debug("STUN: dropped a reply from {server}: {error}", server=addr, error=error)
            return
        if response.transaction_id != self._transaction_id:
            log.debug("STUN: dropped a reply to another transaction from {server}", server=addr)
            return
        if isinstance(response, BindingError):
            self._finish(
                StunError(
                    f"STUN server {self._server} answered error {response.code} "
                    f"{_printable(response.reason)}".rstrip()
                )
            )
            return
        mapped = response.mapped
        if not isinstance(mapped.address, IPv4Address):
            self._finish(
                StunError(
                    f"STUN server {self._server} answered the IPv6 address {mapped.address} "
                    "to an IPv4 request"
                )
            )
            return
        self._finish(mapped)

    def connectionRefused(self) -> None:
        if not self._finished:
            self._finish(self._refused())

    def stopProtocol(self) -> None:
        """The socket closed under us: epoll reports an ICMP error on a connected UDP socket
        as a lost connection, and the reactor closes it. The error is still pending on it."""
        if self._finished:
            return
        port, self._port = self._port, None
        code = 0
        with contextlib.suppress(AttributeError, OSError):
            code = int(port.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        if code == errno.ECONNREFUSED:
            self._finish(self._refused())
        elif code:
            self._finish(StunError(f"cannot reach STUN server {self._server}: {os.strerror(code)}"))
        else:
            self._finish(StunError(f"the socket to STUN server {self._server} was closed"))

    def _refused(self) -> StunError:
        return StunError(
            f"STUN server {self._server} refused the request "
            "(ICMP port unreachable: nothing listens there)"
        )

    # -- the end ---------------------------------------------------------------------------

    def _close(self) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._port is not None:
            port, self._port = self._port, None
            port.stopListening()

    def _finish(self, outcome: MappedAddress | StunError) -> None:
        if self._finished:
            return
        self._close()
        if isinstance(outcome, StunError):
            self.done.errback(outcome)
        else:
            self.done.callback(outcome)

    def _cancel(self, _: Deferred[MappedAddress]) -> None:
        self._close()


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _printable(text: str, limit: int = 120) -> str:
    """A server's reason phrase, safe for one log line."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."

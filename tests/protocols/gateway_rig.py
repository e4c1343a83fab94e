"""The real gateway core for front-end tests: the service on ``task.Clock`` with the memory
backend and an in-memory lease store (the pattern of tests/gateway/test_service.py), plus a
recording datagram transport."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock as TaskClock
from twisted.python.failure import Failure

from backends.memory import MemoryBackend
from gateway.allocator import Allocator
from gateway.clock import Clock
from gateway.config import LifetimeConfig, PolicyConfig
from gateway.model import IPAddress, Mapping
from gateway.policy import Lan, Policy
from gateway.ports import GatewayEvent
from gateway.requests import Request, Result
from gateway.service import GatewayService
from gateway.store import LeaseStore
from gateway.table import MappingTable

EXTERNAL = IPv4Address("203.0.113.1")
NEW_EXTERNAL = IPv4Address("198.51.100.7")
GATEWAY_V4 = IPv4Address("192.168.1.1")
GATEWAY_V6 = IPv6Address("2001:db8:1::1")
CLIENT = IPv4Address("192.168.1.10")
OTHER = IPv4Address("192.168.1.11")
CLIENT_V6 = IPv6Address("2001:db8:1::10")
WAN_HOST = IPv4Address("198.51.100.99")
LAN = Lan(
    prefixes=(IPv4Network("192.168.1.0/24"), IPv6Network("2001:db8:1::/64")),
    own_addresses=frozenset({GATEWAY_V4, GATEWAY_V6}),
)


def is_lan(address: IPAddress) -> bool:
    return LAN.contains(address)


class Rig:
    """A started ``GatewayService`` and what it talks to."""

    def __init__(
        self,
        *,
        external: IPv4Address | None = EXTERNAL,
        lifetimes: LifetimeConfig | None = None,
        start: bool = True,
        **policy: Any,
    ) -> None:
        self.reactor = TaskClock()
        self.reactor.advance(1000.0)  # monotonic time is not 0 on a real router either
        self.backend = MemoryBackend()
        self.store = LeaseStore(":memory:")
        self.table = MappingTable(
            Policy(PolicyConfig(**policy), lifetimes or LifetimeConfig(), LAN),
            Allocator(random.Random(7)),
            external,
        )
        self.service = GatewayService(
            self.table, self.backend, self.store, Clock.for_tests(self.reactor)
        )
        self.events: list[GatewayEvent] = []
        self.service.subscribe(self.events.append)
        if start:
            self.service.start()

    def settle(self, deferred: Deferred[Any]) -> Any:
        """Run the reactor turn that commits, and return what ``deferred`` fired with."""
        out: list[Any] = []
        deferred.addBoth(out.append)
        self.reactor.advance(0)
        assert out, "the deferred never fired"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def apply(self, request: Request) -> Result:
        """A request from another front-end (or the admin), straight to the gateway."""
        result: Result = self.settle(self.service.handle(request))
        return result

    def mappings(self) -> list[Mapping]:
        return sorted(self.table, key=lambda m: m.uid)


class FakeDatagramTransport:
    """What ``DatagramProtocol`` sees of a UDP port: records every datagram written."""

    def __init__(self, host: str = str(GATEWAY_V4), port: int = 5351) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self._host = host
        self._port = port

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        ip_address(addr[0].partition("%")[0])  # like Twisted: IP literals only
        self.written.append((datagram, addr))

    def getHost(self) -> tuple[str, int]:
        return (self._host, self._port)

    def stopListening(self) -> None:
        pass

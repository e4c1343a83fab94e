"""A UPnP IGD on 127.0.0.1 over the real gateway core, for real clients (miniupnpc's upnpc).

``python -m tests.protocols.upnp.serve_igd STATE_DIR`` prints the root description URL on one
line (it listens on 127.0.0.2 too, on the same port), then serves until its standard input
closes (the test closes it) or 60 s pass. The LAN is 127.0.0.0/8 plus 192.168.1.0/24; two
mappings are there from the start (a static one and a NAT-PMP one, with markup in the
description) so that listings have something to show.
"""

from __future__ import annotations

import sys
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import Any

from twisted.internet import stdio
from twisted.internet.protocol import Protocol

from backends.memory import MemoryBackend
from gateway.allocator import Allocator
from gateway.clock import Clock
from gateway.config import LifetimeConfig, PolicyConfig
from gateway.model import Endpoint, Origin, Owner, Proto
from gateway.policy import Lan, Policy
from gateway.requests import MapPort
from gateway.service import GatewayService
from gateway.store import LeaseStore
from gateway.table import MappingTable
from protocols.upnp.description import UpnpSettings
from protocols.upnp.http import UpnpFrontEnd

LIFETIME = 60.0


class _StopOnEof(Protocol):
    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def connectionLost(self, reason: object = None) -> None:
        if self._reactor.running:
            self._reactor.stop()


def main(state_dir: str) -> None:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    lan = Lan(
        (IPv4Network("127.0.0.0/8"), IPv4Network("192.168.1.0/24")),
        frozenset({ip_address("192.168.1.1")}),
    )
    policy = Policy(PolicyConfig(), LifetimeConfig(), lan)
    table = MappingTable(policy, Allocator(), IPv4Address("203.0.113.1"))
    store = LeaseStore(Path(state_dir) / "leases.sqlite3")
    service = GatewayService(table, MemoryBackend(), store, Clock(reactor))
    service.start()
    client = IPv4Address("192.168.1.10")
    service.handle(
        MapPort(
            Owner(Origin.STATIC, IPv4Address("192.168.1.1")),
            Proto.TCP,
            Endpoint(client, 22),
            2222,
            0,
            description="ssh <admin> & co",
            exact=True,
        )
    )
    service.handle(
        MapPort(Owner(Origin.NATPMP, client), Proto.UDP, Endpoint(client, 4500), 4500, 3600)
    )
    front = UpnpFrontEnd(
        reactor,
        service,
        UpnpSettings(uuid="2fac1234-31f8-11b4-a222-08002b34c003"),
        lambda address: lan.contains(address),
    )
    port, _ = front.listen_all(["127.0.0.1", "127.0.0.2"])
    print(front.location("127.0.0.1", port), flush=True)
    stdio.StandardIO(_StopOnEof(reactor))
    reactor.callLater(LIFETIME, reactor.stop)
    reactor.run()
    front.stop()
    service.stop(keep_mappings=False)


if __name__ == "__main__":
    main(sys.argv[1])

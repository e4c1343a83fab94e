"""A real gateway core (service, table, policy, lease store, memory backend) on task.Clock,
with the UPnP state and dispatcher on top: what the UPnP tests drive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from backends.memory import MemoryBackend
from gateway.clock import Clock
from gateway.model import Origin, Proto
from gateway.requests import MapPort, Result
from gateway.service import GatewayService
from gateway.store import LeaseStore
from protocols.upnp.actions import (
    ActionDispatcher,
    CallContext,
    Fault,
    IgdState,
    LinkCounters,
    Reply,
    Success,
)
from protocols.upnp.description import Service, UpnpSettings, service_type
from protocols.upnp.soap import Cdata, SoapRequest
from tests.gateway.conftest import ep, make_table, owner

ROOT_UUID = "2fac1234-31f8-11b4-a222-08002b34c003"
CLIENT = "192.168.1.10"
OTHER = "192.168.1.20"
CLIENT6 = "2001:db8:1::10"
OTHER6 = "2001:db8:1::20"
IP = Service.WAN_IP_CONNECTION
FW = Service.WAN_IPV6_FIREWALL_CONTROL
COMMON = Service.WAN_COMMON_INTERFACE_CONFIG
L3F = Service.LAYER3_FORWARDING


@dataclass
class FakeLink:
    """A WAN link whose numbers the test sets."""

    counters_value: LinkCounters | None = None
    packets: dict[int, int] = field(default_factory=dict)
    timeouts: dict[Proto, int] = field(default_factory=dict)

    def counters(self) -> LinkCounters | None:
        return self.counters_value

    def pinhole_packets(self, uid: int) -> int | None:
        return self.packets.get(uid)

    def outbound_pinhole_timeout(self, proto: Proto) -> int | None:
        return self.timeouts.get(proto)


class Rig:
    def __init__(
        self,
        path: Path,
        settings: UpnpSettings | None = None,
        **policy: object,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.backend = MemoryBackend()
        self.store = LeaseStore(path / "leases.sqlite3")
        self.table = make_table(**policy)
        self.service = GatewayService(
            self.table, self.backend, self.store, Clock.for_tests(self.reactor)
        )
        self.service.start()
        self.settings = settings or UpnpSettings(uuid=ROOT_UUID)
        self.state = IgdState(self.service, self.settings)
        self.link = FakeLink()
        self.dispatcher = ActionDispatcher(self.service, self.settings, self.state, self.link)

    def settle(self, d: Deferred[object]) -> object:
        out: list[object] = []
        d.addBoth(out.append)
        self.reactor.advance(0)
        assert out, "no answer came"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def gateway(self, request: object) -> Result:
        result = self.settle(self.service.handle(request))  # type: ignore[arg-type]
        return result  # type: ignore[return-value]

    def natpmp_map(self, port: int, client: str = OTHER) -> None:
        self.gateway(
            MapPort(owner(Origin.NATPMP, client), Proto.TCP, ep(f"{client}:{port}"), port, 3600)
        )

    def reply(
        self,
        action: str,
        args: Sequence[tuple[str, str | None]] = (),
        *,
        service: Service = IP,
        version: int = 2,
        client: str = CLIENT,
        view: int = 2,
        namespace: str | None = None,
    ) -> Reply:
        request = SoapRequest(namespace or service_type(service, version), action, tuple(args))
        d = self.dispatcher.call(service, request, CallContext(ip_address(client), view))
        reply = self.settle(d)  # type: ignore[arg-type]
        assert isinstance(reply, Success | Fault)
        return reply

    def ok(
        self, action: str, args: Sequence[tuple[str, str | None]] = (), **kw: object
    ) -> dict[str, str]:
        reply = self.reply(action, args, **kw)  # type: ignore[arg-type]
        assert isinstance(reply, Success), reply
        return {
            name: value.value if isinstance(value, Cdata) else value for name, value in reply.outs
        }

    def fault(self, action: str, args: Sequence[tuple[str, str | None]] = (), **kw: object) -> int:
        reply = self.reply(action, args, **kw)  # type: ignore[arg-type]
        assert isinstance(reply, Fault), reply
        return reply.code


def add_args(
    external: int | str = 8080,
    proto: str = "TCP",
    internal: int | str = 8080,
    client: str = CLIENT,
    enabled: str = "1",
    description: str = "test",
    lease: int | str = 3600,
    remote: str = "",
) -> list[tuple[str, str | None]]:
    return [
        ("NewRemoteHost", remote),
        ("NewExternalPort", str(external)),
        ("NewProtocol", proto),
        ("NewInternalPort", str(internal)),
        ("NewInternalClient", client),
        ("NewEnabled", enabled),
        ("NewPortMappingDescription", description),
        ("NewLeaseDuration", str(lease)),
    ]


def key_args(
    external: int | str = 8080, proto: str = "TCP", remote: str = ""
) -> list[tuple[str, str | None]]:
    return [("NewRemoteHost", remote), ("NewExternalPort", str(external)), ("NewProtocol", proto)]


def range_args(
    start: int = 1024,
    end: int = 65535,
    proto: str = "TCP",
    manage: str = "1",
    number: int | None = None,
) -> list[tuple[str, str | None]]:
    args: list[tuple[str, str | None]] = [
        ("NewStartPort", str(start)),
        ("NewEndPort", str(end)),
        ("NewProtocol", proto),
        ("NewManage", manage),
    ]
    if number is not None:
        args.append(("NewNumberOfPorts", str(number)))
    return args


def list_args(
    start: int = 1024, end: int = 65535, proto: str = "TCP", manage: str = "1", number: int = 1000
) -> list[tuple[str, str | None]]:
    return range_args(start, end, proto, manage, number)


def pinhole_args(
    remote: str = "",
    remote_port: int = 0,
    client: str = CLIENT6,
    port: int = 5000,
    protocol: int = 6,
    lease: int | None = 3600,
) -> list[tuple[str, str | None]]:
    args: list[tuple[str, str | None]] = [
        ("RemoteHost", remote),
        ("RemotePort", str(remote_port)),
        ("InternalClient", client),
        ("InternalPort", str(port)),
        ("Protocol", str(protocol)),
    ]
    if lease is not None:
        args.append(("LeaseTime", str(lease)))
    return args

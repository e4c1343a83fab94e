"""gateway.netwatch: which rtnetlink events count, how bursts coalesce, and a real netlink
socket in a namespace of its own."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from twisted.internet.task import Clock

from gateway.netwatch import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    SETTLE,
    InterfaceWatcher,
    watch_interfaces,
)
from tests.netlab import Namespace, inside, unique_prefix


class Reactor(Clock):
    """task.Clock plus the reader registry a watcher uses."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


def link(kind: int, index: int, name: str) -> bytes:
    message = ifinfmsg()
    message["index"] = index
    message["attrs"] = [("IFLA_IFNAME", name)]
    message["header"]["type"] = kind
    message.encode()
    return bytes(message.data)


def address(kind: int, index: int, value: str = "203.0.113.9") -> bytes:
    message = ifaddrmsg()
    message["index"] = index
    message["family"] = 10 if ":" in value else 2
    message["prefixlen"] = 24
    message["attrs"] = [("IFA_ADDRESS", value)]
    message["header"]["type"] = kind
    message.encode()
    return bytes(message.data)


class Rig:
    def __init__(self, names: tuple[str, ...] = ("wan0", "br-lan")) -> None:
        self.reactor = Reactor()
        self.calls = 0
        self.watcher = InterfaceWatcher(self.reactor, names, self.count)

    def count(self) -> None:
        self.calls += 1

    def feed(self, *parts: bytes) -> int:
        self.watcher.feed(b"".join(parts))
        self.reactor.advance(SETTLE)
        return self.calls


def test_link_and_address_events_of_watched_interfaces_are_reported() -> None:
    rig = Rig()
    assert rig.feed(link(RTM_NEWLINK, 41, "wan0")) == 1
    assert rig.feed(address(RTM_NEWADDR, 41)) == 2  # known by its index now
    assert rig.feed(address(RTM_DELADDR, 41, "2001:db8::1")) == 3
    assert rig.feed(link(RTM_DELLINK, 41, "wan0")) == 4


def test_other_interfaces_are_ignored() -> None:
    rig = Rig()
    assert rig.feed(link(RTM_NEWLINK, 42, "docker0"), address(RTM_NEWADDR, 424242)) == 0


def test_a_burst_is_reported_once_after_it_settles() -> None:
    rig = Rig()
    rig.watcher.feed(link(RTM_NEWLINK, 43, "br-lan"))
    rig.reactor.advance(SETTLE / 2)
    rig.watcher.feed(address(RTM_NEWADDR, 43) + address(RTM_NEWADDR, 43, "fd77::1"))
    assert rig.calls == 0
    rig.reactor.advance(SETTLE)
    assert rig.calls == 1


def test_a_renamed_interface_is_followed() -> None:
    rig = Rig()
    rig.feed(link(RTM_NEWLINK, 44, "wan0"))
    assert rig.feed(link(RTM_NEWLINK, 44, "wan-old")) == 2  # wan0 went away
    assert rig.feed(address(RTM_NEWADDR, 44)) == 2


def test_garbage_from_netlink_does_not_break_the_watcher() -> None:
    rig = Rig()
    rig.feed(b"\xff" * 7)
    rig.feed(link(RTM_NEWLINK, 46, "wan0")[:20])
    assert rig.feed(link(RTM_NEWLINK, 46, "wan0")) >= 1


def test_a_failing_handler_does_not_stop_the_watcher() -> None:
    reactor = Reactor()
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    watcher = InterfaceWatcher(reactor, ["wan0"], fails)
    for _ in range(2):
        watcher.feed(link(RTM_NEWLINK, 45, "wan0"))
        reactor.advance(SETTLE)
    assert len(calls) == 2


@pytest.mark.netns
def test_a_real_netlink_socket_reports_an_interface_that_appears_and_gets_an_address() -> None:
    with Namespace(unique_prefix("r") + "-nw") as ns, inside(ns.name):
        reactor = Reactor()
        calls: list[float] = []
        stop = watch_interfaces(reactor, ["pgr-w0"], lambda: calls.append(time.monotonic()))
        try:
            [watcher] = reactor.readers
            assert watcher.fileno() >= 0

            def settle() -> int:
                time.sleep(0.1)
                watcher.doRead()
                reactor.advance(SETTLE)
                return len(calls)

            subprocess.run(["ip", "link", "add", "pgr-other", "type", "dummy"], check=False)
            subprocess.run(
                ["ip", "link", "add", "pgr-w0", "type", "veth", "peer", "name", "pgr-w1"],
                check=True,
            )
            assert settle() == 1
            subprocess.run(["ip", "addr", "add", "10.9.9.1/24", "dev", "pgr-w0"], check=True)
            assert settle() == 2
            subprocess.run(["ip", "addr", "add", "10.9.8.1/24", "dev", "pgr-w1"], check=True)
            assert settle() == 2
            subprocess.run(["ip", "link", "set", "pgr-w0", "up"], check=True)
            assert settle() == 3
        finally:
            stop()
        assert reactor.readers == []

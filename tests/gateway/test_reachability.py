"""The WAN reachability check (gateway.reachability) on a ``task.Clock`` with a scripted STUN
probe and the real service over the memory backend: what is private, what is logged (once, and
again only when the finding changes), what is refused under ``wan.private_address: refuse``,
that existing mappings are kept and come back, and that STUN failures change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock as TaskClock
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from gateway.clock import Clock
from gateway.config import StunConfig, WanConfig
from gateway.ctl import format_status, format_wan
from gateway.errors import GatewayError, Reason
from gateway.metrics import GatewayMetrics
from gateway.model import Origin, Proto
from gateway.reachability import (
    WanReachability,
    WanStatusAdmin,
    private_range,
    usable_address,
)
from gateway.requests import ExternalAddress, GetExternalAddress, Granted, MapPort
from tests.gateway.conftest import ep, owner
from tests.gateway.test_service import Rig

CGNAT = IPv4Address("100.64.0.2")
OUTSIDE = IPv4Address("198.51.100.1")
PUBLIC = IPv4Address("203.0.113.7")
SERVER = "198.51.100.2:3478"
STUN = StunConfig(server="198.51.100.2", interval=300)
BEHIND = (
    "WAN address 100.64.0.2 is behind another NAT: STUN server 198.51.100.2:3478 sees "
    "198.51.100.1; mappings made here are not reachable from the Internet"
)


@contextmanager
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "portgate.wan":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def lines(events: list[LogEvent]) -> list[tuple[str, str]]:
    return [(event["log_level"].name, formatEvent(event)) for event in events]


class Probe:
    """A scripted STUN probe: each call takes the next answer (an address, an exception, or
    None for "still waiting", to be fired by hand)."""

    def __init__(self, *answers: IPv4Address | Exception | None) -> None:
        self.answers = list(answers)
        self.sources: list[IPv4Address | None] = []
        self.waiting: list[Deferred[IPv4Address]] = []

    def __call__(self, source: IPv4Address | None) -> Deferred[IPv4Address]:
        self.sources.append(source)
        answer = self.answers.pop(0)
        if isinstance(answer, IPv4Address):
            return succeed(answer)
        if isinstance(answer, Exception):
            return fail(answer)
        d: Deferred[IPv4Address] = Deferred()
        self.waiting.append(d)
        return d


class Wan:
    """A service (memory backend, table at 203.0.113.1) with the check feeding it."""

    def __init__(
        self,
        tmp_path: Path,
        policy: Literal["warn", "refuse"] = "warn",
        stun: StunConfig | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.reactor = TaskClock()
        self.rig = Rig(tmp_path / "leases.sqlite3", self.reactor)
        self.rig.service.start()
        config = WanConfig(interface="wan0", stun=stun, private_address=policy)
        self.check = WanReachability(
            config, Clock.for_tests(self.reactor), self.rig.service.set_external_address, probe
        )

    def update(self, address: IPv4Address | None) -> None:
        self.check.update(address, source=address)
        self.reactor.advance(0)  # the service commits at the end of the turn

    @property
    def external(self) -> IPv4Address | None:
        return self.rig.service.external_address

    def answered_address(self) -> IPv4Address | None:
        result = self.rig.result(self.rig.service.handle(GetExternalAddress()))  # type: ignore[arg-type]
        assert isinstance(result, ExternalAddress)
        return result.address

    def map(self, port: int) -> object:
        request = MapPort(owner(Origin.NATPMP), Proto.TCP, ep(f"192.168.1.10:{port}"), port, 3600)
        try:
            return self.rig.result(self.rig.service.handle(request))  # type: ignore[arg-type]
        except GatewayError as error:
            return error.reason

    def externals(self) -> set[str]:
        return {str(m.external.address) for m in self.rig.table}


# -- what is private ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "RFC 1918"),
        ("172.31.255.1", "RFC 1918"),
        ("192.168.1.2", "RFC 1918"),
        ("100.64.0.2", "RFC 6598"),
        ("100.127.255.254", "RFC 6598"),
        ("192.0.0.2", "DS-Lite"),
        ("198.18.0.1", "benchmarking"),
        ("169.254.1.1", "link-local"),
        ("127.0.0.1", "loopback"),
        ("0.1.2.3", "this network"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_private_and_shared_ranges_are_private(address: str, kind: str) -> None:
    found = private_range(IPv4Address(address))
    assert found is not None and kind in found


@pytest.mark.parametrize(
    "address",
    [
        "100.128.0.1",
        "100.63.255.255",
        "8.8.8.8",
        "172.32.0.1",
        "192.0.1.1",
        # the documentation ranges stand in for public addresses in labs, demos and tests
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
    ],
)
def test_public_and_documentation_addresses_are_not_private(address: str) -> None:
    assert private_range(IPv4Address(address)) is None


def test_usable_address_refuses_only_private_addresses_under_refuse() -> None:
    assert usable_address(CGNAT, "warn") == CGNAT
    assert usable_address(CGNAT, "refuse") is None
    assert usable_address(CGNAT, "refuse", stun_sees=OUTSIDE) is None
    assert usable_address(CGNAT, "refuse", stun_sees=CGNAT) == CGNAT
    assert usable_address(PUBLIC, "refuse") == PUBLIC
    assert usable_address(None, "warn") is None


def test_a_probe_is_needed_exactly_with_stun() -> None:
    clock = Clock.for_tests(TaskClock())
    with pytest.raises(ValueError):
        WanReachability(WanConfig(interface="x", stun=STUN), clock, lambda a: None)
    with pytest.raises(ValueError):
        WanReachability(WanConfig(interface="x"), clock, lambda a: None, Probe())


# -- without STUN -------------------------------------------------------------------------------


def test_a_public_address_is_served_and_not_mentioned(tmp_path: Path) -> None:
    wan = Wan(tmp_path, "refuse")
    with logged() as events:
        wan.update(PUBLIC)
    assert events == []
    assert wan.external == PUBLIC
    assert wan.check.status()["behind_nat"] is False


def test_warn_serves_a_private_address_and_says_so_once(tmp_path: Path) -> None:
    wan = Wan(tmp_path, "warn")
    with logged() as events:
        wan.update(CGNAT)
        wan.update(CGNAT)
        wan.reactor.advance(3600)
        wan.update(CGNAT)
    assert lines(events) == [
        (
            "warn",
            "WAN address 100.64.0.2 is private (RFC 6598 shared address space, used by "
            "carrier-grade NAT): mappings made here are probably not reachable from the "
            "Internet; set wan.stun to check whether another NAT is in the way",
        )
    ]
    assert wan.external == CGNAT
    assert isinstance(wan.map(8080), Granted) and wan.externals() == {"100.64.0.2"}


def test_refuse_without_stun_refuses_a_private_address_and_keeps_the_mappings(
    tmp_path: Path,
) -> None:
    wan = Wan(tmp_path, "refuse")
    wan.map(8080)  # made at 203.0.113.1, the table's address before the check ran
    with logged() as events:
        wan.update(IPv4Address("192.168.0.2"))
    assert lines(events) == [
        (
            "warn",
            "WAN address 192.168.0.2 is private (RFC 1918 private address space): mappings "
            "made here are probably not reachable from the Internet; refusing mapping "
            "requests (wan.private_address: refuse)",
        )
    ]
    assert wan.external is None
    assert wan.answered_address() is None
    assert wan.map(9000) is Reason.NO_EXTERNAL_ADDRESS
    assert wan.externals() == {"203.0.113.1"}, "the existing mapping is kept where it was"
    # the WAN moves to a public address: served again, the mapping moves along
    wan.update(PUBLIC)
    assert wan.external == PUBLIC
    assert wan.externals() == {str(PUBLIC)}
    assert isinstance(wan.map(9000), Granted)


# -- with STUN ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["warn", "refuse"])
def test_stun_finds_another_nat_logs_one_clear_line_and_rechecks_at_the_interval(
    tmp_path: Path, policy: Literal["warn", "refuse"]
) -> None:
    probe = Probe(OUTSIDE, OUTSIDE, OUTSIDE)
    wan = Wan(tmp_path, policy, STUN, probe)
    with logged() as events:
        wan.update(CGNAT)
        wan.reactor.advance(299)
        assert len(probe.sources) == 1
        wan.reactor.advance(1)
        assert len(probe.sources) == 2
        wan.update(CGNAT)
        wan.reactor.advance(300)
    assert probe.sources == [CGNAT, CGNAT, CGNAT], "asked from the WAN address"
    tail = (
        "; refusing mapping requests (wan.private_address: refuse)"
        if policy == "refuse"
        else "; serving anyway (wan.private_address: warn)"
    )
    asking = (
        "WAN address 100.64.0.2 is private (RFC 6598 shared address space, used by "
        "carrier-grade NAT): asking STUN server 198.51.100.2:3478 whether another NAT is in "
        "the way"
    )
    if policy == "refuse":
        asking += "; mapping requests are refused until it answers"
    assert lines(events) == [("info", asking), ("warn", BEHIND + tail)]
    assert wan.check.behind_nat is True
    if policy == "refuse":
        assert wan.external is None
        assert wan.map(8080) is Reason.NO_EXTERNAL_ADDRESS
    else:
        assert wan.external == CGNAT
    assert wan.check.gauges() == (True, True)


def test_refuse_serves_once_stun_sees_the_address_unchanged(tmp_path: Path) -> None:
    """The CGN goes away (or never translated): STUN sees our own address."""
    probe = Probe(OUTSIDE, CGNAT)
    wan = Wan(tmp_path, "refuse", STUN, probe)
    wan.rig.service.set_external_address(None)
    wan.reactor.advance(0)
    with logged() as events:
        wan.update(CGNAT)
        assert wan.external is None
        wan.reactor.advance(300)
        wan.reactor.advance(0)
    assert wan.external == CGNAT
    assert wan.check.behind_nat is False
    assert lines(events)[-1] == (
        "info",
        "WAN address 100.64.0.2 is private (RFC 6598 shared address space, used by "
        "carrier-grade NAT), but STUN server 198.51.100.2:3478 sees it unchanged: no other "
        "NAT in the way; serving",
    )
    assert isinstance(wan.map(8080), Granted)
    assert wan.externals() == {"100.64.0.2"}


def test_mappings_kept_while_refused_come_back_when_the_nat_goes(tmp_path: Path) -> None:
    probe = Probe(CGNAT, OUTSIDE, CGNAT)
    wan = Wan(tmp_path, "refuse", STUN, probe)
    wan.update(CGNAT)
    assert wan.external == CGNAT
    wan.map(8080)
    assert wan.externals() == {"100.64.0.2"}
    wan.reactor.advance(300)  # now something translates
    assert wan.external is None
    assert wan.map(8081) is Reason.NO_EXTERNAL_ADDRESS
    assert wan.externals() == {"100.64.0.2"} and len(wan.rig.table) == 1
    wan.reactor.advance(300)  # and no longer
    assert wan.external == CGNAT
    assert wan.externals() == {"100.64.0.2"} and len(wan.rig.table) == 1


@pytest.mark.parametrize("policy", ["warn", "refuse"])
def test_an_unreachable_stun_server_is_logged_once_and_changes_nothing(
    tmp_path: Path, policy: Literal["warn", "refuse"]
) -> None:
    timeout = RuntimeError("no answer from STUN server 198.51.100.2:3478 (7 requests in 39.5 s)")
    probe = Probe(OUTSIDE, timeout, timeout, OUTSIDE, timeout)
    wan = Wan(tmp_path, policy, STUN, probe)
    wan.update(CGNAT)
    served = wan.external
    assert served == (CGNAT if policy == "warn" else None)
    with logged() as events:
        for _ in range(4):
            wan.reactor.advance(300)
    assert wan.external == served, "a failure does not flip the state"
    assert wan.check.behind_nat is True
    assert lines(events) == [
        (
            "warn",
            "cannot tell whether WAN address 100.64.0.2 is behind another NAT: no answer from "
            "STUN server 198.51.100.2:3478 (7 requests in 39.5 s); the last answer stands "
            "(198.51.100.1); asking again every 300 s",
        ),
        ("info", "STUN server 198.51.100.2:3478 answers again"),
        (
            "warn",
            "cannot tell whether WAN address 100.64.0.2 is behind another NAT: no answer from "
            "STUN server 198.51.100.2:3478 (7 requests in 39.5 s); the last answer stands "
            "(198.51.100.1); asking again every 300 s",
        ),
    ]
    assert wan.check.status()["stun_error"] == str(timeout)


def test_a_first_check_that_fails_does_not_block_and_is_retried(tmp_path: Path) -> None:
    probe = Probe(RuntimeError("cannot resolve STUN server stun.invalid: no such host"), OUTSIDE)
    wan = Wan(tmp_path, "refuse", STUN, probe)
    with logged() as events:
        wan.update(CGNAT)
    assert wan.external is None
    assert lines(events)[-1] == (
        "warn",
        "cannot tell whether WAN address 100.64.0.2 is behind another NAT: cannot resolve "
        "STUN server stun.invalid: no such host; mapping requests are refused meanwhile "
        "(wan.private_address: refuse); asking again every 300 s",
    )
    wan.reactor.advance(300)
    assert wan.check.behind_nat is True and probe.answers == []


def test_a_new_wan_address_cancels_the_pending_check_and_asks_again(tmp_path: Path) -> None:
    probe = Probe(None, OUTSIDE)
    wan = Wan(tmp_path, "refuse", STUN, probe)
    wan.update(CGNAT)
    [first] = probe.waiting
    other = IPv4Address("100.64.7.9")
    wan.update(other)
    assert first.called, "cancelled"
    assert probe.sources == [CGNAT, other]
    assert wan.check.status()["stun_sees"] == "198.51.100.1"
    assert wan.check.behind_nat is True


def test_a_public_address_is_not_put_to_stun_and_a_private_one_is(tmp_path: Path) -> None:
    probe = Probe(OUTSIDE)
    wan = Wan(tmp_path, "refuse", STUN, probe)
    wan.update(PUBLIC)
    wan.reactor.advance(3600)
    assert probe.sources == []
    wan.update(CGNAT)
    assert probe.sources == [CGNAT]
    # gone: no address, no check
    wan.update(None)
    assert wan.external is None
    wan.reactor.advance(3600)
    assert probe.sources == [CGNAT]


def test_stop_cancels_the_pending_check_and_the_timer(tmp_path: Path) -> None:
    probe = Probe(None)
    wan = Wan(tmp_path, "warn", STUN, probe)
    wan.update(CGNAT)
    wan.check.stop()
    assert probe.waiting[0].called
    wan.reactor.advance(3600)
    wan.check.update(IPv4Address("10.0.0.2"))
    assert probe.sources == [CGNAT], "no check after stop"


# -- status, metrics ----------------------------------------------------------------------------


def test_status_and_its_one_line_form(tmp_path: Path) -> None:
    wan = Wan(tmp_path, "refuse", STUN, Probe(OUTSIDE))
    wan.update(CGNAT)
    wan.reactor.advance(42)
    status = WanStatusAdmin(wan.rig.service, wan.check).status()
    assert status["external_address"] is None
    assert status["wan"] == {
        "address": "100.64.0.2",
        "private": "RFC 6598 shared address space, used by carrier-grade NAT",
        "private_address": "refuse",
        "stun_server": SERVER,
        "stun_sees": "198.51.100.1",
        "stun_checked_ago": 42,
        "stun_error": None,
        "behind_nat": True,
        "serving": False,
    }
    text = format_status(status)
    rows = dict(line.split(":", 1) for line in text.splitlines())
    assert rows["external address"].strip() == "unknown"
    assert rows["wan"].strip() == (
        "100.64.0.2, private (RFC 6598 shared address space, used by carrier-grade NAT); "
        "behind another NAT: STUN server 198.51.100.2:3478 sees 198.51.100.1; refusing "
        "mapping requests (wan.private_address: refuse)"
    )


def test_the_one_line_form_of_other_findings() -> None:
    assert format_wan({"address": None}) == "no IPv4 address"
    assert format_wan({"address": "203.0.113.1", "private": None}) == "203.0.113.1, public"
    assert format_wan(
        {
            "address": "10.0.0.2",
            "private": "RFC 1918 private address space",
            "private_address": "warn",
            "stun_server": None,
            "serving": True,
        }
    ) == (
        "10.0.0.2, private (RFC 1918 private address space); no STUN server set (wan.stun); "
        "serving (wan.private_address: warn)"
    )
    assert format_wan(
        {
            "address": "100.64.0.2",
            "private": "RFC 6598",
            "private_address": "refuse",
            "stun_server": SERVER,
            "behind_nat": None,
            "stun_error": "no answer",
            "serving": False,
        }
    ) == (
        "100.64.0.2, private (RFC 6598); not known yet whether behind another NAT (STUN server "
        "198.51.100.2:3478); last STUN check failed: no answer; refusing mapping requests "
        "(wan.private_address: refuse)"
    )


def test_the_metrics_follow_the_finding(tmp_path: Path) -> None:
    probe = Probe(OUTSIDE, CGNAT)
    wan = Wan(tmp_path, "warn", STUN, probe)
    metrics = GatewayMetrics()
    metrics.attach(wan.rig.service, wan=wan.check.gauges)

    def values() -> tuple[float | None, float | None]:
        registry = metrics.registry
        return (
            registry.get_sample_value("portgate_wan_private"),
            registry.get_sample_value("portgate_wan_behind_nat"),
        )

    wan.update(PUBLIC)
    assert values() == (0.0, 0.0)
    wan.update(CGNAT)
    assert values() == (1.0, 1.0)
    wan.reactor.advance(300)
    assert values() == (1.0, 0.0)
    metrics.detach()


def test_the_log_level_of_the_findings(tmp_path: Path) -> None:
    wan = Wan(tmp_path, "warn", STUN, Probe(OUTSIDE))
    with logged() as events:
        wan.update(CGNAT)
    assert [event["log_level"] for event in events] == [LogLevel.info, LogLevel.warn]

"""The service with the memory backend, a real lease store and Twisted's task.Clock."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock as TaskClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from backends.memory import MemoryBackend
from gateway.clock import Clock
from gateway.errors import GatewayError, Reason
from gateway.model import ChangeKind, Endpoint, MappingKey, Origin, Proto, kernel_view
from gateway.ports import EpochReset, ExternalAddressChanged, GatewayEvent, MappingsChanged
from gateway.requests import Granted, MapPort, Removed, UnmapPort
from gateway.service import GatewayService
from gateway.store import LeaseStore
from tests.gateway.conftest import EXTERNAL, ep, make_table, owner


class Rig:
    def __init__(
        self, path: Path, reactor: TaskClock | None = None, verify_interval: float = 300.0
    ) -> None:
        self.reactor = reactor or TaskClock()
        self.backend = MemoryBackend()
        self.store = LeaseStore(path)
        self.table = make_table()
        self.service = GatewayService(
            self.table,
            self.backend,
            self.store,
            Clock.for_tests(self.reactor),
            verify_interval=verify_interval,
        )
        self.events: list[GatewayEvent] = []
        self.service.subscribe(self.events.append)

    def result(self, d: Deferred[object]) -> object:
        out: list[object] = []
        d.addBoth(out.append)
        self.reactor.advance(0)
        assert out, "the reply never came"
        value = out[0]
        if isinstance(value, Failure):
            value.raiseException()
        return value

    def changes(self) -> list[ChangeKind]:
        return [c.kind for e in self.events if isinstance(e, MappingsChanged) for c in e.changes]


def natpmp_map(port: int, lifetime: int = 3600, client: str = "192.168.1.10") -> MapPort:
    return MapPort(owner(Origin.NATPMP, client), Proto.TCP, ep(f"{client}:{port}"), port, lifetime)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path / "leases.sqlite3")
    r.service.start()
    return r


def test_the_reply_waits_for_the_commit(rig: Rig) -> None:
    replies: list[object] = []
    rig.service.handle(natpmp_map(8080)).addCallback(replies.append)
    assert replies == []
    assert rig.backend.snapshot() == frozenset()
    rig.reactor.advance(0)
    assert len(replies) == 1
    granted = replies[0]
    assert isinstance(granted, Granted)
    assert rig.backend.snapshot() == {kernel_view(granted.mapping)}
    assert [m.uid for m in rig.store.load(rig.service.now(), 1_700_000_000.0)] == [
        granted.mapping.uid
    ]


def test_requests_in_one_turn_share_one_backend_batch(rig: Rig) -> None:
    first = rig.service.handle(natpmp_map(8080))
    second = rig.service.handle(natpmp_map(8081, client="192.168.1.11"))
    rig.reactor.advance(0)
    assert first.called and second.called
    assert len(rig.backend.batches) == 1
    assert len(rig.backend.batches[0]) == 2


def test_a_backend_failure_rolls_back_table_and_store(rig: Rig) -> None:
    rig.result(rig.service.handle(natpmp_map(9000)))
    rig.backend.fail_next()
    first = rig.service.handle(natpmp_map(8080))
    second = rig.service.handle(natpmp_map(8081, client="192.168.1.11"))
    errors: list[Failure] = []
    first.addErrback(errors.append)
    second.addErrback(errors.append)
    rig.reactor.advance(0)
    assert [f.value.reason for f in errors] == [Reason.BACKEND_FAILED] * 2  # type: ignore[attr-defined]
    assert [m.internal.port for m in rig.table] == [9000]
    assert [m.internal.port for m in rig.store.load(rig.service.now(), 1_700_000_000.0)] == [9000]
    assert len(rig.backend.snapshot()) == 1
    assert rig.service.stats.failed_batches == 1
    # and the gateway keeps working
    granted = rig.result(rig.service.handle(natpmp_map(8080)))
    assert isinstance(granted, Granted)
    assert len(rig.backend.snapshot()) == 2


def test_a_refused_batch_leaves_the_backend_in_line_with_the_table(rig: Rig) -> None:
    granted = rig.result(rig.service.handle(natpmp_map(8080)))
    assert isinstance(granted, Granted)
    key = granted.mapping.key
    holder = granted.mapping.owner
    rig.backend.simulate_external_delete(key)  # `nft delete element` from outside
    # the batch deletes what is no longer there: the backend refuses all of it
    errors: list[Failure] = []
    rig.service.handle(UnmapPort(holder, key)).addErrback(errors.append)
    rig.service.handle(natpmp_map(8081, client="192.168.1.11")).addErrback(errors.append)
    rig.reactor.advance(0)
    assert [f.value.reason for f in errors] == [Reason.BACKEND_FAILED] * 2  # type: ignore[attr-defined]
    assert [m.key for m in rig.table] == [key]
    # the backend holds the rolled-back table again, so the same requests now succeed
    assert rig.backend.snapshot() == {kernel_view(m) for m in rig.table}
    assert rig.service.stats.repairs == 1
    removed = rig.result(rig.service.handle(UnmapPort(holder, key)))
    assert isinstance(removed, Removed)
    assert isinstance(
        rig.result(rig.service.handle(natpmp_map(8081, client="192.168.1.11"))), Granted
    )
    assert rig.backend.snapshot() == {kernel_view(m) for m in rig.table}


def test_refused_requests_fail_at_once_without_a_batch(rig: Rig) -> None:
    d = rig.service.handle(
        MapPort(owner(Origin.NATPMP, "10.9.9.9"), Proto.TCP, ep("10.9.9.9:80"), 80, 60)
    )
    with pytest.raises(GatewayError) as caught:
        rig.result(d)
    assert caught.value.reason is Reason.NOT_LAN
    assert rig.backend.batches == []


def test_subscribers_see_changes_only_after_commit(rig: Rig) -> None:
    rig.events.clear()
    d = rig.service.handle(natpmp_map(8080))
    assert rig.events == []
    rig.result(d)
    assert rig.changes() == [ChangeKind.ADDED]


def test_a_lease_expires_from_table_backend_and_store(rig: Rig) -> None:
    rig.result(rig.service.handle(natpmp_map(8080, lifetime=60)))
    rig.reactor.advance(59)
    assert len(rig.table) == 1
    rig.reactor.advance(1.5)
    assert len(rig.table) == 0
    assert rig.backend.snapshot() == frozenset()
    assert rig.store.load(rig.service.now(), 1_700_000_000.0 + rig.service.now()) == []
    assert rig.changes() == [ChangeKind.ADDED, ChangeKind.EXPIRED]


def test_a_failed_expiry_is_retried(rig: Rig) -> None:
    rig.result(rig.service.handle(natpmp_map(8080, lifetime=60)))
    rig.backend.fail_next()
    rig.reactor.advance(61)
    assert len(rig.table) == 1, "the expiry was rolled back with the failed batch"
    rig.reactor.advance(6)
    assert len(rig.table) == 0
    assert rig.backend.snapshot() == frozenset()


def test_a_refresh_costs_no_backend_transaction(rig: Rig) -> None:
    rig.result(rig.service.handle(natpmp_map(8080, lifetime=60)))
    batches = len(rig.backend.batches)
    rig.reactor.advance(30)
    granted = rig.result(rig.service.handle(natpmp_map(8080, lifetime=60)))
    assert isinstance(granted, Granted) and not granted.created
    assert len(rig.backend.batches) == batches
    stored = rig.store.load(rig.service.now(), 1_700_000_000.0 + rig.service.now())
    assert stored[0].remaining(rig.service.now()) == 60
    rig.reactor.advance(59)
    assert len(rig.table) == 1


def test_a_restart_brings_leases_back_with_their_remaining_time(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite3"
    first = Rig(path)
    first.service.start()
    first.result(first.service.handle(natpmp_map(8080, lifetime=600)))
    first.reactor.advance(100)
    first.service.stop(keep_mappings=True)

    reactor = TaskClock()
    reactor.advance(first.reactor.seconds())  # wall time goes on; monotonic too
    second = Rig(path, reactor)
    second.service.start()
    [mapping] = list(second.table)
    assert mapping.remaining(second.service.now()) == 500
    assert second.backend.snapshot() == {kernel_view(mapping)}
    assert second.backend.installs == 1
    assert not any(isinstance(e, EpochReset) for e in second.events)
    assert second.service.epoch_seconds() >= 100


def test_stop_without_keeping_removes_everything(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite3"
    first = Rig(path)
    first.service.start()
    first.result(first.service.handle(natpmp_map(8080)))
    first.service.stop(keep_mappings=False)
    assert first.backend.snapshot() == frozenset()
    second = Rig(path)
    second.service.start()
    assert len(second.table) == 0
    assert any(isinstance(e, EpochReset) for e in second.events)


def test_a_flushed_backend_is_restored(rig: Rig) -> None:
    rig.result(rig.service.handle(natpmp_map(8080)))
    expected = rig.backend.snapshot()
    rig.backend.simulate_flush()
    rig.reactor.advance(2.1)
    assert rig.backend.snapshot() == expected
    assert rig.service.stats.repairs == 1


def test_an_entry_deleted_from_outside_is_put_back_at_the_next_full_check(rig: Rig) -> None:
    """The cheap check every 2 s sees the table there; the full one (every 300 s here,
    backend.nft.verify_interval) compares each entry."""
    granted = rig.result(rig.service.handle(natpmp_map(8080)))
    assert isinstance(granted, Granted)
    expected = rig.backend.snapshot()
    rig.backend.simulate_external_delete(granted.mapping.key)
    with capturedLogs() as events:
        rig.reactor.advance(60)
        assert rig.backend.snapshot() == frozenset()  # not yet: only the cheap checks ran
        rig.reactor.pump([2.0] * 130)
    assert rig.backend.snapshot() == expected
    assert rig.service.stats.repairs == 1
    [line] = [formatEvent(e) for e in events if "changed from outside" in formatEvent(e)]
    assert "put back 1 missing" in line
    rig.reactor.pump([2.0] * 200)  # nothing more to put right: nothing more said
    assert rig.service.stats.repairs == 1


def test_the_full_check_can_be_turned_off(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "leases.db", verify_interval=0)
    rig.service.start()
    granted = rig.result(rig.service.handle(natpmp_map(8080)))
    assert isinstance(granted, Granted)
    rig.backend.simulate_external_delete(granted.mapping.key)
    rig.reactor.pump([2.0] * 400)
    assert rig.backend.snapshot() == frozenset()


def test_a_new_external_address_moves_every_mapping(rig: Rig) -> None:
    rig.result(rig.service.handle(natpmp_map(8080)))
    rig.events.clear()
    new = IPv4Address("198.51.100.7")
    rig.service.set_external_address(new)
    rig.reactor.advance(0)
    [mapping] = list(rig.table)
    assert mapping.external.address == new
    assert {e.key.external.address for e in rig.backend.snapshot()} == {new}
    assert ExternalAddressChanged(EXTERNAL, new) in rig.events
    assert rig.changes() == [ChangeKind.UPDATED]


def test_upnp_delete_removes_from_kernel_and_store(rig: Rig) -> None:
    upnp = owner(Origin.UPNP)
    rig.result(
        rig.service.handle(MapPort(upnp, Proto.UDP, ep("192.168.1.10:5000"), 5000, 0, exact=True))
    )
    removed = rig.result(
        rig.service.handle(UnmapPort(upnp, MappingKey(Proto.UDP, Endpoint(EXTERNAL, 5000))))
    )
    assert isinstance(removed, Removed) and len(removed.mappings) == 1
    assert rig.backend.snapshot() == frozenset()
    assert rig.store.load(rig.service.now(), 1_700_000_000.0) == []


def test_status_reports_counts_and_backend(rig: Rig) -> None:
    rig.result(rig.service.handle(natpmp_map(8080)))
    status = rig.service.status()
    assert status["mappings"] == 1
    assert status["by_origin"] == {"static": 0, "upnp": 0, "natpmp": 1, "pcp": 0}
    assert status["external_address"] == str(EXTERNAL)
    backend = status["backend"]
    assert isinstance(backend, dict) and backend["name"] == "memory" and backend["healthy"]


def test_a_failed_address_change_leaves_the_old_address_in_force(rig: Rig) -> None:
    rig.result(rig.service.handle(natpmp_map(8080)))
    rig.events.clear()
    rig.backend.fail_next()
    rig.service.set_external_address(IPv4Address("198.51.100.7"))
    rig.reactor.advance(0)
    assert rig.service.external_address == EXTERNAL
    assert [m.external.address for m in rig.table] == [EXTERNAL]
    assert not any(isinstance(e, ExternalAddressChanged) for e in rig.events)
    granted = rig.result(rig.service.handle(natpmp_map(8081, client="192.168.1.11")))
    assert isinstance(granted, Granted) and granted.mapping.external.address == EXTERNAL
    # a later try goes through, and only then is the change announced
    rig.service.set_external_address(IPv4Address("198.51.100.7"))
    rig.reactor.advance(0)
    assert {m.external.address for m in rig.table} == {IPv4Address("198.51.100.7")}
    assert ExternalAddressChanged(EXTERNAL, IPv4Address("198.51.100.7")) in rig.events


def test_a_refusal_is_logged_once_per_client_and_reason_per_minute(rig: Rig) -> None:
    from twisted.logger import LogEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "portgate.service" and "refused" in str(
            event.get("log_format", "")
        ):
            lines.append(f"{event['client']} {event['reason']}")

    globalLogPublisher.addObserver(observe)
    try:
        policy = make_table(max_mappings_per_client=1).policy
        rig.service.set_policy(policy)
        rig.result(rig.service.handle(natpmp_map(8080)))
        for _ in range(5):
            with pytest.raises(GatewayError):
                rig.result(rig.service.handle(natpmp_map(8081)))
        assert lines == ["192.168.1.10 quota"]
        rig.reactor.advance(61)
        with pytest.raises(GatewayError):
            rig.result(rig.service.handle(natpmp_map(8082)))
        assert lines == ["192.168.1.10 quota"] * 2
    finally:
        globalLogPublisher.removeObserver(observe)

"""The SQLite lease store: exact round-trips, wall-clock lifetimes, batches, errors, crashes."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.model import (
    Change,
    ChangeKind,
    Endpoint,
    Kind,
    Mapping,
    MappingKey,
    Origin,
    Owner,
    Proto,
    RemoteFilter,
)
from gateway.store import SCHEMA_VERSION, LeaseStore, StoreError

REPO = Path(__file__).resolve().parents[2]

# Integral floats: every wall <-> monotonic conversion below is exact.
NOW = 1_000.0
WALL = 1_700_000_000.0


def port_map(
    uid: int = 1,
    *,
    proto: Proto = Proto.TCP,
    external_port: int = 8080,
    internal: str = "192.168.1.10",
    internal_port: int = 80,
    lifetime: int | None = 3600,
    origin: Origin = Origin.NATPMP,
    nonce: bytes | None = None,
    enabled: bool = True,
    filters: tuple[RemoteFilter, ...] = (),
    description: str = "",
) -> Mapping:
    return Mapping(
        uid=uid,
        kind=Kind.PORT_MAP,
        key=MappingKey(proto, Endpoint(IPv4Address("203.0.113.1"), external_port)),
        internal=Endpoint(ip_address(internal), internal_port),
        owner=Owner(origin, ip_address(internal), nonce),
        description=description,
        filters=filters,
        enabled=enabled,
        expires=None if lifetime is None else NOW + lifetime,
        created=NOW,
        lifetime=lifetime,
    )


def pinhole(uid: int = 2, *, port: int = 22, lifetime: int | None = 7200) -> Mapping:
    address = IPv6Address("2001:db8:1::10")
    return Mapping(
        uid=uid,
        kind=Kind.PINHOLE,
        key=MappingKey(Proto.UDP, Endpoint(address, port)),
        internal=Endpoint(address, port),
        owner=Owner(Origin.PCP, IPv6Address("2001:db8:1::20"), bytes(range(12)), True),
        description="ssh pinhole",
        filters=(
            RemoteFilter(ip_network("2001:db8:ffff::/48"), 0),
            RemoteFilter.host(IPv6Address("2001:db8:2::1"), 443),
        ),
        enabled=True,
        expires=None if lifetime is None else NOW - 100 + lifetime,
        created=NOW - 100,
        lifetime=lifetime,
    )


def added(*mappings: Mapping) -> list[Change]:
    return [Change(ChangeKind.ADDED, None, m) for m in mappings]


def removed(*mappings: Mapping) -> list[Change]:
    return [Change(ChangeKind.REMOVED, m, None) for m in mappings]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "leases.db"


@pytest.fixture
def store(path: Path) -> Iterator[LeaseStore]:
    opened = LeaseStore(path)
    yield opened
    opened.close()


def reopen_and_load(path: Path, now: float = NOW, wall: float = WALL) -> list[Mapping]:
    with LeaseStore(path) as again:
        return again.load(now, wall)


def rows_on_disk(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        (n,) = conn.execute("SELECT count(*) FROM mappings").fetchone()
        return int(n)
    finally:
        conn.close()


# -- round-trips -------------------------------------------------------------------------------


def test_port_maps_and_pinholes_round_trip_every_field(store: LeaseStore, path: Path) -> None:
    everything = [
        port_map(
            1,
            nonce=b"\x00\xffnonce-12345",
            description="Skype (UDP) \u00e9\u4e2d",
            filters=(RemoteFilter.host(IPv4Address("198.51.100.7")),),
        ),
        port_map(2, proto=Proto.UDP, external_port=5000, lifetime=None, origin=Origin.STATIC),
        port_map(3, external_port=6000, enabled=False, origin=Origin.UPNP, nonce=b""),
        port_map(4, external_port=7000, internal="::ffff:192.168.1.11", lifetime=1),
        pinhole(5),
        pinhole(6, port=443, lifetime=None),
    ]
    store.stage(added(*everything), NOW, WALL)
    store.commit()
    store.close()

    loaded = reopen_and_load(path)

    assert loaded == everything
    assert isinstance(loaded[3].internal.address, IPv6Address)
    assert isinstance(loaded[0].key.external.address, IPv4Address)
    assert loaded[2].owner.nonce == b""
    assert loaded[0].owner.nonce == b"\x00\xffnonce-12345"
    assert [type(f.prefix).__name__ for f in loaded[4].filters] == ["IPv6Network", "IPv6Network"]


def test_in_memory_store_round_trips() -> None:
    with LeaseStore(":memory:") as store:
        store.stage(added(port_map(1), pinhole(2)), NOW, WALL)
        store.commit()
        assert store.load(NOW, WALL) == [port_map(1), pinhole(2)]
        assert store.count() == 2


def test_load_returns_leases_ordered_by_uid(store: LeaseStore) -> None:
    store.stage(added(port_map(30, external_port=3), port_map(4, external_port=4)), NOW, WALL)
    store.stage(added(pinhole(17)), NOW, WALL)
    store.commit()
    assert [m.uid for m in store.load(NOW, WALL)] == [4, 17, 30]


# -- wall-clock lifetimes ----------------------------------------------------------------------


def test_remaining_lifetime_after_restart_loses_the_elapsed_wall_time(path: Path) -> None:
    with LeaseStore(path) as store:
        store.stage(added(port_map(1, lifetime=3600)), NOW, WALL)
        store.commit()

    # Reboot: monotonic restarts near zero while 600 s of wall time went by.
    later_now, later_wall = 50.0, WALL + 600
    (loaded,) = reopen_and_load(path, later_now, later_wall)

    assert loaded.remaining(later_now) == 3600 - 600
    assert loaded.expires == later_now + 3000
    assert loaded.created == later_now - 600
    assert loaded.lifetime == 3600


def test_permanent_leases_stay_permanent_after_any_time(path: Path) -> None:
    with LeaseStore(path) as store:
        store.stage(added(port_map(1, lifetime=None)), NOW, WALL)
        store.commit()
    (loaded,) = reopen_and_load(path, 3.0, WALL + 10 * 365 * 86400)
    assert loaded.expires is None
    assert loaded.remaining(3.0) is None


def test_expired_leases_are_dropped_on_load_and_deleted(store: LeaseStore, path: Path) -> None:
    short = port_map(1, external_port=1001, lifetime=100)
    long = port_map(2, external_port=1002, lifetime=1000)
    forever = port_map(3, external_port=1003, lifetime=None)
    store.stage(added(short, long, forever), NOW, WALL)
    store.commit()
    store.close()

    # Exactly at the expiry instant counts as expired.
    loaded = reopen_and_load(path, 7.0, WALL + 100)

    assert [m.uid for m in loaded] == [2, 3]
    assert rows_on_disk(path) == 2
    with LeaseStore(path) as again:
        assert again.count() == 2


def test_load_inside_an_open_batch_sees_the_batch(store: LeaseStore) -> None:
    store.stage(added(port_map(1)), NOW, WALL)
    assert [m.uid for m in store.load(NOW, WALL)] == [1]
    store.rollback()
    assert store.load(NOW, WALL) == []


# -- batches -----------------------------------------------------------------------------------


def test_rollback_leaves_the_previous_state(store: LeaseStore, path: Path) -> None:
    first = port_map(1)
    store.stage(added(first), NOW, WALL)
    store.commit()

    store.stage(removed(first), NOW, WALL)
    store.stage(added(port_map(2, external_port=9000)), NOW, WALL)
    store.rollback()

    assert store.load(NOW, WALL) == [first]
    store.close()
    assert reopen_and_load(path) == [first]


def test_several_stages_then_one_commit(store: LeaseStore, path: Path) -> None:
    a, b, c = port_map(1, external_port=1), port_map(2, external_port=2), pinhole(3)
    store.stage(added(a, b), NOW, WALL)
    store.stage(added(c), NOW, WALL)
    store.stage(removed(a), NOW, WALL)
    store.commit()
    store.close()
    assert reopen_and_load(path) == [b, c]


def test_commit_and_rollback_without_a_batch_do_nothing(store: LeaseStore) -> None:
    store.commit()
    store.rollback()
    assert store.count() == 0


def test_uncommitted_changes_are_invisible_to_another_connection(
    store: LeaseStore, path: Path
) -> None:
    store.stage(added(port_map(1)), NOW, WALL)
    store.set_meta("epoch", "42")

    other = LeaseStore(path)
    try:
        assert other.count() == 0
        assert other.get_meta("epoch") is None
        store.commit()
        assert other.count() == 1
        assert other.get_meta("epoch") == "42"
        assert other.load(NOW, WALL) == [port_map(1)]
    finally:
        other.close()


def test_uncommitted_changes_are_gone_after_reopen(path: Path) -> None:
    store = LeaseStore(path)
    store.stage(added(port_map(1)), NOW, WALL)
    store.commit()
    store.stage(added(port_map(2, external_port=2)), NOW, WALL)
    store.close()
    assert reopen_and_load(path) == [port_map(1)]


def test_refresh_rewrites_the_lease(store: LeaseStore, path: Path) -> None:
    old = port_map(1, lifetime=60)
    store.stage(added(old), NOW, WALL)
    store.commit()
    new = replace(old, expires=NOW + 500 + 7200, lifetime=7200)
    store.stage([Change(ChangeKind.REFRESHED, old, new)], NOW + 500, WALL + 500)
    store.commit()
    store.close()
    assert reopen_and_load(path) == [new]


def test_an_update_that_moves_the_external_port_keeps_one_row(
    store: LeaseStore, path: Path
) -> None:
    old = port_map(7, external_port=8080, internal_port=80)
    store.stage(added(old), NOW, WALL)
    store.commit()

    moved = replace(
        old,
        key=MappingKey(Proto.TCP, Endpoint(IPv4Address("203.0.113.1"), 9090)),
        internal=Endpoint(IPv4Address("192.168.1.10"), 8000),
        enabled=False,
    )
    store.stage([Change(ChangeKind.UPDATED, old, moved)], NOW, WALL)
    store.commit()
    store.close()

    (loaded,) = reopen_and_load(path)
    assert loaded == moved
    assert loaded.external.port == 9090
    assert rows_on_disk(path) == 1


def test_expired_change_deletes_the_lease(store: LeaseStore) -> None:
    lease = port_map(1)
    store.stage(added(lease), NOW, WALL)
    store.stage([Change(ChangeKind.EXPIRED, lease, None)], NOW, WALL)
    store.commit()
    assert store.count() == 0


def test_a_failing_stage_rolls_back_the_whole_batch(store: LeaseStore, path: Path) -> None:
    kept = port_map(1)
    store.stage(added(kept), NOW, WALL)
    store.commit()

    store.stage(added(port_map(2, external_port=2)), NOW, WALL)
    with pytest.raises(StoreError, match="cannot stage"):
        store.stage(
            added(port_map(3, external_port=3), port_map(2**70, external_port=4)), NOW, WALL
        )
    store.commit()  # nothing is left open to commit

    assert store.load(NOW, WALL) == [kept]
    with pytest.raises(StoreError, match="without a 'before'"):
        store.stage([Change(ChangeKind.REMOVED, None, None)], NOW, WALL)
    store.close()
    assert reopen_and_load(path) == [kept]


def test_replace_all_leaves_exactly_the_given_leases(store: LeaseStore, path: Path) -> None:
    store.stage(added(port_map(1), port_map(2, external_port=2)), NOW, WALL)
    store.commit()
    store.set_meta("epoch", "1")

    store.replace_all([pinhole(9), port_map(2, external_port=22)], NOW, WALL)
    store.close()

    assert reopen_and_load(path) == [port_map(2, external_port=22), pinhole(9)]
    with LeaseStore(path) as again:
        assert again.get_meta("epoch") == "1"


# -- meta --------------------------------------------------------------------------------------


def test_meta_values_persist_and_can_be_overwritten(path: Path) -> None:
    with LeaseStore(path) as store:
        assert store.get_meta("epoch") is None
        store.set_meta("epoch", "1")
        store.set_meta("epoch", "2")
        store.set_meta("external", "203.0.113.1")
    with LeaseStore(path) as store:
        assert store.get_meta("epoch") == "2"
        assert store.get_meta("external") == "203.0.113.1"


def test_meta_set_during_a_batch_belongs_to_the_batch(store: LeaseStore) -> None:
    store.set_meta("epoch", "1")
    store.stage(added(port_map(1)), NOW, WALL)
    store.set_meta("epoch", "2")
    store.rollback()
    assert store.get_meta("epoch") == "1"


# -- files and errors --------------------------------------------------------------------------


def test_a_new_store_gets_a_private_directory_wal_and_full_sync(path: Path) -> None:
    with LeaseStore(path) as store:
        store.set_meta("k", "v")
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        conn = store._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with LeaseStore(empty) as store:
        store.stage(added(port_map(1)), NOW, WALL)
        store.commit()
    assert reopen_and_load(empty) == [port_map(1)]


def _one_line_error(path: Path) -> str:
    with pytest.raises(StoreError) as caught:
        LeaseStore(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is certainly not an SQLite database\n" * 50)
    assert "is not a portgate store" in _one_line_error(junk)
    assert junk.read_bytes().startswith(b"this is certainly not")


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    assert "is not a portgate store" in _one_line_error(foreign)


def test_a_store_with_a_newer_schema_is_refused(path: Path) -> None:
    LeaseStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    assert "newer" in _one_line_error(path)


def test_a_directory_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plainfile").write_text("x")
    assert "cannot create store directory" in _one_line_error(
        tmp_path / "plainfile" / "sub" / "leases.db"
    )


def test_a_closed_store_refuses_work(store: LeaseStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.load(NOW, WALL)
    with pytest.raises(StoreError, match="closed"):
        store.stage(added(port_map(1)), NOW, WALL)


# -- property: the store equals a model of what was committed ----------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.none() | st.integers(1, 10**6)),
        st.tuples(st.just("refresh"), st.integers(0, 50), st.none() | st.integers(1, 10**6)),
        st.tuples(st.just("update"), st.integers(0, 50), st.integers(1, 65535)),
        st.tuples(st.just("remove"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("commit")),
        st.tuples(st.just("rollback")),
        st.tuples(st.just("reopen")),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_reopened_store_equals_the_committed_model(steps: list[tuple[object, ...]]) -> None:
    committed: dict[int, Mapping] = {}
    pending: dict[int, Mapping] = {}
    next_uid = 1
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "leases.db"
        store = LeaseStore(path)
        try:
            for step in steps:
                name = step[0]
                existing = sorted(pending)
                if name == "add":
                    lifetime = step[1]
                    assert lifetime is None or isinstance(lifetime, int)
                    lease = port_map(next_uid, external_port=next_uid, lifetime=lifetime)
                    if next_uid % 2:
                        lease = replace(pinhole(next_uid, port=next_uid), expires=lease.expires)
                    next_uid += 1
                    store.stage(added(lease), NOW, WALL)
                    pending[lease.uid] = lease
                elif name in ("refresh", "update", "remove") and existing:
                    index = step[1]
                    assert isinstance(index, int)
                    before = pending[existing[index % len(existing)]]
                    if name == "refresh":
                        extra = step[2]
                        assert extra is None or isinstance(extra, int)
                        after = replace(
                            before,
                            expires=None if extra is None else NOW + extra,
                            lifetime=extra,
                        )
                        store.stage([Change(ChangeKind.REFRESHED, before, after)], NOW, WALL)
                        pending[after.uid] = after
                    elif name == "update":
                        port = step[2]
                        assert isinstance(port, int)
                        key = MappingKey(before.proto, Endpoint(before.external.address, port))
                        after = replace(before, key=key, enabled=not before.enabled)
                        store.stage([Change(ChangeKind.UPDATED, before, after)], NOW, WALL)
                        pending[after.uid] = after
                    else:
                        kind = ChangeKind.EXPIRED if step[2] else ChangeKind.REMOVED
                        store.stage([Change(kind, before, None)], NOW, WALL)
                        del pending[before.uid]
                elif name == "commit":
                    store.commit()
                    committed = dict(pending)
                elif name == "rollback":
                    store.rollback()
                    pending = dict(committed)
                elif name == "reopen":
                    store.close()
                    store = LeaseStore(path)
                    pending = dict(committed)
            store.close()
            store = LeaseStore(path)
            assert store.load(NOW, WALL) == [committed[uid] for uid in sorted(committed)]
        finally:
            store.close()


# -- crash: kill -9 after the commit loses nothing ---------------------------------------------

_WRITER = """
import sys
from dataclasses import replace
from ipaddress import IPv4Address
from gateway.model import Change, ChangeKind, Endpoint, Kind, Mapping, MappingKey, Origin, Owner
from gateway.model import Proto
from gateway.store import LeaseStore

path, batches, split = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "split"
store = LeaseStore(path)
gateway = IPv4Address("203.0.113.1")
client = IPv4Address("192.168.1.10")

def lease(uid, lifetime):
    return Mapping(
        uid=uid, kind=Kind.PORT_MAP,
        key=MappingKey(Proto.UDP, Endpoint(gateway, 1024 + uid)),
        internal=Endpoint(client, 1024 + uid), owner=Owner(Origin.NATPMP, client),
        expires=100.0 + lifetime, created=100.0, lifetime=lifetime,
    )

for b in range(batches):
    if b:
        old = lease(3 * (b - 1), 0)
        refresh = [Change(ChangeKind.REFRESHED, old, replace(old, lifetime=b))]
        store.stage(refresh, 0.0, 2e9, durable=not split)
        if split:  # a batch of refreshes alone, as the service commits it: without fsync
            store.commit()
    new = [lease(3 * b + k, 0) for k in range(3)]
    store.stage([Change(ChangeKind.ADDED, None, m) for m in new[:2]], 0.0, 2e9)
    store.stage([Change(ChangeKind.ADDED, None, new[2])], 0.0, 2e9)
    store.commit()
    print(b, flush=True)
"""


@pytest.mark.parametrize("split", [False, True], ids=["refresh-with-adds", "refresh-alone"])
@pytest.mark.parametrize("seed", range(8))
def test_every_batch_reported_committed_survives_kill_9(
    tmp_path: Path, seed: int, split: bool
) -> None:
    """Also when refreshes are committed on their own without waiting for the disk: a crash
    of the process loses nothing the store acknowledged."""
    rng = random.Random(seed)
    path = tmp_path / "crash" / "leases.db"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), "100000", "split" if split else "one"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    reported = -1
    try:
        for _ in range(rng.randint(1, 40)):
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.wait()}"
            reported = int(line)
        if rng.random() < 0.5:
            # Land somewhere inside a later batch rather than right after a print.
            for _ in range(rng.randint(1, 2000)):
                pass
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert reported >= 0

    by_uid = {m.uid: m for m in reopen_and_load(path, 0.0, 2e9)}

    # Whole batches only, in order: 0..last, at least every batch reported.
    last = max(by_uid) // 3
    assert last >= reported
    assert sorted(by_uid) == list(range(3 * (last + 1)))
    # Each batch's refresh of its predecessor is there too (atomic with the adds).
    for b in range(last):
        assert by_uid[3 * b].lifetime == b + 1
    # (alone, the next refresh may have landed before the crash stopped the next adds)
    assert by_uid[3 * last].lifetime in ((0, last + 1) if split else (0,))


def test_a_batch_without_fsync_leaves_the_store_durable_for_the_next(tmp_path: Path) -> None:
    """``durable=False`` relaxes that one batch only, whether it commits or not."""
    store = LeaseStore(tmp_path / "leases.db")
    lease = Mapping(
        uid=1,
        kind=Kind.PORT_MAP,
        key=MappingKey(Proto.UDP, Endpoint(ip_address("203.0.113.1"), 4000)),
        internal=Endpoint(ip_address("192.168.1.10"), 4000),
        owner=Owner(Origin.NATPMP, ip_address("192.168.1.10")),
        expires=200.0,
        created=100.0,
        lifetime=100,
    )
    try:
        conn = store._connection()
        for end in (store.commit, store.rollback):
            store.stage([Change(ChangeKind.ADDED, None, lease)], 0.0, 2e9, durable=False)
            (mode,) = conn.execute("PRAGMA synchronous").fetchone()
            assert mode == 1  # NORMAL for this batch
            end()
            (mode,) = conn.execute("PRAGMA synchronous").fetchone()
            assert mode == 2  # FULL again
        assert [m.uid for m in store.load(0.0, 2e9)] == [1]
    finally:
        store.close()

"""A Hypothesis state machine driving the shared table against a naive model.

The model is a plain dict of uid -> Mapping, kept up to date only from the changes the table
reports; after every step it must equal the table. Requests draw from small pools of clients,
ports and lifetimes so that conflicts, refreshes, quotas and ownership refusals happen often.

Checked after every step: external keys are unique among port maps; pinhole 5-tuples are
unique; nothing outlives its lease; ``next_deadline()`` is the earliest expiry; every index
agrees with a full scan; replaying every change ever reported (and not reverted) onto an empty
table rebuilds it exactly; no uid is ever handed out twice; a refused request changes nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gateway.allocator import Allocator
from gateway.errors import GatewayError, Reason
from gateway.model import (
    Change,
    ChangeKind,
    Endpoint,
    IPAddress,
    Kind,
    Mapping,
    MappingKey,
    Origin,
    Owner,
    Proto,
    RemoteFilter,
)
from gateway.requests import (
    ClosePinhole,
    Flush,
    Granted,
    MapPort,
    OpenPinhole,
    Removed,
    Request,
    UnmapInternal,
    UnmapPort,
    UnmapRange,
    UpdatePinhole,
)
from gateway.table import MappingTable
from tests.gateway.conftest import EXTERNAL, make_policy, make_table

NEW_EXTERNAL = IPv4Address("198.51.100.7")
ADMIN = Owner(Origin.STATIC, IPv4Address("127.0.0.1"))
CLIENTS = [ip_address("192.168.1.10"), ip_address("192.168.1.11"), ip_address("192.168.1.12")]
CLIENTS6 = [ip_address("2001:db8:1::10"), ip_address("2001:db8:1::11")]
NONCES = [b"a" * 12, b"b" * 12]
INTERNAL_PORTS = [5000, 5001]
# 0 = any; 1023 is refused by the default ACL; UDP 5350-5351 are reserved
EXTERNAL_PORTS = [0, 1023, 5350, 5351, 6000, 6001, 6002]
LIFETIMES = [0, 1, 30, 120, 3600]
STEPS = [0.5, 1.0, 29.0, 30.0, 120.0, 600.0, 3600.0]
FILTERS: list[tuple[RemoteFilter, ...]] = [(), (RemoteFilter.host(ip_address("2001:db8:9::1")),)]

origins = st.sampled_from(list(Origin))
protos = st.sampled_from(list(Proto))


@dataclass(frozen=True)
class MapArgs:
    """What a MapPort step asks for (drawn from small pools, so requests collide)."""

    origin: Origin
    client: IPAddress
    host: IPAddress
    for_itself: bool
    internal_port: int
    external_port: int
    lifetime: int
    exact: bool
    upnp_v1: bool
    proto: Proto
    nonce: bytes


map_args = st.builds(
    MapArgs,
    origin=origins,
    client=st.sampled_from(CLIENTS),
    host=st.sampled_from(CLIENTS),
    for_itself=st.booleans(),
    internal_port=st.sampled_from(INTERNAL_PORTS),
    external_port=st.sampled_from(EXTERNAL_PORTS),
    lifetime=st.sampled_from(LIFETIMES),
    exact=st.booleans(),
    upnp_v1=st.booleans(),
    proto=protos,
    nonce=st.sampled_from(NONCES),
)


def contents(table: MappingTable) -> dict[int, Mapping]:
    return {m.uid: m for m in table}


def internal_key(m: Mapping) -> tuple[Proto, IPAddress, int]:
    return (m.proto, m.internal.address, m.internal.port)


def check_indexes(table: MappingTable) -> None:
    """Every index of the table agrees with a full scan of its entries.

    The indexes are private; reading them here is the point of the check.
    """
    entries = list(table)
    port_maps = [m for m in entries if m.kind is Kind.PORT_MAP]
    pinholes = [m for m in entries if m.kind is Kind.PINHOLE]

    keys = Counter(m.key for m in port_maps)
    assert all(n == 1 for n in keys.values()), f"duplicate external keys: {keys}"
    for m in port_maps:
        assert table.by_key(m.key) == m
    assert table._by_key == {m.key: m.uid for m in port_maps}
    assert list(table._port_map_order) == sorted(m.uid for m in port_maps)

    holes = Counter((m.proto, m.internal, m.filters) for m in pinholes)
    assert all(n == 1 for n in holes.values()), f"duplicate pinholes: {holes}"
    assert table._pinholes == {(m.proto, m.internal, m.filters): m.uid for m in pinholes}

    by_internal: dict[tuple[Proto, IPAddress, int], set[int]] = {}
    by_client: dict[IPAddress, set[int]] = {}
    for m in entries:
        by_internal.setdefault(internal_key(m), set()).add(m.uid)
        by_client.setdefault(m.owner.client, set()).add(m.uid)
    assert {
        key: {held} if isinstance(held, int) else held for key, held in table._by_internal.items()
    } == by_internal
    assert all(isinstance(held, int) or len(held) > 1 for held in table._by_internal.values())
    assert table._by_client == by_client
    for client in [*CLIENTS, *CLIENTS6, ADMIN.client]:
        assert table.count_for(client) == len(by_client.get(client, ()))

    deadlines = [m.expires for m in entries if m.expires is not None]
    assert table.next_deadline() == (min(deadlines) if deadlines else None)


class TableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = make_table()
        self.model: dict[int, Mapping] = {}
        self.history: list[Change] = []
        self.uids_given: set[int] = set()
        self.now = 0.0
        self.secure = True
        self.per_client = 128
        self.total = 8192
        # (changes, model before) of the last request, for revert
        self.last: tuple[list[Change], dict[int, Mapping]] | None = None

    @initialize(
        secure=st.booleans(),
        per_client=st.sampled_from([2, 3, 128]),
        total=st.sampled_from([6, 8192]),
        seed=st.integers(0, 2**16),
    )
    def setup(self, secure: bool, per_client: int, total: int, seed: int) -> None:
        self.secure, self.per_client, self.total = secure, per_client, total
        self.table = make_table(
            seed, secure_mode=secure, max_mappings_per_client=per_client, max_mappings=total
        )

    # -- bookkeeping -------------------------------------------------------------------------------

    def record(self, changes: list[Change]) -> None:
        """Bring the model along with the reported changes, checking each one fits it."""
        for change in changes:
            if change.kind is ChangeKind.ADDED:
                assert change.before is None and change.after is not None
                assert change.after.uid not in self.uids_given, "uid handed out twice"
                self.uids_given.add(change.after.uid)
            if change.before is not None:
                assert self.model.get(change.before.uid) == change.before
                del self.model[change.before.uid]
            if change.after is not None:
                assert change.after.uid not in self.model
                self.model[change.after.uid] = change.after
        self.history.extend(changes)

    def apply(self, request: Request) -> tuple[object, list[Change]] | GatewayError:
        before = dict(self.model)
        deadline = self.table.next_deadline()
        try:
            result, changes = self.table.apply(request, self.now)
        except GatewayError as error:
            event(f"{type(request).__name__}: {error.reason.name}")
            assert contents(self.table) == before, "a refused request changed the table"
            assert self.table.next_deadline() == deadline
            self.last = None
            return error
        event(f"{type(request).__name__}: {'+'.join(c.kind.name for c in changes) or 'no change'}")
        self.record(changes)
        self.last = (changes, before) if changes else None
        return result, changes

    def port_maps(self) -> list[Mapping]:
        return [m for m in self.model.values() if m.kind is Kind.PORT_MAP]

    @staticmethod
    def count_for_in(model: dict[int, Mapping], client: IPAddress) -> int:
        return sum(1 for m in model.values() if m.owner.client == client)

    def owner_for(self, origin: Origin, client: IPAddress, nonce: bytes) -> Owner:
        if origin is Origin.STATIC:
            return ADMIN
        return Owner(origin, client, nonce if origin is Origin.PCP else None)

    # -- requests ----------------------------------------------------------------------------------

    @rule(args=map_args)
    def map_port(self, args: MapArgs) -> None:
        origin, client = args.origin, args.client
        # NAT-PMP always maps for the source address
        host = client if origin is Origin.NATPMP or args.for_itself else args.host
        exact = args.exact and args.external_port != 0 and origin is not Origin.NATPMP
        request = MapPort(
            self.owner_for(origin, client, args.nonce),
            args.proto,
            Endpoint(host, args.internal_port),
            args.external_port,
            args.lifetime,
            exact=exact,
            upnp_v1=args.upnp_v1 and origin is Origin.UPNP,
        )
        before = dict(self.model)
        outcome = self.apply(request)
        if isinstance(outcome, GatewayError):
            self.check_map_refusal(request, outcome.reason, before)
        else:
            result, changes = outcome
            assert isinstance(result, Granted)
            self.check_map_grant(request, result, changes, before)

    def check_map_refusal(self, r: MapPort, reason: Reason, before: dict[int, Mapping]) -> None:
        """Each refusal has its cause in the model."""
        origin = r.owner.origin
        if reason in (Reason.CONFLICT, Reason.CONFLICT_FOREIGN):
            assert r.exact
            assert self.table.external_address is not None
            key = MappingKey(r.proto, Endpoint(self.table.external_address, r.external_port))
            held = next(
                (m for m in before.values() if m.kind is Kind.PORT_MAP and m.key == key), None
            )
            if held is None:
                # the port of the other transport is another host's NAT-PMP companion port
                assert reason is Reason.CONFLICT_FOREIGN and origin is not Origin.STATIC
                assert self.companion(r, before) is not None
            else:
                same_mechanism = held.owner.origin is origin and origin is not Origin.STATIC
                assert (reason is Reason.CONFLICT) == same_mechanism
        elif reason is Reason.QUOTA:
            assert self.count_for_in(before, r.owner.client) >= self.per_client
        elif reason is Reason.TABLE_FULL:
            assert len(before) >= self.total
        elif reason is Reason.NOT_OWNER:
            # a PCP entry for the endpoint made under another nonce
            assert origin is Origin.PCP
            assert any(
                m.owner.origin is Origin.PCP and m.owner.nonce != r.owner.nonce
                for m in self.same_endpoint(r, before)
            )
        elif reason is Reason.THIRD_PARTY:
            assert r.internal.address != r.owner.client
        elif reason is Reason.BAD_LIFETIME:
            assert r.lifetime == 0 and origin in (Origin.NATPMP, Origin.PCP)
        elif reason is Reason.RESERVED_PORT:
            assert r.exact and r.proto is Proto.UDP and r.external_port in (5350, 5351)
        elif reason is Reason.PORT_DENIED:
            assert r.exact and r.external_port == 1023
        else:
            assert reason is Reason.NO_EXTERNAL_ADDRESS, reason
            assert self.table.external_address is None

    def companion(self, r: MapPort, before: dict[int, Mapping]) -> Mapping | None:
        assert self.table.external_address is not None
        other = Proto.UDP if r.proto is Proto.TCP else Proto.TCP
        key = MappingKey(other, Endpoint(self.table.external_address, r.external_port))
        return next(
            (
                m
                for m in before.values()
                if m.key == key
                and m.owner.origin is Origin.NATPMP
                and m.internal.address != r.internal.address
            ),
            None,
        )

    def check_map_grant(
        self, r: MapPort, result: Granted, changes: list[Change], before: dict[int, Mapping]
    ) -> None:
        origin = r.owner.origin
        mapping = result.mapping
        assert mapping.kind is Kind.PORT_MAP
        assert mapping.external.address == self.table.external_address
        assert not (r.proto is Proto.UDP and mapping.external.port in (5350, 5351))
        if r.exact and result.created:
            assert mapping.external.port == r.external_port
        if result.created and origin is not Origin.STATIC:
            # never another host's NAT-PMP companion port (RFC 6886 §3.3)
            other = Proto.UDP if r.proto is Proto.TCP else Proto.TCP
            assert not any(
                m.key == MappingKey(other, mapping.external)
                and m.owner.origin is Origin.NATPMP
                and m.internal.address != r.internal.address
                for m in before.values()
            )
        same_endpoint = self.same_endpoint(r, before)
        if origin in (Origin.NATPMP, Origin.PCP) and same_endpoint:
            # the existing entry for the endpoint is returned, never a second one
            assert not result.created
            assert mapping.uid in {m.uid for m in same_endpoint}
        if result.created:
            assert [c.kind for c in changes] == [ChangeKind.ADDED]
            assert all(m.key != mapping.key for m in before.values())
            if not r.owner.is_admin:
                assert len(before) < self.total
                assert self.count_for_in(before, r.owner.client) < self.per_client
        else:
            assert mapping.uid in before
        if not result.owned:
            # another mechanism's entry, handed out as it is
            assert changes == []
            assert mapping.owner.origin is not origin
            assert before[mapping.uid] == mapping
            return
        assert mapping.internal == r.internal
        expected_expiry = None if result.lifetime is None else self.now + result.lifetime
        assert mapping.expires == expected_expiry
        if not result.created:
            # only the owner refreshes or updates (protocols.md §7.2)
            previous = before[mapping.uid]
            assert previous.owner.origin is origin
            if origin is Origin.PCP:
                assert previous.owner.nonce == r.owner.nonce
            elif origin is Origin.NATPMP:
                assert previous.owner.client == r.owner.client
            elif origin is Origin.UPNP:
                assert previous.internal.address == r.internal.address

    @staticmethod
    def same_endpoint(r: MapPort, before: dict[int, Mapping]) -> list[Mapping]:
        wanted = (r.proto, r.internal.address, r.internal.port)
        return [m for m in before.values() if m.kind is Kind.PORT_MAP and internal_key(m) == wanted]

    # mapping requests are the most interesting steps: give them three rules' weight
    @rule(args=map_args)
    def map_port_more(self, args: MapArgs) -> None:
        self.map_port(args)

    @rule(args=map_args)
    def map_port_again(self, args: MapArgs) -> None:
        self.map_port(args)

    @rule(
        origin=origins,
        client=st.sampled_from(CLIENTS),
        external_port=st.sampled_from(EXTERNAL_PORTS[1:]),
        proto=protos,
        address=st.sampled_from([EXTERNAL, NEW_EXTERNAL]),
    )
    def unmap_port(
        self,
        origin: Origin,
        client: IPAddress,
        external_port: int,
        proto: Proto,
        address: IPv4Address,
    ) -> None:
        key = MappingKey(proto, Endpoint(address, external_port))
        held = next((m for m in self.port_maps() if m.key == key), None)
        outcome = self.apply(UnmapPort(self.owner_for(origin, client, NONCES[0]), key))
        if held is None:
            assert isinstance(outcome, GatewayError) and outcome.reason is Reason.NOT_FOUND
        elif isinstance(outcome, GatewayError):
            assert outcome.reason is Reason.NOT_OWNER
            assert origin is not Origin.STATIC
        else:
            assert outcome[0] == Removed((held,))

    @rule(
        origin=st.sampled_from([Origin.NATPMP, Origin.PCP]),
        client=st.sampled_from(CLIENTS + CLIENTS6),
        port=st.sampled_from(INTERNAL_PORTS),
        proto=protos,
        nonce=st.sampled_from(NONCES),
    )
    def unmap_internal(
        self, origin: Origin, client: IPAddress, port: int, proto: Proto, nonce: bytes
    ) -> None:
        internal = Endpoint(client, port)
        present = [m for m in self.model.values() if internal_key(m) == (proto, client, port)]
        outcome = self.apply(UnmapInternal(self.owner_for(origin, client, nonce), proto, internal))
        if isinstance(outcome, GatewayError):
            assert outcome.reason is Reason.NOT_OWNER
            assert present
            return
        result, _ = outcome
        assert isinstance(result, Removed)
        assert set(result.mappings) <= set(present)
        assert all(m.owner.origin is origin for m in result.mappings)
        if not result.mappings:
            assert not present  # something there but nothing of ours: NOT_OWNER

    @rule(
        client=st.sampled_from(CLIENTS),
        proto=protos,
        start=st.sampled_from([0, 5351, 6000]),
        end=st.sampled_from([5350, 6001, 65535]),
    )
    def unmap_range(self, client: IPAddress, proto: Proto, start: int, end: int) -> None:
        outcome = self.apply(UnmapRange(Owner(Origin.UPNP, client), proto, start, end))
        if isinstance(outcome, GatewayError):
            assert outcome.reason in (Reason.BAD_REQUEST, Reason.NOT_FOUND)
            assert (outcome.reason is Reason.BAD_REQUEST) == (start > end)
            return
        result, _ = outcome
        assert isinstance(result, Removed) and result.mappings
        for m in result.mappings:
            assert m.owner.origin is Origin.UPNP and m.proto is proto
            assert start <= m.external.port <= end
            if self.secure:
                assert client in (m.owner.client, m.internal.address)

    @rule(
        origin=origins,
        client=st.sampled_from(CLIENTS + CLIENTS6),
        proto=st.one_of(st.none(), protos),
        nonce=st.sampled_from(NONCES),
    )
    def flush(self, origin: Origin, client: IPAddress, proto: Proto | None, nonce: bytes) -> None:
        requester = self.owner_for(origin, client, nonce)
        if requester.is_admin:
            expected = [m for m in self.model.values() if m.owner.client == client]
            request = Flush(requester, client=client, proto=proto)
        else:
            expected = [
                m
                for m in self.model.values()
                if m.owner.client == client
                and m.owner.origin is origin
                and (origin is not Origin.PCP or m.owner.nonce == nonce)
            ]
            request = Flush(requester, proto=proto)
        expected = sorted(
            (m for m in expected if proto is None or m.proto is proto), key=lambda m: m.uid
        )
        outcome = self.apply(request)
        assert not isinstance(outcome, GatewayError)
        assert outcome[0] == Removed(tuple(expected))

    @rule(
        origin=st.sampled_from([Origin.UPNP, Origin.PCP, Origin.STATIC]),
        client=st.sampled_from(CLIENTS6),
        host=st.sampled_from(CLIENTS6),
        port=st.sampled_from(INTERNAL_PORTS),
        proto=protos,
        filters=st.sampled_from(FILTERS),
        lifetime=st.sampled_from([0, 1, 30, 3600, 86401]),
        nonce=st.sampled_from(NONCES),
    )
    def open_pinhole(
        self,
        origin: Origin,
        client: IPAddress,
        host: IPAddress,
        port: int,
        proto: Proto,
        filters: tuple[RemoteFilter, ...],
        lifetime: int,
        nonce: bytes,
    ) -> None:
        requester = self.owner_for(origin, client, nonce)
        internal = Endpoint(host, port)
        before = dict(self.model)
        outcome = self.apply(OpenPinhole(requester, proto, internal, lifetime, filters=filters))
        if isinstance(outcome, GatewayError):
            return
        result, changes = outcome
        assert isinstance(result, Granted)
        hole = result.mapping
        assert hole.kind is Kind.PINHOLE and hole.internal == internal
        if result.created:
            assert [c.kind for c in changes] == [ChangeKind.ADDED]
            assert all(
                (m.proto, m.internal, m.filters) != (proto, internal, filters)
                for m in before.values()
                if m.kind is Kind.PINHOLE
            )
        else:
            assert hole.uid in before

    @rule(
        origin=st.sampled_from([Origin.UPNP, Origin.STATIC]),
        client=st.sampled_from(CLIENTS6),
        pick=st.integers(0, 20),
        lifetime=st.sampled_from([0, 60, 3600]),
        close=st.booleans(),
    )
    def touch_pinhole(
        self, origin: Origin, client: IPAddress, pick: int, lifetime: int, close: bool
    ) -> None:
        uids = sorted(self.model) or [1]
        uid = uids[pick % len(uids)] if pick < 16 else 10_000 + pick  # now and then a missing one
        requester = self.owner_for(origin, client, NONCES[0])
        target = self.model.get(uid)
        request: Request = (
            ClosePinhole(requester, uid) if close else UpdatePinhole(requester, uid, lifetime)
        )
        outcome = self.apply(request)
        if target is None or target.kind is not Kind.PINHOLE:
            assert isinstance(outcome, GatewayError) and outcome.reason is Reason.NOT_FOUND
        elif not isinstance(outcome, GatewayError):
            result, _ = outcome
            if close:
                assert result == Removed((target,))
            else:
                assert isinstance(result, Granted) and result.mapping.uid == uid

    # -- time, address, rollback -------------------------------------------------------------------

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: float) -> None:
        self.now += step
        doomed = {m.uid for m in self.model.values() if m.expires is not None}
        doomed = {uid for uid in doomed if (self.model[uid].expires or 0) <= self.now}
        changes = self.table.expire(self.now)
        assert all(c.kind is ChangeKind.EXPIRED for c in changes)
        assert {c.mapping.uid for c in changes} == doomed
        self.record(changes)
        self.last = None

    @rule(address=st.sampled_from([EXTERNAL, NEW_EXTERNAL, EXTERNAL, NEW_EXTERNAL, None]))
    def set_external_address(self, address: IPv4Address | None) -> None:
        changes = self.table.set_external_address(address)
        assert all(c.kind is ChangeKind.UPDATED for c in changes)
        self.record(changes)
        self.last = None
        if address is not None:
            assert all(m.external.address == address for m in self.port_maps())

    @precondition(lambda self: self.last is not None)
    @rule()
    def revert_last(self) -> None:
        assert self.last is not None
        changes, before = self.last
        deadline_before = min(
            (m.expires for m in before.values() if m.expires is not None), default=None
        )
        self.table.revert(changes)
        assert contents(self.table) == before
        assert self.table.next_deadline() == deadline_before
        self.model = dict(before)
        del self.history[len(self.history) - len(changes) :]
        self.last = None

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def table_equals_the_model(self) -> None:
        assert contents(self.table) == self.model

    @invariant()
    def indexes_agree_with_a_full_scan(self) -> None:
        check_indexes(self.table)

    @invariant()
    def nothing_outlives_its_lease(self) -> None:
        assert all(m.expires is None or m.expires > self.now for m in self.table)

    @invariant()
    def replaying_the_history_rebuilds_the_table(self) -> None:
        rebuilt = MappingTable(make_policy(), Allocator(random.Random(0)), EXTERNAL)
        rebuilt.replay(self.history)
        assert contents(rebuilt) == self.model
        check_indexes(rebuilt)


TableMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_table_state = TableMachine.TestCase

"""The one mapping table all front-ends share: ownership, conflicts, lifetimes, quotas.

Synchronous and free of I/O: ``apply(request, now)`` returns the result and the list of
changes it made; the service commits those changes to the kernel and the store, and calls
``revert(changes)`` if the commit fails. Indexes (by external key, internal endpoint, client,
expiry) keep every request path free of scans over the whole table.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

from sortedcontainers import SortedList

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
from gateway.policy import Policy
from gateway.requests import (
    ClosePinhole,
    ExternalAddress,
    Flush,
    Found,
    GetByUid,
    GetExternalAddress,
    GetMapping,
    GetMappingByIndex,
    Granted,
    Listing,
    ListMappings,
    MapPort,
    OpenPinhole,
    Removed,
    Request,
    Result,
    UnmapInternal,
    UnmapPort,
    UnmapRange,
    UpdatePinhole,
)

_K = TypeVar("_K")

#: UPnP pinhole UniqueIDs are 16-bit; port mappings take ids above that range.
PINHOLE_ID_MAX = 65535
FIRST_PORT_MAP_UID = PINHOLE_ID_MAX + 1
InternalKey = tuple[Proto, IPAddress, int]
PinholeKey = tuple[Proto, Endpoint, tuple[RemoteFilter, ...]]


def _not_owner(mapping: Mapping, now: float, whose: str = "") -> GatewayError:
    """NOT_OWNER for ``mapping``, with its remaining lease (PCP answers with it)."""
    whose = whose or f"{mapping.owner.origin.value} client {mapping.owner.client}"
    return GatewayError(
        Reason.NOT_OWNER,
        f"{mapping.describe()} belongs to {whose}",
        mapping=mapping,
        lifetime=mapping.remaining(now),
    )


def _internal_key(mapping: Mapping) -> InternalKey:
    return (mapping.proto, mapping.internal.address, mapping.internal.port)


def _pinhole_key(mapping: Mapping) -> PinholeKey:
    return (mapping.proto, mapping.internal, mapping.filters)


class MappingTable:
    def __init__(
        self,
        policy: Policy,
        allocator: Allocator,
        external_address: IPv4Address | None = None,
    ) -> None:
        self.policy = policy
        self.allocator = allocator
        self.external_address = external_address
        self._by_uid: dict[int, Mapping] = {}
        self._port_map_order: SortedList = SortedList()  # uids of port maps, creation order
        self._by_key: dict[MappingKey, int] = {}
        #: one uid, or a set once an endpoint has several entries (rare: a uid per mapping as
        #: a set of one cost 245 bytes each, the biggest item of a large table)
        self._by_internal: dict[InternalKey, int | set[int]] = {}
        self._by_client: dict[IPAddress, set[int]] = {}
        self._pinholes: dict[PinholeKey, int] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._next_uid = FIRST_PORT_MAP_UID
        self._pinhole_cursor = 1

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_uid)

    def __iter__(self) -> Iterator[Mapping]:
        return iter(self._by_uid.values())

    def get(self, uid: int) -> Mapping | None:
        return self._by_uid.get(uid)

    def by_key(self, key: MappingKey) -> Mapping | None:
        uid = self._by_key.get(key)
        return None if uid is None else self._by_uid[uid]

    def count_for(self, client: IPAddress) -> int:
        return len(self._by_client.get(client, ()))

    def counts_by_origin(self) -> dict[Origin, int]:
        counts = dict.fromkeys(Origin, 0)
        for mapping in self._by_uid.values():
            counts[mapping.owner.origin] += 1
        return counts

    # -- the primitives every change is made of ---------------------------------------------

    def _put(self, mapping: Mapping) -> None:
        uid = mapping.uid
        self._by_uid[uid] = mapping
        if mapping.kind is Kind.PORT_MAP:
            self._by_key[mapping.key] = uid
            self._port_map_order.add(uid)
        else:
            self._pinholes[_pinhole_key(mapping)] = uid
        key = _internal_key(mapping)
        held = self._by_internal.get(key)
        if held is None:
            self._by_internal[key] = uid
        elif isinstance(held, int):
            self._by_internal[key] = {held, uid}
        else:
            held.add(uid)
        self._by_client.setdefault(mapping.owner.client, set()).add(uid)
        if mapping.expires is not None:
            heapq.heappush(self._deadlines, (mapping.expires, uid))
        if mapping.kind is Kind.PORT_MAP and uid >= self._next_uid:
            self._next_uid = uid + 1

    def _drop(self, mapping: Mapping) -> None:
        uid = mapping.uid
        del self._by_uid[uid]
        if mapping.kind is Kind.PORT_MAP:
            del self._by_key[mapping.key]
            self._port_map_order.remove(uid)
        else:
            del self._pinholes[_pinhole_key(mapping)]
        self._discard_internal(_internal_key(mapping), uid)
        self._discard(self._by_client, mapping.owner.client, uid)
        # the deadline heap is cleaned lazily (see next_deadline)

    def _discard_internal(self, key: InternalKey, uid: int) -> None:
        held = self._by_internal.get(key)
        if held is None:
            return
        if isinstance(held, int):
            if held == uid:
                del self._by_internal[key]
            return
        held.discard(uid)
        if len(held) == 1:
            self._by_internal[key] = next(iter(held))
        elif not held:
            del self._by_internal[key]

    def _for_internal(self, proto: Proto, internal: Endpoint) -> tuple[int, ...] | set[int]:
        held = self._by_internal.get((proto, internal.address, internal.port))
        if held is None:
            return ()
        return (held,) if isinstance(held, int) else held

    @staticmethod
    def _discard(index: dict[_K, set[int]], key: _K, uid: int) -> None:
        members = index.get(key)
        if members is not None:
            members.discard(uid)
            if not members:
                del index[key]

    def _add(self, mapping: Mapping) -> Change:
        self._put(mapping)
        return Change(ChangeKind.ADDED, None, mapping)

    def _remove(self, mapping: Mapping, kind: ChangeKind = ChangeKind.REMOVED) -> Change:
        self._drop(mapping)
        return Change(kind, mapping, None)

    def _swap(self, old: Mapping, new: Mapping, kind: ChangeKind) -> Change:
        self._drop(old)
        self._put(new)
        return Change(kind, old, new)

    def replay(self, changes: Iterable[Change]) -> None:
        """Apply recorded changes (e.g. to rebuild a table from its history)."""
        for change in changes:
            if change.before is not None:
                self._drop(change.before)
            if change.after is not None:
                self._put(change.after)

    def revert(self, changes: Sequence[Change]) -> None:
        """Undo changes, newest first (the backend refused them)."""
        for change in reversed(changes):
            if change.after is not None:
                self._drop(change.after)
            if change.before is not None:
                self._put(change.before)

    def restore(self, mappings: Iterable[Mapping]) -> list[Mapping]:
        """Load entries (from the store at start). Returns those that clash with an entry
        already loaded and were left out."""
        dropped: list[Mapping] = []
        for mapping in mappings:
            clash = (
                mapping.uid in self._by_uid
                or (mapping.kind is Kind.PORT_MAP and mapping.key in self._by_key)
                or (mapping.kind is Kind.PINHOLE and _pinhole_key(mapping) in self._pinholes)
            )
            if clash:
                dropped.append(mapping)
            else:
                self._put(mapping)
        return dropped

    def _new_uid(self) -> int:
        """Port mappings: ids from 65536 up, in creation order (GetGenericPortMappingEntry)."""
        uid = self._next_uid
        self._next_uid += 1
        return uid

    def _new_pinhole_uid(self) -> int:
        """Pinholes: ids in 1-65535, since UPnP's UniqueID is a ui2; the next free one after
        the last given, wrapping round, so a long-lived gateway never runs out."""
        for step in range(PINHOLE_ID_MAX):
            uid = (self._pinhole_cursor - 1 + step) % PINHOLE_ID_MAX + 1
            if uid not in self._by_uid:
                self._pinhole_cursor = uid % PINHOLE_ID_MAX + 1
                return uid
        raise GatewayError(Reason.TABLE_FULL, "every pinhole id is in use")

    # -- time ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap:
            expires, uid = heap[0]
            mapping = self._by_uid.get(uid)
            if mapping is not None and mapping.expires == expires:
                return expires
            heapq.heappop(heap)
        return None

    def expire(self, now: float) -> list[Change]:
        changes: list[Change] = []
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                return changes
            _, uid = heapq.heappop(self._deadlines)
            changes.append(self._remove(self._by_uid[uid], ChangeKind.EXPIRED))

    def set_external_address(self, address: IPv4Address | None) -> list[Change]:
        """Re-home every port mapping to a new external address (single-WAN gateway).

        Entries still at another address (e.g. leases restored from the store) move too, also
        when ``address`` is the current one; entries already there are left alone. While the
        address is unknown (None) mappings keep their last address; new requests fail with
        NO_EXTERNAL_ADDRESS.
        """
        self.external_address = address
        if address is None:
            return []
        changes: list[Change] = []
        for uid in list(self._port_map_order):
            mapping = self._by_uid[uid]
            if mapping.external.address == address:
                continue
            moved = replace(
                mapping,
                key=MappingKey(mapping.proto, Endpoint(address, mapping.external.port)),
            )
            changes.append(self._swap(mapping, moved, ChangeKind.UPDATED))
        return changes

    # -- requests --------------------------------------------------------------------------

    def apply(self, request: Request, now: float) -> tuple[Result, list[Change]]:
        match request:
            case MapPort():
                return self._map_port(request, now)
            case UnmapPort():
                return self._unmap_port(request, now)
            case UnmapInternal():
                return self._unmap_internal(request, now)
            case UnmapRange():
                return self._unmap_range(request)
            case Flush():
                return self._flush(request)
            case OpenPinhole():
                return self._open_pinhole(request, now)
            case UpdatePinhole():
                return self._update_pinhole(request, now)
            case ClosePinhole():
                return self._close_pinhole(request, now)
            case GetMapping():
                found = self.by_key(request.key)
                if found is None:
                    raise GatewayError(Reason.NOT_FOUND, f"no mapping for {request.key}")
                return Found(found, found.remaining(now)), []
            case GetMappingByIndex():
                if not 0 <= request.index < len(self._port_map_order):
                    raise GatewayError(Reason.NOT_FOUND, f"no mapping at index {request.index}")
                mapping = self._by_uid[self._port_map_order[request.index]]
                return Found(mapping, mapping.remaining(now)), []
            case GetByUid():
                by_uid = self._by_uid.get(request.uid)
                if by_uid is None:
                    raise GatewayError(Reason.NOT_FOUND, f"no entry with id {request.uid}")
                return Found(by_uid, by_uid.remaining(now)), []
            case ListMappings():
                return self._list(request, now), []
            case GetExternalAddress():
                return ExternalAddress(self.external_address), []
        raise GatewayError(Reason.UNSUPPORTED, f"unknown request {type(request).__name__}")

    # MapPort ------------------------------------------------------------------------------

    def _map_port(self, r: MapPort, now: float) -> tuple[Result, list[Change]]:
        owner = r.owner
        if self.external_address is None:
            raise GatewayError(Reason.NO_EXTERNAL_ADDRESS, "the external address is not known")
        if not isinstance(r.internal.address, IPv4Address):
            raise GatewayError(Reason.UNSUPPORTED, "port mappings need an IPv4 internal address")
        if r.internal.port == 0:
            raise GatewayError(Reason.BAD_REQUEST, "the internal port must not be 0")
        if r.exact and r.external_port == 0:
            raise GatewayError(Reason.BAD_REQUEST, "an exact mapping needs an external port")
        self.policy.check_source(owner)
        self.policy.check_target(owner, r.internal)
        lifetime = self.policy.clamp_lifetime(owner.origin, r.lifetime, r.upnp_v1)
        expires = None if lifetime is None else now + lifetime

        if owner.origin in (Origin.NATPMP, Origin.PCP):
            existing = self._existing_for_internal(owner, r.proto, r.internal, Kind.PORT_MAP, now)
            if existing is not None:
                return self._refresh_or_share(existing, r, lifetime, expires, now)

        key = MappingKey(r.proto, Endpoint(self.external_address, r.external_port))
        held = self.by_key(key) if r.external_port else None
        # AddPortMapping updates the client's own entry in place (even to another internal
        # port); AddAnyPortMapping only refreshes the very same mapping, and otherwise wants a
        # port of its own rather than to take over one the client uses for something else
        if (
            held is not None
            and self._may_update(owner, held, r.internal)
            and (r.exact or held.internal == r.internal)
        ):
            if r.exact:
                # the new internal endpoint must pass the ACL like a new mapping would
                self._check_port(owner, r.proto, r.internal, r.external_port)
            if r.exact or self._allowed(owner, r.proto, r.internal, r.external_port):
                updated = replace(
                    held,
                    internal=r.internal,
                    description=r.description,
                    filters=r.filters,
                    enabled=r.enabled,
                    expires=expires,
                    lifetime=lifetime,
                )
                kind = (
                    ChangeKind.REFRESHED
                    if (held.internal, held.filters, held.enabled, held.description)
                    == (updated.internal, updated.filters, updated.enabled, updated.description)
                    else ChangeKind.UPDATED
                )
                change = self._swap(held, updated, kind)
                return Granted(updated, lifetime, created=False), [change]
        if r.exact:
            if held is not None:
                same_origin = held.owner.origin is owner.origin and not owner.is_admin
                raise GatewayError(
                    Reason.CONFLICT if same_origin else Reason.CONFLICT_FOREIGN,
                    f"{key} is already mapped to {held.internal}",
                    mapping=held,
                    lifetime=held.remaining(now),
                )
            self._check_port(owner, r.proto, r.internal, r.external_port)
            companion = self._companion(owner, r.proto, r.internal, r.external_port)
            if companion is not None:
                raise GatewayError(
                    Reason.CONFLICT_FOREIGN,
                    f"{key} is kept for {companion.describe()} (RFC 6886 §3.3)",
                    mapping=companion,
                    lifetime=companion.remaining(now),
                )
        self._check_quota(owner)
        port = r.external_port
        if not r.exact:
            chosen = self.allocator.choose(
                r.external_port, lambda p: self._usable(owner, r.proto, r.internal, p)
            )
            if chosen is None:
                raise GatewayError(Reason.NO_PORTS, "no free external port is allowed")
            port = chosen
        mapping = Mapping(
            uid=self._new_uid(),
            kind=Kind.PORT_MAP,
            key=MappingKey(r.proto, Endpoint(self.external_address, port)),
            internal=r.internal,
            owner=owner,
            description=r.description,
            filters=r.filters,
            enabled=r.enabled,
            expires=expires,
            created=now,
            lifetime=lifetime,
        )
        return Granted(mapping, lifetime), [self._add(mapping)]

    def _may_update(self, owner: Owner, held: Mapping, internal: Endpoint) -> bool:
        """UPnP (and the admin) update an entry in place when it is theirs: same origin and
        the same internal client (protocols.md §7.2)."""
        if held.owner.origin is not owner.origin or owner.origin not in (
            Origin.UPNP,
            Origin.STATIC,
        ):
            return False
        return held.internal.address == internal.address

    def _existing_for_internal(
        self, owner: Owner, proto: Proto, internal: Endpoint, kind: Kind, now: float
    ) -> Mapping | None:
        """The entry a NAT-PMP/PCP request for this internal endpoint refers to, or None.

        A PCP entry with another nonce refuses the request (NOT_AUTHORIZED)."""
        uids = self._for_internal(proto, internal)
        if not uids:
            return None
        candidates = sorted(
            (self._by_uid[uid] for uid in uids if self._by_uid[uid].kind is kind),
            key=lambda m: m.uid,
        )
        if not candidates:
            return None
        for mapping in candidates:
            if mapping.owner.origin is owner.origin and self._same_requester(owner, mapping):
                return mapping
        if owner.origin is Origin.PCP:
            for mapping in candidates:
                if mapping.owner.origin is Origin.PCP:
                    raise _not_owner(mapping, now, "another PCP client (nonce differs)")
        return candidates[0]

    @staticmethod
    def _same_requester(owner: Owner, mapping: Mapping) -> bool:
        if owner.origin is Origin.PCP:
            return mapping.owner.nonce == owner.nonce
        return mapping.owner.client == owner.client

    def _refresh_or_share(
        self,
        existing: Mapping,
        r: MapPort | OpenPinhole,
        lifetime: int | None,
        expires: float | None,
        now: float,
    ) -> tuple[Result, list[Change]]:
        owner = r.owner
        if existing.owner.origin is not owner.origin:
            # Another mechanism's entry: report it as if static, take no ownership.
            return Granted(existing, existing.remaining(now), created=False, owned=False), []
        description = r.description or existing.description
        filters = r.filters if owner.origin is Origin.PCP else existing.filters
        refreshed = replace(
            existing,
            expires=expires,
            lifetime=lifetime,
            description=description,
            filters=filters,
            owner=owner,
        )
        kind = ChangeKind.REFRESHED if filters == existing.filters else ChangeKind.UPDATED
        if kind is ChangeKind.UPDATED and existing.kind is Kind.PINHOLE:
            clash = self._pinholes.get(_pinhole_key(refreshed))
            if clash is not None and clash != existing.uid:
                raise GatewayError(Reason.CONFLICT, "an identical pinhole exists")
        change = self._swap(existing, refreshed, kind)
        return Granted(refreshed, lifetime, created=False), [change]

    def _check_port(self, owner: Owner, proto: Proto, internal: Endpoint, port: int) -> None:
        if self.policy.is_reserved(proto, port):
            raise GatewayError(Reason.RESERVED_PORT, f"{proto.value} port {port} is reserved")
        if not owner.is_admin and not self.policy.permits(proto, internal, port):
            # an exact request (PCP PREFER_FAILURE) refused for this port alone is told apart
            # from a host or port the ACL does not let map at all
            other_ports = any(True for _ in self.policy.external_ranges(proto, internal))
            raise GatewayError(
                Reason.PORT_DENIED if other_ports else Reason.POLICY_DENIED,
                f"the ACL does not allow {proto.value} {port} -> {internal}",
            )

    def _usable(self, owner: Owner, proto: Proto, internal: Endpoint, port: int) -> bool:
        assert self.external_address is not None
        if MappingKey(proto, Endpoint(self.external_address, port)) in self._by_key:
            return False
        if self._companion(owner, proto, internal, port) is not None:
            return False
        return self._allowed(owner, proto, internal, port)

    def _companion(
        self, owner: Owner, proto: Proto, internal: Endpoint, port: int
    ) -> Mapping | None:
        """The NAT-PMP mapping of another host on this external port of the other transport:
        RFC 6886 §3.3 keeps the port of the companion protocol for its client while the lease
        lasts (without creating that mapping), so no other internal host may get it."""
        if owner.is_admin or self.external_address is None:
            return None
        other = Proto.UDP if proto is Proto.TCP else Proto.TCP
        uid = self._by_key.get(MappingKey(other, Endpoint(self.external_address, port)))
        if uid is None:
            return None
        held = self._by_uid[uid]
        if held.owner.origin is Origin.NATPMP and held.internal.address != internal.address:
            return held
        return None

    def _allowed(self, owner: Owner, proto: Proto, internal: Endpoint, port: int) -> bool:
        if self.policy.is_reserved(proto, port):
            return False
        return owner.is_admin or self.policy.permits(proto, internal, port)

    def _check_quota(self, owner: Owner) -> None:
        if owner.is_admin:
            return
        if len(self._by_uid) >= self.policy.max_total:
            raise GatewayError(Reason.TABLE_FULL, f"the table holds {len(self)} entries")
        if self.count_for(owner.client) >= self.policy.max_per_client:
            raise GatewayError(
                Reason.QUOTA,
                f"{owner.client} has {self.count_for(owner.client)} mappings, "
                f"the limit is {self.policy.max_per_client}",
            )

    # Removal ------------------------------------------------------------------------------

    def _may_remove(self, owner: Owner, mapping: Mapping) -> bool:
        if owner.is_admin:
            return True
        if mapping.owner.origin is not owner.origin:
            return False
        if owner.origin is Origin.PCP:
            return mapping.owner.nonce == owner.nonce
        if owner.origin is Origin.UPNP and not self.policy.secure_mode:
            return True
        return owner.client in (mapping.owner.client, mapping.internal.address)

    def _unmap_port(self, r: UnmapPort, now: float) -> tuple[Result, list[Change]]:
        mapping = self.by_key(r.key)
        if mapping is None:
            raise GatewayError(Reason.NOT_FOUND, f"no mapping for {r.key}")
        if not self._may_remove(r.owner, mapping):
            raise _not_owner(mapping, now)
        return Removed((mapping,)), [self._remove(mapping)]

    def _unmap_internal(self, r: UnmapInternal, now: float) -> tuple[Result, list[Change]]:
        uids = self._for_internal(r.proto, r.internal)
        if not uids:
            return Removed(()), []
        entries = sorted((self._by_uid[uid] for uid in uids), key=lambda m: m.uid)
        mine = [m for m in entries if self._may_remove(r.owner, m)]
        if not mine:
            other = entries[0]
            raise _not_owner(other, now)
        return Removed(tuple(mine)), [self._remove(m) for m in mine]

    def _unmap_range(self, r: UnmapRange) -> tuple[Result, list[Change]]:
        if not 0 <= r.start <= r.end <= 65535:
            raise GatewayError(Reason.BAD_REQUEST, f"bad port range {r.start}-{r.end}")
        if r.owner.is_admin or (r.manage and not self.policy.secure_mode):
            pool: Iterable[int] = list(self._port_map_order)
        else:
            pool = sorted(self._by_client.get(r.owner.client, ()))
        doomed = [
            m
            for m in (self._by_uid[uid] for uid in pool)
            if m.kind is Kind.PORT_MAP
            and m.proto is r.proto
            and r.start <= m.external.port <= r.end
            and self._may_remove(r.owner, m)
        ]
        if not doomed:
            raise GatewayError(
                Reason.NOT_FOUND, f"no {r.proto.value} mapping of yours in {r.start}-{r.end}"
            )
        return Removed(tuple(doomed)), [self._remove(m) for m in doomed]

    def _flush(self, r: Flush) -> tuple[Result, list[Change]]:
        client, origin = r.client, r.origin
        if not r.owner.is_admin:
            client, origin = r.owner.client, r.owner.origin
        pool = self._by_client.get(client, set()) if client is not None else self._by_uid.keys()
        doomed = [
            m
            for m in sorted((self._by_uid[uid] for uid in pool), key=lambda m: m.uid)
            if (r.proto is None or m.proto is r.proto)
            and (origin is None or m.owner.origin is origin)
            and self._may_remove(r.owner, m)
        ]
        return Removed(tuple(doomed)), [self._remove(m) for m in doomed]

    # Pinholes -----------------------------------------------------------------------------

    def _open_pinhole(self, r: OpenPinhole, now: float) -> tuple[Result, list[Change]]:
        owner = r.owner
        if not isinstance(r.internal.address, IPv6Address):
            raise GatewayError(Reason.UNSUPPORTED, "pinholes need an IPv6 internal address")
        self.policy.check_source(owner)
        self.policy.check_target(owner, r.internal)
        lifetime = self.policy.clamp_pinhole_lifetime(owner.origin, r.lifetime)
        expires = None if lifetime is None else now + lifetime
        if owner.origin is Origin.PCP:
            existing = self._existing_for_internal(owner, r.proto, r.internal, Kind.PINHOLE, now)
            if existing is not None:
                return self._refresh_or_share(existing, r, lifetime, expires, now)
        else:
            held_uid = self._pinholes.get((r.proto, r.internal, r.filters))
            if held_uid is not None:
                held = self._by_uid[held_uid]
                if not self._may_remove(owner, held):
                    raise _not_owner(held, now, "another client")
                return self._refresh_or_share(held, r, lifetime, expires, now)
        if (r.proto, r.internal, r.filters) in self._pinholes:
            raise GatewayError(Reason.CONFLICT, "an identical pinhole exists")
        self._check_quota(owner)
        mapping = Mapping(
            uid=self._new_pinhole_uid(),
            kind=Kind.PINHOLE,
            key=MappingKey(r.proto, r.internal),
            internal=r.internal,
            owner=owner,
            description=r.description,
            filters=r.filters,
            expires=expires,
            created=now,
            lifetime=lifetime,
        )
        return Granted(mapping, lifetime), [self._add(mapping)]

    def _owned_pinhole(self, owner: Owner, uid: int, now: float) -> Mapping:
        mapping = self._by_uid.get(uid)
        if mapping is None or mapping.kind is not Kind.PINHOLE:
            raise GatewayError(Reason.NOT_FOUND, f"no pinhole with id {uid}")
        if not self._may_remove(owner, mapping):
            raise _not_owner(mapping, now, "another client")
        return mapping

    def _update_pinhole(self, r: UpdatePinhole, now: float) -> tuple[Result, list[Change]]:
        mapping = self._owned_pinhole(r.owner, r.uid, now)
        lifetime = self.policy.clamp_pinhole_lifetime(r.owner.origin, r.lifetime)
        expires = None if lifetime is None else now + lifetime
        refreshed = replace(mapping, expires=expires, lifetime=lifetime)
        change = self._swap(mapping, refreshed, ChangeKind.REFRESHED)
        return Granted(refreshed, lifetime, created=False), [change]

    def _close_pinhole(self, r: ClosePinhole, now: float) -> tuple[Result, list[Change]]:
        mapping = self._owned_pinhole(r.owner, r.uid, now)
        return Removed((mapping,)), [self._remove(mapping)]

    # Listing ------------------------------------------------------------------------------

    def _list(self, r: ListMappings, now: float) -> Listing:
        if r.internal is not None:
            pool: Iterable[Mapping] = (
                m
                for m in (
                    self._by_uid[uid]
                    for proto in ((r.proto,) if r.proto is not None else tuple(Proto))
                    for uid in self._for_internal(proto, r.internal)
                )
                if r.client is None or m.owner.client == r.client
            )
        elif r.client is not None:
            pool = (self._by_uid[uid] for uid in self._by_client.get(r.client, ()))
        else:
            pool = self._by_uid.values()
        chosen = sorted(
            (
                m
                for m in pool
                if (r.include_pinholes or m.kind is Kind.PORT_MAP)
                and (r.proto is None or m.proto is r.proto)
                and r.start <= m.external.port <= r.end
            ),
            key=lambda m: (m.kind.value, m.proto.value, m.external.port, m.uid),
        )
        if r.limit is not None:
            chosen = chosen[: r.limit]
        return Listing(tuple(chosen), now)

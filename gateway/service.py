"""GatewayService: the single writer of the table.

A request is checked and applied to the table synchronously (so port allocation is atomic);
its changes wait in a queue that is committed at the end of the reactor turn, so requests that
arrive together share one backend transaction and one store transaction. The reply fires only
after the commit; when the backend or the store refuses a batch, the table (and the store) are
rolled back, the backend is brought back in line with the table (it may have refused because
someone changed it from outside) and every request of the batch fails with BACKEND_FAILED.
Subscribers (GENA, PCP ANNOUNCE, logs) see changes only after they are committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clock import Clock, DelayedCall
from gateway.errors import BackendError, GatewayError, Reason, StoreError
from gateway.model import Change, ChangeKind, Mapping
from gateway.policy import Policy
from gateway.ports import (
    Backend,
    EpochReset,
    ExternalAddressChanged,
    GatewayEvent,
    Listener,
    MappingsChanged,
    Store,
)
from gateway.requests import ExternalAddress, GetExternalAddress, Request, Result
from gateway.table import MappingTable

log = Logger(namespace="portgate.service")

#: Told of every answered request: the request, and None or the exception it failed with.
RequestObserver = Callable[[Request, BaseException | None], None]

#: Refusals worth an operator's attention (policy and limits), logged once per client and
#: reason per REFUSAL_LOG_INTERVAL seconds; lookups that find nothing are not among them.
LOGGED_REFUSALS = frozenset(
    {
        Reason.QUOTA,
        Reason.TABLE_FULL,
        Reason.POLICY_DENIED,
        Reason.RESERVED_PORT,
        Reason.THIRD_PARTY,
        Reason.NOT_LAN,
        Reason.NO_PORTS,
        Reason.NO_EXTERNAL_ADDRESS,
    }
)
REFUSAL_LOG_INTERVAL = 60.0

#: After a failed commit, expiry and repair are retried no sooner than this (seconds).
RETRY_DELAY = 5.0
#: How often the backend is asked whether its tables are still in place.
HEALTH_INTERVAL = 2.0
#: Seconds between full comparisons of the backend's entries with the table (0: never).
VERIFY_INTERVAL = 0.0
EPOCH_META_KEY = "epoch_wall"


@dataclass
class _Pending:
    changes: list[Change]
    result: Result | None = None
    waiter: Deferred[Result] | None = None
    #: an external address change: what it was before (restored if the commit fails) and the
    #: event to publish once the re-homed mappings are committed
    address_change: ExternalAddressChanged | None = None


@dataclass
class _Stats:
    committed_batches: int = 0
    failed_batches: int = 0
    repairs: int = 0
    last_error: str = ""
    started: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)


def invert(changes: Sequence[Change]) -> list[Change]:
    """The changes that undo ``changes`` (newest first)."""
    undo: list[Change] = []
    for change in reversed(changes):
        if change.before is None:
            undo.append(Change(ChangeKind.REMOVED, change.after, None))
        elif change.after is None:
            undo.append(Change(ChangeKind.ADDED, None, change.before))
        else:
            undo.append(Change(ChangeKind.UPDATED, change.after, change.before))
    return undo


def describe_change(change: Change, now: float) -> str:
    """One log line per change, e.g.
    ``map add tcp 203.0.113.1:8080 -> 192.168.1.10:80 lifetime=3600 via=pcp client=...``."""
    mapping = change.mapping
    what = "pinhole" if mapping.kind.value == "pinhole" else "map"
    remaining = mapping.remaining(now)
    lifetime = "permanent" if remaining is None else str(remaining)
    text = (
        f"{what} {change.kind.value} {mapping.describe()} lifetime={lifetime} "
        f"via={mapping.owner.origin.value} client={mapping.owner.client}"
    )
    if change.kind is ChangeKind.UPDATED and change.before and change.after:
        if change.before.key != change.after.key:
            text += f" (was {change.before.key})"
        elif change.before.internal != change.after.internal:
            text += f" (was -> {change.before.internal})"
    if mapping.description:
        text += f" desc={mapping.description!r}"
    return text


class GatewayService:
    def __init__(
        self,
        table: MappingTable,
        backend: Backend,
        store: Store,
        clock: Clock,
        *,
        health_interval: float = HEALTH_INTERVAL,
        verify_interval: float = VERIFY_INTERVAL,
    ) -> None:
        self.table = table
        self.health_interval = health_interval
        self.verify_interval = verify_interval
        #: when the backend's entries were last compared with the table (install, repair)
        self._verified_at = 0.0
        self.backend = backend
        self.store = store
        self.clock = clock
        self._queue: list[_Pending] = []
        self._flush_call: DelayedCall | None = None
        self._expiry_call: DelayedCall | None = None
        self._health_call: DelayedCall | None = None
        self._listeners: list[Listener] = []
        self._request_observers: list[RequestObserver] = []
        self._refusals_logged: dict[tuple[object, Reason], float] = {}
        self._epoch_start = 0.0
        self._retry_after = 0.0
        self._running = False
        self.stats = _Stats()

    # -- the Gateway port -------------------------------------------------------------------

    @property
    def external_address(self) -> IPv4Address | None:
        return self.table.external_address

    @property
    def policy(self) -> Policy:
        return self.table.policy

    def now(self) -> float:
        return self.clock.now()

    def epoch_seconds(self) -> int:
        return max(0, int(self.clock.now() - self._epoch_start))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def observe_requests(self, observer: RequestObserver) -> Callable[[], None]:
        """Call ``observer(request, error)`` as each request is answered (error None when it
        succeeded), e.g. for metrics; returns a function that stops it."""
        self._request_observers.append(observer)

        def stop() -> None:
            if observer in self._request_observers:
                self._request_observers.remove(observer)

        return stop

    def handle(self, request: Request) -> Deferred[Result]:
        answer = self._answer(request)
        if self._request_observers:
            answer.addBoth(self._tell_observers, request)
        return answer

    def _tell_observers(self, outcome: Result | Failure, request: Request) -> Result | Failure:
        error = outcome.value if isinstance(outcome, Failure) else None
        for observer in list(self._request_observers):
            try:
                observer(request, error)
            except Exception:
                log.failure("a request observer failed")
        return outcome

    def _answer(self, request: Request) -> Deferred[Result]:
        if isinstance(request, GetExternalAddress):
            return succeed(ExternalAddress(self.table.external_address))
        now = self.clock.now()
        try:
            result, changes = self.table.apply(request, now)
        except GatewayError as error:
            self._note_refusal(request, error, now)
            return fail(error)
        if not changes:
            return succeed(result)
        waiter: Deferred[Result] = Deferred()
        self._enqueue(_Pending(changes, result, waiter))
        return waiter

    def _note_refusal(self, request: Request, error: GatewayError, now: float) -> None:
        """Log a policy or limit refusal, once per client and reason per minute (a client
        that retries in a loop must not flood the log)."""
        owner = getattr(request, "owner", None)
        if error.reason not in LOGGED_REFUSALS or owner is None:
            return
        key = (owner.client, error.reason)
        last = self._refusals_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return
        if len(self._refusals_logged) > 4096:
            self._refusals_logged = {
                k: t for k, t in self._refusals_logged.items() if now - t < REFUSAL_LOG_INTERVAL
            }
        self._refusals_logged[key] = now
        log.info(
            "refused {what} via={origin} client={client}: {reason} ({message})",
            what=type(request).__name__,
            origin=owner.origin.value,
            client=owner.client,
            reason=error.reason.value,
            message=error.message,
        )

    def status(self) -> dict[str, object]:
        """What ``portgate status`` shows."""
        now = self.clock.now()
        counts = self.table.counts_by_origin()
        return {
            "uptime": int(now - self.stats.started) if self._running else 0,
            "external_address": None
            if self.table.external_address is None
            else str(self.table.external_address),
            "mappings": len(self.table),
            "by_origin": {origin.value: count for origin, count in counts.items()},
            "next_expiry_in": None
            if (deadline := self.table.next_deadline()) is None
            else max(0, int(deadline - now)),
            "epoch": self.epoch_seconds(),
            "backend": {
                "name": self.backend.name,
                "healthy": self.backend.healthy(),
                "committed_batches": self.stats.committed_batches,
                "failed_batches": self.stats.failed_batches,
                "repairs": self.stats.repairs,
                "last_error": self.stats.last_error,
            },
        }

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> list[Mapping]:
        """Bring leases back from the store, install them in the backend in one transaction,
        and start expiry and health checks. Returns the leases restored."""
        now, wall = self.clock.now(), self.clock.wall()
        restored = self.store.load(now, wall)
        dropped = self.table.restore(restored)
        for mapping in dropped:
            log.warn(
                "lease {uid} clashes with another and was dropped: {what}",
                uid=mapping.uid,
                what=mapping.describe(),
            )
        moved = self.table.set_external_address(self.table.external_address)
        self.backend.install(list(self.table))
        self._verified_at = now
        # the store already holds what was loaded: write only what start-up changed
        fixes = [Change(ChangeKind.REMOVED, m, None) for m in dropped] + moved
        if fixes:
            self.store.stage(fixes, now, wall)
            self.store.commit()
        self._start_epoch(now, wall, bool(len(self.table)))
        self.stats.started = now
        self._running = True
        log.info(
            "restored {count} lease(s) from the store; backend {backend} holds them",
            count=len(self.table),
            backend=self.backend.name,
        )
        if moved:
            log.info(
                "{count} mapping(s) moved to the external address {address}",
                count=len(moved),
                address=self.table.external_address,
            )
        self._arm_expiry()
        self._health_call = self.clock.call_later(self.health_interval, self._check_health)
        return restored

    def _start_epoch(self, now: float, wall: float, kept_state: bool) -> None:
        saved = self.store.get_meta(EPOCH_META_KEY)
        if kept_state and saved is not None:
            try:
                age = wall - float(saved)
            except ValueError:
                age = -1.0
            if age >= 0:
                self._epoch_start = now - age
                return
        self._epoch_start = now
        self.store.set_meta(EPOCH_META_KEY, repr(wall))
        self._publish(EpochReset())

    def stop(self, keep_mappings: bool) -> None:
        """Commit what is queued; then keep the kernel state and the leases (so a restart
        finds them), or remove both."""
        if not self._running:
            return
        self._flush()
        for call in (self._expiry_call, self._health_call, self._flush_call):
            if call is not None and call.active():
                call.cancel()
        self._running = False
        if not keep_mappings:
            now, wall = self.clock.now(), self.clock.wall()
            removed = [Change(ChangeKind.REMOVED, m, None) for m in list(self.table)]
            try:
                self.backend.reset_owned()
                self.store.replace_all([], now, wall)
                self.table.replay(removed)
                log.info("removed all {count} mapping(s) on stop", count=len(removed))
            except (BackendError, StoreError) as error:
                log.error("could not remove mappings on stop: {error}", error=error)
        else:
            log.info("stopping; {count} mapping(s) kept for the next start", count=len(self.table))
        self.store.close()

    def set_policy(self, policy: Policy) -> None:
        """New ACL and limits for new requests (SIGHUP); existing leases stay."""
        self.table.policy = policy

    def set_external_address(self, address: IPv4Address | None) -> None:
        old = self.table.external_address
        if address == old:
            return
        changes = self.table.set_external_address(address)
        log.info("external address {old} -> {new}", old=old, new=address)
        event = ExternalAddressChanged(old, address)
        if changes:
            self._enqueue(_Pending(changes, address_change=event))
        else:
            self._publish(event)

    # -- committing -------------------------------------------------------------------------

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.clock.call_later(0, self._flush)

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        changes = [change for item in batch for change in item.changes]
        now, wall = self.clock.now(), self.clock.wall()
        kernel = [change for change in changes if change.touches_kernel]
        try:
            self._commit(changes, kernel, now, wall)
        except (BackendError, StoreError) as error:
            self.table.revert(changes)
            for item in reversed(batch):
                if item.address_change is not None:
                    # the mappings are back at the old address; so is the table's idea of
                    # it (the network re-check will try the change again)
                    self.table.external_address = item.address_change.old
            self.stats.failed_batches += 1
            self.stats.last_error = str(error)
            self._retry_after = now + RETRY_DELAY
            log.error(
                "commit of {count} change(s) failed, rolled back: {error}",
                count=len(changes),
                error=error,
            )
            if kernel:
                # the kernel refused (or the undo after a store failure did): it may hold
                # something else than the table believed, e.g. an element removed or added
                # with `nft` from outside, which would make every later batch touching it
                # fail too. Bring it back in line with the rolled-back table.
                self._repair()
            failure = GatewayError(Reason.BACKEND_FAILED, f"could not commit: {error}")
            for item in batch:
                if item.waiter is not None:
                    item.waiter.errback(failure)
            self._arm_expiry()
            return
        self.stats.committed_batches += 1
        for change in changes:
            self.stats.by_kind[change.kind.value] = self.stats.by_kind.get(change.kind.value, 0) + 1
            log.info("{line}", line=describe_change(change, now), change=change)
        for item in batch:
            if item.address_change is not None:
                self._publish(item.address_change)
        self._publish(MappingsChanged(tuple(changes)))
        for item in batch:
            if item.waiter is not None and item.result is not None:
                item.waiter.callback(item.result)
        self._arm_expiry()

    def _commit(self, changes: list[Change], kernel: list[Change], now: float, wall: float) -> None:
        # a batch of pure refreshes (nothing for the kernel) need not wait for the disk
        self.store.stage(changes, now, wall, durable=bool(kernel))
        try:
            if kernel:
                self.backend.apply(kernel)
        except BackendError:
            self.store.rollback()
            raise
        try:
            self.store.commit()
        except StoreError:
            self.store.rollback()
            if kernel:
                try:
                    self.backend.apply(invert(kernel))
                except BackendError as error:
                    # _flush repairs once the table is rolled back too
                    log.error("could not undo a batch in the backend: {error}", error=error)
            raise

    # -- expiry and repair ------------------------------------------------------------------

    def _arm_expiry(self) -> None:
        if not self._running:
            return
        deadline = self.table.next_deadline()
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        if deadline is None:
            return
        at = max(deadline, self._retry_after)
        self._expiry_call = self.clock.call_later(at - self.clock.now(), self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        changes = self.table.expire(self.clock.now())
        if changes:
            self._enqueue(_Pending(changes))
        else:
            self._arm_expiry()

    def _check_health(self) -> None:
        """The cheap check (is our table there?) every ``health_interval``; the full one (is
        every entry what the table says?) every ``verify_interval``, for entries deleted or
        added from outside one by one, which the cheap check cannot see."""
        self._health_call = self.clock.call_later(self.health_interval, self._check_health)
        if not self.backend.healthy():
            log.warn(
                "backend {backend}: our rules were removed from outside; restoring them",
                backend=self.backend.name,
            )
            self._repair()
        elif self.verify_interval and self.clock.now() - self._verified_at >= self.verify_interval:
            self._verify()

    def _verify(self) -> None:
        self._verified_at = self.clock.now()
        try:
            removed, added = self.backend.install(list(self.table))
        except BackendError as error:
            self.stats.last_error = str(error)
            log.error("could not compare the backend with the table: {error}", error=error)
            return
        if removed or added:
            self.stats.repairs += 1
            log.warn(
                "backend {backend} had been changed from outside: removed {removed} entry(ies) "
                "the table does not hold and put back {added} missing",
                backend=self.backend.name,
                removed=removed,
                added=added,
            )

    def _repair(self) -> None:
        self._verified_at = self.clock.now()
        try:
            self.backend.install(list(self.table))
        except BackendError as error:
            self.stats.last_error = str(error)
            log.error("could not restore the backend state: {error}", error=error)
            return
        self.stats.repairs += 1
        log.info(
            "backend {backend} restored with {count} mapping(s)",
            backend=self.backend.name,
            count=len(self.table),
        )

    # -- events -----------------------------------------------------------------------------

    def _publish(self, event: GatewayEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.failure("a subscriber failed on {event}", event=event)

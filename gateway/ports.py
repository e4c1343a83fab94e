"""The seams between the service and its collaborators, as ``typing.Protocol``s.

Front-ends hold a ``Gateway``; the service holds a ``Backend``. Neither side knows the
concrete class on the other: ``gateway.daemon`` wires them together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from twisted.internet.defer import Deferred

from gateway.model import Change, KernelEntry, Mapping
from gateway.requests import Request, Result


@dataclass(frozen=True, slots=True)
class MappingsChanged:
    """Committed changes, published after the backend and the store accepted them."""

    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class ExternalAddressChanged:
    old: IPv4Address | None
    new: IPv4Address | None


@dataclass(frozen=True, slots=True)
class EpochReset:
    """State may have been lost (start without leases, backend reset): PCP/NAT-PMP announce."""


GatewayEvent = MappingsChanged | ExternalAddressChanged | EpochReset
Listener = Callable[[GatewayEvent], None]


class Gateway(Protocol):
    """What a front-end calls."""

    def handle(self, request: Request) -> Deferred[Result]:
        """Apply a request; fires with its result or fails with ``GatewayError``."""
        ...

    @property
    def external_address(self) -> IPv4Address | None: ...

    def now(self) -> float:
        """Monotonic seconds, the same clock the table's expiry uses."""
        ...

    def epoch_seconds(self) -> int:
        """Seconds since the mapping state was last (re)started (NAT-PMP SSSoE, PCP epoch)."""
        ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every event; returns a function that unsubscribes."""
        ...


class Backend(Protocol):
    """What synchronises the table to the kernel. Every call is one atomic transaction:
    it either applies completely or raises ``BackendError`` and changes nothing."""

    name: str

    def install(self, mappings: Iterable[Mapping]) -> tuple[int, int]:
        """Create our tables and make the installed set exactly ``mappings`` (start-up
        reconcile, repair, verification); returns how many entries it had to remove and to
        add for that."""
        ...

    def apply(self, changes: Sequence[Change]) -> None:
        """Apply a batch of changes."""
        ...

    def snapshot(self) -> frozenset[KernelEntry]:
        """What is installed now, read back from where it lives."""
        ...

    def reset_owned(self) -> None:
        """Remove everything this backend created (tables, chains, sets)."""
        ...

    def healthy(self) -> bool:
        """True when our tables are in place as last installed (cheap check)."""
        ...


class Store(Protocol):
    """Where leases survive restarts and crashes (SQLite in production)."""

    def load(self, now: float, wall: float) -> list[Mapping]:
        """Every unexpired lease, with expiry converted back to monotonic time."""
        ...

    def stage(
        self, changes: Sequence[Change], now: float, wall: float, *, durable: bool = True
    ) -> None:
        """Write changes inside an open transaction (opened if needed); ``durable=False``:
        its commit need not wait for the disk (a batch of lease refreshes)."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def replace_all(self, mappings: Iterable[Mapping], now: float, wall: float) -> None: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...


class Admin(Gateway, Protocol):
    """What the admin control socket needs: the gateway plus a status summary."""

    def status(self) -> dict[str, object]:
        """uptime, external_address, mappings, by_origin, epoch, backend{name, healthy, ...}"""
        ...

"""The only place that reads time. ``now()`` is monotonic seconds (lease arithmetic);
``wall()`` is Unix time (what the lease store keeps, since monotonic time does not survive a
reboot). Scheduling goes through the reactor so tests can drive it with ``task.Clock``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol


class DelayedCall(Protocol):
    """What ``callLater`` returns (Twisted's IDelayedCall, as a structural type)."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """The part of a reactor (or ``task.Clock``) the clock schedules with."""

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> Any: ...


class Clock:
    def __init__(
        self,
        reactor: Scheduler,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._reactor = reactor
        self._monotonic = monotonic
        self._wall = wall

    @classmethod
    def for_tests(cls, reactor: Any, wall_offset: float = 1_700_000_000.0) -> Clock:
        """A clock driven entirely by a ``twisted.internet.task.Clock``."""
        return cls(reactor, reactor.seconds, lambda: wall_offset + reactor.seconds())

    def now(self) -> float:
        return self._monotonic()

    def wall(self) -> float:
        return self._wall()

    def call_later(self, delay: float, fn: Callable[..., object], *args: object) -> DelayedCall:
        call: DelayedCall = self._reactor.callLater(max(0.0, delay), fn, *args)
        return call

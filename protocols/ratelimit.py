"""Per-source token buckets and a once-a-minute refusal log, shared by every front-end (SSDP
answers, UDP 5351 requests, UPnP HTTP requests). Pure: the time is an argument, and nothing
here imports Twisted.

Both tables are bounded in the number of sources they remember: the least recently seen source
is forgotten first. A forgotten bucket would have refilled anyway unless its source flooded
and then fell silent while thousands of others spoke; it comes back full, which costs at most
one burst.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable

__all__ = [
    "DEFAULT_MAX_KEYS",
    "REFUSAL_LOG_INTERVAL",
    "RateLimiter",
    "RefusalLog",
]

#: How many sources a table remembers by default.
DEFAULT_MAX_KEYS = 4096
#: A refusal is logged once per source (and kind) per this many seconds.
REFUSAL_LOG_INTERVAL = 60.0


class RateLimiter:
    """Token buckets per key (a source address), ``burst`` tokens each, refilled at
    ``per_second``; at most ``max_keys`` keys, the least recently used forgotten first."""

    def __init__(self, burst: float, per_second: float, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if burst < 1 or per_second <= 0 or max_keys < 1:
            raise ValueError("burst, rate and max_keys must be positive (burst at least 1)")
        self._burst = float(burst)
        self._rate = float(per_second)
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def per_second(self) -> float:
        return self._rate

    def configure(self, burst: float, per_second: float) -> None:
        """New limits (a reload); buckets keep their tokens, capped at the new burst."""
        if burst < 1 or per_second <= 0:
            raise ValueError("burst and rate must be positive (burst at least 1)")
        self._burst = float(burst)
        self._rate = float(per_second)

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, stamp = self._buckets.pop(key, (self._burst, now))
        return min(self._burst, tokens + max(0.0, now - stamp) * self._rate)

    def take(self, key: Hashable, wanted: int, now: float) -> int:
        """Take up to ``wanted`` tokens; returns how many were granted (0..wanted)."""
        tokens = self._tokens(key, now)
        granted = max(0, min(wanted, int(tokens)))
        self._buckets[key] = (tokens - granted, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return granted

    def allow(self, key: Hashable, now: float) -> bool:
        """Take one token if there is one."""
        return self.take(key, 1, now) == 1

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds until ``key`` has a whole token again (0 if it has one now)."""
        found = self._buckets.get(key)
        if found is None:
            return 0.0
        tokens, stamp = found
        tokens = min(self._burst, tokens + max(0.0, now - stamp) * self._rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def retry_after(self, key: Hashable, now: float) -> int:
        """``wait`` in whole seconds for a Retry-After header (at least 1)."""
        return max(1, math.ceil(self.wait(key, now)))

    def __len__(self) -> int:
        return len(self._buckets)


class RefusalLog:
    """Decides when a refusal is worth a log line: the first time for a key, then again only
    after ``interval`` seconds (a client refused in a loop must not flood the log). Remembers
    at most ``max_keys`` keys, the least recently logged forgotten first."""

    def __init__(
        self, interval: float = REFUSAL_LOG_INTERVAL, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._logged: OrderedDict[Hashable, float] = OrderedDict()

    def due(self, key: Hashable, now: float) -> bool:
        """True (and noted) when ``key``'s refusal should be logged now."""
        last = self._logged.get(key)
        if last is not None and now - last < self._interval:
            return False
        self._logged.pop(key, None)
        self._logged[key] = now
        while len(self._logged) > self._max_keys:
            self._logged.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._logged)

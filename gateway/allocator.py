"""External port choice, shared by all front-ends.

The allocator knows nothing of the table: it is handed a predicate that says whether a port
may be used (free in the table, not reserved, allowed by the policy) and walks outwards from
the wanted port, as UPnP AddAnyPortMapping and NAT-PMP expect ("the nearest free port").
The random source is injected so tests are repeatable.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: Where a port is picked at random when the client leaves the choice to us.
DYNAMIC_LOW = 1024
DYNAMIC_HIGH = 65535


class Allocator:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def choose(
        self,
        wanted: int,
        usable: Callable[[int], bool],
        low: int = 1,
        high: int = 65535,
    ) -> int | None:
        """The wanted port if usable, else the nearest usable one in [low, high].

        ``wanted`` 0 means "any": the search starts at a random port of the dynamic range, so
        that ports are not predictable. Ties go to the port above. None when nothing is usable.
        """
        if low > high:
            return None
        if wanted == 0:
            start_low = max(low, DYNAMIC_LOW)
            start_high = min(high, DYNAMIC_HIGH)
            if start_low > start_high:
                start_low, start_high = low, high
            wanted = self._rng.randint(start_low, start_high)
        elif low <= wanted <= high and usable(wanted):
            return wanted
        wanted = min(max(wanted, low), high)
        if usable(wanted):
            return wanted
        distance = 1
        span = max(wanted - low, high - wanted)
        while distance <= span:
            above = wanted + distance
            if above <= high and usable(above):
                return above
            below = wanted - distance
            if below >= low and usable(below):
                return below
            distance += 1
        return None

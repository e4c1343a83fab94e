"""A verified in-memory backend: it behaves like the kernel would (a batch applies completely
or not at all; deleting what is not installed or installing a duplicate key fails) and can be
told to fail, so the service's rollback can be tested without root."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.errors import BackendError
from gateway.model import Change, KernelEntry, Kind, Mapping, MappingKey, kernel_view


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self._entries: dict[int, KernelEntry] = {}
        self.batches: list[tuple[Change, ...]] = []
        self.installs = 0
        self._failures: list[str] = []
        self._flushed = False

    # -- test controls ----------------------------------------------------------------------

    def fail_next(self, count: int = 1, message: str = "injected failure") -> None:
        """Make the next ``count`` calls to apply/install raise BackendError."""
        self._failures.extend([message] * count)

    def simulate_external_delete(self, key: MappingKey) -> None:
        """Pretend someone deleted the entry of ``key`` with ``nft`` (the table stays)."""
        self._entries = {uid: e for uid, e in self._entries.items() if e.key != key}

    def simulate_flush(self) -> None:
        """Pretend someone flushed our tables behind our back (a firewall reload)."""
        self._entries.clear()
        self._flushed = True

    # -- Backend ----------------------------------------------------------------------------

    def _maybe_fail(self) -> None:
        if self._failures:
            raise BackendError(self._failures.pop(0))

    def install(self, mappings: Iterable[Mapping]) -> tuple[int, int]:
        self._maybe_fail()
        entries: dict[int, KernelEntry] = {}
        for mapping in mappings:
            view = kernel_view(mapping)
            if view is not None:
                entries[mapping.uid] = view
        self._check_unique(entries)
        before = {e.canonical() for e in self._entries.values()}
        after = {e.canonical() for e in entries.values()}
        self._entries = entries
        self._flushed = False
        self.installs += 1
        return len(before - after), len(after - before)

    def apply(self, changes: Sequence[Change]) -> None:
        self._maybe_fail()
        entries = dict(self._entries)
        for change in changes:
            before, after = kernel_view(change.before), kernel_view(change.after)
            if before is not None:
                assert change.before is not None
                if entries.get(change.before.uid) != before:
                    raise BackendError(f"cannot remove {change.before.describe()}: not installed")
                del entries[change.before.uid]
            if after is not None:
                assert change.after is not None
                entries[change.after.uid] = after
        self._check_unique(entries)
        self._entries = entries
        self.batches.append(tuple(changes))

    @staticmethod
    def _check_unique(entries: dict[int, KernelEntry]) -> None:
        keys = [e.key for e in entries.values() if e.kind is Kind.PORT_MAP]
        if len(keys) != len(set(keys)):
            raise BackendError("two port mappings for one external port")

    def snapshot(self) -> frozenset[KernelEntry]:
        return frozenset(entry.canonical() for entry in self._entries.values())

    def reset_owned(self) -> None:
        self._entries.clear()

    def healthy(self) -> bool:
        return not self._flushed

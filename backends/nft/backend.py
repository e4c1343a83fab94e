"""NftBackend: the table's state in the kernel, through one libnftables transaction per call.

Start-up and repair read our table once, compare it with the mappings the daemon holds and fix
the difference in one transaction (the whole table when its skeleton is missing or changed,
otherwise only the elements that differ). A batch of changes becomes one delete and one add
per set. We never touch a table we did not create.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from twisted.logger import Logger

from backends.nft.ruleset import (
    FAMILY,
    ForeignDump,
    Layout,
    TableDump,
    element_commands,
    read_dump,
    read_foreign,
    remove_jump_text,
    replace_table_text,
    skeleton_intact,
)
from backends.nft.runner import Json, NftRunner
from gateway.errors import BackendError
from gateway.memory import release_free_memory
from gateway.model import Change, KernelEntry, Mapping, kernel_view

log = Logger(namespace="portgate.nft")


def net_effect(changes: Sequence[Change]) -> tuple[list[KernelEntry], list[KernelEntry]]:
    """What a batch removes from and adds to the kernel, in order, with no-ops folded away
    (an entry added then removed in the same batch never reaches the kernel)."""
    removed: dict[KernelEntry, None] = {}
    added: dict[KernelEntry, None] = {}
    for change in changes:
        before, after = kernel_view(change.before), kernel_view(change.after)
        if before == after:
            continue
        if before is not None:
            entry = before.canonical()
            if entry in added:
                del added[entry]
            else:
                removed[entry] = None
        if after is not None:
            entry = after.canonical()
            if entry in removed:
                del removed[entry]
            else:
                added[entry] = None
    return list(removed), list(added)


def _of_table(items: list[Json], family: str, table: str) -> list[Json]:
    """The items of one table in a ``list ruleset`` output."""
    mine: list[Json] = []
    for item in items:
        for kind, body in item.items():
            if not isinstance(body, dict) or body.get("family") != family:
                continue
            name = body.get("name") if kind == "table" else body.get("table")
            if name == table:
                mine.append(item)
    return mine


class NftBackend:
    name = "nft"

    def __init__(self, layout: Layout, runner: NftRunner | None = None) -> None:
        self.layout = layout
        self.runner = runner if runner is not None else NftRunner()
        self.last_repair: tuple[int, int] = (0, 0)  # (removed, added) at the last install

    @property
    def table_name(self) -> str:
        return f"{FAMILY} {self.layout.table}"

    def _read_foreign(self, terse: bool = False) -> ForeignDump | None:
        """Jump mode: our part of the firewall's table (None outside jump mode)."""
        jump = self.layout.forward_jump
        if jump is None:
            return None
        output = self.runner.list(f"table {jump.family} {jump.table}", terse=terse)
        if output is None:
            raise BackendError(
                f"backend.nft.forward_jump: table {jump.family} {jump.table} does not exist "
                "(is the main firewall loaded?)"
            )
        foreign = read_foreign(output, self.layout)
        assert foreign is not None
        if not any("chain" in item and item["chain"].get("name") == jump.chain for item in output):
            raise BackendError(f"backend.nft.forward_jump: chain {jump} does not exist")
        return foreign

    def _read(self, terse: bool = False) -> TableDump | None:
        output = self.runner.list(f"table {self.table_name}", terse=terse)
        if output is None:
            return None
        dump = read_dump(output, self.layout)
        if dump is not None and dump.foreign:
            raise BackendError(
                f"table {self.table_name} holds objects portgate did not create "
                f"({', '.join(dump.foreign[:3])}); set backend.nft.table to another name"
            )
        return dump

    def install(self, mappings: Iterable[Mapping]) -> tuple[int, int]:
        try:
            return self._install(mappings)
        finally:
            # listing every element left libnftables' cache holding them, and the parsed dump
            # and the script were freed but kept by malloc: tens of MB at 10,000 mappings,
            # given back now (the periodic full check runs this every few minutes)
            self.runner.drop_cache()
            release_free_memory()

    def _install(self, mappings: Iterable[Mapping]) -> tuple[int, int]:
        desired: set[KernelEntry] = set()
        for mapping in mappings:
            view = kernel_view(mapping)
            if view is not None:
                desired.add(view.canonical())
        dump = self._read()
        foreign = self._read_foreign()
        jump_intact = foreign is None or foreign.intact()
        if dump is None or not skeleton_intact(dump, self.layout) or not jump_intact:
            script = replace_table_text(self.layout, dump is not None, desired, foreign)
            current: set[KernelEntry] = set() if dump is None else dump.entries()
            if foreign is not None:
                current |= foreign.entries()
            self.runner.run_script(script)
            self.last_repair = (len(current - desired), len(desired - current))
            log.info(
                "nftables table {table} {how} with {count} mapping(s)",
                table=self.table_name,
                how="created" if dump is None else "rebuilt",
                count=len(desired),
            )
            return self.last_repair
        current = dump.entries()
        if foreign is not None:
            current |= foreign.entries()
        stale, missing = current - desired, desired - current
        self.runner.run(element_commands(self.layout, stale, missing))
        self.last_repair = (len(stale), len(missing))
        if stale or missing:
            log.info(
                "nftables table {table}: removed {stale} stale and added {missing} missing "
                "mapping(s)",
                table=self.table_name,
                stale=len(stale),
                missing=len(missing),
            )
        return self.last_repair

    def apply(self, changes: Sequence[Change]) -> None:
        removed, added = net_effect(changes)
        if not removed and not added:
            return
        try:
            commands = element_commands(self.layout, removed, added)
        except ValueError as error:
            raise BackendError(str(error)) from error
        self.runner.run(commands)

    def snapshot(self) -> frozenset[KernelEntry]:
        dump = self._read()
        entries = set() if dump is None else dump.entries()
        foreign = self._read_foreign() if self.layout.forward_jump is not None else None
        if foreign is not None:
            entries |= foreign.entries()
        return frozenset(entries)

    def reset_owned(self) -> None:
        script = ""
        if self._read(terse=True) is not None:
            script += f"delete table {self.table_name}\n"
        if self.layout.forward_jump is not None:
            try:
                foreign = self._read_foreign(terse=True)
            except BackendError:
                foreign = None  # the firewall's table is gone, and our part with it
            if foreign is not None:
                script += remove_jump_text(self.layout, foreign)
        if script:
            self.runner.run_script(script)
            log.info("nftables table {table} removed", table=self.table_name)

    def healthy(self) -> bool:
        """Cheap: one terse ``list ruleset`` (about a millisecond even with 10,000 elements;
        libnftables' ``list table`` loads every element, terse or not)."""
        try:
            items = self.runner.list("ruleset", terse=True) or []
        except BackendError:
            return False
        own = _of_table(items, FAMILY, self.layout.table)
        dump = read_dump(own, self.layout) if own else None
        if dump is None or dump.foreign or not skeleton_intact(dump, self.layout, elements=False):
            return False
        jump = self.layout.forward_jump
        if jump is None:
            return True
        foreign = read_foreign(_of_table(items, jump.family, jump.table), self.layout)
        return foreign is not None and foreign.intact()

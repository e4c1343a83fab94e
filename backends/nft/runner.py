"""One libnftables JSON batch per call, through Debian's python3-nftables.

libnftables runs every command list it is given as one kernel transaction: it applies as a
whole or not at all. Errors come back as nft's own message, turned into a BackendError with a
hint for the usual causes (not root, no nat support in the kernel).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import BackendError

Json = dict[str, Any]

HINTS = (
    ("Operation not permitted", "portgate needs root or CAP_NET_ADMIN to change nftables"),
    (
        "Could not process rule: No such file or directory",
        "is the kernel's nftables nat support loaded (nft_nat, nft_chain_nat)?",
    ),
    ("Protocol not supported", "the kernel lacks nftables support (nf_tables)"),
)


def _hint(error: str) -> str:
    for needle, hint in HINTS:
        if needle in error:
            return f" ({hint})"
    return ""


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


class NftRunner:
    """A libnftables context set up for JSON in and out."""

    def __init__(self) -> None:
        try:
            import nftables
        except ImportError as error:
            raise BackendError(
                "the nftables Python module is missing (apt-get install python3-nftables; "
                "a venv must be made with --system-site-packages from /usr/bin/python3)"
            ) from error
        self._nft: Any = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        self.transactions = 0

    def drop_cache(self) -> None:
        """Let go of libnftables' cache: after listing a table it holds every element (17 MB
        at 10,000 mappings) until a command needing another cache rebuilds it. A terse listing
        of the ruleset is such a command (about 1 ms) and leaves the cache without elements.
        (A fresh context would do too, but the ctypes objects of the old one form a cycle that
        only a full garbage collection frees, and with it the old cache.)"""
        self.list("ruleset", terse=True)

    def run(self, commands: list[Json]) -> None:
        """Apply ``commands`` as one atomic transaction."""
        if not commands:
            return
        rc, _output, error = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            message = _first_line(str(error))
            raise BackendError(f"nftables refused the batch: {message}{_hint(str(error))}")
        self.transactions += 1

    def run_script(self, script: str) -> None:
        """Run an nft script (nft's own syntax) as one atomic transaction."""
        rc, _output, error = self._nft.cmd(script)
        if rc != 0:
            message = _first_line(str(error))
            raise BackendError(f"nftables refused the batch: {message}{_hint(str(error))}")
        self.transactions += 1

    def list(self, what: str, terse: bool = False) -> list[Json] | None:
        """``nft -j list <what>``; None when it does not exist."""
        self._nft.set_terse_output(terse)
        try:
            rc, output, error = self._nft.cmd(f"list {what}")
        finally:
            self._nft.set_terse_output(False)
        if rc != 0:
            if "No such file or directory" in str(error):
                return None
            raise BackendError(f"cannot list {what}: {_first_line(str(error))}{_hint(str(error))}")
        data = json.loads(output) if output else {"nftables": []}
        items: list[Json] = data.get("nftables", [])
        return items

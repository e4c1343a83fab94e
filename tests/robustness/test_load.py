"""Load and crashes against the real daemon in the lab (issue 7).

Twenty-four clients at once, on eight LAN addresses of the lan and lan2 hosts (one NAT-PMP,
one PCP and one UPnP client per address; natpmpc itself on the two primary addresses), map,
refresh and delete their own ports. Afterwards what each client was last told must hold, and
the three copies of the state agree: the kernel (``nft -j list table inet portgate``, parsed
by the backend's own reader), the table (``portgate list --json --pinholes``) and the lease
store (read with sqlite3, read-only, once the daemon is gone).

The crash test kills the daemon with SIGKILL at random (seeded) moments under that load and
starts it again: nothing acknowledged is lost, nothing deleted comes back, nothing is
duplicated, and kernel == table == store at the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import LAN2_HOST, LAN_HOST, WAN_GW, GatewayDaemon, Lab
from tests.robustness.rig import (
    HTTP_PORT,
    ROOT,
    alive,
    check_kernel_equals_table,
    check_store_equals,
    table_entries,
)

pytestmark = [pytest.mark.netns]

#: Set (seconds) for a soak run: both tests then run their load that long (docs/fuzzing.md).
SOAK_SECONDS = float(os.environ.get("PORTGATE_SOAK_SECONDS", "0"))
#: Operations per client in the short run (24 clients).
OPERATIONS = 100
CRASH_SECONDS = 24.0
LAN_ADDRESSES = [LAN_HOST, "192.168.77.20", "192.168.77.21", "192.168.77.22"]
LAN2_ADDRESSES = [LAN2_HOST, "192.168.77.30", "192.168.77.31", "192.168.77.32"]
Identity = tuple[str, str, str, int]  # origin, client, proto, internal port


@pytest.fixture
def lab(robust_lab: Lab) -> Lab:
    for address in LAN_ADDRESSES[1:]:
        robust_lab.run(robust_lab.lan, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
    for address in LAN2_ADDRESSES[1:]:
        robust_lab.run(robust_lab.lan2, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
    return robust_lab


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[GatewayDaemon]:
    d = GatewayDaemon(lab, tmp_path, extra=f"upnp: {{http_port: {HTTP_PORT}}}")
    d.start()
    try:
        yield d
    finally:
        d.stop(signal.SIGKILL)


# -- the load ---------------------------------------------------------------------------------


@dataclass
class LoadReport:
    records: list[dict[str, Any]]
    operations: int
    lost: int
    errors: list[str]


class Load:
    """The load clients in lan and lan2 (``tests.robustness.loadclient``), running at once."""

    def __init__(self, lab: Lab, *, ops: int, seconds: float, seed: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for namespace, addresses, base in (
            (lab.lan, LAN_ADDRESSES, 0),
            (lab.lan2, LAN2_ADDRESSES, 100),
        ):
            proc = lab.spawn(
                namespace,
                sys.executable,
                "-m",
                "tests.robustness.loadclient",
                "--addresses",
                ",".join(addresses),
                "--primary",
                addresses[0],
                "--base",
                str(base),
                "--ops",
                str(ops),
                "--seconds",
                str(seconds),
                "--seed",
                str(seed),
                "--port",
                str(HTTP_PORT),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(ROOT),
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "started", proc.stderr
            self.procs.append(proc)
        self.timeout = seconds + 60

    def running(self) -> bool:
        return any(proc.poll() is None for proc in self.procs)

    def report(self) -> LoadReport:
        total = LoadReport([], 0, 0, [])
        for proc in self.procs:
            out, err = proc.communicate(timeout=self.timeout)
            assert proc.returncode == 0, err
            part = json.loads(out.strip().splitlines()[-1])
            total.records += part["records"]
            total.operations += part["operations"]
            total.lost += part["lost"]
            total.errors += part["errors"]
        return total


def identity(row: dict[str, Any]) -> Identity:
    _address, port = str(row["internal"]).rsplit(":", 1)
    return (str(row["origin"]), str(row["client"]), str(row["proto"]), int(port))


def check_clients_were_told_the_truth(
    records: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> None:
    """Every mapping a client was last told it has is there, with the external port it was
    given; every one it was last told is gone is gone; no other mapping exists; none twice."""
    counts = Counter(identity(row) for row in rows)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    by_identity = {identity(row): row for row in rows}
    known: set[Identity] = set()
    for record in records:
        key = (record["origin"], record["client"], record["proto"], int(record["internal_port"]))
        known.add(key)
        row = by_identity.get(key)
        if record["state"] == "present":
            assert row is not None, f"acknowledged mapping lost: {record}"
            assert row["external"] == f"{WAN_GW}:{record['external_port']}", (record, row)
        elif record["state"] == "absent":
            assert row is None, f"deleted mapping is back: {record} {row}"
    strays = [row for key, row in by_identity.items() if key not in known]
    assert not strays, f"mappings no client asked for: {strays}"


# -- tests ------------------------------------------------------------------------------------


def test_many_clients_of_all_three_protocols_leave_kernel_table_and_store_equal(
    lab: Lab, daemon: GatewayDaemon
) -> None:
    if SOAK_SECONDS:
        load = Load(lab, ops=10**9, seconds=SOAK_SECONDS, seed=11)
    else:
        load = Load(lab, ops=OPERATIONS, seconds=90, seed=11)
    report = load.report()
    assert report.errors == [], report.errors[:10]
    assert report.lost == 0
    assert report.operations == 24 * OPERATIONS or SOAK_SECONDS
    rows = daemon.listing()
    assert rows, "the load left no mapping at all"
    check_clients_were_told_the_truth(report.records, rows)
    table = check_kernel_equals_table(lab, rows)
    daemon.stop(signal.SIGTERM)
    check_store_equals(daemon.directory / "leases.sqlite3", table)


def test_kill_9_under_load_loses_and_duplicates_nothing(lab: Lab, daemon: GatewayDaemon) -> None:
    rng = random.Random(9)
    seconds = SOAK_SECONDS or CRASH_SECONDS
    load = Load(lab, ops=10**9, seconds=seconds, seed=29)
    kills = 0
    started = time.monotonic()
    while load.running() and time.monotonic() - started < seconds - 4:
        time.sleep(rng.uniform(1.0, 3.5))
        daemon.stop(signal.SIGKILL)
        kills += 1
        time.sleep(rng.uniform(0.0, 0.5))
        daemon.start()
    report = load.report()
    assert kills >= 4
    assert report.errors == [], report.errors[:10]
    present = [r for r in report.records if r["state"] == "present"]
    assert present and report.operations > 200, report.operations
    assert alive(daemon)
    rows = daemon.listing()
    check_clients_were_told_the_truth(report.records, rows)
    table = check_kernel_equals_table(lab, rows)
    # and once more as it would be found after a crash now
    daemon.stop(signal.SIGKILL)
    check_store_equals(daemon.directory / "leases.sqlite3", table)
    # a restart brings back exactly that, into the kernel too
    daemon.start()
    again = daemon.listing()
    assert table_entries(again) == table
    check_kernel_equals_table(lab, again)

"""Where portgate's memory goes (py-spy samples time, not memory): ``python -m bench.memory``.

1. Imports: the resident size of a fresh interpreter after importing each of the daemon's
   dependencies alone, over the bare interpreter's, and after importing the whole daemon.
2. The table: a fresh interpreter that has imported the daemon loads N persisted mappings the
   way the daemon starts (``LeaseStore.load`` then ``MappingTable.restore``); the growth of
   its resident size per mapping, and tracemalloc's biggest allocation sites in a second run.

No root and no namespaces needed. Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap

from bench.lab import ROOT

MODULES = (
    "twisted.internet.reactor",
    "twisted.web.server",
    "lxml.etree",
    "pyroute2",
    "prometheus_client",
    "msgspec",
    "yaml",
    "sortedcontainers",
    "nftables",
    "sqlite3",
)

_RSS = "int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"

_TABLE = """
import gc, json, random, sys, time, tracemalloc
from ipaddress import ip_address
from pathlib import Path
import gateway.memory
gateway.memory.keep_openssl_out()
import gateway.daemon as daemon
from gateway.allocator import Allocator
from gateway.config import load_config
from gateway.model import Endpoint, Kind, Mapping, MappingKey, Origin, Owner, Proto
from gateway.store import LeaseStore
from gateway.table import MappingTable

def rss():
    return RSS

count, path, hosts, trace = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
now, wall = time.monotonic(), time.time()
external = ip_address("203.0.113.1")
def host(i):
    return ip_address("192.168.77.10" if hosts <= 1 else f"192.168.77.{100 + i % hosts}")
with LeaseStore(path) as store:
    store.replace_all(
        [
            Mapping(
                uid=i + 1, kind=Kind.PORT_MAP,
                key=MappingKey(Proto.TCP, Endpoint(external, 10000 + i)),
                internal=Endpoint(host(i), 10000 + i), owner=Owner(Origin.UPNP, host(i)),
                description=f"fill {i}", expires=now + 86400, created=now, lifetime=86400,
            )
            for i in range(count)
        ],
        now, wall,
    )
gc.collect()
config = load_config(str(Path(ROOT) / "etc" / "minimal.yaml"))
if trace:
    tracemalloc.start(1)
before = rss()
store = LeaseStore(path)
table = MappingTable(daemon.build_policy(config, {}), Allocator(random.Random(1)), external)
table.restore(store.load(now, wall))
gc.collect()
after = rss()
out = {"rss_before_kib": before, "rss_after_kib": after, "mappings": len(table)}
if trace:
    snapshot = tracemalloc.take_snapshot()
    out["sites"] = [
        [str(s.traceback[0]).replace(str(ROOT) + "/", ""), s.size, s.count]
        for s in snapshot.statistics("lineno")[:12]
    ]
print(json.dumps(out))
"""


def _rss_after(code: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nprint({_RSS})"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


def imports() -> list[tuple[str, int]]:
    """(what, resident KiB) for the bare interpreter, each dependency alone, and all."""
    rows = [("bare interpreter", _rss_after("import sys"))]
    for module in MODULES:
        rows.append((module, _rss_after(f"import {module}")))
    lean = "import gateway.memory as m\nm.keep_openssl_out()\n"
    rows.append(
        (
            "twisted.internet.reactor, OpenSSL kept out (gateway.memory)",
            _rss_after(f"{lean}import twisted.internet.reactor"),
        )
    )
    rows.append(
        ("gateway.rtnl (pyroute2's link/address decoder alone)", _rss_after("import gateway.rtnl"))
    )
    rows.append(
        (
            "gateway.daemon (everything the daemon imports, as `portgate run` does)",
            _rss_after(f"{lean}import gateway.daemon"),
        )
    )
    return rows


def table(count: int, hosts: int, trace: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="pgb-memory-") as directory:
        code = _TABLE.replace("RSS", _RSS).replace("ROOT", repr(str(ROOT)))
        done = subprocess.run(
            [
                *(sys.executable, "-c", textwrap.dedent(code), str(count)),
                *(f"{directory}/leases.sqlite3", str(hosts), "1" if trace else "0"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--mappings", type=int, default=10000)
    parser.add_argument("--hosts", type=int, default=100)
    args = parser.parse_args(argv)
    rows = imports()
    bare = rows[0][1]
    print("| imported | RSS (MB) | over the bare interpreter (MB) |")
    print("| --- | ---: | ---: |")
    for what, kib in rows:
        print(f"| {what} | {kib / 1024:.1f} | {(kib - bare) / 1024:+.1f} |")
    plain = table(args.mappings, args.hosts, trace=False)
    grown = int(str(plain["rss_after_kib"])) - int(str(plain["rss_before_kib"]))
    print()
    print(
        f"Loading {args.mappings:,} mappings ({args.hosts} LAN hosts) into the table: "
        f"+{grown / 1024:.1f} MB resident, {grown * 1024 / max(1, args.mappings):,.0f} bytes "
        "per mapping."
    )
    traced = table(args.mappings, args.hosts, trace=True)
    print()
    print("| allocation site (tracemalloc, after the load) | KiB | blocks |")
    print("| --- | ---: | ---: |")
    for site, size, blocks in traced.get("sites", []):  # type: ignore[attr-defined]
        print(f"| {site} | {size / 1024:,.0f} | {blocks:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What is measured, for one daemon in its lab. Every request goes through the daemon; only
the persisted state written before a (re)start is made by the harness.

A call that gets no answer is checked against the daemon: when it has died, the death is
recorded as a result (with its signal), the daemon is started again and the run goes on.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench.daemons import (
    FILL_BASE,
    HTTP_PORT,
    Daemon,
    answers_natpmp,
    answers_upnp,
    rss_of,
)
from bench.lab import GW_LAN, LAN2_HOST, LAN_HOST, ROOT, Lab
from bench.traffic import FlowRun, new_flows, tcp_throughput
from bench.upnp import IgdClient, SoapAnswer, UpnpError, read_listing

OPS_BASE = 30000  # external ports of the measured add/get/delete calls
PMP_BASE = {"natpmp": (50000, 50100), "pcp": (50200, 50300)}  # per LAN host
Json = dict[str, Any]


def summary(seconds: list[float]) -> Json:
    """Median and p90 (nearest rank) in milliseconds."""
    if not seconds:
        return {"n": 0, "median_ms": None, "p90_ms": None}
    ordered = sorted(seconds)
    rank = max(1, math.ceil(0.9 * len(ordered)))
    return {
        "n": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[rank - 1] * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
        "samples_ms": [round(x * 1000, 4) for x in seconds],
    }


@dataclass
class Options:
    sizes: list[int] = field(default_factory=lambda: [0, 1000, 5000, 10000])
    enum_sizes: list[int] = field(default_factory=lambda: [1000, 5000])
    pmp_size: int = 1000
    flow_size: int = 10000  # traffic with this many mappings, paired with runs with none
    reps: int = 100
    fill_hosts: int = 100  # the LAN hosts the persisted mappings point at (1: the measuring one)
    pmp_seconds: float = 5.0
    pmp_ports: int = 50
    flow_count: int = 30000
    flow_seconds: float = 3.0
    flow_pairs: int = 10
    throughput_seconds: float = 2.0
    restart_timeout: float = 1800.0
    call_timeout: float = 120.0

    @property
    def flow_port(self) -> int:
        """The mapping the traffic goes through: the middle one of the fill (so a daemon that
        scans its rules in order does an average amount of work)."""
        return FILL_BASE + self.flow_size // 2


@dataclass
class Bench:
    """One daemon in its lab, and everything measured of it."""

    daemon: Daemon
    options: Options
    log: Callable[[str], None]
    results: Json = field(default_factory=dict)
    events: list[Json] = field(default_factory=list)
    phase: str = "start"
    _sport: int = 1024
    _failures: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = IgdClient(self.lab.lan, GW_LAN, HTTP_PORT, timeout=self.options.call_timeout)

    @property
    def name(self) -> str:
        return self.daemon.name

    @property
    def lab(self) -> Lab:
        return self.daemon.lab

    def put(self, path: tuple[str, ...], value: Any) -> None:
        node = self.results
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    def event(self, what: str, **details: Any) -> None:
        entry = {"phase": self.phase, "what": what, **details}
        self.events.append(entry)
        self.log(f"{self.name}: {self.phase}: {what} {details if details else ''}")

    # -- calls that survive a daemon's death --------------------------------------------------

    def call(self, request: Callable[[], SoapAnswer]) -> SoapAnswer | None:
        """One SOAP call; None when it got no answer (a crash is recorded and recovered)."""
        try:
            return request()
        except UpnpError as error:
            self.check_alive(f"no answer: {error}")
            return None

    def check_alive(self, symptom: str) -> bool:
        """True when the daemon runs; else record its death, start it again, return False."""
        time.sleep(0.2)
        status = self.daemon.exit_status()
        if status is None:
            self.event("call failed, daemon still running", symptom=symptom)
            return True
        self.event("crashed", status=status, symptom=symptom)
        started = time.monotonic()
        try:
            self.daemon.start(wait=True, timeout=self.options.restart_timeout)
            self.client.control_path = ""
        except (RuntimeError, TimeoutError) as error:
            self.event("restart after crash failed", error=str(error)[:500])
            raise
        self.event(
            "restarted after crash",
            seconds=round(time.monotonic() - started, 3),
            kernel_count=self.daemon.kernel_count(),
        )
        return False

    # -- start with N persisted mappings ------------------------------------------------------

    def restart_with(self, count: int) -> Json:
        """Stop, empty the kernel's state (as after a reboot), persist ``count`` leases, start;
        time until all are in the kernel and until the daemon answers."""
        self.daemon.stop()
        self.daemon.clear_kernel()
        self.daemon.persist(count, self.options.flow_size // 2, self.options.fill_hosts)
        timeout = self.options.restart_timeout
        answered: dict[str, float] = {}
        stop = threading.Event()
        started = time.monotonic()

        def poll_answers() -> None:
            while not stop.is_set() and len(answered) < 2:
                if "natpmp_s" not in answered and answers_natpmp(self.lab, timeout=0.2):
                    answered["natpmp_s"] = time.monotonic() - started
                if "upnp_s" not in answered and answers_upnp(self.lab, timeout=5.0):
                    answered["upnp_s"] = time.monotonic() - started
                time.sleep(0.02)

        self.daemon.start(wait=False)
        self.client.control_path = ""
        poller = threading.Thread(target=poll_answers, daemon=True)
        poller.start()
        kernel_s: float | None = None
        first_nonzero: int | None = None
        seen = 0
        try:
            while time.monotonic() - started < timeout:
                elapsed = time.monotonic() - started
                seen = self.daemon.kernel_count()
                if seen and first_nonzero is None:
                    first_nonzero = seen
                if seen >= count and kernel_s is None:
                    kernel_s = time.monotonic() - started
                if kernel_s is not None and len(answered) == 2:
                    break
                if self.daemon.exit_status() is not None:
                    self.event("died while starting", status=self.daemon.exit_status())
                    break
                # listing a long chain costs the daemon CPU: poll less often as time goes by
                time.sleep(min(5.0, max(0.05, elapsed / 20)))
        finally:
            stop.set()
            poller.join(timeout=30)
        result: Json = {
            "count": count,
            "kernel_s": kernel_s,
            "kernel_count": seen,
            "first_kernel_count_seen": first_nonzero,
            "answer_natpmp_s": answered.get("natpmp_s"),
            "answer_upnp_s": answered.get("upnp_s"),
            "timed_out": kernel_s is None or len(answered) < 2,
        }
        self.log(f"{self.name}: started with {count} leases: {result}")
        if result["timed_out"] and self.daemon.exit_status() is None:
            self.event("start not complete before the time limit", timeout_s=timeout)
        return result

    # -- UPnP ---------------------------------------------------------------------------------

    def upnp_cycle(self, port: int, record: dict[str, list[float]] | None = None) -> None:
        """AddPortMapping, GetSpecificPortMappingEntry and DeletePortMapping of one port;
        with ``record``, each call's time (or failure) is noted in it."""
        for op, request in (
            ("add", partial(self.client.add, port, LAN_HOST, port, 3600)),
            ("get", partial(self.client.get, port)),
            ("delete", partial(self.client.delete, port)),
        ):
            answer = self.call(request)
            if record is None:
                continue
            if answer is not None and answer.ok:
                record[op].append(answer.seconds)
            else:
                why = "no answer" if answer is None else f"fault {answer.fault or answer.status}"
                self._failures[op][why] = self._failures[op].get(why, 0) + 1

    def ops_start(self) -> dict[str, list[float]]:
        self._failures = {"add": {}, "get": {}, "delete": {}}
        for i in range(3):  # warm-up, not counted
            self.upnp_cycle(OPS_BASE - 10 + i)
        return {"add": [], "get": [], "delete": []}

    def ops_result(self, record: dict[str, list[float]]) -> Json:
        return {op: {**summary(record[op]), "failures": self._failures[op]} for op in record}

    def generic_walk(self, expected: int) -> Json:
        index = entries = 0
        end = "limit"
        started = time.monotonic()
        while index <= expected + 10:
            answer = self.call(partial(self.client.generic, index))
            if answer is None:
                end = "no answer"
                break
            if answer.fault == 713:
                end = "713"
                break
            if not answer.ok:
                end = f"fault {answer.fault or answer.status}"
                break
            entries += 1
            index += 1
        seconds = time.monotonic() - started
        return {
            "expected": expected,
            "entries": entries,
            "end": end,
            "seconds": seconds,
            "complete": entries == expected and end == "713",
        }

    def list_all(self, expected: int) -> Json:
        started = time.monotonic()
        try:
            answer = self.client.list_all()
        except UpnpError as error:
            seconds = time.monotonic() - started
            alive = self.check_alive(f"GetListOfPortMappings: {error}")
            return {
                "expected": expected,
                "seconds": seconds,
                "entries": 0,
                "well_formed": False,
                "complete": False,
                "crashed": not alive,
                "problem": str(error),
            }
        seconds = time.monotonic() - started
        if not answer.ok:
            return {
                "expected": expected,
                "seconds": seconds,
                "entries": 0,
                "well_formed": False,
                "complete": False,
                "crashed": False,
                "problem": f"fault {answer.fault or answer.status}",
            }
        listing = read_listing(answer.values.get("NewPortListing", ""))
        return {
            "expected": expected,
            "seconds": seconds,
            "entries": listing.entries,
            "well_formed": listing.well_formed,
            "complete": listing.well_formed and listing.entries == expected,
            "crashed": False,
            "problem": listing.problem,
        }

    # -- NAT-PMP and PCP ----------------------------------------------------------------------

    def pmp_rate(self, kind: str, mode: str) -> Json:
        seconds = self.options.pmp_seconds
        start_at = time.time() + 1.5
        procs = []
        for namespace, host, base in zip(
            (self.lab.lan, self.lab.lan2), (LAN_HOST, LAN2_HOST), PMP_BASE[kind], strict=True
        ):
            procs.append(
                subprocess.Popen(
                    [
                        *("ip", "netns", "exec", namespace, sys.executable, "-m", "bench.pmp"),
                        *("load", "--kind", kind, "--gateway", GW_LAN, "--client", host),
                        *("--base-port", str(base), "--ports", str(self.options.pmp_ports)),
                        *("--mode", mode, "--start-at", repr(start_at), "--seconds", str(seconds)),
                    ],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        clients = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 60)
            clients.append(json.loads(out))
        ok = sum(int(c["ok"]) for c in clients)
        span = max(float(c["seconds"]) for c in clients)
        result = {
            "round_trips_per_s": ok / span if span else 0.0,
            "ok": ok,
            "timeouts": sum(int(c["timeouts"]) for c in clients),
            "errors": [c["errors"] for c in clients],
            "median_ms": [None if c["median_s"] is None else c["median_s"] * 1000 for c in clients],
            "p90_ms": [None if c["p90_s"] is None else c["p90_s"] * 1000 for c in clients],
            "seconds": span,
            "mode": mode,
        }
        if self.daemon.exit_status() is not None:
            self.check_alive(f"{kind} load")
            result["crashed"] = True
        return result

    # -- traffic ------------------------------------------------------------------------------

    def next_sports(self, count: int) -> int:
        first = self._sport
        self._sport = 1024 + (self._sport - 1024 + count // 2 + 1) % 64000
        return first

    def map_flow_port(self) -> bool:
        """Make sure the traffic's mapping exists (a fill mapping, or one added now)."""
        port = self.options.flow_port
        found = self.call(partial(self.client.get, port))
        if found is not None and found.ok:
            return True
        answer = self.call(partial(self.client.add, port, LAN_HOST, port, 3600, "flows"))
        return answer is not None and answer.ok

    def flow_run(self, count: int) -> FlowRun:
        return new_flows(
            self.lab,
            self.options.flow_port,
            self.next_sports(count),
            count,
            self.options.flow_seconds,
        )

    def throughput_run(self) -> tuple[float, str]:
        return tcp_throughput(self.lab, self.options.flow_port, self.options.throughput_seconds)

    def rss(self) -> int | None:
        return rss_of(self.daemon)


def paired_traffic(loaded: Bench, baseline: Bench, options: Options) -> dict[str, Json]:
    """Traffic through the same mapping of two instances of a daemon, one holding
    ``options.flow_size`` mappings and one holding only that mapping, in alternating runs: the
    ratio of the two is then not skewed by the machine's load drifting during the run.
    Returns ``{"loaded": ..., "baseline": ...}``."""
    roles = {"loaded": loaded, "baseline": baseline}
    results: dict[str, Json] = {}
    for role, bench in roles.items():
        if not bench.map_flow_port():
            raise RuntimeError(f"{bench.name}: could not map port {options.flow_port}")
        bench.flow_run(200)  # warm-up (neighbour entries, caches), not counted
        results[role] = {
            "port": options.flow_port,
            "mappings": bench.daemon.kernel_count(),
            "new_flows_per_s": [],
            "sent": [],
            "delivered": [],
            "throughput_bps": [],
        }
    tool = ""
    for pair in range(options.flow_pairs):
        order = ("loaded", "baseline") if pair % 2 == 0 else ("baseline", "loaded")
        for role in order:
            run = roles[role].flow_run(options.flow_count)
            results[role]["new_flows_per_s"].append(run.rate)
            results[role]["sent"].append(run.sent)
            results[role]["delivered"].append(run.delivered)
            time.sleep(0.3)
        for role in order:
            bps, tool = roles[role].throughput_run()
            results[role]["throughput_bps"].append(bps)
    for entry in results.values():
        entry["throughput_tool"] = tool
    for key in ("new_flows_per_s", "throughput_bps"):
        ratios = [
            a / b
            for a, b in zip(results["loaded"][key], results["baseline"][key], strict=True)
            if b > 0
        ]
        results["loaded"][f"{key}_pair_ratios"] = ratios
        results["loaded"][f"{key}_ratio"] = statistics.median(ratios) if ratios else None
    return results


def interleaved_ops(benches: list[Bench], reps: int) -> list[Json]:
    """UPnP add/get/delete cycles on several daemons in turn (the first bench first in one
    round, the second first in the next, ...), so that all see the machine's load drift alike:
    the ratio of two of them is then a fair one. One result per bench, in order."""
    records = [bench.ops_start() for bench in benches]
    for i in range(reps):
        shift = i % len(benches)
        for j in range(len(benches)):
            k = (j + shift) % len(benches)
            benches[k].upnp_cycle(OPS_BASE + i, records[k])
    return [bench.ops_result(record) for bench, record in zip(benches, records, strict=True)]

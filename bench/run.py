"""The benchmark run: both daemons, step by step through the table sizes, then the report.

Order (each step is done for portgate, then for miniupnpd, so both see the machine in the same
state): at 0 mappings, UPnP add/get/delete and traffic; then for each larger size the daemon
is stopped, the kernel emptied, the size's leases persisted and the daemon started again
(timed: that is the restart measurement at the largest size), followed by UPnP
add/get/delete, the memory, and at the sizes chosen for them the enumerations, NAT-PMP/PCP
rates and traffic. Traffic with no mappings is measured again at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import profile, report
from bench.daemons import Miniupnpd, Portgate, become_subreaper
from bench.install import ensure_packages, ensure_profiler
from bench.lab import ROOT, Lab, remove_stale_labs
from bench.measure import Bench, Options, interleaved_ops, paired_traffic

DAEMONS = ("portgate", "miniupnpd")
RESULTS = ROOT / "bench" / "results"
Json = dict[str, Any]


def make_logger(path: Path | None, quiet: bool = False) -> Callable[[str], None]:
    started = time.monotonic()

    def log(text: str) -> None:
        line = f"[{time.monotonic() - started:7.1f}s] {text}"
        if not quiet:
            print(line, file=sys.stderr, flush=True)
        if path is not None:
            with path.open("a") as f:
                f.write(line + "\n")

    return log


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run through the normal clean-up (labs removed)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(
    options: Options,
    daemons: tuple[str, ...] = DAEMONS,
    out_dir: Path = RESULTS,
    install: bool = True,
    profile_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    keep_workdir: bool = False,
) -> tuple[Path, Path, Json]:
    started_wall = datetime.now(UTC)
    started = time.monotonic()
    stem = started_wall.strftime("%Y%m%d-%H%M%S")
    machine = report.machine_info()
    work = Path(tempfile.mkdtemp(prefix="pgb-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or make_logger(out_dir / f"{stem}.log")
    log(f"work directory {work}; daemons {', '.join(daemons)}; options {asdict(options)}")
    if install and "miniupnpd" in daemons:
        ensure_packages(log)
    spy = ensure_profiler(sys.executable, str(ROOT), log) if profile_dir else None
    stale = remove_stale_labs()
    if stale:
        log(f"removed labs left by dead runs: {', '.join(stale)}")
    if not become_subreaper():
        log("could not become a child subreaper: a crash's signal will not be known")
    mains: list[Bench] = []
    twins: list[Bench] = []
    labs: list[Lab] = []
    versions: Json = {}
    try:
        with _terminate_as_exit():
            for name in daemons:
                for twin in (False, True):
                    lab = Lab(("p" if name == "portgate" else "m") + ("z" if twin else ""))
                    labs.append(lab)
                    lab.up()
                    directory = work / (f"{name}-twin" if twin else name)
                    daemon = (
                        Portgate(lab, directory)
                        if name == "portgate"
                        else Miniupnpd(lab, directory)
                    )
                    versions[name] = daemon.version()
                    bench = Bench(daemon, options, log, phase="twin" if twin else "start")
                    bench.results["lab"] = lab.prefix
                    (twins if twin else mains).append(bench)
                    daemon.clear_kernel()
                    daemon.persist(0)
                    daemon.start(wait=True)
                    log(f"{name}{' twin' if twin else ''} up in {lab.prefix}")
            versions.update(report.tool_versions())
            for size in options.sizes:
                _step(mains, twins, size, options, log, spy, profile_dir)
            if spy is not None and profile_dir is not None and max(options.sizes) > 0:
                for bench in mains:
                    if bench.name == "portgate":
                        log(f"portgate: recording a start with {max(options.sizes)} mappings")
                        profile.record_start(spy, profile_dir, bench, max(options.sizes))
    finally:
        for bench in mains + twins:
            with contextlib.suppress(Exception):
                bench.daemon.stop()
        for lab in labs:
            lab.down()
        if not keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
    option_json = asdict(options)
    results = {
        main.name: {**main.results, "events": main.events + twin.events}
        for main, twin in zip(mains, twins, strict=True)
    }
    rows = report.build_rows(results, option_json)
    targets = report.evaluate_targets(results, option_json) if "portgate" in daemons else []
    data: Json = {
        "started_utc": started_wall.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "duration_s": time.monotonic() - started,
        "machine": machine,
        "loadavg_end": list(os.getloadavg()),
        "versions": versions,
        "options": option_json,
        "rows": [r.as_json() for r in rows],
        "targets": [asdict(t) for t in targets],
        "daemons": results,
    }
    json_path, md_path = report.write(data, str(out_dir), stem)
    log(f"results: {md_path} and {json_path}")
    return Path(json_path), Path(md_path), data


def _step(
    mains: list[Bench],
    twins: list[Bench],
    size: int,
    options: Options,
    log: Callable[[str], None],
    spy: str | None,
    profile_dir: Path | None,
) -> None:
    """One table size: each daemon (re)started with ``size`` persisted mappings, then UPnP
    calls interleaved over all daemons and their twins (which hold none), then each daemon's
    other measurements in turn."""
    key = str(size)
    for bench in mains:
        bench.phase = f"{size} mappings"
        if size > 0:
            log(f"{bench.name}: {size}: start with {size} persisted mappings")
            bench.put(("start_with", key), bench.restart_with(size))
        bench.put(("kernel_count", key), bench.daemon.kernel_count())
    profiles = _profiles(mains, spy, profile_dir)
    for bench, twin in zip(mains, twins, strict=True):
        log(f"{bench.name}: {size}: UPnP add/get/delete x{options.reps}, alternating with its twin")
        prof = profiles if bench.name == "portgate" else None
        with profile.maybe(prof, f"upnp-ops-{size}"):
            main_result, twin_result = interleaved_ops([bench, twin], options.reps)
        bench.put(("upnp", key), main_result)
        bench.put(("upnp_twin", key), twin_result)
        bench.put(("rss_kib", key), bench.rss())
    for bench in mains:
        prof = profiles if bench.name == "portgate" else None
        if size in options.enum_sizes:
            expected = bench.daemon.kernel_count()
            log(f"{bench.name}: {size}: GetGenericPortMappingEntry walk")
            with profile.maybe(prof, f"generic-walk-{size}"):
                bench.put(("generic_walk", key), bench.generic_walk(expected))
            log(f"{bench.name}: {size}: GetListOfPortMappings")
            with profile.maybe(prof, f"list-{size}"):
                bench.put(("list", key), bench.list_all(expected))
        if size == options.pmp_size:
            for kind in ("natpmp", "pcp"):
                for mode in ("refresh", "churn"):
                    log(f"{bench.name}: {size}: {kind} {mode} from two clients")
                    with profile.maybe(prof, f"{kind}-{mode}-{size}"):
                        bench.put(("pmp", kind, mode), bench.pmp_rate(kind, mode))
    if size == 0 or size == options.flow_size:
        for bench, twin in zip(mains, twins, strict=True):
            log(f"{bench.name}: {size}: new flows and throughput, alternating with its twin")
            bench.put(("traffic" if size else "traffic_aa",), paired_traffic(bench, twin, options))
    for bench in mains:
        bench.put(("rss_kib_end", key), bench.rss())


def _profiles(
    mains: list[Bench], spy: str | None, directory: Path | None
) -> profile.Profiles | None:
    for bench in mains:
        if bench.name == "portgate" and spy is not None:
            return profile.Profiles(spy, directory, bench)
    return None


# -- command line --------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def smoke_options() -> Options:
    """Tiny sizes for the test suite: seconds, not minutes."""
    return Options(
        sizes=[0, 30],
        enum_sizes=[30],
        pmp_size=30,
        flow_size=30,
        reps=3,
        pmp_seconds=0.5,
        pmp_ports=5,
        flow_count=400,
        flow_seconds=1.0,
        flow_pairs=1,
        throughput_seconds=1.0,
        restart_timeout=60,
        call_timeout=30,
    )


def main(argv: list[str] | None = None) -> int:
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="portgate and miniupnpd side by side, in namespace labs (needs root)",
    )
    parser.add_argument("--daemons", default=",".join(DAEMONS))
    parser.add_argument("--sizes", type=_sizes, default=defaults.sizes)
    parser.add_argument("--enum-sizes", type=_sizes, default=defaults.enum_sizes)
    parser.add_argument("--pmp-size", type=int, default=defaults.pmp_size)
    parser.add_argument("--flow-size", type=int, default=defaults.flow_size)
    parser.add_argument("--reps", type=int, default=defaults.reps)
    parser.add_argument("--fill-hosts", type=int, default=defaults.fill_hosts)
    parser.add_argument("--pmp-seconds", type=float, default=defaults.pmp_seconds)
    parser.add_argument("--flow-count", type=int, default=defaults.flow_count)
    parser.add_argument("--flow-pairs", type=int, default=defaults.flow_pairs)
    parser.add_argument("--restart-timeout", type=float, default=defaults.restart_timeout)
    parser.add_argument("--quick", action="store_true", help="the test suite's tiny sizes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record portgate with py-spy per phase into DIR",
    )
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        options = smoke_options()
    else:
        options = Options(
            sizes=args.sizes,
            enum_sizes=args.enum_sizes,
            pmp_size=args.pmp_size,
            flow_size=args.flow_size,
            reps=args.reps,
            fill_hosts=args.fill_hosts,
            pmp_seconds=args.pmp_seconds,
            flow_count=args.flow_count,
            flow_pairs=args.flow_pairs,
            restart_timeout=args.restart_timeout,
        )
    daemons = tuple(d for d in args.daemons.split(",") if d)
    unknown = set(daemons) - set(DAEMONS)
    if unknown:
        parser.error(f"unknown daemons {sorted(unknown)}; choose from {DAEMONS}")
    if os.geteuid() != 0:
        parser.error("the benchmark needs root (namespaces, nftables)")
    _json, md, _data = run(
        options,
        daemons,
        args.out,
        install=not args.no_install,
        profile_dir=args.profile,
        keep_workdir=args.keep_workdir,
    )
    sys.stdout.write(md.read_text())
    return 0

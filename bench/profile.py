"""py-spy recordings of portgate per phase (``python -m bench --profile DIR``).

Each phase gets ``DIR/<phase>.txt`` (py-spy's raw collapsed stacks, idle time left out) and
``DIR/<phase>.summary.txt``: the functions with the most samples on top of the stack (self)
and anywhere on it (inclusive). A start with persisted leases is recorded from the first
instruction by launching the daemon under py-spy (``record_start``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.daemons import answers_natpmp, answers_upnp
from bench.lab import ROOT

if TYPE_CHECKING:
    from bench.measure import Bench

RATE = "400"
_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


class Profiles:
    def __init__(self, spy: str | None, directory: Path | None, bench: Bench) -> None:
        self.spy = spy
        self.directory = directory
        self.bench = bench

    @contextlib.contextmanager
    def record(self, label: str) -> Iterator[None]:
        pid = self.bench.daemon.pid()
        if self.spy is None or self.directory is None or pid is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        output = self.directory / f"{label}.txt"
        proc = subprocess.Popen(
            [
                *(self.spy, "record", "--pid", str(pid), "--rate", RATE, "--format", "raw"),
                *("--output", str(output), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # attached
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if output.exists():
                summarize(output)


@contextlib.contextmanager
def maybe(profiles: Profiles | None, label: str) -> Iterator[None]:
    if profiles is None:
        yield
    else:
        with profiles.record(label):
            yield


def record_start(spy: str, directory: Path, bench: Bench, count: int) -> Path:
    """Start portgate with ``count`` persisted leases under py-spy and record until it has
    them all in the kernel and answers; then stop it (the caller starts it again)."""
    daemon = bench.daemon
    daemon.stop()
    daemon.clear_kernel()
    daemon.persist(count)
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"start-{count}.txt"
    config = daemon.directory / "portgate.yaml"
    spy_proc = subprocess.Popen(
        [
            *("ip", "netns", "exec", bench.lab.gw, spy, "record", "--rate", RATE),
            *("--format", "raw", "--output", str(output), "--"),
            *(sys.executable, "-m", "gateway.cli", "run", "--config", str(config)),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if daemon.kernel_count() >= count and answers_natpmp(bench.lab) and answers_upnp(bench.lab):
            break
        time.sleep(0.1)
    for child in _children(spy_proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
    try:
        spy_proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy_proc.kill()
        spy_proc.wait()
    if output.exists():
        summarize(output)
    return output


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
    return found


def _short(frame: str) -> str:
    found = _FRAME.match(frame.strip())
    if not found:
        return frame.strip()
    path = found.group("file")
    for marker in ("/site-packages/", "/dist-packages/", f"{ROOT}/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{found.group('func')} ({path})"


def summarize(raw: Path, top: int = 30) -> Path:
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        stack, count = found.group(1), int(found.group(2))
        frames = [_short(f) for f in stack.split(";") if f]
        # py-spy puts "process ..." / "thread ..." frames first; keep only code frames
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{raw.name}: {total} samples at {RATE} Hz (idle excluded)", "", "self:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in self_counts.most_common(top)] if total else []
    lines += ["", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)] if total else []
    out = raw.with_suffix(".summary.txt")
    out.write_text("\n".join(lines) + "\n")
    return out

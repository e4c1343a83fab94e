"""The real daemon as a process: `portgate run`, the admin CLI against it, signals, kill -9.

These use the memory backend and a lease file in a temporary directory; the LAN is given by
explicit prefixes on the loopback interface, so no namespace is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PORTGATE = [sys.executable, "-m", "gateway.cli"]


def write_config(directory: Path, extra: str = "") -> Path:
    path = directory / "portgate.yaml"
    path.write_text(
        f"""
wan:
  interface: pgt-nowan0
  external_address: 203.0.113.1
lan:
  - interface: lo
    prefixes: [192.168.77.0/24]
state:
  lease_file: {directory}/leases.sqlite3
control:
  socket: {directory}/control.sock
backend:
  type: memory
{extra}
"""
    )
    return path


class Daemon:
    def __init__(self, directory: Path, config: Path) -> None:
        self.directory = directory
        self.config = config
        self.log_path = directory / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        socket = self.directory / "control.sock"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*PORTGATE, "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log()}")
            if socket.exists() and self.ctl("status").returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon did not come up:\n{self.log()}")

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PORTGATE, *args, "--socket", str(self.directory / "control.sock")],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    def listing(self) -> list[dict[str, object]]:
        done = self.ctl("list", "--json")
        assert done.returncode == 0, done.stderr
        result: list[dict[str, object]] = json.loads(done.stdout)
        return result

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, write_config(tmp_path))
    try:
        yield d
    finally:
        d.stop()


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_admin_commands_work_against_a_running_daemon(daemon: Daemon) -> None:
    daemon.start()
    added = daemon.ctl("add", "tcp", "8080", "192.168.77.10:80", "--lifetime", "600")
    assert added.returncode == 0, added.stderr
    assert "203.0.113.1:8080" in added.stdout
    daemon.ctl("add", "udp", "9000", "192.168.77.11:9000", "--description", "game")
    rows = daemon.listing()
    assert {(r["proto"], r["external"], r["internal"]) for r in rows} == {
        ("tcp", "203.0.113.1:8080", "192.168.77.10:80"),
        ("udp", "203.0.113.1:9000", "192.168.77.11:9000"),
    }
    table = daemon.ctl("list")
    assert "192.168.77.11:9000" in table.stdout and "game" in table.stdout
    status = daemon.ctl("status")
    assert "203.0.113.1" in status.stdout and "memory" in status.stdout
    conflict = daemon.ctl("add", "tcp", "8080", "192.168.77.12:80")
    assert conflict.returncode == 1
    assert conflict.stderr.count("\n") == 1 and "8080" in conflict.stderr
    deleted = daemon.ctl("delete", "tcp", "8080")
    assert deleted.returncode == 0, deleted.stderr
    assert [r["external"] for r in daemon.listing()] == ["203.0.113.1:9000"]
    flushed = daemon.ctl("flush")
    assert flushed.returncode == 0, flushed.stderr
    assert daemon.listing() == []
    log = daemon.log()
    assert "backend=memory" in log
    assert "map add tcp 203.0.113.1:8080 -> 192.168.77.10:80 lifetime=600 via=static" in log
    assert "map remove tcp 203.0.113.1:8080" in log


def test_a_lease_expires_and_the_log_says_so(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.ctl("add", "tcp", "8080", "192.168.77.10:80", "--lifetime", "1").returncode == 0
    wait_for(lambda: daemon.listing() == [])
    assert "map expire tcp 203.0.113.1:8080" in daemon.log()


def test_kill_9_loses_no_acknowledged_lease(daemon: Daemon) -> None:
    daemon.start()
    acknowledged: list[str] = []
    for port in range(20000, 20030):
        done = daemon.ctl("add", "tcp", str(port), f"192.168.77.10:{port}", "--lifetime", "3600")
        assert done.returncode == 0, done.stderr
        acknowledged.append(f"203.0.113.1:{port}")
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    daemon.start()
    rows = daemon.listing()
    assert sorted(str(r["external"]) for r in rows) == sorted(acknowledged)
    assert all(3500 <= int(str(r["lifetime_remaining"])) <= 3600 for r in rows)
    assert "restored 30 lease(s)" in daemon.log()


def test_kill_9_in_the_middle_of_a_burst(daemon: Daemon, tmp_path: Path) -> None:
    """Adds race a SIGKILL; every add that was answered is there after the restart."""
    daemon.start()
    script = tmp_path / "burst.py"
    script.write_text(
        f"""
import subprocess, sys
for port in range(30000, 30200):
    done = subprocess.run({PORTGATE!r} + ["add", "udp", str(port), "192.168.77.20:%d" % port,
                          "--socket", {str(tmp_path / "control.sock")!r}],
                          capture_output=True, text=True)
    if done.returncode != 0:
        break
    print(port, flush=True)
"""
    )
    burst = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert burst.stdout is not None
    answered = [burst.stdout.readline() for _ in range(5)]
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    rest, _ = burst.communicate(timeout=60)
    answered_ports = {int(line) for line in answered + rest.splitlines() if line.strip()}
    daemon.start()
    restored = {int(str(r["external"]).rsplit(":", 1)[1]) for r in daemon.listing()}
    assert answered_ports, "no add was answered before the kill"
    assert answered_ports <= restored
    assert len(restored) <= len(answered_ports) + 1  # at most the one in flight


def test_sigterm_stops_cleanly_and_keeps_leases(daemon: Daemon) -> None:
    daemon.start()
    daemon.ctl("add", "tcp", "8080", "192.168.77.10:80")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert "1 mapping(s) kept for the next start" in daemon.log()
    daemon.start()
    assert [r["external"] for r in daemon.listing()] == ["203.0.113.1:8080"]


def test_sigterm_removes_leases_when_configured(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    d = Daemon(tmp_path, config)
    config.write_text(
        config.read_text().replace("  lease_file:", "  keep_mappings_on_stop: false\n  lease_file:")
    )
    try:
        d.start()
        d.ctl("add", "tcp", "8080", "192.168.77.10:80")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        assert "removed all 1 mapping(s) on stop" in d.log()
        d.start()
        assert d.listing() == []
    finally:
        d.stop()


def test_sighup_applies_a_new_policy_and_refuses_a_broken_one(daemon: Daemon) -> None:
    daemon.start()
    original = daemon.config.read_text()
    assert daemon.ctl("add", "tcp", "8080", "192.168.77.10:80").returncode == 0
    daemon.config.write_text(original + "policy:\n  reserved_tcp_ports: [8081]\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in daemon.log())
    refused = daemon.ctl("add", "tcp", "8081", "192.168.77.10:81")
    assert refused.returncode == 1 and "reserved" in refused.stderr
    assert [r["external"] for r in daemon.listing()] == ["203.0.113.1:8080"]
    daemon.config.write_text(original + "policy:\n  max_mappings: many\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in daemon.log())
    assert "policy.max_mappings" in daemon.log()
    assert daemon.ctl("status").returncode == 0


def test_a_broken_config_gives_one_line_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "policy:\n  secure_mode: perhaps\n")
    done = subprocess.run(
        [*PORTGATE, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "policy.secure_mode" in done.stderr


def test_admin_commands_say_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    done = subprocess.run(
        [*PORTGATE, "list", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 1
    assert "not running" in done.stderr


def test_config_check_prints_the_effective_config(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = subprocess.run(
        [*PORTGATE, "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "secure_mode: true" in done.stdout
    assert "max_mappings_per_client: 128" in done.stdout

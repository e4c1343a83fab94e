"""Network-namespace helpers for the netns and e2e tiers.

Every lab gets its own namespace prefix, is built by scripts/netns-lab.sh (the same topology
`make run` shows) and is removed in the fixture's teardown. Traffic goes only to addresses
inside those namespaces. These tests need root: without it they fail (never skip), since in
CI a network test that cannot run must fail.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB_SCRIPT = ROOT / "scripts" / "netns-lab.sh"
CLONE_NEWNET = 0x40000000
_counter = itertools.count()

GW_LAN = "192.168.77.1"
LAN_HOST = "192.168.77.10"
LAN2_HOST = "192.168.77.11"
WAN_GW = "203.0.113.1"
WAN_HOST = "203.0.113.2"
WAN_HOST2 = "203.0.113.3"
LAN6_HOST = "fd77::10"
WAN6_HOST = "2001:db8:ff::2"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (run `make test` as root)")


def unique_prefix(kind: str) -> str:
    return f"pg{kind}{os.getpid() % 10000}{next(_counter)}"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run this thread inside a named network namespace for the block."""
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


class Namespace:
    """A lone namespace with lo up (for backend contract tests)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Namespace:
        require_root()
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )


class Lab:
    """gw, lan, lan2 and wan namespaces (see scripts/netns-lab.sh)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.gw = f"{prefix}-gw"
        self.lan = f"{prefix}-lan"
        self.lan2 = f"{prefix}-lan2"
        self.wan = f"{prefix}-wan"
        self._procs: list[subprocess.Popen[str]] = []

    def up(self) -> None:
        require_root()
        subprocess.run([str(LAB_SCRIPT), "up", self.prefix], check=True, timeout=60)

    def down(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        subprocess.run([str(LAB_SCRIPT), "down", self.prefix], check=False, timeout=60)

    def run(
        self, namespace: str, *cmd: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def spawn(self, namespace: str, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", namespace, *cmd], text=True, **kw
        )
        self._procs.append(proc)
        return proc

    def python(self, namespace: str, code: str, timeout: float = 30) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"python in {namespace} failed:\n{done.stderr}")
        return done.stdout

    # -- traffic ---------------------------------------------------------------------------

    def reaches(
        self,
        sender: str,
        receiver: str,
        proto: str,
        dest: tuple[str, int],
        listen_port: int,
        source: str | None = None,
        timeout: float = 1.5,
    ) -> bool:
        """Does one TCP connection / UDP datagram from ``sender`` to ``dest`` arrive at a
        listener on ``listen_port`` in ``receiver``?"""
        family = "AF_INET6" if ":" in dest[0] else "AF_INET"
        any_addr = "::" if family == "AF_INET6" else "0.0.0.0"
        listener = self.spawn(
            receiver,
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import socket, sys
                kind = socket.SOCK_STREAM if {proto!r} == "tcp" else socket.SOCK_DGRAM
                s = socket.socket(socket.{family}, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(({any_addr!r}, {listen_port}))
                if kind == socket.SOCK_STREAM:
                    s.listen()
                print("ready", flush=True)
                s.settimeout({timeout + 2})
                try:
                    if kind == socket.SOCK_STREAM:
                        c, peer = s.accept()
                        c.settimeout(2)
                        data = c.recv(100)
                    else:
                        data, peer = s.recvfrom(100)
                    print("got", data.decode(), peer[0], flush=True)
                except OSError:
                    print("nothing", flush=True)
                """
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert listener.stdout is not None
        ready = listener.stdout.readline()
        assert ready.strip() == "ready", listener.stderr.read() if listener.stderr else ready
        bind = f"s.bind(({source!r}, 0))" if source else ""
        self.python(
            sender,
            f"""
            import socket
            kind = socket.SOCK_STREAM if {proto!r} == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(socket.{family}, kind)
            {bind}
            s.settimeout({timeout})
            try:
                if kind == socket.SOCK_STREAM:
                    s.connect({dest!r})
                    s.send(b"ping")
                else:
                    for _ in range(3):
                        s.sendto(b"ping", {dest!r})
            except OSError:
                pass
            """,
        )
        try:
            out, _ = listener.communicate(timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            listener.kill()
            out, _ = listener.communicate()
        return "got ping" in out


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.1) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class GatewayDaemon:
    """`portgate run` in the lab's gateway namespace with the nft backend."""

    def __init__(
        self, lab: Lab, directory: Path, extra: str = "", ipv6_firewall: bool = False
    ) -> None:
        self.lab = lab
        self.directory = directory
        self.config = directory / "portgate.yaml"
        firewall = "true" if ipv6_firewall else "false"
        self.config.write_text(
            f"""
wan: {{interface: wan0}}
lan: [{{interface: br-lan}}]
state: {{lease_file: {directory}/leases.sqlite3}}
control: {{socket: {directory}/control.sock}}
backend: {{type: nft, nft: {{table: portgate, check_interval: 0.5, ipv6_firewall: {firewall}}}}}
{extra}
"""
        )
        self.log = directory / "daemon.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = self.lab.spawn(
                self.lab.gw,
                sys.executable,
                "-m",
                "gateway.cli",
                "run",
                "--config",
                str(self.config),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        assert wait_until(lambda: self.ctl("status").returncode == 0, timeout=15), self.log_text()

    def listing(self) -> list[dict[str, object]]:
        done = self.ctl("list", "--json", "--pinholes")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, object]] = json.loads(done.stdout)
        return rows

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.run(
            self.lab.gw,
            sys.executable,
            "-m",
            "gateway.cli",
            *args,
            "--socket",
            str(self.directory / "control.sock"),
            check=False,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.proc.wait(timeout=15)


class Libtorrent:
    """A libtorrent 2.0 session (Debian's python3-libtorrent) in a namespace, mapping its
    listen port with UPnP and/or NAT-PMP/PCP; ``mapped()`` waits for its port-map alert."""

    def __init__(self, lab: Lab, namespace: str, port: int, *, upnp: bool, natpmp: bool) -> None:
        script = textwrap.dedent(
            f"""
            import time, libtorrent as lt
            s = lt.session({{
                "listen_interfaces": "0.0.0.0:{port}",
                "enable_upnp": {upnp}, "enable_natpmp": {natpmp}, "enable_lsd": False,
                "enable_dht": False,
                "alert_mask": lt.alert.category_t.port_mapping_notification
                    | lt.alert.category_t.error_notification,
            }})
            deadline = time.time() + 40
            while time.time() < deadline:
                s.wait_for_alert(500)
                for a in s.pop_alerts():
                    print(type(a).__name__, a.message(), flush=True)
                    if isinstance(a, lt.portmap_alert):
                        print("MAPPED", a.external_port, flush=True)
            """
        )
        self.proc = lab.spawn(
            namespace,
            sys.executable,
            "-c",
            script,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []

    def mapped(self) -> int:
        """The first external port libtorrent reports mapped (0 if it gave up)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("MAPPED"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

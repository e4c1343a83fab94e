"""The two daemons under test, each in the gateway namespace of its own lab, configured alike:
WAN interface wan0, UPnP on br-lan at HTTP port 5000, secure mode, NAT-PMP and PCP on, LAN
hosts may map external ports 1024-65535 and nothing else, leases persisted to a file.

Both are started as in production: portgate with ``portgate run --config``; miniupnpd without
``-d``, so it forks into the background, writes its pid file and logs to syslog. The harness
makes itself a child subreaper, so the backgrounded miniupnpd becomes its child and a crash is
seen with its signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Protocol

from bench.lab import GW_LAN, LAN_HOST, ROOT, Lab, ns_socket, pid_alive
from bench.pmp import natpmp_address_of
from bench.upnp import IgdClient, UpnpError

HTTP_PORT = 5000
FILL_BASE = 10000  # persisted fill mappings use external (and internal) ports from here
FILL_LEASE = 86400
MINIUPNPD = "/usr/sbin/miniupnpd"
#: miniupnpd 2.3.1 disables port forwarding when the WAN address is in a reserved block
#: (its getifaddr.c list includes RFC 5737's 203.0.113.0/24, the lab's WAN) and refuses such
#: an address in ext_ip too; it gets this unreserved one to *report* instead. No packet is
#: ever sent to it: its DNAT rules match on the WAN interface, not on the address.
MINIUPNPD_EXT_IP = "198.20.0.1"
PR_SET_CHILD_SUBREAPER = 36

MINIUPNPD_SKELETON = """\
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ct state established,related accept
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"""
MINIUPNPD_CHAINS = ("miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd")


def become_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def fill_host(index: int, flow_index: int, hosts: int) -> str:
    """The LAN host of persisted mapping ``index``: spread over ``hosts`` hosts (from .100 up),
    as on a network with many devices; with 1 host, or for the traffic's mapping, the lab's LAN
    host (which also makes the measured requests)."""
    if hosts <= 1 or index == flow_index:
        return LAN_HOST
    return f"192.168.77.{100 + index % min(hosts, 150)}"


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Daemon(Protocol):
    name: str
    lab: Lab
    directory: Path

    def start(self, wait: bool = True, timeout: float = 60.0) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int | None: ...
    def exit_status(self) -> str | None: ...
    def persist(self, count: int, flow_index: int = -1, hosts: int = 100) -> None: ...
    def clear_kernel(self) -> None: ...
    def kernel_count(self) -> int: ...
    def version(self) -> str: ...
    def log_tail(self) -> str: ...


def answers_natpmp(lab: Lab, timeout: float = 0.3) -> bool:
    sock = ns_socket(lab.lan, socket.SOCK_DGRAM)
    try:
        return natpmp_address_of(sock, GW_LAN, timeout) is not None
    finally:
        sock.close()


def answers_upnp(lab: Lab, timeout: float = 2.0) -> bool:
    client = IgdClient(lab.lan, GW_LAN, HTTP_PORT, timeout=timeout)
    try:
        client.discover()
        return client.external_address().ok
    except (UpnpError, OSError):
        return False


def wait_ready(daemon: Daemon, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = daemon.exit_status()
        if status is not None:
            raise RuntimeError(
                f"{daemon.name} exited while starting: {status}\n{daemon.log_tail()}"
            )
        if answers_natpmp(daemon.lab) and answers_upnp(daemon.lab):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{daemon.name} did not answer within {timeout:.0f} s\n{daemon.log_tail()}")


def _describe_wait_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal.Signals(sig).name}" + (
            " (core dumped)" if os.WCOREDUMP(status) else ""
        )
    return f"exited with status {os.WEXITSTATUS(status)}"


# -- portgate ------------------------------------------------------------------------------


@dataclass
class Portgate:
    lab: Lab
    directory: Path
    name: str = "portgate"

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = self.directory / "portgate.yaml"
        self.lease_file = self.directory / "leases.sqlite3"
        self.log = self.directory / "portgate.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # The defaults, spelled out, plus quotas large enough for the benchmark's 10,000
        # mappings from one LAN host and per-client request rates the load generators cannot
        # reach (miniupnpd has neither: the benchmark measures the daemons, not the limits).
        self.config.write_text(
            f"""\
wan: {{interface: wan0}}
lan: [{{interface: br-lan}}]
policy:
  secure_mode: true
  default: deny
  rules: [{{action: allow, internal: lan, internal_ports: 1-65535,
            external_ports: 1024-65535, proto: any}}]
  max_mappings_per_client: 65536
  max_mappings: 65536
upnp: {{enabled: true, http_port: {HTTP_PORT}, igd_version: 2}}
natpmp: {{enabled: true}}
pcp: {{enabled: true}}
lifetimes: {{pcp_min: 120, pcp_max: 86400, natpmp_max: 86400}}
state: {{lease_file: {self.lease_file}, keep_mappings_on_stop: true}}
control: {{socket: {self.directory}/control.sock}}
backend: {{type: nft, nft: {{table: portgate}}}}
log: {{level: info}}
limits: {{http_requests_per_second: 1000000, http_request_burst: 1000000,
          udp5351_requests_per_second: 1000000, udp5351_request_burst: 1000000}}
"""
        )

    def start(self, wait: bool = True, timeout: float = 60.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.lab.gw,
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "run",
                    "--config",
                    str(self.config),
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            wait_ready(self, timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.poll() is not None else self.proc.pid

    def exit_status(self) -> str | None:
        if self.proc is None:
            return "not started"
        code = self.proc.poll()
        if code is None:
            return None
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"

    def persist(self, count: int, flow_index: int = -1, hosts: int = 100) -> None:
        """Write ``count`` TCP leases into the lease store (the daemon is stopped)."""
        from gateway.model import Endpoint, Kind, Mapping, MappingKey, Origin, Owner, Proto
        from gateway.store import LeaseStore

        now, wall = time.monotonic(), time.time()
        external = ip_address("203.0.113.1")
        mappings = [
            Mapping(
                uid=i + 1,
                kind=Kind.PORT_MAP,
                key=MappingKey(Proto.TCP, Endpoint(external, FILL_BASE + i)),
                internal=Endpoint(ip_address(fill_host(i, flow_index, hosts)), FILL_BASE + i),
                owner=Owner(Origin.UPNP, ip_address(fill_host(i, flow_index, hosts))),
                description=f"fill {i}",
                expires=now + FILL_LEASE,
                created=now,
                lifetime=FILL_LEASE,
            )
            for i in range(count)
        ]
        with LeaseStore(self.lease_file) as store:
            store.replace_all(mappings, now, wall)

    def clear_kernel(self) -> None:
        if self.lab.nft_json("table", "inet", "portgate") is not None:
            self.lab.run(self.lab.gw, "nft", "delete", "table", "inet", "portgate")

    def kernel_count(self) -> int:
        items = self.lab.nft_json("map", "inet", "portgate", "dnat4")
        if items is None:
            return 0
        for item in items:
            if "map" in item:
                return len(item["map"].get("elem", []))
        return 0

    def version(self) -> str:
        import tomllib

        with (ROOT / "pyproject.toml").open("rb") as f:
            version = str(tomllib.load(f)["project"]["version"])
        done = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        )
        return f"portgate {version} ({done.stdout.strip() or 'no git'})"

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""


# -- miniupnpd -----------------------------------------------------------------------------


@dataclass
class Miniupnpd:
    lab: Lab
    directory: Path
    name: str = "miniupnpd"

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = self.directory / "miniupnpd.conf"
        self.lease_file = self.directory / "miniupnpd.leases"
        self.pid_file = self.directory / "miniupnpd.pid"
        self.log = self.directory / "miniupnpd.log"
        self._pid: int | None = None
        self._status: str | None = "not started"
        self.config.write_text(
            f"""\
ext_ifname=wan0
ext_ip={MINIUPNPD_EXT_IP}
listening_ip=br-lan
http_port={HTTP_PORT}
enable_upnp=yes
enable_natpmp=yes
secure_mode=yes
system_uptime=yes
min_lifetime=120
max_lifetime=86400
lease_file={self.lease_file}
uuid=3f5f6c2e-5b3a-4d6e-9c1a-5b3a4d6e9c1a
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 192.168.77.0/24 1-65535
deny 0-65535 0.0.0.0/0 0-65535
"""
        )

    def install_skeleton(self) -> None:
        """The tables and chains miniupnpd fills (it never creates them itself); the same
        shape as the package's nft_init.sh, plus accepting established flows first."""
        self.lab.run(self.lab.gw, "nft", "-f", "-", input=MINIUPNPD_SKELETON)

    def start(self, wait: bool = True, timeout: float = 60.0) -> None:
        if self.lab.nft_json("table", "inet", "filter") is None:
            self.install_skeleton()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        with self.log.open("ab") as log:
            started = time.monotonic()
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.lab.gw,
                    MINIUPNPD,
                    "-f",
                    str(self.config),
                    "-P",
                    str(self.pid_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=True,
                timeout=30,
            )
        while not self.pid_file.exists():
            if time.monotonic() - started > 30:
                raise TimeoutError(f"miniupnpd wrote no pid file\n{self.log_tail()}")
            time.sleep(0.02)
        text = ""
        while not text.strip():
            text = self.pid_file.read_text()
        self._pid = int(text.strip())
        self._status = None
        if wait:
            wait_ready(self, timeout)

    def stop(self) -> None:
        pid, self._pid = self._pid, None
        if pid is None or self._reap(pid) is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self._reap(pid) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._reap(pid) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            self._reap(pid)
        self._status = "stopped"

    def _reap(self, pid: int) -> str | None:
        """None while ``pid`` runs; else how it ended (reaping it when it is our child)."""
        try:
            waited, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: the subreaper could not be set
            return None if pid_alive(pid) else "exited (status unknown)"
        if waited == 0:
            return None
        return _describe_wait_status(status)

    def pid(self) -> int | None:
        return None if self.exit_status() is not None else self._pid

    def exit_status(self) -> str | None:
        if self._pid is None:
            return self._status
        if self._status is None:
            self._status = self._reap(self._pid)
        return self._status

    def persist(self, count: int, flow_index: int = -1, hosts: int = 100) -> None:
        """Write ``count`` TCP leases into miniupnpd's lease file (the daemon is stopped);
        the timestamp is the expiry in Unix time, as this build writes it."""
        expires = int(time.time()) + FILL_LEASE
        lines = (
            f"TCP:{port}:{fill_host(i, flow_index, hosts)}:{port}:{expires}:fill {i}\n"
            for i, port in enumerate(range(FILL_BASE, FILL_BASE + count))
        )
        self.lease_file.write_text("".join(lines))

    def clear_kernel(self) -> None:
        if self.lab.nft_json("table", "inet", "filter") is None:
            self.install_skeleton()
            return
        for chain in MINIUPNPD_CHAINS:
            self.lab.run(self.lab.gw, "nft", "flush", "chain", "inet", "filter", chain)

    def kernel_count(self) -> int:
        items = self.lab.nft_json("chain", "inet", "filter", "prerouting_miniupnpd")
        return 0 if items is None else sum(1 for item in items if "rule" in item)

    def version(self) -> str:
        done = subprocess.run([MINIUPNPD, "--version"], capture_output=True, text=True)
        first = (done.stdout + done.stderr).strip().splitlines()
        package = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "miniupnpd-nftables"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"{first[0] if first else 'miniupnpd'} (Debian miniupnpd-nftables {package})"

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""


def rss_of(daemon: Daemon) -> int | None:
    pid = daemon.pid()
    return None if pid is None else rss_kib(pid)

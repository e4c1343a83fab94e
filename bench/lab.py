"""Namespace labs for the benchmark: one per daemon, each built by scripts/netns-lab.sh.

Every lab's prefix starts with ``pgb`` and carries the harness's pid (``pgb<pid><tag>``), so a
later run can tell the labs of a dead harness from those of a running one and remove only the
former. Client sockets are made inside a lab's namespaces from this process (``ns_socket``):
a socket stays in the namespace it was created in, whatever thread uses it afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAB_SCRIPT = ROOT / "scripts" / "netns-lab.sh"
PREFIX = "pgb"
CLONE_NEWNET = 0x40000000

GW_LAN = "192.168.77.1"
LAN_HOST = "192.168.77.10"
LAN2_HOST = "192.168.77.11"
WAN_GW = "203.0.113.1"
WAN_HOST = "203.0.113.2"
WAN_HOST2 = "203.0.113.3"

_LAB_NAME = re.compile(rf"^{PREFIX}(\d+)([a-z]+)-(gw|lan|lan2|wan)$")
_libc = ctypes.CDLL(None, use_errno=True)
_ns_lock = threading.Lock()
_ns_fds: dict[str, int] = {}


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ns_fd(namespace: str) -> int:
    with _ns_lock:
        fd = _ns_fds.get(namespace)
        if fd is None:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            _ns_fds[namespace] = fd
        return fd


def forget_namespace(namespace: str) -> None:
    with _ns_lock:
        fd = _ns_fds.pop(namespace, None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run this thread inside a named network namespace for the block."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(_ns_fd(namespace))
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


def ns_socket(
    namespace: str,
    kind: int = socket.SOCK_STREAM,
    family: int = socket.AF_INET,
    proto: int = 0,
) -> socket.socket:
    """A socket that lives in ``namespace`` (IPv4 unless told otherwise)."""
    with inside(namespace):
        return socket.socket(family, kind, proto)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_labs() -> list[str]:
    """Take down ``pgb`` labs whose harness process is gone (a run killed with -9)."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    stale: set[str] = set()
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        found = _LAB_NAME.match(name)
        if found and not pid_alive(int(found.group(1))):
            stale.add(f"{PREFIX}{found.group(1)}{found.group(2)}")
    for prefix in sorted(stale):
        subprocess.run([str(LAB_SCRIPT), "down", prefix], check=False, timeout=60)
    return sorted(stale)


class Lab:
    """gw, lan, lan2 and wan namespaces (see scripts/netns-lab.sh) named ``pgb<pid><tag>-*``."""

    def __init__(self, tag: str) -> None:
        if not re.fullmatch(r"[a-z]+", tag):
            raise ValueError(f"a lab tag is lowercase letters, not {tag!r}")
        self.prefix = f"{PREFIX}{os.getpid()}{tag}"
        self.gw = f"{self.prefix}-gw"
        self.lan = f"{self.prefix}-lan"
        self.lan2 = f"{self.prefix}-lan2"
        self.wan = f"{self.prefix}-wan"
        self._up = False

    def up(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("the benchmark needs root (network namespaces, nftables)")
        self._up = True
        subprocess.run(
            [str(LAB_SCRIPT), "up", self.prefix],
            check=True,
            timeout=60,
            capture_output=True,
        )

    def down(self) -> None:
        if not self._up:
            return
        for ns in (self.gw, self.lan, self.lan2, self.wan):
            forget_namespace(ns)
        subprocess.run([str(LAB_SCRIPT), "down", self.prefix], check=False, timeout=60)
        self._up = False

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def run(
        self, namespace: str, *cmd: str, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            **kw,
        )

    def nft_json(self, *what: str) -> list[dict[str, Any]] | None:
        """``nft -j list <what>`` in the gateway; None when the object does not exist."""
        done = self.run(self.gw, "nft", "-j", "list", *what, check=False)
        if done.returncode != 0:
            return None
        items: list[dict[str, Any]] = json.loads(done.stdout).get("nftables", [])
        return items

    def rx_packets(self, namespace: str, device: str = "eth0") -> int:
        done = self.run(namespace, "ip", "-s", "-j", "link", "show", device)
        stats = json.loads(done.stdout)[0]["stats64"]["rx"]
        return int(stats["packets"])

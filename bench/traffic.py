"""Traffic through a mapped port: new TCP flows per second and TCP throughput, WAN to LAN.

New flows: ``bench.flowgen`` sends SYNs with changing source ports from the WAN host; nothing
listens on the LAN host, whose kernel answers each SYN with a RST (so conntrack entries close
at once). The flows delivered are counted on the LAN host's interface, sampled every few
milliseconds from a file opened inside its namespace, and the rate is the count over the time
from the first SYN sent to the last one delivered.

Throughput: iperf3 (one TCP stream, WAN host to LAN host through the mapping) when installed,
else ``bench.tcpblast``, a plain socket sender and receiver.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from bench.lab import ROOT, WAN_GW, WAN_HOST, WAN_HOST2, Lab, ns_socket


class RxCounter:
    """Packets received on a device of a namespace, asked over rtnetlink from a socket made
    inside that namespace (no subprocess, and unlike /proc/<tid>/net not fooled by cached
    entries after a thread changed its namespace)."""

    RTM_GETLINK = 18
    RTM_NEWLINK = 16
    NLMSG_ERROR = 2
    IFLA_IFNAME = 3
    IFLA_STATS64 = 23

    def __init__(self, namespace: str, device: str = "eth0") -> None:
        self._sock = ns_socket(namespace, socket.SOCK_RAW, socket.AF_NETLINK, 0)
        self._sock.bind((0, 0))
        self._device = device
        self._seq = 0
        name = device.encode() + b"\0"
        attr = struct.pack("HH", 4 + len(name), self.IFLA_IFNAME) + name
        attr += b"\0" * (-len(attr) % 4)
        self._body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + attr

    def read(self) -> int:
        self._seq += 1
        header = struct.pack("IHHII", 16 + len(self._body), self.RTM_GETLINK, 1, self._seq, 0)
        self._sock.send(header + self._body)
        data = self._sock.recv(65536)
        length, kind = struct.unpack_from("IH", data)
        if kind != self.RTM_NEWLINK:
            raise LookupError(f"no device {self._device} (netlink message type {kind})")
        offset = 16 + 16  # nlmsghdr, ifinfomsg
        while offset + 4 <= length:
            size, attr = struct.unpack_from("HH", data, offset)
            if size < 4:
                break
            if attr == self.IFLA_STATS64:
                (rx_packets,) = struct.unpack_from("Q", data, offset + 4)
                return int(rx_packets)
            offset += (size + 3) & ~3
        raise LookupError(f"no statistics for {self._device}")

    def close(self) -> None:
        self._sock.close()


@dataclass(frozen=True, slots=True)
class FlowRun:
    sent: int
    delivered: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


def new_flows(
    lab: Lab, port: int, first_sport: int, count: int, max_seconds: float = 3.0
) -> FlowRun:
    counter = RxCounter(lab.lan)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.time(), counter.read()))
            time.sleep(0.004)

    try:
        before = counter.read()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.time()
        done = lab.run(
            lab.wan,
            sys.executable,
            "-m",
            "bench.flowgen",
            "--dst",
            WAN_GW,
            "--port",
            str(port),
            "--sources",
            f"{WAN_HOST},{WAN_HOST2}",
            "--first-sport",
            str(first_sport),
            "--count",
            str(count),
            "--max-seconds",
            str(max_seconds),
            cwd=ROOT,
            timeout=max_seconds + 60,
        )
        result = json.loads(done.stdout)
        quiet_since = time.time()
        last = counter.read()
        while time.time() - quiet_since < 0.3:
            time.sleep(0.02)
            now = counter.read()
            if now != last:
                last, quiet_since = now, time.time()
        stop.set()
        sampler.join()
        final = counter.read()
        delivered = final - before
        # from the first SYN seen arriving to the last (the generator's set-up excluded)
        first_seen = next((t for t, c in samples if c > before), started)
        last_seen = next((t for t, c in samples if c >= final), time.time())
        seconds = max(last_seen - first_seen, 1e-6)
        return FlowRun(int(result["sent"]), delivered, seconds)
    finally:
        counter.close()


def tcp_throughput(lab: Lab, port: int, seconds: float) -> tuple[float, str]:
    """Bits per second received through the mapping, and the tool used."""
    if shutil.which("iperf3"):
        return _iperf3(lab, port, seconds), "iperf3"
    return _tcpblast(lab, port, seconds), "python sockets"


def _iperf3(lab: Lab, port: int, seconds: float) -> float:
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.lan, "iperf3", "-s", "-1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(lab, port)
        done = lab.run(
            lab.wan,
            "iperf3",
            "-c",
            WAN_GW,
            "-p",
            str(port),
            "-t",
            str(max(1, round(seconds))),  # whole seconds; iperf3 reads "0.5" as 0: forever
            "-J",
            check=False,
            timeout=seconds + 30,
        )
        report = json.loads(done.stdout)
        if "error" in report:
            raise RuntimeError(f"iperf3: {report['error']}")
        return float(report["end"]["sum_received"]["bits_per_second"])
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)


def _tcpblast(lab: Lab, port: int, seconds: float) -> float:
    server = subprocess.Popen(
        [
            *("ip", "netns", "exec", lab.lan, sys.executable, "-m", "bench.tcpblast"),
            *("serve", "--port", str(port)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_listening(lab, port)
        lab.run(
            lab.wan,
            sys.executable,
            "-m",
            "bench.tcpblast",
            "send",
            "--host",
            WAN_GW,
            "--port",
            str(port),
            "--seconds",
            str(seconds),
            cwd=ROOT,
            timeout=seconds + 30,
        )
        out, _ = server.communicate(timeout=30)
        report = json.loads(out)
        return float(report["bytes"]) * 8 / float(report["seconds"])
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)


def _wait_listening(lab: Lab, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = lab.run(lab.lan, "ss", "-Hltn", f"sport = :{port}", check=False)
        if done.stdout.strip():
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} in {lab.lan}")

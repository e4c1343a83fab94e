"""The gateway behind carrier-grade NAT (issue 7): a private WAN address, found out with a real
STUN server, logged in one clear line, refused or served as configured, and served again once
the NAT is gone.

The lab is the usual one (tests/netlab.py) with its WAN side rebuilt as an ISP that does CGNAT,
plus an "Internet" namespace::

    <p>-lan 192.168.77.10 -- br-lan <p>-gw wan0 100.64.0.2/24 -- eth0 100.64.0.1/24 <p>-wan
                                                                  (the CGN: nft snat of
                                                                   100.64.0.0/10 to
                                                                   198.51.100.1)
                                        <p>-wan up0 198.51.100.1/24 -- eth0 198.51.100.2/24 <p>-inet
                                                                          (coturn's turnserver
                                                                           --stun-only on 3478)

The CGN's second address 203.0.113.254/24 on the gateway's link is not translated: moving the
gateway's WAN to 203.0.113.1 makes it public (the documentation ranges count as public, see
gateway/reachability.py). The Internet host routes 100.64.0.0/10 and 203.0.113.0/24 back via
the CGN, so with the translation switched off it reaches the gateway's own address. The STUN
server is Debian's coturn (scripts/setup.sh installs it); like every namespace test, this one
fails, never skips, when it cannot run.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocols.natpmp.codec import ResultCode
from protocols.pcp.codec import ResultCode as PcpResult
from protocols.stun.codec import BindingSuccess, decode_response, encode_request
from tests.netlab import (
    GW_LAN,
    LAN_HOST,
    GatewayDaemon,
    Lab,
    inside,
    require_root,
    unique_prefix,
    wait_until,
)
from tests.robustness.rig import HTTP_PORT, check_kernel_equals_table, discover_upnp, soap
from tests.robustness.test_wan_change import natpmp_map, pcp_map, public_address, upnp_map

pytestmark = [pytest.mark.netns]

CGNAT_WAN = "100.64.0.2"
CGNAT_WAN2 = "100.64.0.3"
CGN_INSIDE = "100.64.0.1"
CGN_OUTSIDE = "198.51.100.1"
STUN_HOST = "198.51.100.2"
PUBLIC_WAN = "203.0.113.1"
CGN_PUBLIC_SIDE = "203.0.113.254"
STUN_INTERVAL = 30
#: A change of WAN address is seen through netlink and checked at once.
SEEN_WITHIN = 8.0
BEHIND = (
    "WAN address {wan} is behind another NAT: STUN server 198.51.100.2:3478 sees "
    "198.51.100.1; mappings made here are not reachable from the Internet"
)
SNAT_RULESET = f"""
table ip cgn {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 100.64.0.0/10 oifname "up0" snat to {CGN_OUTSIDE}
    }}
}}
"""


class CgnatLab(Lab):
    """The robustness lab with its WAN namespace turned into a CGN and an Internet host."""

    def __init__(self, prefix: str, directory: Path) -> None:
        super().__init__(prefix)
        self.cgn = self.wan
        self.inet = f"{prefix}-inet"
        self.directory = directory
        self.stun: subprocess.Popen[str] | None = None

    def up(self) -> None:
        require_root()
        if shutil.which("turnserver") is None:
            pytest.fail("coturn's turnserver is missing: run scripts/setup.sh (Debian: coturn)")
        super().up()
        run = self.run
        # the gateway's WAN: a CGNAT address, default route via the ISP
        run(self.gw, "ip", "addr", "del", f"{PUBLIC_WAN}/24", "dev", "wan0")
        run(self.gw, "ip", "addr", "add", f"{CGNAT_WAN}/24", "dev", "wan0")
        run(self.gw, "ip", "route", "add", "default", "via", CGN_INSIDE)
        # the ISP: the gateway's link, and its uplink to the Internet host
        run(self.cgn, "ip", "addr", "flush", "dev", "eth0")
        run(self.cgn, "ip", "addr", "add", f"{CGN_INSIDE}/24", "dev", "eth0")
        run(self.cgn, "ip", "addr", "add", f"{CGN_PUBLIC_SIDE}/24", "dev", "eth0")
        run(self.cgn, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        subprocess.run(["ip", "netns", "add", self.inet], check=True)
        run(self.inet, "ip", "link", "set", "lo", "up")
        run(self.cgn, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
            "netns", self.inet)  # fmt: skip
        run(self.cgn, "ip", "addr", "add", f"{CGN_OUTSIDE}/24", "dev", "up0")
        run(self.cgn, "ip", "link", "set", "up0", "up")
        run(self.inet, "ip", "addr", "add", f"{STUN_HOST}/24", "dev", "eth0")
        run(self.inet, "ip", "link", "set", "eth0", "up")
        run(self.inet, "ip", "route", "add", "100.64.0.0/10", "via", CGN_OUTSIDE)
        run(self.inet, "ip", "route", "add", "203.0.113.0/24", "via", CGN_OUTSIDE)
        self.translate(True)
        self.start_stun()

    def down(self) -> None:
        super().down()  # kills what was spawned (turnserver among it) and the four namespaces
        pids = subprocess.run(
            ["ip", "netns", "pids", self.inet], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", self.inet], check=False)

    # -- the ISP ---------------------------------------------------------------------------

    def translate(self, on: bool) -> None:
        """Switch the CGN's source NAT on or off."""
        self.run(self.cgn, "nft", "delete", "table", "ip", "cgn", check=False)
        if on:
            script = self.directory / "cgn.nft"
            script.write_text(SNAT_RULESET)
            self.run(self.cgn, "nft", "-f", str(script))

    def start_stun(self) -> None:
        log = (self.directory / "turnserver.log").open("a")
        self.stun = self.spawn(
            self.inet,
            "turnserver",
            "-n",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-rfc5780",
            "--listening-ip",
            STUN_HOST,
            "--listening-port",
            "3478",
            "--pidfile",
            str(self.directory / "turnserver.pid"),
            "--log-file",
            "stdout",
            "--simple-log",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        assert wait_until(self.stun_answers, 10), (self.directory / "turnserver.log").read_text()

    def stop_stun(self) -> None:
        assert self.stun is not None
        self.stun.kill()
        self.stun.wait(timeout=10)

    def stun_answers(self) -> bool:
        """Does the STUN server answer a Binding request (asked from the Internet host)?"""
        with inside(self.inet):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.settimeout(0.3)
            sock.sendto(encode_request(b"lab-is-ready"), (STUN_HOST, 3478))
            answer = decode_response(sock.recv(2048))
        except OSError:
            return False
        finally:
            sock.close()
        return isinstance(answer, BindingSuccess)

    # -- the gateway's WAN -----------------------------------------------------------------

    def move_wan(self, old: str, new: str, via: str) -> None:
        self.run(self.gw, "ip", "addr", "del", f"{old}/24", "dev", "wan0")
        self.run(self.gw, "ip", "addr", "add", f"{new}/24", "dev", "wan0")
        self.run(self.gw, "ip", "route", "replace", "default", "via", via)


@pytest.fixture
def cgnat_lab(tmp_path: Path) -> Iterator[CgnatLab]:
    lab = CgnatLab(unique_prefix("cg"), tmp_path)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def start_daemon(lab: CgnatLab, directory: Path, policy: str) -> GatewayDaemon:
    daemon = GatewayDaemon(lab, directory, extra=f"upnp: {{http_port: {HTTP_PORT}}}")
    text = daemon.config.read_text()
    wan = (
        f'wan: {{interface: wan0, stun: {{server: "{STUN_HOST}", interval: {STUN_INTERVAL}}}, '
        f"private_address: {policy}}}"
    )
    assert "wan: {interface: wan0}" in text
    daemon.config.write_text(text.replace("wan: {interface: wan0}", wan))
    daemon.start()
    return daemon


@pytest.fixture
def daemons(cgnat_lab: CgnatLab) -> Iterator[list[GatewayDaemon]]:
    started: list[GatewayDaemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop(signal.SIGKILL)


def log_lines(daemon: GatewayDaemon, text: str) -> list[str]:
    return [line for line in daemon.log_text().splitlines() if text in line]


def wan_status(daemon: GatewayDaemon) -> dict[str, object]:
    done = daemon.ctl("status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    wan = status["wan"]
    assert isinstance(wan, dict)
    return wan


def natpmpc(lab: Lab, *args: str) -> str:
    done = lab.run(lab.lan, "natpmpc", "-g", GW_LAN, *args, check=False)
    return done.stdout + done.stderr


def natpmp_result(answer: bytes | None) -> int | None:
    return None if answer is None else int.from_bytes(answer[2:4], "big")


# -- tests ---------------------------------------------------------------------------------------


def test_warn_logs_one_clear_line_and_keeps_serving(
    cgnat_lab: CgnatLab, tmp_path: Path, daemons: list[GatewayDaemon]
) -> None:
    lab = cgnat_lab
    daemon = start_daemon(lab, tmp_path, "warn")
    daemons.append(daemon)
    line = BEHIND.format(wan=CGNAT_WAN) + "; serving anyway (wan.private_address: warn)"
    assert wait_until(lambda: log_lines(daemon, line), SEEN_WITHIN), daemon.log_text()[-3000:]
    assert re.search(r"warn(ing)? +wan: " + re.escape(line), daemon.log_text()), (
        "a warning, from the wan part of the daemon"
    )
    # a real client still gets its mapping, on the CGNAT address
    out = natpmpc(lab, "-a", "9000", "9000", "tcp", "600")
    assert f"Public IP address : {CGNAT_WAN}" in out, out
    assert "Mapped public port 9000 protocol TCP to local port 9000" in out, out
    [row] = daemon.listing()
    assert row["external"] == f"{CGNAT_WAN}:9000"
    wan = wan_status(daemon)
    assert (wan["behind_nat"], wan["stun_sees"], wan["serving"]) == (True, CGN_OUTSIDE, True)
    status = daemon.ctl("status").stdout
    assert "behind another NAT: STUN server 198.51.100.2:3478 sees 198.51.100.1" in status
    # the STUN server goes away and the ISP hands out a new address: checked at once, the
    # failure said once, serving goes on
    lab.stop_stun()
    lab.move_wan(CGNAT_WAN, CGNAT_WAN2, CGN_INSIDE)
    failed = (
        f"cannot tell whether WAN address {CGNAT_WAN2} is behind another NAT: STUN server "
        "198.51.100.2:3478 refused the request (ICMP port unreachable: nothing listens there); "
        f"serving meanwhile; asking again every {STUN_INTERVAL} s"
    )
    assert wait_until(lambda: log_lines(daemon, failed), SEEN_WITHIN), daemon.log_text()[-3000:]
    assert wait_until(lambda: daemon.listing()[0]["external"] == f"{CGNAT_WAN2}:9000", 5)
    answer = public_address(lab)
    assert answer is not None and str(answer.address) == CGNAT_WAN2
    assert len(log_lines(daemon, line)) == 1, "said once"
    assert len(log_lines(daemon, "cannot tell whether")) == 1


def test_refuse_refuses_every_front_end_behind_cgnat_and_serves_once_the_nat_is_gone(
    cgnat_lab: CgnatLab, tmp_path: Path, daemons: list[GatewayDaemon]
) -> None:
    lab = cgnat_lab
    daemon = start_daemon(lab, tmp_path, "refuse")
    daemons.append(daemon)
    line = (
        BEHIND.format(wan=CGNAT_WAN) + "; refusing mapping requests (wan.private_address: refuse)"
    )
    assert wait_until(lambda: log_lines(daemon, line), SEEN_WITHIN), daemon.log_text()[-3000:]

    # -- refused, the way each protocol says "no external address" --------------------------
    answer = public_address(lab)
    assert answer is not None and answer.result == ResultCode.NETWORK_FAILURE
    assert natpmp_result(natpmp_map(lab, 4000)) == ResultCode.NETWORK_FAILURE
    assert getattr(pcp_map(lab, LAN_HOST, 7000), "result", None) == PcpResult.NETWORK_FAILURE
    out = natpmpc(lab, "-a", "4000", "4000", "tcp", "600")
    assert "Mapped public port" not in out and "NETWORK" in out.upper(), out
    urls = discover_upnp(lab.lan)
    status, body = soap(lab.lan, urls, "GetExternalIPAddress")
    assert status == 200 and b"<NewExternalIPAddress></NewExternalIPAddress>" in body, body
    assert upnp_map(lab, urls, 8000) == 500
    assert daemon.listing() == []
    assert "external address: unknown" in daemon.ctl("status").stdout
    wan = wan_status(daemon)
    assert (wan["behind_nat"], wan["serving"]) == (True, False)

    # -- the CGN stops translating: the next periodic check sees our own address -----------
    lab.translate(False)
    unchanged = (
        f"WAN address {CGNAT_WAN} is private (RFC 6598 shared address space, used by "
        "carrier-grade NAT), but STUN server 198.51.100.2:3478 sees it unchanged: no other "
        "NAT in the way; serving"
    )
    assert wait_until(lambda: log_lines(daemon, unchanged), STUN_INTERVAL + SEEN_WITHIN), (
        daemon.log_text()[-3000:]
    )
    answer = public_address(lab)
    assert answer is not None and answer.result == 0 and str(answer.address) == CGNAT_WAN
    assert natpmp_result(natpmp_map(lab, 4000)) == 0
    assert getattr(pcp_map(lab, LAN_HOST, 7000), "result", None) == PcpResult.SUCCESS
    assert upnp_map(lab, urls, 8000) == 200
    rows = daemon.listing()
    assert {row["external"] for row in rows} == {
        f"{CGNAT_WAN}:4000",
        f"{CGNAT_WAN}:7000",
        f"{CGNAT_WAN}:8000",
    }
    check_kernel_equals_table(lab, rows)
    assert lab.reaches(lab.inet, lab.lan, "tcp", (CGNAT_WAN, 8000), 8000)

    # -- translated again, on a new CGNAT address: refused at once, the mappings kept --------
    lab.translate(True)
    lab.move_wan(CGNAT_WAN, CGNAT_WAN2, CGN_INSIDE)
    again = (
        BEHIND.format(wan=CGNAT_WAN2) + "; refusing mapping requests (wan.private_address: refuse)"
    )
    assert wait_until(lambda: log_lines(daemon, again), SEEN_WITHIN), daemon.log_text()[-3000:]
    answer = public_address(lab)
    assert answer is not None and answer.result == ResultCode.NETWORK_FAILURE
    kept = daemon.listing()
    assert len(kept) == 3, "existing mappings are kept while refused"
    check_kernel_equals_table(lab, kept)

    # -- the ISP gives a public address: served at once, the mappings move to it ----------
    lab.move_wan(CGNAT_WAN2, PUBLIC_WAN, CGN_PUBLIC_SIDE)

    def served() -> bool:
        answer = public_address(lab)
        return answer is not None and answer.result == 0 and str(answer.address) == PUBLIC_WAN

    assert wait_until(served, SEEN_WITHIN), daemon.log_text()[-3000:]
    assert wait_until(
        lambda: {str(r["external"]).rsplit(":", 1)[0] for r in daemon.listing()} == {PUBLIC_WAN},
        SEEN_WITHIN,
    )
    rows = daemon.listing()
    assert len(rows) == 3
    check_kernel_equals_table(lab, rows)
    assert lab.reaches(lab.inet, lab.lan, "tcp", (PUBLIC_WAN, 8000), 8000)
    wan = wan_status(daemon)
    assert (wan["address"], wan["private"], wan["serving"]) == (PUBLIC_WAN, None, True)
    # each finding was said once
    assert len(log_lines(daemon, line)) == 1
    assert len(log_lines(daemon, unchanged)) == 1
    assert len(log_lines(daemon, again)) == 1


def test_start_up_is_not_held_by_an_unreachable_stun_server(
    cgnat_lab: CgnatLab, tmp_path: Path, daemons: list[GatewayDaemon]
) -> None:
    lab = cgnat_lab
    lab.stop_stun()
    lab.run(lab.inet, "ip", "link", "set", "eth0", "down")  # no answer at all, not even ICMP
    started = time.monotonic()
    daemon = start_daemon(lab, tmp_path, "warn")
    daemons.append(daemon)
    assert time.monotonic() - started < 10
    out = natpmpc(lab, "-a", "9100", "9100", "udp", "600")
    assert "Mapped public port 9100 protocol UDP" in out, out
    wan = wan_status(daemon)
    assert (wan["behind_nat"], wan["stun_error"], wan["serving"]) == (None, None, True)

"""A changing network under the running daemon (issue 7): the WAN address changes, the WAN goes
down and comes back, an IPv6 address arrives after start, the LAN interface appears late.

The daemon learns of each change from netlink (gateway/netwatch.py) and must act within a few
seconds; its periodic re-check runs only every 10 s (``NETWORK_RECHECK``), so these tests
wait at most ``SEEN_WITHIN`` for the effect.
"""

from __future__ import annotations

import http.server
import re
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from gateway.daemon import NETWORK_RECHECK
from protocols.natpmp.codec import PublicAddressResponse, ResultCode, decode_response
from protocols.pcp.codec import MapData, Opcode, Request
from protocols.pcp.codec import ResultCode as PcpResult
from protocols.pcp.codec import decode_response as decode_pcp
from protocols.pcp.codec import encode_request as encode_pcp
from tests.netlab import GW_LAN, LAN6_HOST, LAN_HOST, WAN_GW, GatewayDaemon, Lab, inside, wait_until
from tests.robustness.rig import (
    HTTP_PORT,
    UpnpUrls,
    check_kernel_equals_table,
    discover_upnp,
    soap,
)

pytestmark = [pytest.mark.netns]

#: How soon a change must show: well under the 10 s of the periodic re-check.
SEEN_WITHIN = 5.0
assert SEEN_WITHIN < NETWORK_RECHECK
NEW_WAN = "203.0.113.50"
GW6_LAN = "fd77::1"
CALLBACK_PORT = 8089


@pytest.fixture
def daemon(robust_lab: Lab, tmp_path: Path) -> Iterator[GatewayDaemon]:
    d = GatewayDaemon(robust_lab, tmp_path, extra=f"upnp: {{http_port: {HTTP_PORT}}}")
    try:
        yield d
    finally:
        d.stop(signal.SIGKILL)


# -- clients -------------------------------------------------------------------------------------


def udp_ask(
    lab: Lab, data: bytes, destination: tuple[str, int], timeout: float = 1.0
) -> bytes | None:
    family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
    with inside(lab.lan):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.bind((LAN6_HOST, 0))
        sock.settimeout(timeout)
        sock.sendto(data, destination)
        answer, _ = sock.recvfrom(1100)
        return answer
    except OSError:
        return None
    finally:
        sock.close()


def public_address(lab: Lab) -> PublicAddressResponse | None:
    answer = udp_ask(lab, b"\x00\x00", (GW_LAN, 5351))
    if answer is None:
        return None
    decoded = decode_response(answer)
    assert isinstance(decoded, PublicAddressResponse)
    return decoded


def epoch_now(lab: Lab) -> int:
    answer = public_address(lab)
    return -1 if answer is None else answer.epoch


def natpmp_map(lab: Lab, port: int, tcp: bool = True) -> bytes | None:
    request = struct.pack("!BBHHHI", 0, 2 if tcp else 1, 0, port, port, 3600)
    return udp_ask(lab, request, (GW_LAN, 5351))


def pcp_map(lab: Lab, client: str, port: int, server: str = GW_LAN, proto: int = 17) -> object:
    zero = IPv6Address(0) if ":" in client else IPv4Address(0)
    request = Request(
        Opcode.MAP, 3600, ip_address(client), MapData(b"wan-change!!", proto, port, port, zero)
    )
    answer = udp_ask(lab, encode_pcp(request), (server, 5351))
    return None if answer is None else decode_pcp(answer)


def upnp_map(lab: Lab, urls: UpnpUrls, port: int) -> int:
    status, _ = soap(
        lab.lan,
        urls,
        "AddPortMapping",
        {
            "NewRemoteHost": "",
            "NewExternalPort": str(port),
            "NewProtocol": "TCP",
            "NewInternalPort": str(port),
            "NewInternalClient": LAN_HOST,
            "NewEnabled": "1",
            "NewPortMappingDescription": "wan change",
            "NewLeaseDuration": "3600",
        },
    )
    return status


@contextmanager
def announcements(lab: Lab) -> Iterator[list[bytes]]:
    """What the LAN host hears on 224.0.0.1:5350 (NAT-PMP and PCP announcements)."""
    with inside(lab.lan):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 5350))
    membership = socket.inet_aton("224.0.0.1") + socket.inet_aton(LAN_HOST)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    sock.settimeout(0.2)
    heard: list[bytes] = []
    running = True

    def listen() -> None:
        while running:
            try:
                heard.append(sock.recv(1100))
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=listen)
    thread.start()
    try:
        yield heard
    finally:
        running = False
        thread.join(timeout=5)
        sock.close()


@contextmanager
def gena_events(lab: Lab) -> Iterator[list[bytes]]:
    """NOTIFY bodies delivered to an event listener on the LAN host."""
    bodies: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_NOTIFY(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            bodies.append(self.rfile.read(length))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    with inside(lab.lan):
        server = http.server.ThreadingHTTPServer((LAN_HOST, CALLBACK_PORT), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def subscribe(lab: Lab, urls: UpnpUrls) -> None:
    with inside(lab.lan):
        conn = socket.create_connection((GW_LAN, urls.port), timeout=5)
    try:
        conn.sendall(
            (
                f"SUBSCRIBE {urls.event} HTTP/1.1\r\nHost: {GW_LAN}:{urls.port}\r\n"
                f"CALLBACK: <http://{LAN_HOST}:{CALLBACK_PORT}/>\r\nNT: upnp:event\r\n"
                "TIMEOUT: Second-600\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "SUBSCRIBE refused"
    finally:
        conn.close()


def external_addresses(daemon: GatewayDaemon) -> set[str]:
    return {str(row["external"]).rsplit(":", 1)[0] for row in daemon.listing()}


# -- tests ---------------------------------------------------------------------------------------


def test_a_new_wan_address_moves_the_mappings_and_is_announced(
    robust_lab: Lab, daemon: GatewayDaemon
) -> None:
    lab = robust_lab
    daemon.start()
    urls = discover_upnp(lab.lan)
    assert natpmp_map(lab, 4000) is not None
    answer = pcp_map(lab, LAN_HOST, 7000)
    assert getattr(answer, "result", None) == PcpResult.SUCCESS, answer
    assert upnp_map(lab, urls, 8000) == 200
    assert external_addresses(daemon) == {WAN_GW}
    with gena_events(lab) as events:
        subscribe(lab, urls)
        assert wait_until(lambda: any(b"<ExternalIPAddress>" in e for e in events), 5)
        # let the epoch grow, so that its restart shows
        assert wait_until(lambda: epoch_now(lab) >= 2, SEEN_WITHIN)
        before = public_address(lab)
        assert before is not None
        with announcements(lab) as heard:
            lab.run(lab.gw, "ip", "addr", "del", f"{WAN_GW}/24", "dev", "wan0")
            lab.run(lab.gw, "ip", "addr", "add", f"{NEW_WAN}/24", "dev", "wan0")
            assert wait_until(lambda: external_addresses(daemon) == {NEW_WAN}, SEEN_WITHIN), (
                daemon.listing(),
                daemon.log_text()[-2000:],
            )
            natpmp_announce = struct.pack("!BBH", 0, 128, 0)
            assert wait_until(
                lambda: any(
                    h.startswith(natpmp_announce) and h[8:12] == socket.inet_aton(NEW_WAN)
                    for h in heard
                ),
                SEEN_WITHIN,
            ), heard
            assert wait_until(lambda: any(h[:4] == b"\x02\x80\x00\x00" for h in heard), SEEN_WITHIN)
        assert wait_until(
            lambda: any(f"<ExternalIPAddress>{NEW_WAN}<".encode() in e for e in events),
            SEEN_WITHIN,
        ), events
    # the epoch restarted with the new address (RFC 6887 §8.5)
    epochs = [struct.unpack("!I", h[4:8])[0] for h in heard if h[:2] == b"\x00\x80"]
    epochs += [struct.unpack("!I", h[8:12])[0] for h in heard if h[:2] == b"\x02\x80"]
    assert epochs and max(epochs) < before.epoch, (epochs, before.epoch)
    after = public_address(lab)
    assert after is not None and str(after.address) == NEW_WAN
    rows = daemon.listing()
    assert len(rows) == 3
    check_kernel_equals_table(lab, rows)
    assert lab.reaches(lab.wan, lab.lan, "tcp", (NEW_WAN, 4000), 4000)
    assert lab.reaches(lab.wan, lab.lan, "tcp", (NEW_WAN, 8000), 8000)


def test_the_wan_going_down_and_up_refuses_meanwhile_and_keeps_the_mappings(
    robust_lab: Lab, daemon: GatewayDaemon
) -> None:
    lab = robust_lab
    daemon.start()
    assert natpmp_map(lab, 4100) is not None
    assert len(daemon.listing()) == 1
    lab.run(lab.gw, "ip", "link", "set", "wan0", "down")
    lab.run(lab.gw, "ip", "-4", "addr", "flush", "dev", "wan0")

    def network_failure() -> bool:
        answer = public_address(lab)
        return answer is not None and answer.result == ResultCode.NETWORK_FAILURE

    assert wait_until(network_failure, SEEN_WITHIN), daemon.log_text()[-2000:]
    refused = natpmp_map(lab, 4101)
    assert (
        refused is not None and struct.unpack("!H", refused[2:4])[0] == ResultCode.NETWORK_FAILURE
    )
    pcp_refused = pcp_map(lab, LAN_HOST, 7100)
    assert getattr(pcp_refused, "result", None) == PcpResult.NETWORK_FAILURE, pcp_refused
    [kept] = daemon.listing()
    assert kept["external"] == f"{WAN_GW}:4100"
    lab.run(lab.gw, "ip", "link", "set", "wan0", "up")
    lab.run(lab.gw, "ip", "addr", "add", f"{WAN_GW}/24", "dev", "wan0")

    def back() -> bool:
        answer = public_address(lab)
        return answer is not None and answer.result == 0 and str(answer.address) == WAN_GW

    assert wait_until(back, SEEN_WITHIN), daemon.log_text()[-2000:]
    rows = daemon.listing()
    assert [row["external"] for row in rows] == [f"{WAN_GW}:4100"]
    check_kernel_equals_table(lab, rows)
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 4100), 4100)


@pytest.mark.parametrize("dad", [False, True], ids=["nodad", "after-dad"])
def test_an_ipv6_address_that_arrives_after_start_is_served(
    robust_lab: Lab, daemon: GatewayDaemon, dad: bool
) -> None:
    """With duplicate address detection the address is first tentative (it cannot be bound)
    for about a second; it must be served once DAD is done."""
    lab = robust_lab
    lab.run(lab.gw, "ip", "-6", "addr", "del", f"{GW6_LAN}/64", "dev", "br-lan")
    daemon.start()
    assert pcp_map(lab, LAN6_HOST, 9000, server=GW6_LAN, proto=6) is None
    if dad:
        lab.run(lab.gw, "sysctl", "-qw", "net.ipv6.conf.br-lan.accept_dad=1")
        lab.run(lab.gw, "ip", "-6", "addr", "add", f"{GW6_LAN}/64", "dev", "br-lan")
        shown = lab.run(lab.gw, "ip", "-6", "addr", "show", "dev", "br-lan").stdout
        assert "tentative" in shown, shown
    else:
        lab.run(lab.gw, "ip", "-6", "addr", "add", f"{GW6_LAN}/64", "dev", "br-lan", "nodad")

    def served() -> bool:
        answer = pcp_map(lab, LAN6_HOST, 9000, server=GW6_LAN, proto=6)
        return getattr(answer, "result", None) == PcpResult.SUCCESS

    assert wait_until(served, SEEN_WITHIN), daemon.log_text()[-3000:]
    assert re.search(r"LAN prefixes: .*fd77::/64", daemon.log_text())
    rows = daemon.listing()
    assert [(r["kind"], r["internal"]) for r in rows] == [("pinhole", f"[{LAN6_HOST}]:9000")]
    check_kernel_equals_table(lab, rows)


def bring_up_lan(lab: Lab, create: bool) -> None:
    if create:
        lab.run(lab.gw, "ip", "link", "add", "br-lan", "type", "bridge")
        for port in ("lan1", "lan2"):
            lab.run(lab.gw, "ip", "link", "set", port, "master", "br-lan")
    lab.run(lab.gw, "ip", "addr", "add", f"{GW_LAN}/24", "dev", "br-lan")
    lab.run(lab.gw, "ip", "addr", "add", f"{GW6_LAN}/64", "dev", "br-lan", "nodad")
    lab.run(lab.gw, "ip", "link", "set", "br-lan", "up")


@pytest.mark.parametrize("missing", ["address", "interface"])
def test_a_lan_interface_that_appears_late_is_served(
    robust_lab: Lab, daemon: GatewayDaemon, missing: str
) -> None:
    lab = robust_lab
    if missing == "interface":
        lab.run(lab.gw, "ip", "link", "del", "br-lan")
    else:
        lab.run(lab.gw, "ip", "addr", "flush", "dev", "br-lan")
    daemon.start()
    assert public_address(lab) is None
    bring_up_lan(lab, create=missing == "interface")
    assert wait_until(lambda: public_address(lab) is not None, SEEN_WITHIN), daemon.log_text()[
        -3000:
    ]
    assert natpmp_map(lab, 4200) is not None
    urls = discover_upnp(lab.lan)
    assert upnp_map(lab, urls, 8200) == 200
    rows = daemon.listing()
    assert len(rows) == 2
    check_kernel_equals_table(lab, rows)
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8200), 8200)

"""A batch the kernel refuses, against the real daemon and the real nftables (issue 7).

Several LAN clients' changes (UPnP AddPortMapping and DeletePortMapping, NAT-PMP and PCP MAP)
land in one reactor turn, so the daemon commits them as one libnftables transaction. Before
that, an out-of-band change with ``nft`` in the gateway namespace makes the transaction fail
atomically in the kernel:

- a map element the batch deletes is already gone (``delete element`` -> ENOENT), or
- the external port the batch maps is already taken in our map by an element with another
  value (``add element`` of the same key with different data -> EEXIST).

The daemon is not patched. To put the requests into one turn it is frozen (SIGSTOP) while
they are sent, on connections it already accepted, and thawed (SIGCONT): its next poll sees
all of them at once, and the status counters prove they formed one failed batch.

What users see is asserted: every client of the batch gets its protocol's error for
``BACKEND_FAILED`` (UPnP 501 ActionFailed, NAT-PMP 3 Network Failure, PCP 8 NO_RESOURCES), none
of the batch's changes is in the kernel, kernel == table == lease store, the same requests
succeed when sent again, and a restart afterwards loses and duplicates nothing. A third test
deletes the whole table from outside: the health check restores it with every mapping.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import pytest

from gateway.model import Endpoint, KernelEntry, Kind, MappingKey, Proto
from protocols.natpmp.codec import MapRequest, MapResponse
from protocols.natpmp.codec import Opcode as NatPmpOpcode
from protocols.natpmp.codec import ResultCode as NatPmpResult
from protocols.natpmp.codec import decode_response as decode_natpmp
from protocols.natpmp.codec import encode_request as encode_natpmp
from protocols.pcp.codec import MapData, Opcode, Request
from protocols.pcp.codec import ResultCode as PcpResult
from protocols.pcp.codec import decode_response as decode_pcp
from protocols.pcp.codec import encode_request as encode_pcp
from tests.netlab import GW_LAN, LAN2_HOST, LAN_HOST, WAN_GW, GatewayDaemon, Lab, inside, wait_until
from tests.robustness.rig import (
    HTTP_PORT,
    UpnpUrls,
    check_kernel_equals_table,
    check_store_equals,
    daemon_pid,
    discover_upnp,
    envelope,
    kernel_entries,
    soap,
    soap_headers,
    table_entries,
    upnp_error_code,
)

pytestmark = [pytest.mark.netns]

LIFETIME = 3600
ANSWER_TIMEOUT = 5.0
#: The value of the element put into our map from outside (no LAN host has this address).
FOREIGN = ("192.168.77.99", 9)
PCP_NONCE = b"backendfail!"


@pytest.fixture
def daemon(robust_lab: Lab, tmp_path: Path) -> Iterator[GatewayDaemon]:
    # the lab's config checks the backend's health every 0.5 s
    d = GatewayDaemon(robust_lab, tmp_path, extra=f"upnp: {{http_port: {HTTP_PORT}}}")
    d.start()
    try:
        yield d
    finally:
        d.stop(signal.SIGKILL)


# -- clients whose requests are sent while the daemon is frozen --------------------------------


@dataclass(frozen=True)
class Answer:
    """What a client got: success, or its protocol's error code (UPnP errorCode, NAT-PMP or
    PCP result code); None when no answer came at all."""

    ok: bool
    code: int | None
    detail: str = field(default="", compare=False)  # shown when an assertion fails


@dataclass(frozen=True)
class Queues:
    """What waits unread in the gateway's sockets (``ss``): bytes (with overhead) in the
    UDP 5351 socket, and bytes in each UPnP connection by the client's port."""

    udp: int
    tcp: dict[int, int]


def queues(lab: Lab) -> Queues:
    udp, tcp = 0, {}
    for line in lab.run(lab.gw, "ss", "-Hntua").stdout.splitlines():
        netid, state, recv_q, _send_q, local, peer = line.split()[:6]
        address, _, port = local.rpartition(":")
        if netid == "udp" and port == "5351" and address.split("%")[0] == GW_LAN:
            udp += int(recv_q)
        elif netid == "tcp" and state == "ESTAB" and local == f"{GW_LAN}:{HTTP_PORT}":
            tcp[int(peer.rsplit(":", 1)[1])] = int(recv_q)
    return Queues(udp, tcp)


class UpnpCall:
    """One SOAP action on a connection opened in advance; a first request on it (answered)
    proves the daemon accepted it, so the action itself is read in the same poll as the
    datagrams sent with it."""

    def __init__(
        self, namespace: str, source: str, urls: UpnpUrls, action: str, args: dict[str, str]
    ) -> None:
        self.urls = urls
        self.action = action
        self.args = args
        with inside(namespace):
            self.conn = http.client.HTTPConnection(
                GW_LAN, urls.port, timeout=ANSWER_TIMEOUT, source_address=(source, 0)
            )
            self.conn.connect()
        warm_up = "GetExternalIPAddress"
        self.conn.request(
            "POST", urls.control, body=envelope(warm_up), headers=soap_headers(warm_up)
        )
        reply = self.conn.getresponse()
        reply.read()
        assert reply.status == 200 and not reply.will_close, reply.getheaders()

    def send(self) -> None:
        body = envelope(self.action, self.args)
        self.conn.request("POST", self.urls.control, body=body, headers=soap_headers(self.action))

    def arrived(self, before: Queues, now: Queues) -> bool:
        """The request (one segment) waits in the daemon's end of the connection."""
        assert self.conn.sock is not None
        return now.tcp.get(self.conn.sock.getsockname()[1], 0) > 0

    def answer(self) -> Answer:
        try:
            reply = self.conn.getresponse()
            body = reply.read()
        except OSError as error:
            return Answer(False, None, f"{self.action}: {error!r}")
        finally:
            self.conn.close()
        detail = f"{self.action}: {reply.status} {body[-300:]!r}"
        if reply.status == 200:
            return Answer(True, 0, detail)
        assert reply.status == 500, detail
        return Answer(False, upnp_error_code(body), detail)


class UdpCall:
    """One NAT-PMP or PCP datagram from a LAN host's address."""

    def __init__(self, namespace: str, source: str, data: bytes, pcp: bool) -> None:
        self.data = data
        self.pcp = pcp
        with inside(namespace):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(ANSWER_TIMEOUT)

    def send(self) -> None:
        self.sock.sendto(self.data, (GW_LAN, 5351))

    def arrived(self, before: Queues, now: Queues) -> bool:
        """One more datagram waits in the daemon's UDP 5351 socket."""
        return now.udp > before.udp

    def answer(self) -> Answer:
        try:
            data, _ = self.sock.recvfrom(1100)
        except OSError as error:
            return Answer(False, None, f"{'PCP' if self.pcp else 'NAT-PMP'}: {error!r}")
        finally:
            self.sock.close()
        if self.pcp:
            result = int(decode_pcp(data).result)
            return Answer(result == PcpResult.SUCCESS, result)
        decoded = decode_natpmp(data)
        assert isinstance(decoded, MapResponse), decoded
        return Answer(decoded.result == NatPmpResult.SUCCESS, int(decoded.result))


Call = UpnpCall | UdpCall


def upnp_add(lab: Lab, urls: UpnpUrls, host: str, proto: str, port: int) -> UpnpCall:
    namespace = lab.lan if host == LAN_HOST else lab.lan2
    args = {
        "NewRemoteHost": "",
        "NewExternalPort": str(port),
        "NewProtocol": proto.upper(),
        "NewInternalPort": str(port),
        "NewInternalClient": host,
        "NewEnabled": "1",
        "NewPortMappingDescription": "backend failure",
        "NewLeaseDuration": str(LIFETIME),
    }
    return UpnpCall(namespace, host, urls, "AddPortMapping", args)


def upnp_delete(lab: Lab, urls: UpnpUrls, host: str, proto: str, port: int) -> UpnpCall:
    namespace = lab.lan if host == LAN_HOST else lab.lan2
    args = {"NewRemoteHost": "", "NewExternalPort": str(port), "NewProtocol": proto.upper()}
    return UpnpCall(namespace, host, urls, "DeletePortMapping", args)


def natpmp_map(lab: Lab, host: str, proto: str, port: int) -> UdpCall:
    namespace = lab.lan if host == LAN_HOST else lab.lan2
    opcode = NatPmpOpcode.MAP_TCP if proto == "tcp" else NatPmpOpcode.MAP_UDP
    data = encode_natpmp(MapRequest(opcode, port, port, LIFETIME))
    return UdpCall(namespace, host, data, pcp=False)


def pcp_map(lab: Lab, host: str, proto: str, port: int) -> UdpCall:
    namespace = lab.lan if host == LAN_HOST else lab.lan2
    number = 6 if proto == "tcp" else 17
    request = Request(
        Opcode.MAP,
        LIFETIME,
        ip_address(host),
        MapData(PCP_NONCE, number, port, port, IPv4Address(0)),
    )
    return UdpCall(namespace, host, encode_pcp(request), pcp=True)


def one_by_one(calls: list[Call]) -> list[Answer]:
    answers = []
    for call in calls:
        call.send()
        answers.append(call.answer())
    return answers


@contextmanager
def frozen(daemon: GatewayDaemon) -> Iterator[None]:
    """The daemon stopped (SIGSTOP) for the block: what is sent meanwhile waits in its
    sockets, and its first poll after SIGCONT finds all of it at once (one reactor turn)."""
    pid = daemon_pid(daemon)
    time.sleep(0.2)  # let it go back to its poll
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def in_one_batch(lab: Lab, daemon: GatewayDaemon, calls: list[Call]) -> list[Answer]:
    with frozen(daemon):
        for call in calls:
            before = queues(lab)
            call.send()
            # even on a busy machine: thaw only once everything waits in the sockets
            arrived = partial(lambda c, b: c.arrived(b, queues(lab)), call, before)
            assert wait_until(arrived, timeout=5.0), call
    return [call.answer() for call in calls]


# -- the three copies of the state ---------------------------------------------------------------


def entry(proto: str, port: int, host: str, internal_port: int | None = None) -> KernelEntry:
    key = MappingKey(Proto(proto), Endpoint(ip_address(WAN_GW), port))
    return KernelEntry(Kind.PORT_MAP, key, Endpoint(ip_address(host), internal_port or port))


def status(daemon: GatewayDaemon) -> dict[str, Any]:
    done = daemon.ctl("status", "--json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def backend_counts(daemon: GatewayDaemon) -> tuple[int, int, int]:
    """The batches committed and failed, and the repairs, as ``portgate status`` shows."""
    backend = status(daemon)["backend"]
    committed, failed = int(backend["committed_batches"]), int(backend["failed_batches"])
    return committed, failed, int(backend["repairs"])


def agree(lab: Lab, daemon: GatewayDaemon) -> set[KernelEntry]:
    """kernel == table == lease store (read-only, while the daemon runs; it commits each batch
    before it answers), none of them holding anything twice; returns the mappings."""
    table = check_kernel_equals_table(lab, daemon.listing())
    check_store_equals(daemon.directory / "leases.sqlite3", table)
    return table


def check_restart_keeps(lab: Lab, daemon: GatewayDaemon, expected: set[KernelEntry]) -> None:
    """A stop and a start lose, revive and duplicate nothing."""
    daemon.stop(signal.SIGTERM)
    check_store_equals(daemon.directory / "leases.sqlite3", expected)
    daemon.start()
    rows = daemon.listing()
    assert table_entries(rows) == expected
    check_kernel_equals_table(lab, rows)


def nft(lab: Lab, *args: str) -> None:
    lab.run(lab.gw, "nft", *args)


# -- tests ---------------------------------------------------------------------------------------


def test_a_refused_delete_fails_the_whole_batch_and_leaves_no_half_state(
    robust_lab: Lab, daemon: GatewayDaemon
) -> None:
    lab = robust_lab
    urls = discover_upnp(lab.lan)
    victim = entry("tcp", 41000, LAN_HOST)
    bystander = entry("udp", 41500, LAN2_HOST)
    setup: list[Call] = [
        upnp_add(lab, urls, LAN_HOST, "tcp", 41000),
        natpmp_map(lab, LAN2_HOST, "udp", 41500),
    ]
    assert one_by_one(setup) == [Answer(True, 0)] * 2
    assert agree(lab, daemon) == {victim, bystander}
    # out of band: the victim's element leaves our map, so deleting it makes the kernel
    # refuse the transaction (ENOENT)
    nft(lab, "delete", "element", "inet", "portgate", "dnat4", f"{{ {WAN_GW} . tcp . 41000 }}")
    assert victim not in kernel_entries(lab)[0]

    def batch() -> list[Call]:
        return [
            upnp_delete(lab, urls, LAN_HOST, "tcp", 41000),
            upnp_add(lab, urls, LAN2_HOST, "tcp", 41001),
            natpmp_map(lab, LAN2_HOST, "tcp", 41002),
            pcp_map(lab, LAN_HOST, "udp", 41003),
        ]

    wanted = {entry("tcp", 41001, LAN2_HOST), entry("tcp", 41002, LAN2_HOST)}
    wanted.add(entry("udp", 41003, LAN_HOST))
    committed, failed, repairs = backend_counts(daemon)
    answers = in_one_batch(lab, daemon, batch())

    upnp_failed = Answer(False, 501)
    assert answers == [
        upnp_failed,
        upnp_failed,
        Answer(False, NatPmpResult.NETWORK_FAILURE),
        Answer(False, PcpResult.NO_RESOURCES),
    ]
    # one failed batch, after which the kernel was brought back in line with the table
    assert backend_counts(daemon) == (committed, failed + 1, repairs + 1)
    assert "nftables refused the batch" in status(daemon)["backend"]["last_error"]
    kernel = kernel_entries(lab)[0]
    assert not kernel & wanted, "a change of the refused batch reached the kernel"
    # the delete was rolled back: the victim is still everyone's, and in the kernel again
    assert agree(lab, daemon) == {victim, bystander}

    # the same requests, sent again, succeed
    assert one_by_one(batch()) == [Answer(True, 0)] * 4
    final = agree(lab, daemon)
    assert final == wanted | {bystander}
    assert lab.reaches(lab.wan, lab.lan2, "tcp", (WAN_GW, 41001), 41001)
    check_restart_keeps(lab, daemon, final)
    assert "Traceback" not in daemon.log_text()


def test_a_refused_add_fails_the_whole_batch_and_leaves_no_half_state(
    robust_lab: Lab, daemon: GatewayDaemon
) -> None:
    lab = robust_lab
    urls = discover_upnp(lab.lan)
    doomed = entry("udp", 42010, LAN_HOST)
    assert one_by_one([upnp_add(lab, urls, LAN_HOST, "udp", 42010)]) == [Answer(True, 0)]
    assert agree(lab, daemon) == {doomed}
    # out of band: port 42000 appears in our map with another value, so the daemon's add of
    # that key makes the kernel refuse the transaction (EEXIST)
    foreign = f"{{ {WAN_GW} . tcp . 42000 : {FOREIGN[0]} . {FOREIGN[1]} }}"
    nft(lab, "add", "element", "inet", "portgate", "dnat4", foreign)

    def batch() -> list[Call]:
        return [
            upnp_add(lab, urls, LAN2_HOST, "tcp", 42000),
            upnp_delete(lab, urls, LAN_HOST, "udp", 42010),
            pcp_map(lab, LAN_HOST, "tcp", 42001),
            natpmp_map(lab, LAN2_HOST, "udp", 42002),
        ]

    wanted = {entry("tcp", 42000, LAN2_HOST), entry("tcp", 42001, LAN_HOST)}
    wanted.add(entry("udp", 42002, LAN2_HOST))
    committed, failed, repairs = backend_counts(daemon)
    answers = in_one_batch(lab, daemon, batch())

    assert answers == [
        Answer(False, 501),
        Answer(False, 501),
        Answer(False, PcpResult.NO_RESOURCES),
        Answer(False, NatPmpResult.NETWORK_FAILURE),
    ]
    # one failed batch, after which the kernel was brought back in line with the table
    assert backend_counts(daemon) == (committed, failed + 1, repairs + 1)
    kernel = kernel_entries(lab)[0]
    assert not kernel & wanted, "a change of the refused batch reached the kernel"
    # the delete was rolled back, and the element nobody asked for is gone from our map
    assert agree(lab, daemon) == {doomed}

    assert one_by_one(batch()) == [Answer(True, 0)] * 4
    final = agree(lab, daemon)
    assert final == wanted
    check_restart_keeps(lab, daemon, final)
    assert "Traceback" not in daemon.log_text()


def test_a_table_deleted_from_outside_is_restored_and_requests_go_on(
    robust_lab: Lab, daemon: GatewayDaemon
) -> None:
    lab = robust_lab
    urls = discover_upnp(lab.lan)
    calls: list[Call] = [
        upnp_add(lab, urls, LAN_HOST, "tcp", 43000),
        natpmp_map(lab, LAN2_HOST, "udp", 43001),
        pcp_map(lab, LAN_HOST, "tcp", 43002),
    ]
    assert one_by_one(calls) == [Answer(True, 0)] * 3
    before = agree(lab, daemon)
    repairs = int(status(daemon)["backend"]["repairs"])
    nft(lab, "delete", "table", "inet", "portgate")

    def restored() -> bool:
        listed = lab.run(lab.gw, "nft", "list", "table", "inet", "portgate", check=False)
        return listed.returncode == 0 and kernel_entries(lab)[0] == before

    # checked every 0.5 s: restored well within 5 s even on a busy machine
    assert wait_until(restored, timeout=5.0), "the health check did not restore the table"
    assert int(status(daemon)["backend"]["repairs"]) == repairs + 1
    assert agree(lab, daemon) == before
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 43000), 43000)
    status_code, _ = soap(
        lab.lan,
        urls,
        "DeletePortMapping",
        {"NewRemoteHost": "", "NewExternalPort": "43000", "NewProtocol": "TCP"},
    )
    assert status_code == 200
    assert agree(lab, daemon) == before - {entry("tcp", 43000, LAN_HOST)}

"""The configurable caps of issue 7 against the real daemon (nft backend) in a lab: per-client
request rates on UPnP HTTP and UDP 5351, HTTP connections and GENA subscriptions per client
and in all. Each test sets small values in the config's ``limits`` and shows that they bite
(a daemon without the protection fails it), that another LAN host is still answered, and that
each refusal is logged once per client per minute. Labs have their own prefix ("pgl..."),
removed afterwards; like every namespace test these fail, never skip, without root.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocols.natpmp.codec import PublicAddressResponse, decode_response
from tests.netlab import GW_LAN, LAN2_HOST, LAN_HOST, GatewayDaemon, Lab, inside
from tests.robustness.rig import (
    ANSWER_BOUND,
    HTTP_PORT,
    WANIP2,
    Prober,
    alive,
    discover_upnp,
    envelope,
    soap,
    soap_headers,
)

pytestmark = [pytest.mark.netns]

NATPMP_PUBLIC_ADDRESS = b"\x00\x00"
#: Where the GENA subscribers of these tests take their NOTIFYs.
NOTIFY_PORT = 47000


@pytest.fixture
def start(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str], GatewayDaemon]]:
    """Start the daemon with ``limits: {...}`` set to the given flow-style entries."""
    started: list[GatewayDaemon] = []

    def run(limits: str) -> GatewayDaemon:
        extra = f"upnp: {{http_port: {HTTP_PORT}}}\nlimits: {{{limits}}}\n"
        directory = tmp_path / f"daemon{len(started)}"
        directory.mkdir()
        daemon = GatewayDaemon(lab, directory, extra=extra)
        started.append(daemon)
        daemon.start()
        return daemon

    try:
        yield run
    finally:
        for daemon in started:
            daemon.stop(signal.SIGKILL)


def refusal_lines(daemon: GatewayDaemon, start: str) -> list[str]:
    return [line for line in daemon.log_text().splitlines() if start in line]


def healthy(daemon: GatewayDaemon) -> None:
    assert alive(daemon), daemon.log_text()[-3000:]
    assert "Traceback" not in daemon.log_text()


# -- raw connections ----------------------------------------------------------------------------


def connect(namespace: str, timeout: float = 3.0) -> socket.socket:
    with inside(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((GW_LAN, HTTP_PORT))
    return sock


def closed_unanswered(sock: socket.socket, timeout: float = 3.0) -> bool:
    """Does the server close this connection without a word (EOF or reset)?"""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def get_description(sock: socket.socket) -> int:
    """GET /rootDesc.xml on an open connection (kept alive); the status code."""
    sock.settimeout(ANSWER_BOUND)
    sock.sendall(f"GET /rootDesc.xml HTTP/1.1\r\nHost: {GW_LAN}:{HTTP_PORT}\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    fields = dict(
        line.split(":", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ":" in line
    )
    length = int(next(v for k, v in fields.items() if k.lower() == "content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ")[1])


# -- requests per second --------------------------------------------------------------------


HAMMER = """
import http.client, json, sys, threading, time
GW, PORT, CONTROL, SECONDS, BODY, HEADERS = json.loads(sys.argv[1])
statuses = {{}}
refusals = []
errors = []
lock = threading.Lock()
deadline = time.monotonic() + SECONDS

def hammer():
    conn = None
    while time.monotonic() < deadline:
        try:
            if conn is None:
                conn = http.client.HTTPConnection(GW, PORT, timeout=5)
            conn.request("POST", CONTROL, body=BODY, headers=HEADERS)
            answer = conn.getresponse()
            body = answer.read()
            with lock:
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                if answer.status == 503 and len(refusals) < 20:
                    refusals.append([answer.getheader("Retry-After"),
                                     answer.getheader("Connection"), len(body)])
            if answer.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as error:
            with lock:
                errors.append(repr(error))
            if conn is not None:
                conn.close()
            conn = None

started = time.monotonic()
threads = [threading.Thread(target=hammer) for _ in range({threads})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({{"statuses": statuses, "refusals": refusals, "errors": errors[:10],
                  "seconds": time.monotonic() - started}}))
"""


@dataclass
class Hammered:
    statuses: dict[int, int]
    refusals: list[tuple[str | None, str | None, int]]  # Retry-After, Connection, body length
    errors: list[str]
    seconds: float


def hammer_soap(lab: Lab, control: str, seconds: float, threads: int = 4) -> Hammered:
    """From the lan host, ``threads`` keep-alive clients POST GetExternalIPAddress as fast as
    they can for ``seconds`` (a process of its own in the lan namespace)."""
    arguments = json.dumps(
        [
            GW_LAN,
            HTTP_PORT,
            control,
            seconds,
            envelope("GetExternalIPAddress"),
            soap_headers("GetExternalIPAddress"),
        ]
    )
    done = lab.run(
        lab.lan,
        sys.executable,
        "-c",
        textwrap.dedent(HAMMER.format(threads=threads)),
        arguments,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Hammered(
        {int(code): int(count) for code, count in result["statuses"].items()},
        [(retry, connection, int(length)) for retry, connection, length in result["refusals"]],
        [str(error) for error in result["errors"]],
        float(result["seconds"]),
    )


def test_a_host_hammering_soap_gets_503s_while_another_host_is_answered(
    lab: Lab, start: Callable[[str], GatewayDaemon]
) -> None:
    rate, burst, seconds = 20, 40, 3.0
    daemon = start(f"http_requests_per_second: {rate}, http_request_burst: {burst}")
    urls = discover_upnp(lab.lan2)
    with Prober(lab, urls) as prober:
        result = hammer_soap(lab, urls.control, seconds)
    prober.check()  # lan2 asked all along and was answered within 2 s each time
    statuses = result.statuses
    assert statuses.get(503, 0) > 0, result
    assert set(statuses) <= {200, 503}, result
    assert statuses.get(200, 0) <= burst + rate * (result.seconds + 1), result
    assert result.refusals, result
    for retry_after, connection, length in result.refusals:
        assert retry_after is not None and int(retry_after) >= 1, result
        assert connection == "close" and length == 0, result
    # the bucket refills: a little later the same host is answered again
    time.sleep(0.5)
    status, body = soap(lab.lan, urls, "GetExternalIPAddress")
    assert status == 200 and b"NewExternalIPAddress" in body
    refused = refusal_lines(daemon, f"refused UPnP HTTP requests from {LAN_HOST}")
    assert len(refused) == 1, refused  # once per client per minute, however many 503s
    assert f"over {rate} per second (limits.http_requests_per_second)" in refused[0]
    assert not refusal_lines(daemon, f"refused UPnP HTTP requests from {LAN2_HOST}")
    healthy(daemon)


WALK = """
import json, socket, sys, time
GW, PORT, CONTROL, COUNT, NS = json.loads(sys.argv[1])
statuses = {}
started = time.monotonic()
for index in range(COUNT):
    body = (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
        ' s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
        f'<u:GetGenericPortMappingEntry xmlns:u="{NS}"><NewPortMappingIndex>{index}'
        '</NewPortMappingIndex></u:GetGenericPortMappingEntry></s:Body></s:Envelope>'
    ).encode()
    head = (
        f"POST {CONTROL} HTTP/1.1\\r\\nHost: {GW}:{PORT}\\r\\nContent-Length: {len(body)}\\r\\n"
        'Content-Type: text/xml; charset="utf-8"\\r\\n'
        f'SOAPAction: "{NS}#GetGenericPortMappingEntry"\\r\\nConnection: close\\r\\n\\r\\n'
    ).encode()
    sock = socket.create_connection((GW, PORT), timeout=10)
    sock.sendall(head + body)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    status = int(received.split(b" ", 2)[1])
    statuses[status] = statuses.get(status, 0) + 1
print(json.dumps({"statuses": statuses, "seconds": time.monotonic() - started}))
"""


def test_the_default_rate_leaves_a_walk_of_a_full_default_table_alone(
    lab: Lab, start: Callable[[str], GatewayDaemon]
) -> None:
    """GetGenericPortMappingEntry one index after the other, each on a new connection, as
    upnpc -l and bench/ do: 8,193 requests (a full default table, then the 713 that ends the
    walk) on the empty table, which answers faster than a full one, are all answered."""
    count = 8192 + 1
    daemon = start("")
    urls = discover_upnp(lab.lan)
    arguments = json.dumps([GW_LAN, HTTP_PORT, urls.control, count, WANIP2])
    done = lab.run(lab.lan, sys.executable, "-c", textwrap.dedent(WALK), arguments)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["statuses"] == {"500": count}, result  # every one a 713 fault, no 503
    assert not refusal_lines(daemon, "refused UPnP HTTP requests")
    healthy(daemon)


# -- connections ----------------------------------------------------------------------------


def test_configured_connection_caps_apply_per_client_and_in_all(
    lab: Lab, start: Callable[[str], GatewayDaemon]
) -> None:
    daemon = start("http_connections_per_client: 2, http_connections: 3")
    with ExitStack() as stack:
        mine = [stack.enter_context(connect(lab.lan)) for _ in range(2)]
        time.sleep(0.3)  # let the daemon accept both before the next arrives
        third = stack.enter_context(connect(lab.lan))
        assert closed_unanswered(third), "a third connection from one host was kept"
        assert not closed_unanswered(mine[0], timeout=0.5)
        other = stack.enter_context(connect(lab.lan2))
        assert get_description(other) == 200  # the third in all, still served
        # at the total cap a newcomer's slot comes from the host holding the most
        again = stack.enter_context(connect(lab.lan2))
        assert get_description(again) == 200
        assert closed_unanswered(mine[0]), "the busiest host's oldest connection stayed"
        assert get_description(mine[1]) == 200
    refused = refusal_lines(daemon, "refused a UPnP HTTP connection")
    assert len(refused) == 1, refused
    assert (
        f"refused a UPnP HTTP connection from {LAN_HOST}: it holds 2 already "
        "(limits.http_connections_per_client)"
    ) in refused[0]
    healthy(daemon)


# -- GENA subscriptions ---------------------------------------------------------------------


@contextmanager
def notify_sink(namespace: str) -> Iterator[list[bytes]]:
    """A NOTIFY receiver on NOTIFY_PORT in ``namespace`` answering 200; collects requests."""
    with inside(namespace):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", NOTIFY_PORT))
    server.listen(16)
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def gena(namespace: str, method: str, path: str, *headers: str) -> tuple[int, dict[str, str]]:
    """One SUBSCRIBE/UNSUBSCRIBE; the status and the answer's headers (lower-case names)."""
    sock = connect(namespace)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {GW_LAN}:{HTTP_PORT}", *headers]
        sock.sendall(("\r\n".join([*lines, "Connection: close", "", ""])).encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    finally:
        sock.close()
    head = received.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:])}
    return int(head[0].split(" ")[1]), fields


def subscribe(namespace: str, host: str, path: str) -> int:
    return gena(
        namespace,
        "SUBSCRIBE",
        path,
        f"CALLBACK: <http://{host}:{NOTIFY_PORT}/>",
        "NT: upnp:event",
        "TIMEOUT: Second-1800",
    )[0]


def test_configured_subscription_caps_apply_per_client_and_in_all(
    lab: Lab, start: Callable[[str], GatewayDaemon]
) -> None:
    daemon = start("gena_subscriptions_per_client: 2, gena_subscriptions: 3")
    urls = discover_upnp(lab.lan)
    with notify_sink(lab.lan), notify_sink(lab.lan2):
        status, fields = gena(
            lab.lan,
            "SUBSCRIBE",
            urls.event,
            f"CALLBACK: <http://{LAN_HOST}:{NOTIFY_PORT}/>",
            "NT: upnp:event",
        )
        assert status == 200
        first_sid = fields["sid"]
        assert subscribe(lab.lan, LAN_HOST, urls.event) == 200
        assert subscribe(lab.lan, LAN_HOST, urls.event) == 503  # two per client
        assert subscribe(lab.lan2, LAN2_HOST, urls.event) == 200
        assert subscribe(lab.lan2, LAN2_HOST, urls.event) == 503  # three in all
        assert gena(lab.lan, "UNSUBSCRIBE", urls.event, f"SID: {first_sid}")[0] == 200
        assert subscribe(lab.lan2, LAN2_HOST, urls.event) == 200  # a slot came free
        for _ in range(5):
            assert subscribe(lab.lan, LAN_HOST, urls.event) == 503
    per_client = refusal_lines(daemon, f"refused a GENA subscription from {LAN_HOST}")
    assert len(per_client) == 1, per_client
    assert "(limits.gena_subscriptions_per_client)" in per_client[0]
    in_all = refusal_lines(daemon, f"refused a GENA subscription from {LAN2_HOST}")
    assert len(in_all) == 1 and "(limits.gena_subscriptions)" in in_all[0], in_all
    healthy(daemon)


# -- UDP 5351 -------------------------------------------------------------------------------


def natpmp_burst(namespace: str, count: int, wait: float = 1.0) -> int:
    """Send ``count`` NAT-PMP public-address requests at once; how many were answered."""
    with inside(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(count):
            sock.sendto(NATPMP_PUBLIC_ADDRESS, (GW_LAN, 5351))
        answered = 0
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(64)
            except TimeoutError:
                break
            if isinstance(decode_response(data), PublicAddressResponse):
                answered += 1
        return answered
    finally:
        sock.close()


def test_a_configured_udp5351_rate_drops_a_flood_and_serves_another_host(
    lab: Lab, start: Callable[[str], GatewayDaemon]
) -> None:
    daemon = start("udp5351_requests_per_second: 5, udp5351_request_burst: 5")
    answered = natpmp_burst(lab.lan, 50)
    assert 5 <= answered <= 5 + 5 * 2, answered
    assert natpmp_burst(lab.lan2, 1) == 1
    assert natpmp_burst(lab.lan, 50) <= 5 + 5 * 2
    refused = refusal_lines(daemon, f"refused requests from {LAN_HOST} on UDP 5351")
    assert len(refused) == 1, refused
    assert "over 5 per second (limits.udp5351_requests_per_second)" in refused[0]
    healthy(daemon)


# -- reload ---------------------------------------------------------------------------------


def test_a_reload_applies_new_limits_at_once_and_keeps_what_is_open(
    lab: Lab, start: Callable[[str], GatewayDaemon]
) -> None:
    daemon = start("")
    with ExitStack() as stack:
        held = [stack.enter_context(connect(lab.lan)) for _ in range(3)]
        assert all(get_description(sock) == 200 for sock in held)
        daemon.config.write_text(
            daemon.config.read_text().replace(
                "limits: {}",
                "limits: {http_connections_per_client: 2, http_requests_per_second: 1,"
                " http_request_burst: 2}",
            )
        )
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in daemon.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reloaded" in daemon.log_text(), daemon.log_text()[-2000:]
        assert closed_unanswered(stack.enter_context(connect(lab.lan)))
        assert not closed_unanswered(held[0], timeout=0.5)  # open ones stay
        other = stack.enter_context(connect(lab.lan2))
        assert [get_description(other) for _ in range(2)] == [200, 200]
        assert get_description(other) == 503
    healthy(daemon)

"""The admin control channel: the server protocol on fake transports over the real core, and
the ``portgate`` CLI client against small threaded UNIX-socket servers."""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import capturedLogs

from gateway import ctl
from gateway.allocator import Allocator
from gateway.config import LifetimeConfig, PolicyConfig
from gateway.control import (
    ADMIN_OWNER,
    ControlError,
    ControlFactory,
    ControlProtocol,
    listen_control,
)
from gateway.errors import GatewayError
from gateway.model import Endpoint, Origin, Owner, Proto
from gateway.policy import Lan, Policy
from gateway.ports import Listener
from gateway.requests import MapPort, OpenPinhole, Request, Result
from gateway.table import MappingTable

REPO = Path(__file__).resolve().parents[2]
EXTERNAL = IPv4Address("203.0.113.1")
NOW = 1000.0
NONCE = bytes.fromhex("a1b2c3d4e5f6a7b8c9d0e1f2")
PCP_CLIENT = "192.168.1.30"


# -- a fake Admin over the real core ------------------------------------------------------------


class TableAdmin:
    """The ``Admin`` port over a real ``MappingTable``, answering at once (no backend).

    With ``hold=True`` answers wait in ``held`` until the test fires them."""

    def __init__(self, external: IPv4Address | None = EXTERNAL, *, hold: bool = False) -> None:
        lan = Lan(prefixes=(IPv4Network("192.168.1.0/24"), IPv6Network("2001:db8:1::/64")))
        policy = Policy(PolicyConfig(), LifetimeConfig(), lan)
        self.table = MappingTable(policy, Allocator(random.Random(1)), external)
        self.clock = NOW
        self.hold = hold
        self.held: list[tuple[Deferred[Result], Result]] = []
        self.requests: list[Request] = []

    def handle(self, request: Request) -> Deferred[Result]:
        self.requests.append(request)
        try:
            result, _changes = self.table.apply(request, self.clock)
        except GatewayError as error:
            return fail(error)
        if not self.hold:
            return succeed(result)
        waiter: Deferred[Result] = Deferred()
        self.held.append((waiter, result))
        return waiter

    @property
    def external_address(self) -> IPv4Address | None:
        return self.table.external_address

    def now(self) -> float:
        return self.clock

    def epoch_seconds(self) -> int:
        return int(self.clock)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return lambda: None

    def status(self) -> dict[str, object]:
        return {
            "uptime": 3723,
            "external_address": None if self.external_address is None else str(EXTERNAL),
            "mappings": len(self.table),
            "by_origin": {o.value: n for o, n in self.table.counts_by_origin().items()},
            "next_expiry_in": None,
            "epoch": 3723,
            "backend": {"name": "memory", "healthy": True, "committed_batches": 4},
        }


class BrokenAdmin(TableAdmin):
    """Fails every request with an unexpected exception."""

    def handle(self, request: Request) -> Deferred[Result]:
        raise RuntimeError("boom")


def seed(admin: TableAdmin) -> None:
    """A NAT-PMP mapping, a PCP mapping (with a nonce) and a PCP IPv6 pinhole."""
    for request in (
        MapPort(
            Owner(Origin.NATPMP, ip_address("192.168.1.20")),
            Proto.UDP,
            Endpoint(ip_address("192.168.1.20"), 5000),
            external_port=5000,
            lifetime=3600,
            exact=True,
        ),
        MapPort(
            Owner(Origin.PCP, ip_address(PCP_CLIENT), NONCE),
            Proto.TCP,
            Endpoint(ip_address(PCP_CLIENT), 22),
            external_port=2222,
            lifetime=7200,
            exact=True,
            description="ssh",
        ),
        OpenPinhole(
            Owner(Origin.PCP, ip_address("2001:db8:1::30"), NONCE),
            Proto.TCP,
            Endpoint(ip_address("2001:db8:1::30"), 443),
            lifetime=600,
        ),
    ):
        admin.table.apply(request, NOW)


# -- driving the protocol on a fake transport ---------------------------------------------------


class Conn:
    def __init__(self, protocol: ControlProtocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> list[dict[str, Any]]:
        self.protocol.dataReceived(data)
        return self.answers()

    def answers(self) -> list[dict[str, Any]]:
        out = self.transport.value()
        self.transport.clear()
        assert out == b"" or out.endswith(b"\n")
        return [json.loads(line) for line in out.splitlines()]

    def ask(self, request: dict[str, object]) -> dict[str, Any]:
        (answer,) = self.send(json.dumps(request).encode() + b"\n")
        return answer


@pytest.fixture
def peer_socket() -> Iterator[socket.socket]:
    """A real connected UNIX socket: SO_PEERCRED names this test process."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ours
    ours.close()
    theirs.close()


@pytest.fixture
def connect(peer_socket: socket.socket) -> Callable[..., Conn]:
    def make(admin: TableAdmin, allowed_uids: frozenset[int] | None = None) -> Conn:
        protocol = ControlFactory(admin, allowed_uids=allowed_uids).buildProtocol(None)
        transport = StringTransport()
        transport.socket = peer_socket  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        return Conn(protocol, transport)

    return make


@pytest.fixture
def admin() -> TableAdmin:
    admin = TableAdmin()
    seed(admin)
    return admin


@pytest.fixture
def conn(connect: Callable[..., Conn], admin: TableAdmin) -> Conn:
    return connect(admin)


# -- commands -------------------------------------------------------------------------------


def test_list_shows_port_maps_sorted_without_pinholes_or_nonces(conn: Conn) -> None:
    answer = conn.ask({"cmd": "list"})
    assert answer == {
        "ok": True,
        "mappings": [
            {
                "uid": 65537,
                "kind": "port_map",
                "proto": "tcp",
                "external": "203.0.113.1:2222",
                "internal": "192.168.1.30:22",
                "origin": "pcp",
                "client": PCP_CLIENT,
                "description": "ssh",
                "filters": [],
                "enabled": True,
                "lifetime_remaining": 7200,
            },
            {
                "uid": 65536,
                "kind": "port_map",
                "proto": "udp",
                "external": "203.0.113.1:5000",
                "internal": "192.168.1.20:5000",
                "origin": "natpmp",
                "client": "192.168.1.20",
                "description": "",
                "filters": [],
                "enabled": True,
                "lifetime_remaining": 3600,
            },
        ],
    }


def test_list_with_pinholes_shows_them_and_never_a_nonce(conn: Conn) -> None:
    conn.protocol.dataReceived(b'{"cmd": "list", "pinholes": true}\n')
    raw = conn.transport.value()
    answer = json.loads(raw)
    pinholes = [m for m in answer["mappings"] if m["kind"] == "pinhole"]
    assert [(m["uid"], m["internal"], m["external"]) for m in pinholes] == [
        (1, "[2001:db8:1::30]:443", "[2001:db8:1::30]:443")
    ]
    assert b"nonce" not in raw
    assert NONCE.hex().encode() not in raw
    assert all(set(m) >= {"uid", "lifetime_remaining"} for m in answer["mappings"])


def test_list_filters_by_client_and_proto(conn: Conn) -> None:
    by_client = conn.ask({"cmd": "list", "client": PCP_CLIENT})
    assert [m["uid"] for m in by_client["mappings"]] == [65537]
    by_proto = conn.ask({"cmd": "list", "proto": "udp"})
    assert [m["uid"] for m in by_proto["mappings"]] == [65536]
    nothing = conn.ask({"cmd": "list", "client": "192.168.1.99", "proto": None})
    assert nothing == {"ok": True, "mappings": []}


def test_add_creates_a_permanent_static_mapping_owned_by_the_admin(
    conn: Conn, admin: TableAdmin
) -> None:
    answer = conn.ask(
        {
            "cmd": "add",
            "proto": "tcp",
            "external_port": 8080,
            "internal": "192.168.1.10:80",
            "lifetime": 0,
            "description": "web",
        }
    )
    assert answer["ok"] is True
    assert answer["mapping"] == {
        "uid": 65538,
        "kind": "port_map",
        "proto": "tcp",
        "external": "203.0.113.1:8080",
        "internal": "192.168.1.10:80",
        "origin": "static",
        "client": "127.0.0.1",
        "description": "web",
        "filters": [],
        "enabled": True,
        "lifetime_remaining": None,
    }
    request = admin.requests[-1]
    assert isinstance(request, MapPort)
    assert request.owner == ADMIN_OWNER
    assert request.exact is True
    assert "203.0.113.1:8080" in [m["external"] for m in conn.ask({"cmd": "list"})["mappings"]]


def test_add_with_a_lifetime_counts_down(conn: Conn, admin: TableAdmin) -> None:
    answer = conn.ask(
        {"cmd": "add", "proto": "udp", "external_port": 9000, "internal": "192.168.1.10:9000"}
        | {"lifetime": 3600}
    )
    assert answer["mapping"]["lifetime_remaining"] == 3600
    admin.clock += 1
    (listed,) = [m for m in conn.ask({"cmd": "list"})["mappings"] if m["proto"] == "udp"][1:]
    assert listed["lifetime_remaining"] == 3599


def test_add_on_a_taken_port_reports_the_conflict(conn: Conn) -> None:
    answer = conn.ask(
        {"cmd": "add", "proto": "udp", "external_port": 5000, "internal": "192.168.1.10:5000"}
    )
    assert answer == {
        "ok": False,
        "error": "conflict_foreign",
        "message": "udp 203.0.113.1:5000 is already mapped to 192.168.1.20:5000",
    }


def test_add_to_a_host_off_the_lan_is_refused_by_the_policy(conn: Conn) -> None:
    answer = conn.ask(
        {"cmd": "add", "proto": "tcp", "external_port": 8080, "internal": "10.9.9.9:80"}
    )
    assert (answer["ok"], answer["error"]) == (False, "policy_denied")


def test_delete_by_port_removes_any_owners_mapping(conn: Conn) -> None:
    answer = conn.ask({"cmd": "delete", "proto": "tcp", "external_port": 2222})
    assert answer["ok"] is True
    assert answer["removed"] == 1
    assert [m["uid"] for m in answer["mappings"]] == [65537]
    again = conn.ask({"cmd": "delete", "proto": "tcp", "external_port": 2222})
    assert again == {
        "ok": False,
        "error": "not_found",
        "message": "no mapping for tcp 203.0.113.1:2222",
    }


def test_delete_by_port_needs_the_external_address(connect: Callable[..., Conn]) -> None:
    conn = connect(TableAdmin(external=None))
    answer = conn.ask({"cmd": "delete", "proto": "tcp", "external_port": 2222})
    assert (answer["ok"], answer["error"]) == (False, "no_external_address")


def test_delete_by_uid_closes_a_pinhole(conn: Conn, admin: TableAdmin) -> None:
    answer = conn.ask({"cmd": "delete", "uid": 1})
    assert (answer["ok"], answer["removed"]) == (True, 1)
    assert admin.table.get(1) is None
    port_map = conn.ask({"cmd": "delete", "uid": 65536})
    assert (port_map["ok"], port_map["error"]) == (False, "not_found")


def test_flush_removes_everything_or_one_clients_entries(conn: Conn, admin: TableAdmin) -> None:
    one = conn.ask({"cmd": "flush", "client": PCP_CLIENT})
    assert (one["ok"], one["removed"]) == (True, 1)
    assert len(admin.table) == 2
    rest = conn.ask({"cmd": "flush"})
    assert (rest["ok"], rest["removed"]) == (True, 2)
    assert len(admin.table) == 0


def test_status_returns_the_admins_summary(conn: Conn, admin: TableAdmin) -> None:
    assert conn.ask({"cmd": "status"}) == {"ok": True, "status": admin.status()}


def test_pipelined_requests_in_one_chunk_get_answers_in_order(conn: Conn) -> None:
    answers = conn.send(b'{"cmd":"status"}\n{"cmd":"nope"}\r\n{"cmd":"list"}\n')
    assert [a["ok"] for a in answers] == [True, False, True]
    assert "status" in answers[0]
    assert "mappings" in answers[2]


def test_answers_keep_request_order_when_results_arrive_out_of_order(
    connect: Callable[..., Conn],
) -> None:
    admin = TableAdmin(hold=True)
    conn = connect(admin)
    lines = [
        {"cmd": "add", "proto": "tcp", "external_port": p, "internal": f"192.168.1.10:{p}"}
        for p in (8001, 8002, 8003)
    ]
    assert conn.send(b"".join(json.dumps(line).encode() + b"\n" for line in lines)) == []
    (last, result3), (middle, result2), (first, result1) = reversed(admin.held)
    last.callback(result3)
    middle.callback(result2)
    assert conn.answers() == []
    first.callback(result1)
    ports = [a["mapping"]["external"] for a in conn.answers()]
    assert ports == ["203.0.113.1:8001", "203.0.113.1:8002", "203.0.113.1:8003"]


def test_an_answer_after_the_connection_is_gone_is_dropped(connect: Callable[..., Conn]) -> None:
    admin = TableAdmin(hold=True)
    conn = connect(admin)
    conn.send(b'{"cmd": "list"}\n')
    conn.protocol.connectionLost(None)
    (waiter, result) = admin.held[0]
    waiter.callback(result)
    assert conn.transport.value() == b""


# -- bad requests ---------------------------------------------------------------------------

ADD = {"cmd": "add", "proto": "tcp", "external_port": 8080, "internal": "192.168.1.10:80"}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"not json", "not JSON"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b"\xff\xfe", "UTF-8"),
        (b"[1, 2]", "object"),
        (b'"list"', "object"),
        (b"{}", "'cmd'"),
        (b'{"cmd": 5}', "'cmd'"),
        (b'{"cmd": "reboot"}', "unknown command 'reboot'"),
        (b"[" * 30000, "nested too deeply"),
        (json.dumps(ADD | {"proto": "icmp"}).encode(), "tcp or udp"),
        (json.dumps(ADD | {"proto": 6}).encode(), "'proto' must be a string"),
        (json.dumps(ADD | {"external_port": 70000}).encode(), "1-65535"),
        (json.dumps(ADD | {"external_port": 0}).encode(), "1-65535"),
        (json.dumps(ADD | {"external_port": True}).encode(), "integer"),
        (json.dumps(ADD | {"external_port": "80"}).encode(), "integer"),
        (json.dumps(ADD | {"external_port": 80.5}).encode(), "integer"),
        (json.dumps({k: v for k, v in ADD.items() if k != "internal"}).encode(), "'internal'"),
        (json.dumps(ADD | {"internal": "192.168.1.10"}).encode(), "ADDRESS:PORT"),
        (json.dumps(ADD | {"internal": "host:80"}).encode(), "not an IP address"),
        (json.dumps(ADD | {"internal": "192.168.1.10:0"}).encode(), "1-65535"),
        (json.dumps(ADD | {"lifetime": -1}).encode(), "'lifetime'"),
        (json.dumps(ADD | {"lifetime": 2**40}).encode(), "'lifetime'"),
        (json.dumps(ADD | {"description": 7}).encode(), "'description'"),
        (json.dumps(ADD | {"extra": 1}).encode(), "unknown field 'extra'"),
        (b'{"cmd": "list", "client": "nobody"}', "not an IP address"),
        (b'{"cmd": "list", "pinholes": "yes"}', "true or false"),
        (b'{"cmd": "delete"}', "'proto'"),
        (b'{"cmd": "delete", "uid": 3, "proto": "tcp"}', "either"),
        (b'{"cmd": "delete", "uid": 0}', "'uid'"),
        (b'{"cmd": "flush", "client": 17}', "string"),
        (b'{"cmd": "status", "verbose": true}', "unknown field"),
        (b'{"cmd": "list", "limit": NaN}', "unknown field"),
    ],
)
def test_a_bad_request_gets_an_error_and_the_connection_stays_usable(
    conn: Conn, line: bytes, words: str
) -> None:
    (answer,) = conn.send(line + b"\n")
    assert answer["ok"] is False
    assert answer["error"] == "bad_request"
    assert words in answer["message"]
    assert not conn.transport.disconnecting
    assert conn.ask({"cmd": "status"})["ok"] is True


@pytest.mark.parametrize("newline", [b"", b"\n"])
def test_a_line_over_64_kib_is_answered_then_the_connection_closes(
    conn: Conn, newline: bytes
) -> None:
    line = json.dumps({"cmd": "list", "pad": "x" * 70000}).encode()
    answers = conn.send(b'{"cmd": "status"}\n' + line + newline + b'{"cmd": "list"}\n')
    assert [a["ok"] for a in answers] == [True, False]
    assert answers[1]["error"] == "bad_request"
    assert "longer than 65536" in answers[1]["message"]
    assert conn.transport.disconnecting
    assert conn.send(b'{"cmd": "status"}\n') == []


def test_an_over_long_line_is_answered_after_the_answers_before_it(
    connect: Callable[..., Conn],
) -> None:
    admin = TableAdmin(hold=True)
    conn = connect(admin)
    assert conn.send(b'{"cmd": "list"}\n' + b"x" * 70000) == []
    assert not conn.transport.disconnecting
    conn.protocol.dataReceived(b"y" * 200000)  # dropped, not buffered
    assert len(conn.protocol._buffer) == 0
    (waiter, result) = admin.held[0]
    waiter.callback(result)
    assert [a["ok"] for a in conn.answers()] == [True, False]
    assert conn.transport.disconnecting


def test_a_line_of_exactly_64_kib_is_accepted(conn: Conn) -> None:
    head = b'{"cmd": "status"}'
    (answer,) = conn.send(head + b" " * (65536 - len(head)) + b"\n")
    assert answer["ok"] is True


def test_an_unexpected_exception_is_logged_and_answered_internal(
    connect: Callable[..., Conn],
) -> None:
    conn = connect(BrokenAdmin())
    with capturedLogs() as events:
        answer = conn.ask({"cmd": "list"})
    assert answer == {
        "ok": False,
        "error": "internal",
        "message": "internal error; see the daemon's log",
    }
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert b"Traceback" not in conn.transport.value()
    assert conn.ask({"cmd": "status"})["ok"] is True


# -- who may connect ------------------------------------------------------------------------


def test_the_peer_credentials_come_from_the_socket(conn: Conn) -> None:
    assert conn.protocol.peer == (os.getpid(), os.getuid(), os.getgid())
    assert conn.transport.value() == b""


def test_a_peer_with_another_uid_is_refused_and_disconnected(
    connect: Callable[..., Conn], admin: TableAdmin
) -> None:
    conn = connect(admin, allowed_uids=frozenset({os.geteuid() + 1}))
    assert conn.answers() == [
        {
            "ok": False,
            "error": "permission_denied",
            "message": f"uid {os.getuid()} may not use the control socket",
        }
    ]
    assert conn.transport.disconnecting
    assert conn.send(b'{"cmd": "flush"}\n') == []
    assert len(admin.table) == 3


def test_a_transport_without_peer_credentials_is_refused(admin: TableAdmin) -> None:
    protocol = ControlFactory(admin).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    answer = json.loads(transport.value())
    assert (answer["ok"], answer["error"]) == (False, "permission_denied")
    assert transport.disconnecting


def test_the_factory_allows_root_and_the_daemons_own_uid_by_default(admin: TableAdmin) -> None:
    assert ControlFactory(admin).allowed_uids == frozenset({0, os.geteuid()})


# -- listen_control -------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="pg") as name:
        yield Path(name)


def test_listen_control_creates_a_private_directory_and_a_0600_socket(
    short_dir: Path, admin: TableAdmin
) -> None:
    reactor = MemoryReactor()
    path = short_dir / "run" / "control.sock"
    listen_control(reactor, str(path), admin)
    assert stat.S_IMODE((short_dir / "run").stat().st_mode) == 0o700
    ((address, factory, _backlog, mode, want_pid),) = reactor.unixServers
    assert (address, mode, want_pid) == (str(path), 0o600, False)
    assert isinstance(factory, ControlFactory)
    assert factory.admin is admin


def test_listen_control_replaces_a_stale_socket(short_dir: Path, admin: TableAdmin) -> None:
    path = short_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    reactor = MemoryReactor()
    listen_control(reactor, str(path), admin)
    assert not path.exists()
    assert len(reactor.unixServers) == 1


def test_listen_control_refuses_when_a_daemon_answers(short_dir: Path, admin: TableAdmin) -> None:
    path = short_dir / "control.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(ControlError, match=f"another portgate is running on {path}$"):
            listen_control(MemoryReactor(), str(path), admin)
        assert path.exists()
    finally:
        live.close()


def test_listen_control_never_removes_a_file_that_is_not_a_socket(
    short_dir: Path, admin: TableAdmin
) -> None:
    path = short_dir / "control.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="is not a socket"):
        listen_control(MemoryReactor(), str(path), admin)
    assert path.read_text() == "precious"


# -- the client, against small threaded servers -------------------------------------------------


class UnixServer:
    """Accepts connections on ``path`` in a thread; ``serve(conn)`` handles each one."""

    def __init__(self, path: Path, serve: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.serve = serve
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sock.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                self.serve(conn)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class Canned:
    """Answers each connection's request with the next canned bytes; records requests."""

    def __init__(self, *answers: bytes | dict[str, object]) -> None:
        self.answers = [
            a if isinstance(a, bytes) else json.dumps(a).encode() + b"\n" for a in answers
        ]
        self.requests: list[dict[str, Any]] = []

    def __call__(self, conn: socket.socket) -> None:
        line = read_line(conn)
        self.requests.append(json.loads(line))
        conn.sendall(self.answers.pop(0))


class Bridge:
    """The real ControlProtocol behind a real UNIX socket, without a reactor: bytes from the
    socket go to the protocol, its transport's output goes back."""

    def __init__(self, admin: TableAdmin) -> None:
        self.factory = ControlFactory(admin)

    def __call__(self, conn: socket.socket) -> None:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        transport.socket = conn  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        while not transport.disconnecting:
            data = conn.recv(65536)
            if not data:
                break
            protocol.dataReceived(data)
            conn.sendall(transport.value())
            transport.clear()


@pytest.fixture
def serve(short_dir: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], Path]]:
    servers: list[UnixServer] = []

    def start(handler: Callable[[socket.socket], None]) -> Path:
        path = short_dir / f"s{len(servers)}.sock"
        servers.append(UnixServer(path, handler))
        return path

    yield start
    for server in servers:
        server.stop()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="portgate")
    ctl.add_ctl_arguments(top.add_subparsers(dest="command", required=True))
    return top


def run(*argv: str) -> int:
    return ctl.run_ctl(parser().parse_args(argv))


MAPPINGS = [
    {
        "uid": 1,
        "kind": "port_map",
        "proto": "tcp",
        "external": "203.0.113.1:8080",
        "internal": "192.168.1.10:80",
        "origin": "static",
        "client": "127.0.0.1",
        "description": "web",
        "filters": [],
        "enabled": True,
        "lifetime_remaining": None,
    },
    {
        "uid": 2,
        "kind": "port_map",
        "proto": "udp",
        "external": "203.0.113.1:51413",
        "internal": "192.168.1.123:51413",
        "origin": "natpmp",
        "client": "192.168.1.123",
        "description": "",
        "filters": ["198.51.100.0/24"],
        "enabled": True,
        "lifetime_remaining": 3599,
    },
]


def test_list_prints_an_aligned_table(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    canned = Canned({"ok": True, "mappings": MAPPINGS})
    assert run("list", "--socket", str(serve(canned))) == 0
    assert canned.requests == [{"cmd": "list", "pinholes": False}]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "PROTO  EXTERNAL           INTERNAL             ORIGIN  CLIENT         LEFT       "
        "DESCRIPTION",
        "tcp    203.0.113.1:8080   192.168.1.10:80      static  127.0.0.1      permanent  web",
        "udp    203.0.113.1:51413  192.168.1.123:51413  natpmp  192.168.1.123  59m59s     "
        "(from 198.51.100.0/24)",
    ]


def test_list_json_prints_the_raw_list(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    canned = Canned({"ok": True, "mappings": MAPPINGS})
    path = str(serve(canned))
    assert run("list", "--json", "--client", "192.168.1.123", "--pinholes", "--socket", path) == 0
    assert json.loads(capsys.readouterr().out) == MAPPINGS
    assert canned.requests == [{"cmd": "list", "pinholes": True, "client": "192.168.1.123"}]


def test_list_of_nothing_says_so(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list", "--socket", str(serve(Canned({"ok": True, "mappings": []})))) == 0
    assert capsys.readouterr().out == "no mappings\n"


def test_add_sends_the_mapping_and_prints_it(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    canned = Canned({"ok": True, "created": True, "mapping": MAPPINGS[0]})
    path = str(serve(canned))
    assert (
        run("add", "TCP", "8080", "192.168.1.10:80", "--description", "web", "--socket", path) == 0
    )
    assert canned.requests == [
        {
            "cmd": "add",
            "proto": "tcp",
            "external_port": 8080,
            "internal": "192.168.1.10:80",
            "lifetime": 0,
            "description": "web",
        }
    ]
    assert capsys.readouterr().out == "added tcp 203.0.113.1:8080 -> 192.168.1.10:80 (permanent)\n"


def test_a_refusal_is_one_line_on_stderr_and_exit_1(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = {
        "ok": False,
        "error": "conflict_foreign",
        "message": "tcp 203.0.113.1:8080 is already mapped to 192.168.1.20:80",
    }
    path = str(serve(Canned(refusal)))
    assert run("add", "tcp", "8080", "192.168.1.10:80", "--socket", path) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "portgate: conflict: tcp 203.0.113.1:8080 is already mapped to 192.168.1.20:80\n"
    )


def test_delete_and_flush_send_their_requests(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    canned = Canned(
        {"ok": True, "removed": 1, "mappings": [MAPPINGS[0]]},
        {"ok": True, "removed": 1, "mappings": []},
        {"ok": True, "removed": 3, "mappings": []},
    )
    path = str(serve(canned))
    assert run("delete", "tcp", "8080", "--socket", path) == 0
    assert run("del", "--uid", "7", "--socket", path) == 0
    assert run("flush", "--client", "192.168.1.10", "--socket", path) == 0
    assert canned.requests == [
        {"cmd": "delete", "proto": "tcp", "external_port": 8080},
        {"cmd": "delete", "uid": 7},
        {"cmd": "flush", "client": "192.168.1.10"},
    ]
    assert capsys.readouterr().out == (
        "deleted tcp 203.0.113.1:8080 -> 192.168.1.10:80\nremoved 3 mappings\n"
    )


def test_status_prints_readable_lines(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status = TableAdmin().status()
    assert run("status", "--socket", str(serve(Canned({"ok": True, "status": status})))) == 0
    assert capsys.readouterr().out.splitlines() == [
        "uptime:           1h02m03s",
        "external address: 203.0.113.1",
        "mappings:         0 (static 0, upnp 0, natpmp 0, pcp 0)",
        "next expiry in:   none",
        "epoch:            3723s",
        "backend:          memory (healthy), 4 batches committed",
    ]


def test_status_json_prints_the_raw_status(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status = TableAdmin().status()
    canned = Canned({"ok": True, "status": status})
    assert run("status", "--json", "--socket", str(serve(canned))) == 0
    assert json.loads(capsys.readouterr().out) == status


def test_no_socket_means_the_daemon_is_not_running(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "control.sock"
    assert run("status", "--socket", str(path)) == 1
    assert capsys.readouterr().err == (
        f"portgate: the daemon is not running (no socket at {path})\n"
    )


def test_a_socket_nobody_listens_on_means_the_daemon_is_not_running(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    assert run("list", "--socket", str(path)) == 1
    assert "the daemon is not running" in capsys.readouterr().err


def test_a_socket_the_user_may_not_open_says_run_as_root(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    os.chmod(path, 0o600)
    os.chmod(short_dir, 0o755)
    try:
        # As root the mode does not stop us: ask as "nobody" in a child process instead.
        child = subprocess.run(
            [sys.executable, "-c", _CLIENT, str(path)],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            user=65534 if os.geteuid() == 0 else None,
            check=False,
        )
    finally:
        listener.close()
    assert child.stderr == f"portgate: permission denied on {path} (run as root)\n"
    assert child.returncode == 1


_CLIENT = """
import argparse, sys
from gateway import ctl
top = argparse.ArgumentParser(prog="portgate")
ctl.add_ctl_arguments(top.add_subparsers(dest="command"))
sys.exit(ctl.run_ctl(top.parse_args(["list", "--socket", sys.argv[1]])))
"""


def test_a_daemon_that_hangs_up_or_babbles_is_one_line(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(serve(Canned(b"", b"<html>\n", b'{"ok": "yes"}\n')))
    assert run("status", "--socket", path) == 1
    assert run("status", "--socket", path) == 1
    assert run("status", "--socket", path) == 1
    assert capsys.readouterr().err.splitlines() == [
        "portgate: the daemon closed the connection without an answer",
        "portgate: the daemon's answer is not JSON",
        "portgate: the daemon's answer is malformed",
    ]


def test_a_silent_daemon_times_out(serve: Any) -> None:
    release = threading.Event()
    path = str(serve(lambda conn: release.wait(5)))
    try:
        with pytest.raises(ctl.CtlError, match="timed out"):
            ctl.request(path, {"cmd": "status"}, timeout=0.2)
    finally:
        release.set()


def test_the_socket_path_can_come_from_the_config(
    serve: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = serve(Canned({"ok": True, "mappings": []}))
    config = short_dir / "portgate.yaml"
    config.write_text(
        f"wan:\n  interface: eth0\nlan:\n  - interface: br-lan\ncontrol:\n  socket: {path}\n"
    )
    assert run("list", "--config", str(config)) == 0
    assert capsys.readouterr().out == "no mappings\n"
    broken = short_dir / "broken.yaml"
    broken.write_text("wan: [\n")
    assert run("list", "--config", str(broken)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"portgate: {broken}")
    assert len(err.splitlines()) == 1


def test_the_default_socket_path(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["status"])
    assert ctl.socket_path(args) == "/run/portgate/control.sock"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["add", "icmp", "80", "192.168.1.10:80"], "protocol must be tcp or udp"),
        (["add", "tcp", "70000", "192.168.1.10:80"], "port must be in 1-65535"),
        (["add", "tcp", "80", "192.168.1.300:80"], "not an IPv4 address"),
        (["add", "tcp", "80", "192.168.1.10"], "IPV4_ADDRESS:PORT"),
        (["add", "tcp", "80", "192.168.1.10:80", "--lifetime", "-5"], "seconds"),
        (["list", "--client", "nobody"], "not an IP address"),
        (["flush", "--client", "1.2.3"], "not an IP address"),
        (["delete", "tcp", "0"], "port must be in 1-65535"),
        (["delete", "--uid", "x"], "positive number"),
    ],
)
def test_bad_arguments_exit_2_with_argparses_message(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["delete"], ["delete", "tcp"], ["delete", "tcp", "80", "--uid", "3"]]
)
def test_delete_needs_a_port_or_a_uid_but_not_both(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(*argv, "--socket", "/nonexistent/control.sock") == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert "error:" in err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "permanent"),
        (0, "0s"),
        (59, "59s"),
        (3599, "59m59s"),
        (3605, "1h00m05s"),
        (2 * 86400 + 3 * 3600, "2d03h00m00s"),
    ],
)
def test_durations_read_like_clocks(seconds: int | None, text: str) -> None:
    assert ctl.format_duration(seconds) == text


def test_the_client_and_the_server_agree_end_to_end(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = TableAdmin()
    seed(admin)
    path = str(serve(Bridge(admin)))
    assert run("add", "tcp", "8080", "192.168.1.10:80", "--lifetime", "3600", "--socket", path) == 0
    assert run("add", "udp", "5000", "192.168.1.10:5000", "--socket", path) == 1
    assert run("list", "--socket", path) == 0
    assert run("delete", "--uid", "1", "--socket", path) == 0
    assert run("flush", "--socket", path) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "portgate: conflict: udp 203.0.113.1:5000 is already mapped to 192.168.1.20:5000\n"
    )
    out = captured.out.splitlines()
    assert out[0] == "added tcp 203.0.113.1:8080 -> 192.168.1.10:80 (1h00m00s)"
    assert out[1].split() == [
        "PROTO", "EXTERNAL", "INTERNAL", "ORIGIN", "CLIENT", "LEFT", "DESCRIPTION"
    ]  # fmt: skip
    assert [line.split()[:2] for line in out[2:5]] == [
        ["tcp", "203.0.113.1:2222"],
        ["tcp", "203.0.113.1:8080"],
        ["udp", "203.0.113.1:5000"],
    ]
    assert out[5] == "deleted tcp pinhole #1 to [2001:db8:1::30]:443"
    assert out[6] == "removed 3 mappings"
    assert len(admin.table) == 0


def test_the_client_does_not_import_twisted() -> None:
    code = "import sys, gateway.ctl; sys.exit('twisted' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0

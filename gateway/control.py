"""The admin control channel: newline-delimited JSON over a root-only UNIX stream socket.

One request object per line, one response object per line, answered in request order:
``{"ok": true, ...}`` or ``{"ok": false, "error": "<reason>", "message": "<text>"}``.
Commands: ``list``, ``add``, ``delete``, ``flush``, ``status`` (see ``gateway.ctl`` for the
client). The admin acts as ``Owner(Origin.STATIC, 127.0.0.1)``: the table trusts it with any
entry. Nothing that arrives on the socket can crash the daemon or reach it as a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from gateway.errors import GatewayError, Reason
from gateway.model import Endpoint, IPAddress, Mapping, MappingKey, Origin, Owner, Proto
from gateway.ports import Admin
from gateway.requests import (
    ClosePinhole,
    Flush,
    Granted,
    Listing,
    ListMappings,
    MapPort,
    Removed,
    Request,
    Result,
    UnmapPort,
)

log = Logger(namespace="portgate.control")

#: Who the admin is to the table: a static owner at the loopback address.
ADMIN_OWNER = Owner(Origin.STATIC, IPv4Address("127.0.0.1"))
#: The longest request line accepted (bytes, without the newline).
MAX_LINE = 65536
#: Lifetimes are 32-bit on the wire of every protocol; the admin gets the same range.
MAX_LIFETIME = 2**32 - 1
#: Seconds ``listen_control`` waits for an answer on an existing socket file.
PROBE_TIMEOUT = 1.0

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Response = dict[str, object]
_INTERNAL_ERROR: Response = {
    "ok": False,
    "error": "internal",
    "message": "internal error; see the daemon's log",
}
_R = TypeVar("_R", Granted, Removed, Listing)


class ControlError(Exception):
    """The control socket cannot be set up; str() is a one-line reason."""


class _BadRequest(Exception):
    """A request line that is not a valid command; str() says why."""


def error_response(error: str, message: str) -> Response:
    return {"ok": False, "error": error, "message": message}


def encode_response(response: Response) -> bytes:
    """One line of JSON (no newline inside: json escapes them in strings)."""
    return json.dumps(response, separators=(",", ":"), default=str).encode()


def describe_mapping(mapping: Mapping, now: float) -> dict[str, object]:
    """A mapping as the control channel shows it. The PCP nonce is never included."""
    return {
        "uid": mapping.uid,
        "kind": mapping.kind.value,
        "proto": mapping.proto.value,
        "external": str(mapping.external),
        "internal": str(mapping.internal),
        "origin": mapping.owner.origin.value,
        "client": str(mapping.owner.client),
        "description": mapping.description,
        "filters": [str(f) for f in mapping.filters],
        "enabled": mapping.enabled,
        "lifetime_remaining": mapping.remaining(now),
    }


# -- request validation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fields:
    """The members of one request object, read with type checks."""

    cmd: str
    values: dict[str, object]

    def check_known(self, *names: str) -> None:
        unknown = sorted(set(self.values) - {"cmd", *names})
        if unknown:
            raise _BadRequest(f"{self.cmd}: unknown field {unknown[0]!r}")

    def has(self, name: str) -> bool:
        return self.values.get(name) is not None

    def text(self, name: str, default: str | None = None) -> str:
        value = self.values.get(name)
        if value is None and default is not None:
            return default
        if not isinstance(value, str):
            raise _BadRequest(f"{self.cmd}: {name!r} must be a string")
        return value

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int:
        value = self.values.get(name)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadRequest(f"{self.cmd}: {name!r} must be an integer")
        if not low <= value <= high:
            raise _BadRequest(f"{self.cmd}: {name!r} must be in {low}-{high}, not {value}")
        return value

    def flag(self, name: str) -> bool:
        value = self.values.get(name, False)
        if not isinstance(value, bool):
            raise _BadRequest(f"{self.cmd}: {name!r} must be true or false")
        return value

    def proto(self, name: str = "proto") -> Proto:
        value = self.text(name)
        try:
            return Proto(value.lower())
        except ValueError:
            raise _BadRequest(f"{self.cmd}: {name!r} must be tcp or udp, not {value!r}") from None

    def address(self, name: str) -> IPAddress | None:
        if not self.has(name):
            return None
        value = self.text(name)
        try:
            return ip_address(value)
        except ValueError:
            raise _BadRequest(f"{self.cmd}: {name!r} is not an IP address: {value!r}") from None

    def endpoint(self, name: str) -> Endpoint:
        value = self.text(name)
        try:
            return parse_endpoint(value)
        except ValueError as e:
            raise _BadRequest(f"{self.cmd}: {name!r}: {e}") from None


def parse_endpoint(text: str) -> Endpoint:
    """``192.168.1.10:80`` or ``[fd00::10]:80`` (port 1-65535)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected ADDRESS:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not in 1-65535")
    return Endpoint(address, int(port_text))


def decode_request(line: bytes) -> _Fields:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest("the request is not UTF-8") from None
    if not text.strip():
        raise _BadRequest("empty request")
    try:
        document = json.loads(text)
    except RecursionError:
        raise _BadRequest("the request is nested too deeply") from None
    except ValueError as e:
        raise _BadRequest(f"the request is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise _BadRequest("the request must be a JSON object")
    cmd = document.get("cmd")
    if not isinstance(cmd, str):
        raise _BadRequest("the request has no 'cmd' string")
    return _Fields(cmd, document)


# -- the protocol ---------------------------------------------------------------------------


class _Slot:
    """A response waiting for its turn."""

    __slots__ = ("line",)

    def __init__(self) -> None:
        self.line: bytes | None = None  # the encoded response, once known


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, admin: Admin, allowed_uids: frozenset[int]) -> None:
        self.admin = admin
        self.allowed_uids = allowed_uids
        self.peer: tuple[int, int, int] | None = None  # pid, uid, gid
        self._queue: list[_Slot] = []
        self._closing = False
        self._lost = False

    # -- connection -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = peer_credentials(self.transport)
        if self.peer is None:
            log.warn("control connection refused: the peer's credentials are unknown")
            self._answer_and_close(
                error_response("permission_denied", "cannot verify the peer's credentials")
            )
            return
        pid, uid, _gid = self.peer
        if uid not in self.allowed_uids:
            log.warn("control connection refused: pid {pid} uid {uid}", pid=pid, uid=uid)
            self._answer_and_close(
                error_response("permission_denied", f"uid {uid} may not use the control socket")
            )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self._queue.clear()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # refused or over-long: nothing more is read (or buffered)
        LineOnlyReceiver.dataReceived(self, data)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        slot = _Slot()
        self._queue.append(slot)
        answer: Deferred[Response] = maybeDeferred(self._dispatch, line.rstrip(b"\r"))
        answer.addErrback(self._failed)
        answer.addCallback(self._fill, slot)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._buffer = b""
        self._answer_and_close(
            error_response("bad_request", f"the request is longer than {self.MAX_LENGTH} bytes")
        )

    # -- ordering ---------------------------------------------------------------------------

    def _answer_and_close(self, response: Response) -> None:
        if self._closing:
            return
        slot = _Slot()
        slot.line = encode_response(response)
        self._queue.append(slot)
        self._closing = True
        self._drain()

    def _fill(self, response: Response, slot: _Slot) -> None:
        try:
            slot.line = encode_response(response)
        except (TypeError, ValueError):
            log.failure("control response could not be encoded")
            slot.line = encode_response(_INTERNAL_ERROR)
        self._drain()

    def _drain(self) -> None:
        if self._lost:
            return
        transport: Any = self.transport
        while self._queue and self._queue[0].line is not None:
            line = self._queue.pop(0).line
            assert line is not None
            transport.writeSequence((line, self.delimiter))
        if self._closing and not self._queue:
            transport.loseConnection()

    def _failed(self, failure: Failure) -> Response:
        error = failure.value
        if isinstance(error, _BadRequest):
            return error_response("bad_request", str(error))
        if isinstance(error, GatewayError):
            return error_response(error.reason.value, error.message)
        log.failure("control request failed", failure)
        return _INTERNAL_ERROR

    # -- commands ---------------------------------------------------------------------------

    def _dispatch(self, line: bytes) -> Deferred[Response]:
        request = decode_request(line)
        handler = _COMMANDS.get(request.cmd)
        if handler is None:
            raise _BadRequest(
                f"unknown command {request.cmd!r} (known: {', '.join(sorted(_COMMANDS))})"
            )
        pid, uid = self.peer[:2] if self.peer else (None, None)
        log.debug("control {cmd} from pid {pid} uid {uid}", cmd=request.cmd, pid=pid, uid=uid)
        return handler(self, request)

    def _handle(self, request: Request) -> Deferred[Result]:
        return self.admin.handle(request)

    def _list(self, fields: _Fields) -> Deferred[Response]:
        fields.check_known("client", "proto", "pinholes")
        request = ListMappings(
            proto=fields.proto() if fields.has("proto") else None,
            client=fields.address("client"),
            include_pinholes=fields.flag("pinholes"),
        )

        def answer(result: Result) -> Response:
            listing = _expect(result, Listing)
            return {
                "ok": True,
                "mappings": [describe_mapping(m, listing.now) for m in listing.mappings],
            }

        return self._handle(request).addCallback(answer)

    def _add(self, fields: _Fields) -> Deferred[Response]:
        fields.check_known("proto", "external_port", "internal", "lifetime", "description")
        request = MapPort(
            owner=ADMIN_OWNER,
            proto=fields.proto(),
            internal=fields.endpoint("internal"),
            external_port=fields.integer("external_port", 1, 65535),
            lifetime=fields.integer("lifetime", 0, MAX_LIFETIME, default=0),
            description=fields.text("description", default=""),
            exact=True,
        )

        def answer(result: Result) -> Response:
            granted = _expect(result, Granted)
            return {
                "ok": True,
                "created": granted.created,
                "mapping": describe_mapping(granted.mapping, self.admin.now()),
            }

        return self._handle(request).addCallback(answer)

    def _delete(self, fields: _Fields) -> Deferred[Response]:
        fields.check_known("proto", "external_port", "uid")
        request: Request
        if fields.has("uid"):
            if fields.has("proto") or fields.has("external_port"):
                raise _BadRequest("delete: give either 'uid' or 'proto' and 'external_port'")
            request = ClosePinhole(ADMIN_OWNER, fields.integer("uid", 1, 2**63 - 1))
        else:
            proto = fields.proto()
            port = fields.integer("external_port", 1, 65535)
            external = self.admin.external_address
            if external is None:
                raise GatewayError(
                    Reason.NO_EXTERNAL_ADDRESS,
                    "the external address is not known, so no mapping can be named by port",
                )
            request = UnmapPort(ADMIN_OWNER, MappingKey(proto, Endpoint(external, port)))
        return self._handle(request).addCallback(self._removed)

    def _flush(self, fields: _Fields) -> Deferred[Response]:
        fields.check_known("client")
        request = Flush(owner=ADMIN_OWNER, client=fields.address("client"))
        return self._handle(request).addCallback(self._removed)

    def _removed(self, result: Result) -> Response:
        removed = _expect(result, Removed)
        now = self.admin.now()
        return {
            "ok": True,
            "removed": len(removed.mappings),
            "mappings": [describe_mapping(m, now) for m in removed.mappings],
        }

    def _status(self, fields: _Fields) -> Deferred[Response]:
        fields.check_known()
        return succeed({"ok": True, "status": self.admin.status()})


_Command = Callable[[ControlProtocol, _Fields], Deferred[Response]]
_COMMANDS: dict[str, _Command] = {
    "list": ControlProtocol._list,
    "add": ControlProtocol._add,
    "delete": ControlProtocol._delete,
    "flush": ControlProtocol._flush,
    "status": ControlProtocol._status,
}


def _expect(result: Result, kind: type[_R]) -> _R:
    if not isinstance(result, kind):
        raise TypeError(f"expected {kind.__name__}, the gateway answered {result!r}")
    return result


def peer_credentials(transport: object) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a UNIX socket transport, or None
    when the transport has no socket or the kernel will not tell."""
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


class ControlFactory(Factory):
    protocol = ControlProtocol
    noisy = False

    def __init__(self, admin: Admin, *, allowed_uids: frozenset[int] | None = None) -> None:
        self.admin = admin
        self.allowed_uids = frozenset({0, os.geteuid()}) if allowed_uids is None else allowed_uids

    def buildProtocol(self, addr: object) -> ControlProtocol:
        proto = ControlProtocol(self.admin, self.allowed_uids)
        proto.factory = self
        return proto


# -- the listening socket -------------------------------------------------------------------


def _someone_answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # a live listener with a full backlog
    except OSError as e:
        raise ControlError(f"cannot probe {path}: {e.strerror or e}") from None
    finally:
        probe.close()
    return True


def _clear_stale_socket(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(f"{path} exists and is not a socket; not removing it")
    if _someone_answers(path):
        raise ControlError(f"another portgate is running on {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def listen_control(reactor: Any, path: str, admin: Admin) -> Any:
    """Listen for admin connections on ``path`` (mode 0600 in a 0700 directory).

    A stale socket file (nobody answers) is replaced; a live one raises ``ControlError``."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o700)
            os.chmod(parent, 0o700)
        except OSError as e:
            raise ControlError(f"cannot create {parent}: {e.strerror or e}") from None
    _clear_stale_socket(path)
    # The socket is created by bind() and only then chmod-ed: keep it private meanwhile.
    previous = os.umask(0o177)
    try:
        return reactor.listenUNIX(path, ControlFactory(admin), mode=0o600, wantPID=False)
    except CannotListenError as e:
        reason = e.socketError
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise ControlError(f"cannot listen on {path}: {text}") from None
    finally:
        os.umask(previous)

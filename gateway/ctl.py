"""The admin CLI: ``portgate list|add|delete|flush|status`` over the daemon's control socket.

Standard library only (no Twisted) so it starts fast. One request line of JSON, one answer
line (see ``gateway.control``). Exit codes: 0 done, 1 the daemon refused or cannot be reached
(one line on stderr), 2 bad arguments (argparse's message).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address
from typing import Any, TextIO

DEFAULT_SOCKET = "/run/portgate/control.sock"
TIMEOUT = 5.0
#: The longest answer read (a listing of a full table is a few MiB at most).
MAX_ANSWER = 64 * 1024 * 1024
PROG = "portgate"

#: How an error reason reads in a message; unlisted ones read with spaces for underscores.
_REASON_LABELS = {"conflict_foreign": "conflict", "no_external_address": "no external address"}


class CtlError(Exception):
    """Something to tell the user in one line (exit code 1)."""


# -- argument types ---------------------------------------------------------------------------


def _proto(text: str) -> str:
    value = text.lower()
    if value not in ("tcp", "udp"):
        raise argparse.ArgumentTypeError(f"protocol must be tcp or udp, not {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1-65535, not {text!r}")
    return int(text)


def _address(text: str) -> str:
    try:
        return str(ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _internal(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected IPV4_ADDRESS:PORT, not {text!r}")
    try:
        address = IPv4Address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 address: {host!r}") from None
    return f"{address}:{_port(port)}"


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds >= 0, not {text!r}")
    return value


def _uid(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return int(text)


# -- the parser -------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help=f"the daemon's control socket (default: {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--config", metavar="FILE", default=None, help="read control.socket from this config"
    )


def add_ctl_arguments(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the admin subcommands. Each sets ``ctl_command`` (and ``func=run_ctl``)."""
    p = subparsers.add_parser("list", help="list the mappings")
    p.add_argument("--json", action="store_true", help="print the raw JSON list")
    p.add_argument("--client", type=_address, metavar="IP", help="only this client's")
    p.add_argument("--pinholes", action="store_true", help="include IPv6 pinholes")
    _common(p)
    p.set_defaults(ctl_command="list", func=run_ctl)

    p = subparsers.add_parser("add", help="add a static mapping")
    p.add_argument("proto", type=_proto, metavar="PROTO", help="tcp or udp")
    p.add_argument("external_port", type=_port, metavar="EXTERNAL_PORT")
    p.add_argument("internal", type=_internal, metavar="INTERNAL_ADDR:PORT")
    p.add_argument(
        "--lifetime",
        type=_non_negative,
        default=0,
        metavar="S",
        help="lease in seconds (default 0 = permanent)",
    )
    p.add_argument("--description", default="", metavar="TEXT")
    _common(p)
    p.set_defaults(ctl_command="add", func=run_ctl)

    p = subparsers.add_parser(
        "delete",
        aliases=["del"],
        help="delete a mapping (PROTO EXTERNAL_PORT) or a pinhole (--uid N)",
        usage="%(prog)s [-h] (PROTO EXTERNAL_PORT | --uid N) [--socket PATH] [--config FILE]",
    )
    p.add_argument("proto", type=_proto, nargs="?", metavar="PROTO")
    p.add_argument("external_port", type=_port, nargs="?", metavar="EXTERNAL_PORT")
    p.add_argument("--uid", type=_uid, metavar="N", help="the pinhole's id (list --pinholes)")
    _common(p)
    p.set_defaults(ctl_command="delete", func=run_ctl, ctl_parser=p)

    p = subparsers.add_parser("flush", help="delete all mappings (or one client's)")
    p.add_argument("--client", type=_address, metavar="IP", help="only this client's")
    _common(p)
    p.set_defaults(ctl_command="flush", func=run_ctl)

    p = subparsers.add_parser("status", help="show the daemon's state")
    p.add_argument("--json", action="store_true", help="print the raw JSON status")
    _common(p)
    p.set_defaults(ctl_command="status", func=run_ctl)


# -- talking to the daemon --------------------------------------------------------------------


def socket_path(args: argparse.Namespace) -> str:
    """--socket, else control.socket from --config, else the default."""
    if args.socket:
        return str(args.socket)
    if args.config:
        from gateway.config import ConfigError, load_config  # lazily: yaml and msgspec

        try:
            config = load_config(args.config)
        except ConfigError as e:  # one line naming the file and the key
            raise CtlError(str(e)) from None
        return str(config.control.socket)
    return DEFAULT_SOCKET


def request(path: str, payload: dict[str, object], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request line and read one answer line."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise CtlError(f"the daemon is not running (no socket at {path})") from None
        except ConnectionRefusedError:
            raise CtlError(f"the daemon is not running (nothing listens on {path})") from None
        except PermissionError:
            raise CtlError(f"permission denied on {path} (run as root)") from None
        except TimeoutError:
            raise CtlError(f"the daemon does not answer on {path}") from None
        except OSError as e:
            raise CtlError(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may have answered (a refusal) and closed: read it below
        except TimeoutError:
            raise CtlError(f"timed out talking to the daemon on {path}") from None
        return _decode_answer(_read_line(sock, path))
    finally:
        sock.close()


def _read_line(sock: socket.socket, path: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise CtlError(f"timed out waiting for the daemon on {path}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise CtlError("the daemon closed the connection without an answer")
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER:
            raise CtlError("the daemon's answer is too long")


def _decode_answer(line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line)
    except (ValueError, RecursionError):
        raise CtlError("the daemon's answer is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise CtlError("the daemon's answer is malformed")
    if not answer["ok"]:
        reason = str(answer.get("error", "error"))
        label = _REASON_LABELS.get(reason, reason.replace("_", " "))
        message = str(answer.get("message") or "").replace("\n", " ")
        raise CtlError(f"{label}: {message}" if message and message != reason else label)
    return answer


# -- formatting -------------------------------------------------------------------------------


def format_duration(seconds: int | None) -> str:
    """``permanent``, ``45s``, ``59m59s``, ``1h00m05s``, ``2d03h00m00s``."""
    if seconds is None:
        return "permanent"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m{secs:02d}s"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _row(mapping: dict[str, Any]) -> list[str]:
    external = str(mapping.get("external", ""))
    if mapping.get("kind") == "pinhole":
        external = f"pinhole #{mapping.get('uid')}"
    notes = [str(mapping.get("description") or "")]
    filters = mapping.get("filters") or []
    if filters:
        notes.append("(from " + ", ".join(str(f) for f in filters) + ")")
    if mapping.get("enabled") is False:
        notes.append("(disabled)")
    return [
        str(mapping.get("proto", "")),
        external,
        str(mapping.get("internal", "")),
        str(mapping.get("origin", "")),
        str(mapping.get("client", "")),
        format_duration(mapping.get("lifetime_remaining")),
        " ".join(n for n in notes if n),
    ]


def format_table(mappings: list[dict[str, Any]]) -> str:
    if not mappings:
        return "no mappings"
    rows = [["PROTO", "EXTERNAL", "INTERNAL", "ORIGIN", "CLIENT", "LEFT", "DESCRIPTION"]]
    rows += [_row(m) for m in mappings]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _describe(mapping: dict[str, Any]) -> str:
    if mapping.get("kind") == "pinhole":
        text = f"{mapping.get('proto')} pinhole #{mapping.get('uid')} to {mapping.get('internal')}"
    else:
        text = f"{mapping.get('proto')} {mapping.get('external')} -> {mapping.get('internal')}"
    return text


def format_wan(wan: dict[str, Any]) -> str:
    """The ``wan`` part of the status in one line: is the WAN address reachable from the
    Internet (gateway.reachability)?"""
    address = wan.get("address")
    if address is None:
        return "no IPv4 address"
    private = wan.get("private")
    if not private:
        return f"{address}, public"
    text = f"{address}, private ({private})"
    server, sees, behind = wan.get("stun_server"), wan.get("stun_sees"), wan.get("behind_nat")
    if server is None:
        text += "; no STUN server set (wan.stun)"
    elif behind is True:
        text += f"; behind another NAT: STUN server {server} sees {sees}"
    elif behind is False:
        text += f"; no other NAT: STUN server {server} sees it unchanged"
    else:
        text += f"; not known yet whether behind another NAT (STUN server {server})"
    error = wan.get("stun_error")
    if error:
        text += f"; last STUN check failed: {error}"
    policy = wan.get("private_address", "?")
    if wan.get("serving"):
        return text + f"; serving (wan.private_address: {policy})"
    return text + f"; refusing mapping requests (wan.private_address: {policy})"


def format_status(status: dict[str, Any]) -> str:
    rest = dict(status)
    lines: list[tuple[str, str]] = []
    if "uptime" in rest:
        lines.append(("uptime", format_duration(rest.pop("uptime"))))
    if "external_address" in rest:
        lines.append(("external address", str(rest.pop("external_address") or "unknown")))
    wan = rest.pop("wan", None)
    if isinstance(wan, dict):
        lines.append(("wan", format_wan(wan)))
    elif wan is not None:
        lines.append(("wan", _plain(wan)))
    if "mappings" in rest:
        text = str(rest.pop("mappings"))
        by_origin = rest.pop("by_origin", None)
        if isinstance(by_origin, dict) and by_origin:
            text += " (" + ", ".join(f"{k} {v}" for k, v in by_origin.items()) + ")"
        lines.append(("mappings", text))
    if "next_expiry_in" in rest:
        value = rest.pop("next_expiry_in")
        lines.append(("next expiry in", "none" if value is None else format_duration(value)))
    if "epoch" in rest:
        lines.append(("epoch", f"{rest.pop('epoch')}s"))
    backend = rest.pop("backend", None)
    if isinstance(backend, dict):
        backend = dict(backend)
        name = backend.pop("name", "?")
        healthy = backend.pop("healthy", None)
        state = "" if healthy is None else (" (healthy)" if healthy else " (NOT healthy)")
        text = f"{name}{state}"
        counters = [
            f"{backend.pop(key)} {label}"
            for key, label in (
                ("committed_batches", "batches committed"),
                ("failed_batches", "failed"),
                ("repairs", "repairs"),
            )
            if key in backend
        ]
        if counters:
            text += ", " + ", ".join(counters)
        lines.append(("backend", text))
        last_error = backend.pop("last_error", "")
        if last_error:
            lines.append(("last backend error", str(last_error)))
        lines += [(f"backend {k.replace('_', ' ')}", _plain(v)) for k, v in backend.items()]
    elif backend is not None:
        lines.append(("backend", _plain(backend)))
    lines += [(k.replace("_", " "), _plain(v)) for k, v in rest.items()]
    width = max((len(label) for label, _ in lines), default=0) + 1
    return "\n".join(f"{(label + ':').ljust(width)} {value}" for label, value in lines)


def _plain(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "none" if value is None else str(value)


# -- the commands -----------------------------------------------------------------------------


def _usage_error(args: argparse.Namespace, message: str) -> int:
    parser: argparse.ArgumentParser = args.ctl_parser
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def _list(args: argparse.Namespace, path: str, out: TextIO) -> int:
    payload: dict[str, object] = {"cmd": "list", "pinholes": bool(args.pinholes)}
    if args.client:
        payload["client"] = args.client
    mappings = request(path, payload).get("mappings", [])
    if args.json:
        print(json.dumps(mappings, indent=2), file=out)
    else:
        print(format_table(mappings), file=out)
    return 0


def _add(args: argparse.Namespace, path: str, out: TextIO) -> int:
    answer = request(
        path,
        {
            "cmd": "add",
            "proto": args.proto,
            "external_port": args.external_port,
            "internal": args.internal,
            "lifetime": args.lifetime,
            "description": args.description,
        },
    )
    mapping = answer.get("mapping") or {}
    verb = "added" if answer.get("created", True) else "updated"
    left = format_duration(mapping.get("lifetime_remaining"))
    print(f"{verb} {_describe(mapping)} ({left})", file=out)
    return 0


def _delete(args: argparse.Namespace, path: str, out: TextIO) -> int:
    payload: dict[str, object] = {"cmd": "delete"}
    if args.uid is not None:
        if args.proto is not None:
            return _usage_error(args, "give either PROTO EXTERNAL_PORT or --uid, not both")
        payload["uid"] = args.uid
    else:
        if args.proto is None or args.external_port is None:
            return _usage_error(args, "PROTO and EXTERNAL_PORT (or --uid N) are required")
        payload.update(proto=args.proto, external_port=args.external_port)
    answer = request(path, payload)
    for mapping in answer.get("mappings", []):
        print(f"deleted {_describe(mapping)}", file=out)
    return 0


def _flush(args: argparse.Namespace, path: str, out: TextIO) -> int:
    payload: dict[str, object] = {"cmd": "flush"}
    if args.client:
        payload["client"] = args.client
    removed = request(path, payload).get("removed", 0)
    print(f"removed {removed} mapping{'' if removed == 1 else 's'}", file=out)
    return 0


def _status(args: argparse.Namespace, path: str, out: TextIO) -> int:
    status = request(path, {"cmd": "status"}).get("status", {})
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True), file=out)
    else:
        print(format_status(status if isinstance(status, dict) else {}), file=out)
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, str, TextIO], int]] = {
    "list": _list,
    "add": _add,
    "delete": _delete,
    "flush": _flush,
    "status": _status,
}


def run_ctl(args: argparse.Namespace) -> int:
    """Run the subcommand ``args.ctl_command``; returns the exit code."""
    try:
        path = socket_path(args)
        return _COMMANDS[args.ctl_command](args, path, sys.stdout)
    except CtlError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1

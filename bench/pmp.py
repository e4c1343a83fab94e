"""NAT-PMP and PCP clients built from portgate's own codecs.

``python -m bench.pmp load ...`` is the load generator run in a LAN namespace (one process per
LAN host, so that two clients really run at once): a closed loop of MAP requests, one in
flight, for a fixed time from a common start instant, printing one JSON line of counts.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from ipaddress import IPv4Address, ip_address

from protocols.natpmp.codec import MapRequest, MapResponse, NatPmpDecodeError, Opcode
from protocols.natpmp.codec import PublicAddressRequest as NatPmpAddressRequest
from protocols.natpmp.codec import PublicAddressResponse as NatPmpAddressResponse
from protocols.natpmp.codec import decode_response as natpmp_decode
from protocols.natpmp.codec import encode_request as natpmp_encode
from protocols.pcp.codec import MapData, PcpDecodeError, Request
from protocols.pcp.codec import Opcode as PcpOpcode
from protocols.pcp.codec import decode_response as pcp_decode
from protocols.pcp.codec import encode_request as pcp_encode

PORT = 5351
TCP = 6


def natpmp_map(internal: int, lifetime: int) -> bytes:
    external = internal if lifetime else 0
    return natpmp_encode(MapRequest(Opcode.MAP_TCP, internal, external, lifetime))


def pcp_map(client: str, nonce: bytes, internal: int, lifetime: int) -> bytes:
    data = MapData(nonce, TCP, internal, internal if lifetime else 0, IPv4Address("0.0.0.0"))
    return pcp_encode(Request(PcpOpcode.MAP, lifetime, ip_address(client), data))


def natpmp_address_of(sock: socket.socket, gateway: str, timeout: float) -> str | None:
    """One NAT-PMP public-address round trip on ``sock``; the address, or None."""
    sock.settimeout(timeout)
    try:
        sock.sendto(natpmp_encode(NatPmpAddressRequest()), (gateway, PORT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data, _ = sock.recvfrom(1100)
            try:
                answer = natpmp_decode(data)
            except NatPmpDecodeError:
                continue
            if isinstance(answer, NatPmpAddressResponse) and answer.result == 0:
                return str(answer.address)
            return None
    except OSError:
        return None
    return None


def _matches(kind: str, data: bytes, internal: int) -> tuple[bool, int]:
    """Is ``data`` the answer for ``internal``? And its result code."""
    if kind == "natpmp":
        try:
            answer = natpmp_decode(data)
        except NatPmpDecodeError:
            return False, -1
        if not isinstance(answer, MapResponse) or answer.internal_port != internal:
            return False, -1
        return True, int(answer.result)
    try:
        reply = pcp_decode(data)
    except PcpDecodeError:
        return False, -1
    if not isinstance(reply.body, MapData) or reply.body.internal_port != internal:
        return False, -1
    return True, int(reply.result)


def run_load(
    kind: str,
    gateway: str,
    client: str,
    base_port: int,
    ports: int,
    mode: str,
    start_at: float,
    seconds: float,
    timeout: float,
) -> dict[str, object]:
    nonce = (client.replace(".", "") + "benchnonce")[:12].encode().ljust(12, b"-")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((client, 0))
    sock.connect((gateway, PORT))
    ok = timeouts = 0
    errors: dict[str, int] = {}
    latencies: list[float] = []
    index = 0
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    begin = time.perf_counter()
    deadline = begin + seconds
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        slot = index // 2 if mode == "churn" else index
        internal = base_port + slot % ports
        lifetime = 0 if mode == "churn" and index % 2 else 3600
        index += 1
        if kind == "natpmp":
            packet = natpmp_map(internal, lifetime)
        else:
            packet = pcp_map(client, nonce, internal, lifetime)
        sent = time.perf_counter()
        sock.send(packet)
        wait_until = sent + timeout
        while True:
            left = wait_until - time.perf_counter()
            if left <= 0:
                timeouts += 1
                break
            sock.settimeout(left)
            try:
                data = sock.recv(1100)
            except TimeoutError:
                timeouts += 1
                break
            except OSError as error:  # ICMP port unreachable: nobody listens
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                time.sleep(min(left, 0.05))
                break
            matched, code = _matches(kind, data, internal)
            if not matched:
                continue
            latencies.append(time.perf_counter() - sent)
            if code == 0:
                ok += 1
            else:
                errors[str(code)] = errors.get(str(code), 0) + 1
            break
    elapsed = time.perf_counter() - begin
    sock.close()
    ordered = sorted(latencies)
    return {
        "kind": kind,
        "client": client,
        "mode": mode,
        "ok": ok,
        "errors": errors,
        "timeouts": timeouts,
        "seconds": elapsed,
        "median_s": statistics.median(ordered) if ordered else None,
        "p90_s": ordered[int(0.9 * (len(ordered) - 1))] if ordered else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pmp")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="closed-loop MAP requests for a fixed time")
    load.add_argument("--kind", choices=("natpmp", "pcp"), required=True)
    load.add_argument("--gateway", required=True)
    load.add_argument("--client", required=True)
    load.add_argument("--base-port", type=int, required=True)
    load.add_argument("--ports", type=int, default=50)
    load.add_argument("--mode", choices=("refresh", "churn"), default="refresh")
    load.add_argument("--start-at", type=float, default=0.0)
    load.add_argument("--seconds", type=float, default=5.0)
    load.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    result = run_load(
        args.kind,
        args.gateway,
        args.client,
        args.base_port,
        args.ports,
        args.mode,
        args.start_at,
        args.seconds,
        args.timeout,
    )
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

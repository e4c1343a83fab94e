"""A normal LAN client for the robustness tests: run in the lan2 namespace, it asks the gateway
for its external address by NAT-PMP, PCP (ANNOUNCE) and SOAP (GetExternalIPAddress) in a loop
until a line arrives on standard input, then prints one JSON line of latencies (null: no
answer within the bound).

``python -m tests.robustness.prober [--port P --control PATH] [--interval S] [--bound S]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import select
import socket
import sys
import time
from ipaddress import ip_address

from protocols.natpmp.codec import PublicAddressResponse, decode_response
from protocols.pcp.codec import Opcode, Request
from protocols.pcp.codec import decode_response as decode_pcp
from protocols.pcp.codec import encode_request as encode_pcp
from tests.netlab import GW_LAN, LAN2_HOST
from tests.robustness.rig import envelope, soap_headers

NATPMP_PUBLIC_ADDRESS = b"\x00\x00"


def ask_udp(data: bytes, bound: float) -> tuple[float | None, bytes]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(bound)
        start = time.monotonic()
        sock.sendto(data, (GW_LAN, 5351))
        answer, _ = sock.recvfrom(1100)
        return time.monotonic() - start, answer
    except TimeoutError:
        return None, b""
    finally:
        sock.close()


def natpmp(bound: float, errors: list[str]) -> float | None:
    took, answer = ask_udp(NATPMP_PUBLIC_ADDRESS, bound)
    if took is None:
        errors.append("natpmp: no answer")
        return None
    decoded = decode_response(answer)
    if not isinstance(decoded, PublicAddressResponse) or decoded.result != 0:
        errors.append(f"natpmp: {decoded}")
        return None
    return took


def pcp(bound: float, errors: list[str]) -> float | None:
    took, answer = ask_udp(encode_pcp(Request(Opcode.ANNOUNCE, 0, ip_address(LAN2_HOST))), bound)
    if took is None:
        errors.append("pcp: no answer")
        return None
    decoded = decode_pcp(answer)
    if decoded.result != 0:
        errors.append(f"pcp: {decoded}")
        return None
    return took


def soap(port: int, control: str, bound: float, errors: list[str]) -> float | None:
    start = time.monotonic()
    conn = http.client.HTTPConnection(GW_LAN, port, timeout=bound)
    try:
        conn.request(
            "POST",
            control,
            body=envelope("GetExternalIPAddress"),
            headers=soap_headers("GetExternalIPAddress"),
        )
        answer = conn.getresponse()
        body = answer.read()
    except OSError as error:
        errors.append(f"soap: {error!r}")
        return None
    finally:
        conn.close()
    if answer.status != 200 or b"NewExternalIPAddress" not in body:
        errors.append(f"soap: {answer.status} {body[:200]!r}")
        return None
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--control")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--bound", type=float, default=2.0)
    args = parser.parse_args()
    natpmp_times: list[float | None] = []
    pcp_times: list[float | None] = []
    soap_times: list[float | None] = []
    errors: list[str] = []
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], args.interval)
        if ready:
            break
        natpmp_times.append(natpmp(args.bound, errors))
        pcp_times.append(pcp(args.bound, errors))
        if args.port is not None:
            soap_times.append(soap(args.port, args.control, args.bound, errors))
    report = {"natpmp": natpmp_times, "pcp": pcp_times, "soap": soap_times, "errors": errors[:20]}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

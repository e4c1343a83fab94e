"""New-flow generator: TCP SYNs with changing source ports, from a raw socket.

``python -m bench.flowgen --dst A --port P --sources S1,S2 --first-sport N --count C`` runs in
the WAN namespace. Every packet is a new 5-tuple (source address and port change), so each one
makes the gateway create a conntrack entry and look its mappings up; the packets are built
before the clock starts. It prints one JSON line: packets sent and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import time

SPORT_LOW = 1024
SPORT_HIGH = 65535


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def syn_packet(source: str, dest: str, sport: int, dport: int, seq: int) -> bytes:
    src, dst = socket.inet_aton(source), socket.inet_aton(dest)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    # version/IHL, TOS, total length, id, flags/fragment, TTL, protocol, checksum (kernel)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    return ip + tcp


def tuples(sources: list[str], first_sport: int, count: int) -> list[tuple[str, int]]:
    """``count`` distinct (source, port) pairs, sources alternating, ports counting up from
    ``first_sport`` (wrapping inside 1024-65535)."""
    span = SPORT_HIGH - SPORT_LOW + 1
    if count > span * len(sources):
        raise ValueError(f"{count} flows need more than {len(sources)} source address(es)")
    out = []
    for i in range(count):
        source = sources[i % len(sources)]
        port = SPORT_LOW + (first_sport - SPORT_LOW + i // len(sources)) % span
        out.append((source, port))
    return out


def send(
    dest: str,
    dport: int,
    sources: list[str],
    first_sport: int,
    count: int,
    max_seconds: float,
) -> dict[str, float]:
    rng = random.Random(first_sport)
    packets = [
        syn_packet(source, dest, sport, dport, rng.getrandbits(32))
        for source, sport in tuples(sources, first_sport, count)
    ]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    target = (dest, 0)
    sent = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    sendto = sock.sendto
    for i in range(0, len(packets), 256):
        for packet in packets[i : i + 256]:
            try:
                sendto(packet, target)
            except BlockingIOError:
                continue
            except OSError:  # ENOBUFS under pressure: the packet is lost, go on
                continue
            sent += 1
        if time.perf_counter() >= deadline:
            break
    seconds = time.perf_counter() - start
    sock.close()
    return {"sent": sent, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flowgen")
    parser.add_argument("--dst", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sources", required=True, help="comma-separated source addresses")
    parser.add_argument("--first-sport", type=int, default=SPORT_LOW)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--max-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    result = send(
        args.dst,
        args.port,
        args.sources.split(","),
        args.first_sport,
        args.count,
        args.max_seconds,
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

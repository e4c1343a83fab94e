"""A plain TCP throughput tool for when iperf3 is not installed.

``serve --port P`` accepts one connection, reads it to the end and prints the bytes and the
seconds from the first byte to the last; ``send --host H --port P --seconds S`` writes 256 KiB
blocks for S seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

BLOCK = 256 * 1024


def serve(port: int, timeout: float = 60.0) -> dict[str, float]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1)
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    conn.settimeout(timeout)
    buffer = bytearray(BLOCK)
    total = 0
    first = last = 0.0
    while True:
        n = conn.recv_into(buffer)
        if not n:
            break
        last = time.perf_counter()
        if not total:
            first = last
        total += n
    conn.close()
    listener.close()
    return {"bytes": total, "seconds": max(last - first, 1e-6)}


def send(host: str, port: int, seconds: float) -> dict[str, float]:
    conn = socket.create_connection((host, port), timeout=10)
    block = b"\0" * BLOCK
    total = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.sendall(block)
        total += BLOCK
    conn.close()
    return {"bytes": total, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tcpblast")
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("serve")
    server.add_argument("--port", type=int, required=True)
    client = sub.add_parser("send")
    client.add_argument("--host", required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        result = serve(args.port)
    else:
        result = send(args.host, args.port, args.seconds)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Many LAN clients at once, for the load and crash tests: run in a LAN namespace, it starts one
worker per (source address, protocol) and each maps, refreshes and deletes its own ports with
NAT-PMP (Debian's natpmpc for the host's primary address, our codec for the others), PCP (our
codec) or UPnP (SOAP over http.client), then prints one JSON document: what every worker
believes about each of its mappings.

A mapping is "present" (the last answer about it granted it, with that external port),
"absent" (the last answer deleted it, or it never existed) or "unknown" (the last request got
no answer, e.g. the daemon was killed meanwhile; either outcome is allowed). Refusals are
counted as errors: under plain load there must be none.

``python -m tests.robustness.loadclient --addresses A,B --primary A --base 0 --ops 40
[--seconds S] [--seed N] [--port 5000]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, ip_address

from protocols.natpmp.codec import MapRequest, MapResponse, NatPmpDecodeError
from protocols.natpmp.codec import Opcode as NatPmpOpcode
from protocols.natpmp.codec import decode_response as decode_natpmp
from protocols.natpmp.codec import encode_request as encode_natpmp
from protocols.pcp.codec import (
    MapData,
    Opcode,
    PcpDecodeError,
    Request,
    ResultCode,
    decode_response,
    encode_request,
)
from tests.netlab import GW_LAN
from tests.robustness.rig import envelope, soap_headers, upnp_error_code

PROTOCOLS = ("natpmp", "pcp", "upnp")
LIFETIME = 3600
#: Each worker's ports: 20000 + 64 * its global index (so no two workers ever compete).
PORT_BASE = 20000
PORTS_PER_WORKER = 64
MAX_LIVE = 6
ANSWER_TIMEOUT = 1.0
#: libnatpmp's codes for an answer that carried an error result (natpmp.h): unsupported
#: version or opcode, undefined, not authorized, network failure, out of resources.
NATPMP_SERVER_ERRORS = frozenset({-14, -15, -49, -51, -52, -53})


@dataclass
class Record:
    origin: str
    client: str
    proto: str
    internal_port: int
    state: str = "absent"
    external_port: int = 0


@dataclass
class Outcome:
    """What one request got: "granted" (with the external port), "deleted", "refused" (a
    protocol error answer) or "lost" (no answer)."""

    kind: str
    external_port: int = 0
    detail: str = ""


@dataclass
class Stats:
    operations: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)


class Worker:
    def __init__(self, address: str, origin: str, index: int, natpmpc: bool, seed: int) -> None:
        self.address = address
        self.origin = origin
        self.ports = range(
            PORT_BASE + PORTS_PER_WORKER * index, PORT_BASE + PORTS_PER_WORKER * (index + 1)
        )
        self.natpmpc = natpmpc
        self.rng = random.Random(seed * 1000 + index)
        self.records: dict[tuple[str, int], Record] = {}
        self.nonce = f"load{index:08d}".encode()[:12]
        self.stats = Stats()
        self._control: str | None = None
        self._http_port = 0

    # -- the protocols ------------------------------------------------------------------

    def _udp(self, data: bytes) -> bytes | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.address, 0))
            sock.settimeout(ANSWER_TIMEOUT)
            for _ in range(2):  # one resend: the requests are idempotent
                sock.sendto(data, (GW_LAN, 5351))
                try:
                    answer, _ = sock.recvfrom(1100)
                    return answer
                except TimeoutError:
                    continue
                except ConnectionRefusedError:
                    time.sleep(ANSWER_TIMEOUT)  # nothing listens (a restart): wait as for loss
            return None
        finally:
            sock.close()

    def natpmp(self, proto: str, port: int, external: int, lifetime: int) -> Outcome:
        if self.natpmpc:
            return self._natpmpc(proto, port, external, lifetime)
        opcode = NatPmpOpcode.MAP_TCP if proto == "tcp" else NatPmpOpcode.MAP_UDP
        answer = self._udp(encode_natpmp(MapRequest(opcode, port, external, lifetime)))
        if answer is None:
            return Outcome("lost")
        try:
            decoded = decode_natpmp(answer)
        except NatPmpDecodeError as error:
            return Outcome("refused", detail=f"undecodable {error}")
        if not isinstance(decoded, MapResponse) or decoded.result != 0:
            return Outcome("refused", detail=str(decoded))
        if lifetime == 0:
            return Outcome("deleted")
        return Outcome("granted", decoded.external_port)

    def _natpmpc(self, proto: str, port: int, external: int, lifetime: int) -> Outcome:
        done = subprocess.run(
            [
                "timeout",
                "3",
                "natpmpc",
                "-g",
                GW_LAN,
                "-a",
                str(external),
                str(port),
                proto,
                str(lifetime),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        out = done.stdout + done.stderr
        found = re.search(r"Mapped public port (\d+) protocol \w+ to local port (\d+)", out)
        if found and done.returncode == 0:
            return Outcome("deleted") if lifetime == 0 else Outcome("granted", int(found.group(1)))
        code = re.search(r"returned (-\d+)", out)
        if code is not None and int(code.group(1)) in NATPMP_SERVER_ERRORS:
            return Outcome("refused", detail=out[-300:])
        # no answer from the gateway: a timeout, ICMP unreachable (it was restarting), ...
        return Outcome("lost", detail=out[-200:])

    def pcp(self, proto: str, port: int, external: int, lifetime: int) -> Outcome:
        number = 6 if proto == "tcp" else 17
        request = Request(
            Opcode.MAP,
            lifetime,
            ip_address(self.address),
            MapData(self.nonce, number, port, external, IPv4Address(0)),
        )
        answer = self._udp(encode_request(request))
        if answer is None:
            return Outcome("lost")
        try:
            decoded = decode_response(answer)
        except PcpDecodeError as error:
            return Outcome("refused", detail=f"undecodable {error}")
        if decoded.result != ResultCode.SUCCESS or not isinstance(decoded.body, MapData):
            return Outcome("refused", detail=str(decoded))
        if lifetime == 0:
            return Outcome("deleted")
        return Outcome("granted", decoded.body.external_port)

    def _discover(self) -> str | None:
        conn = http.client.HTTPConnection(
            GW_LAN, self._http_port, timeout=2, source_address=(self.address, 0)
        )
        try:
            conn.request("GET", "/rootDesc.xml")
            body = conn.getresponse().read().decode()
        except OSError:
            return None
        finally:
            conn.close()
        found = re.search(
            r"WANIPConnection:2</serviceType>.*?<controlURL>([^<]+)</controlURL>", body, re.S
        )
        return found.group(1) if found else None

    def _soap(self, action: str, arguments: dict[str, str]) -> tuple[int, bytes] | None:
        if self._control is None:
            self._control = self._discover()
            if self._control is None:
                time.sleep(ANSWER_TIMEOUT)
                return None
        conn = http.client.HTTPConnection(
            GW_LAN, self._http_port, timeout=3, source_address=(self.address, 0)
        )
        try:
            conn.request(
                "POST",
                self._control,
                body=envelope(action, arguments),
                headers=soap_headers(action),
            )
            answer = conn.getresponse()
            status, body = answer.status, answer.read()
        except OSError:
            self._control = None  # the daemon may have restarted with new URLs
            return None
        finally:
            conn.close()
        if status == 404:
            self._control = None
            return None
        return status, body

    def upnp(self, proto: str, port: int, external: int, lifetime: int) -> Outcome:
        if lifetime == 0:
            got = self._soap(
                "DeletePortMapping",
                {"NewRemoteHost": "", "NewExternalPort": str(port), "NewProtocol": proto.upper()},
            )
            if got is None:
                return Outcome("lost")
            status, body = got
            if status == 200 or upnp_error_code(body) == 714:  # 714: there was none
                return Outcome("deleted")
            return Outcome("refused", detail=body[-300:].decode(errors="replace"))
        got = self._soap(
            "AddPortMapping",
            {
                "NewRemoteHost": "",
                "NewExternalPort": str(port),
                "NewProtocol": proto.upper(),
                "NewInternalPort": str(port),
                "NewInternalClient": self.address,
                "NewEnabled": "1",
                "NewPortMappingDescription": f"load {self.address}",
                "NewLeaseDuration": str(lifetime),
            },
        )
        if got is None:
            return Outcome("lost")
        status, body = got
        if status != 200:
            return Outcome("refused", detail=body[-300:].decode(errors="replace"))
        return Outcome("granted", port)

    # -- the loop -------------------------------------------------------------------------

    def ask(self, record: Record, lifetime: int) -> None:
        external = record.external_port or record.internal_port
        call = {"natpmp": self.natpmp, "pcp": self.pcp, "upnp": self.upnp}[self.origin]
        outcome = call(record.proto, record.internal_port, external, lifetime)
        self.stats.operations += 1
        if outcome.kind == "granted":
            record.state, record.external_port = "present", outcome.external_port
        elif outcome.kind == "deleted":
            record.state = "absent"
        else:
            record.state = "unknown"
            if outcome.kind == "lost":
                self.stats.lost += 1
            else:
                self.stats.errors.append(
                    f"{self.origin} {self.address} {record.proto}/{record.internal_port} "
                    f"lifetime={lifetime}: {outcome.detail}"
                )

    def step(self) -> None:
        live = [r for r in self.records.values() if r.state != "absent"]
        choice = self.rng.random()
        if not live or (choice < 0.45 and len(live) < MAX_LIVE):
            used = {port for _, port in self.records}
            free = [port for port in self.ports if port not in used]
            if free:
                proto = self.rng.choice(("tcp", "udp"))
                record = Record(self.origin, self.address, proto, free[0])
                self.records[(proto, free[0])] = record
            else:  # every port had its turn: map a deleted one again
                record = self.rng.choice([r for r in self.records.values() if r not in live])
            self.ask(record, LIFETIME)
        elif choice < 0.75:
            self.ask(self.rng.choice(live), LIFETIME)
        else:
            self.ask(self.rng.choice(live), 0)

    def run(self, operations: int, deadline: float, http_port: int) -> None:
        self._http_port = http_port
        done = 0
        while done < operations and time.monotonic() < deadline:
            self.step()
            done += 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--primary", required=True, help="the address natpmpc sends from")
    parser.add_argument("--base", type=int, default=0, help="global index of the first worker")
    parser.add_argument("--ops", type=int, default=40, help="operations per worker")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    workers: list[Worker] = []
    for address in args.addresses.split(","):
        for origin in PROTOCOLS:
            index = args.base + len(workers)
            natpmpc = origin == "natpmp" and address == args.primary
            workers.append(Worker(address, origin, index, natpmpc, args.seed))
    deadline = time.monotonic() + args.seconds
    threads = [
        threading.Thread(target=w.run, args=(args.ops, deadline, args.port)) for w in workers
    ]
    print("started", flush=True)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = {
        "records": [asdict(r) for w in workers for r in w.records.values()],
        "operations": sum(w.stats.operations for w in workers),
        "lost": sum(w.stats.lost for w in workers),
        "errors": [e for w in workers for e in w.stats.errors],
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

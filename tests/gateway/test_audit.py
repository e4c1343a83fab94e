"""The audit log: one line per committed change, in a stable text and JSON form; packets only
at debug level; journald priority prefixes."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher

from gateway.audit import change_fields, format_event, on_journal
from gateway.model import Origin, Proto
from gateway.requests import MapPort, OpenPinhole
from tests.gateway.conftest import ep, owner
from tests.gateway.test_daemon import Daemon, write_config
from tests.gateway.test_service import Rig, natpmp_map
from tests.protocols.gateway_rig import Rig as FrontRig
from tests.protocols.test_udp5351 import NATPMP_MAP, Socket, pcp_map

STABLE_FIELDS = {
    "event",
    "kind",
    "proto",
    "external",
    "internal",
    "lifetime",
    "origin",
    "client",
    "description",
    "uid",
    "remote",
}
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<level>\w+) (?P<ns>[\w.]+): (?P<text>.*)$"
)


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path / "leases.sqlite3")
    r.service.start()
    return r


def change_events(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "change" in e]


def run(rig: Rig, request: Any) -> None:
    rig.service.handle(request).addErrback(lambda failure: None)
    rig.reactor.advance(0)


def test_each_committed_change_is_one_info_line(rig: Rig, events: list[LogEvent]) -> None:
    run(rig, natpmp_map(8080))
    run(rig, natpmp_map(8080))  # a refresh
    run(rig, natpmp_map(8081, client="192.168.1.12", lifetime=60))
    rig.reactor.advance(61)  # expires
    changes = change_events(events)
    assert [e["log_level"] for e in changes] == [LogLevel.info] * 4
    lines = [format_event(e) for e in changes]
    texts = [TEXT_LINE.fullmatch(line) for line in lines]
    assert all(texts), lines
    assert [m["text"] for m in texts if m] == [
        "map add tcp 203.0.113.1:8080 -> 192.168.1.10:8080 lifetime=3600 via=natpmp "
        "client=192.168.1.10",
        "map refresh tcp 203.0.113.1:8080 -> 192.168.1.10:8080 lifetime=3600 via=natpmp "
        "client=192.168.1.10",
        "map add tcp 203.0.113.1:8081 -> 192.168.1.12:8081 lifetime=60 via=natpmp "
        "client=192.168.1.12",
        "map expire tcp 203.0.113.1:8081 -> 192.168.1.12:8081 lifetime=0 via=natpmp "
        "client=192.168.1.12",
    ]
    assert {m["level"] for m in texts if m} == {"info"}
    assert {m["ns"] for m in texts if m} == {"service"}


def test_the_json_line_of_a_change_has_the_stable_fields(rig: Rig, events: list[LogEvent]) -> None:
    request = MapPort(
        owner(Origin.UPNP, "192.168.1.10"),
        Proto.UDP,
        ep("192.168.1.10:3074"),
        3074,
        7200,
        description='game "console"\nline two',
        exact=True,
    )
    run(rig, request)
    [event] = change_events(events)
    line = format_event(event, as_json=True)
    assert "\n" not in line
    record = json.loads(line)
    assert set(record) >= STABLE_FIELDS
    assert {k: record[k] for k in STABLE_FIELDS} == {
        "event": "add",
        "kind": "map",
        "proto": "udp",
        "external": "203.0.113.1:3074",
        "internal": "192.168.1.10:3074",
        "lifetime": 7200,
        "origin": "upnp",
        "client": "192.168.1.10",
        "description": 'game "console"\nline two',
        "uid": record["uid"],
        "remote": [],
    }
    assert record["level"] == "info"
    assert record["namespace"] == "service"
    assert record["message"].startswith("map add udp 203.0.113.1:3074 -> 192.168.1.10:3074")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", record["time"])


def test_a_pinhole_has_no_external_side(rig: Rig, events: list[LogEvent]) -> None:
    run(
        rig,
        OpenPinhole(owner(Origin.PCP, "2001:db8:1::10"), Proto.TCP, ep("[2001:db8:1::10]:22"), 600),
    )
    [event] = change_events(events)
    record = json.loads(format_event(event, as_json=True))
    assert record["kind"] == "pinhole"
    assert record["external"] is None
    assert record["internal"] == "[2001:db8:1::10]:22"
    assert record["origin"] == "pcp" and record["lifetime"] == 600


def test_an_update_names_what_it_was(rig: Rig, events: list[LogEvent]) -> None:
    run(rig, natpmp_map(8080))
    rig.service.set_external_address(ip_address("198.51.100.7"))  # type: ignore[arg-type]
    rig.reactor.advance(0)
    update = change_events(events)[-1]
    fields = change_fields(update["change"])
    assert fields["event"] == "update"
    assert fields["external"] == "198.51.100.7:8080"
    assert fields["previous"] == "203.0.113.1:8080"


def test_other_events_are_json_lines_too(events: list[LogEvent]) -> None:
    event: LogEvent = {
        "log_format": "backend {name} restored",
        "name": "nft",
        "log_level": LogLevel.warn,
        "log_namespace": "portgate.service",
        "log_time": time.time(),
    }
    record = json.loads(format_event(event, as_json=True))
    assert set(record) == {"time", "level", "namespace", "message"}
    assert record["message"] == "backend nft restored"
    assert record["level"] == "warn"


def test_the_journal_gets_priorities_instead_of_times() -> None:
    event: LogEvent = {
        "log_format": "could not {what}",
        "what": "commit",
        "log_level": LogLevel.error,
        "log_namespace": "portgate.service",
        "log_time": time.time(),
    }
    assert format_event(event, journal=True) == "<3>service: could not commit"
    line = format_event(event, as_json=True, journal=True)
    assert line.startswith("<3>{")
    assert "time" not in json.loads(line[3:])


def test_the_journal_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as stream:
        info = os.fstat(stream.fileno())
        assert on_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not on_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
        assert not on_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not on_journal(stream, {})


def test_packets_are_logged_at_debug_level_only(events: list[LogEvent]) -> None:
    """A burst of NAT-PMP and PCP packets (good, bad, from off the LAN) produces info lines
    for the changes it makes and nothing else at info or above."""
    front = FrontRig()
    sock = Socket(front)
    events.clear()
    for _ in range(5):
        sock.receive(NATPMP_MAP)
        sock.receive(pcp_map(port=7000))
        sock.receive(b"\x00\x80garbage")
        sock.receive(b"\x02" + b"\x00" * 3)
        sock.receive(NATPMP_MAP, source=ip_address("198.51.100.99"))
    loud = [e for e in events if e.get("log_level", LogLevel.info) >= LogLevel.info]
    assert loud, "the changes themselves are logged"
    assert all("change" in e for e in loud), [format_event(e) for e in loud]


def test_the_daemon_writes_json_audit_lines(tmp_path: Path) -> None:
    config = write_config(tmp_path, "log:\n  format: json\n")
    daemon = Daemon(tmp_path, config)
    try:
        daemon.start()
        done = daemon.ctl(
            "add", "tcp", "8080", "192.168.77.10:80", "--lifetime", "600", "--description", "web"
        )
        assert done.returncode == 0, done.stderr
        assert daemon.ctl("delete", "tcp", "8080").returncode == 0
    finally:
        daemon.stop()
    records = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
    changes = [r for r in records if "event" in r]
    assert [(r["event"], r["external"], r["internal"]) for r in changes] == [
        ("add", "203.0.113.1:8080", "192.168.77.10:80"),
        ("remove", "203.0.113.1:8080", "192.168.77.10:80"),
    ]
    assert changes[0]["lifetime"] == 600
    assert changes[0]["origin"] == "static"
    assert changes[0]["description"] == "web"
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)

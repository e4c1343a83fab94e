"""How log events become lines: the audit trail of mapping changes, for people and machines.

The service logs every committed change once, at info level, as an event carrying the
``Change`` (``change=``) and its one-line description. This module turns any log event into
one line of text or JSON:

text (``log.format: text``)::

    2026-11-25 00:00:43 info service: map add tcp 203.0.113.1:8080 -> 192.168.77.10:80
    lifetime=600 via=natpmp client=192.168.77.10

(one line; wrapped here), the change as ``<kind> <event> <what> lifetime=<seconds or
permanent> via=<origin> client=<address>`` plus `` (was ...)`` for an update and
`` desc='...'`` when the client gave a description.

JSON (``log.format: json``), one object per line; for a change it carries these stable
fields besides ``time``, ``level``, ``namespace`` and ``message`` (the text above)::

    event        add, refresh, update, remove or expire
    kind         map (IPv4 port mapping) or pinhole (IPv6 firewall pinhole)
    proto        tcp or udp
    external     "203.0.113.1:8080" (null for a pinhole, which has no external side)
    internal     "192.168.77.10:80" or "[2001:db8::10]:80"
    lifetime     the lease granted, in seconds (null: permanent)
    origin       upnp, natpmp, pcp or static (the admin)
    client       the address that asked
    description  the client's description ("" if none)
    uid          the entry's id (stable for its life; a pinhole's UniqueID)
    remote       the remote hosts it is restricted to (a list, usually empty)
    previous     for an update: the external (or internal) endpoint it had before

Under systemd, when standard error is the journal (``$JOURNAL_STREAM`` names it), the time is
left to journald and each line starts with its syslog priority (``<6>`` for info), which
journald turns into the entry's PRIORITY; OpenWrt's procd forwards the same lines to syslog.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping as EnvMapping
from datetime import datetime
from typing import IO, Any

from twisted.logger import LogEvent, LogLevel, formatEvent

from gateway.model import Change, ChangeKind, Kind, Mapping

#: sd-daemon(3) / syslog(3) priorities.
PRIORITY = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}
JOURNAL_ENV = "JOURNAL_STREAM"


def change_fields(change: Change) -> dict[str, Any]:
    """The stable JSON fields of one change (see the module docstring)."""
    mapping = change.mapping
    pinhole = mapping.kind is Kind.PINHOLE
    fields: dict[str, Any] = {
        "event": change.kind.value,
        "kind": "pinhole" if pinhole else "map",
        "proto": mapping.proto.value,
        "external": None if pinhole else str(mapping.external),
        "internal": str(mapping.internal),
        "lifetime": mapping.lifetime,
        "origin": mapping.owner.origin.value,
        "client": str(mapping.owner.client),
        "description": mapping.description,
        "uid": mapping.uid,
        "remote": [str(f) for f in mapping.filters],
    }
    if change.kind is ChangeKind.UPDATED and change.before is not None:
        fields["previous"] = _previous(change.before, mapping)
    return fields


def _previous(before: Mapping, after: Mapping) -> str:
    if before.key != after.key and before.kind is Kind.PORT_MAP:
        return str(before.external)
    return str(before.internal)


def format_event(event: LogEvent, *, as_json: bool = False, journal: bool = False) -> str:
    """One line (a traceback, in text, adds lines below it)."""
    level = event.get("log_level", LogLevel.info)
    namespace = str(event.get("log_namespace", "")).removeprefix("portgate.")
    text = formatEvent(event)
    failure = event.get("log_failure")
    prefix = f"<{PRIORITY.get(level, 6)}>" if journal else ""
    if as_json:
        record: dict[str, Any] = {}
        if not journal:
            when = datetime.fromtimestamp(event.get("log_time", 0)).astimezone()
            record["time"] = when.isoformat(timespec="milliseconds")
        record.update(level=level.name, namespace=namespace, message=text)
        change = event.get("change")
        if isinstance(change, Change):
            record.update(change_fields(change))
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        return prefix + json.dumps(record, ensure_ascii=False, default=str)
    if failure is not None:
        text += "\n" + failure.getTraceback().rstrip("\n")
    if journal:
        return "\n".join(f"{prefix}{namespace}: {line}" for line in text.split("\n"))
    when_text = datetime.fromtimestamp(event.get("log_time", 0)).strftime("%Y-%m-%d %H:%M:%S")
    return f"{when_text} {level.name} {namespace}: {text}"


def on_journal(stream: IO[str], environ: EnvMapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal systemd connected us to (``$JOURNAL_STREAM`` is
    ``DEVICE:INODE`` of that stream, per systemd.exec(5))."""
    value = (os.environ if environ is None else environ).get(JOURNAL_ENV, "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return info.st_dev == int(device) and info.st_ino == int(inode)

"""From miniupnpd to portgate: its config file to our YAML, its lease file into our lease store.

``translate_conf`` reads a ``miniupnpd.conf`` the way miniupnpd does (``name=value`` lines,
``allow``/``deny`` permission rules, ``#`` comments; options.c and upnppermissions.c of
miniupnpd 2.3) and returns a ``Translation``: portgate YAML (commented with the line each value
came from) that ``gateway.config.parse_config`` accepts, and one ``Notice`` per option it could
not carry over or carried over with a difference. Defaults that differ are written out:
miniupnpd starts with NAT-PMP/PCP off, so a file that never enables them gives
``natpmp.enabled: false`` and ``pcp.enabled: false``.

``read_leases`` parses miniupnpd's lease file (``PROTO:EXTPORT:INTADDR:INTPORT:TIMESTAMP:DESC``
per line; TIMESTAMP is the expiry in Unix time, 0 for a permanent lease, or the seconds left on
builds with LEASEFILE_USE_REMAINING_TIME) and ``import_leases`` adds the leases to a portgate
lease store as UPnP mappings owned by their internal host (NAT-PMP ones, recognised by
miniupnpd's ``NAT-PMP <port> <proto>`` description, as NAT-PMP mappings, so that the client's
next renewal finds its own entry). The daemon must not be running while the store is written:
``daemon_running`` asks its control socket.

No Twisted here: this runs from the command line, on a router that may not run portgate yet.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TextIO

import yaml

from gateway.config import Config, ConfigError, parse_config
from gateway.errors import StoreError
from gateway.model import (
    Change,
    ChangeKind,
    Endpoint,
    Kind,
    Mapping,
    MappingKey,
    Origin,
    Owner,
    Proto,
)
from gateway.store import LeaseStore
from gateway.table import FIRST_PORT_MAP_UID

__all__ = [
    "ImportResult",
    "Lease",
    "MigrationError",
    "Notice",
    "Translation",
    "daemon_running",
    "import_leases",
    "read_leases",
    "run_import",
    "translate_conf",
]

#: A timestamp below this is the seconds left (LEASEFILE_USE_REMAINING_TIME), not Unix time.
REMAINING_TIME_LIMIT = 1_000_000_000
#: The lowest and highest PCP lifetimes miniupnpd accepts (it clamps min_lifetime/max_lifetime).
MINIUPNPD_PCP_MIN = 120
MINIUPNPD_PCP_MAX = 86400
NOTIFY_INTERVAL_MIN = 30
NOTIFY_INTERVAL_MAX = 86400
FRIENDLY_NAME_MAX = 64
#: miniupnpd's NAT-PMP mappings carry this description ("NAT-PMP 5353 udp").
NATPMP_DESCRIPTION = re.compile(r"^NAT-PMP [0-9]+ (tcp|udp)$")


class MigrationError(Exception):
    """No usable config can be made; ``str()`` is one line saying what to do."""


@dataclass(frozen=True, slots=True)
class Notice:
    """Something in the input that is not carried over as it was: one line of the report."""

    line: int | None
    text: str

    def render(self, source: str) -> str:
        return f"{source}:{self.line}: {self.text}" if self.line else f"{source}: {self.text}"


# -- reading miniupnpd.conf ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Option:
    line: int
    name: str
    value: str

    @property
    def shown(self) -> str:
        return f"{self.name}={self.value}"


_RANGE = r"([0-9]+)(?:-([0-9]+))?"
_QUAD = r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+"
_RULE = re.compile(
    rf"^(?P<action>allow|deny)\s+(?P<eport>{_RANGE})\s+(?P<address>{_QUAD})"
    rf"(?:/(?P<mask>{_QUAD}|[0-9]+))?\s+(?P<iport>{_RANGE})"
    r"(?:\s*#.*|\s+(?P<rest>.*))?$"
)


@dataclass(frozen=True, slots=True)
class _Rule:
    line: int
    text: str
    action: str
    external: tuple[int, int]
    network: IPv4Network
    internal: tuple[int, int]
    regex: str | None


def _parse_range(low: str, high: str | None) -> tuple[int, int]:
    start = int(low)
    end = start if high is None else int(high)
    if end > 65535 or start > end:
        raise ValueError(f"bad port range {low}{'' if high is None else '-' + high}")
    return start, end


def _parse_rule(number: int, text: str) -> _Rule:
    """One permission line, as read_permission_line() reads it; ValueError says why not."""
    match = _RULE.match(text)
    if match is None:
        raise ValueError("not a permission rule (allow|deny EXT_PORTS IP[/MASK] INT_PORTS)")
    external = _parse_range(*match.group(3, 4))
    internal = _parse_range(*match.group(8, 9))
    address = IPv4Address(match["address"])
    mask = match["mask"]
    if mask is None:
        network = IPv4Network(address)
    elif "." in mask:
        try:
            network = IPv4Network(f"{address}/{mask}", strict=False)
        except ValueError:
            raise ValueError(
                f"mask {mask} is not a prefix (portgate needs contiguous masks)"
            ) from None
    else:
        if int(mask) > 32:
            raise ValueError(f"bad mask /{mask}")
        network = IPv4Network(f"{address}/{mask}", strict=False)
    rest = (match["rest"] or "").strip()
    regex: str | None = None
    if rest and not rest.startswith("#"):
        if rest[0] in "\"'":
            end = rest.find(rest[0], 1)
            regex = rest[1:end] if end > 0 else rest[1:]
        else:
            regex = rest.split()[0]
        regex = regex or None
    return _Rule(number, text, match["action"], external, network, internal, regex)


def _read_lines(text: str) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


# -- the translation ---------------------------------------------------------------------------

#: Options with no portgate counterpart, and why (set only when the value is not empty).
_NOT_TRANSLATED: dict[str, str] = {
    "ext_stun_host": "portgate asks no STUN server; set wan.external_address instead",
    "ext_stun_port": "portgate asks no STUN server; set wan.external_address instead",
    "ipv6_listening_ip": "portgate listens on every address of the LAN interfaces",
    "https_port": "portgate serves UPnP over plain HTTP only (as IGD clients expect)",
    "bitrate_up": "portgate reports the WAN link's own speed (from sysfs)",
    "bitrate_down": "portgate reports the WAN link's own speed (from sysfs)",
    "presentation_url": "portgate's device description has no presentation page",
    "manufacturer_name": "portgate's device description is fixed",
    "manufacturer_url": "portgate's device description is fixed",
    "model_name": "portgate's device description is fixed",
    "model_description": "portgate's device description is fixed",
    "model_url": "portgate's device description is fixed",
    "serial": "portgate's device description is fixed",
    "model_number": "portgate's device description is fixed",
    "system_uptime": "portgate reports how long the WAN address has been up",
    "clean_ruleset_threshold": "not needed: mappings are set elements, removed with their lease",
    "clean_ruleset_interval": "not needed: mappings are set elements, removed with their lease",
    "packet_log": "pf (BSD) only",
    "anchor": "pf (BSD) only",
    "queue": "pf (BSD) only",
    "tag": "pf (BSD) only",
    "quickrules": "pf (BSD) only",
    "minissdpdsocket": "not needed: portgate answers SSDP itself",
    "lease_file6": "IPv6 pinhole leases are not imported (clients renew them)",
}
_OWN_TABLE = (
    "portgate keeps its mappings in an nftables table of its own (backend.nft.table); "
    "behind fw4, set backend.nft.forward_jump for IPv6 pinholes"
)
_NFT_NAMES = frozenset(
    {
        "upnp_table_name",
        "upnp_nat_table_name",
        "upnp_forward_chain",
        "upnp_nat_chain",
        "upnp_nat_postrouting_chain",
        "upnp_nftables_family_split",
    }
)
_SECTIONS = ("wan", "lifetimes", "policy", "upnp", "natpmp", "pcp", "state", "control")


@dataclass
class _Lan:
    interface: str
    prefixes: list[str] = field(default_factory=list)
    comment: str = ""


@dataclass
class Translation:
    """A translated config: ``text`` is the YAML, ``config`` the same parsed."""

    text: str
    config: Config
    notices: list[Notice]
    #: lease_file= from the miniupnpd config (where its leases are), if any.
    lease_file: str | None
    #: The external IPv4 address: ext_ip=, else the WAN interface's address on this machine.
    external_address: IPv4Address | None


class _Builder:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, tuple[Any, str]]] = {s: {} for s in _SECTIONS}
        self.lan: list[_Lan] = []
        self.rules: list[tuple[dict[str, Any], str]] = []
        self.rule_lines: list[int] = []
        self.lifetime_lines: dict[str, int] = {}
        self.notices: list[Notice] = []
        self.lease_file: str | None = None
        self.ext_ip: IPv4Address | None = None
        self.pending_prefixes: list[tuple[int, str, str]] = []  # line, prefix, listening_ip=

    def set(self, section: str, key: str, value: Any, comment: str) -> None:
        self.values[section][key] = (value, comment)

    def note(self, line: int | None, text: str) -> None:
        self.notices.append(Notice(line, text))

    def lan_entry(self, interface: str, comment: str) -> _Lan:
        for entry in self.lan:
            if entry.interface == interface:
                return entry
        entry = _Lan(interface, comment=comment)
        self.lan.append(entry)
        return entry


def _yes(value: str) -> bool:
    return value == "yes"


def _enabled_natpmp(value: str) -> bool:
    """enable_natpmp: "yes", or a number other than 0 (atoi)."""
    if value == "yes":
        return True
    digits = re.match(r"^\s*[+-]?[0-9]+", value)
    return digits is not None and int(digits.group()) != 0


def _integer(value: str) -> int | None:
    return int(value) if re.fullmatch(r"[0-9]+", value) else None


def translate_conf(
    text: str,
    *,
    wan: str | None = None,
    lan: Sequence[str] = (),
    lease_store: str | None = None,
    control_socket: str | None = None,
    interface_for: Callable[[IPv4Address], str | None] | None = None,
    address_of: Callable[[str], IPv4Address | None] | None = None,
    source: str = "miniupnpd.conf",
) -> Translation:
    """Translate a miniupnpd config. ``wan`` and ``lan`` replace ext_ifname and the LAN
    interfaces found in listening_ip=; ``lease_store`` and ``control_socket`` set
    state.lease_file and control.socket. ``interface_for`` finds the interface that holds a
    listening_ip= address and ``address_of`` an interface's IPv4 address (both read this
    machine's interfaces unless given). Raises ``MigrationError`` when no usable config can be
    made (no WAN or LAN interface)."""
    find_interface = interface_for or system_interface_for
    b = _Builder()
    options: list[_Option] = []
    for number, line in _read_lines(text):
        if line.startswith(("allow", "deny")) and len(line) > 6:
            _rule(b, number, line)
        elif line.startswith("set_learn_dscp"):
            b.note(
                number, f"{line}: not translated: portgate does not set DSCP values (PCP SADSCP)"
            )
        elif "=" not in line:
            b.note(number, f"{line}: not an option (miniupnpd refuses this file)")
        else:
            name, _, value = line.partition("=")
            options.append(_Option(number, name.rstrip(), value.lstrip()))
    seen = {option.name for option in options}
    for option in options:
        _option(b, option, find_interface)
    if "enable_natpmp" not in seen and "enable_pcp_pmp" not in seen:
        b.set("natpmp", "enabled", False, "miniupnpd's default: NAT-PMP off")
        b.set("pcp", "enabled", False, "miniupnpd's default: PCP off")
    _finish_lifetimes(b)
    _finish_rules(b)
    if wan is not None:
        b.set("wan", "interface", wan, "--wan")
    if "interface" not in b.values["wan"]:
        raise MigrationError(
            "no ext_ifname= in the miniupnpd config: give the WAN interface with --wan IFACE"
        )
    _finish_lan(b, lan)
    if lease_store is not None:
        b.set("state", "lease_file", lease_store, "--lease-store")
    if control_socket is not None:
        b.set("control", "socket", control_socket, "--control-socket")
    b.notices.sort(key=lambda notice: (notice.line is None, notice.line or 0))
    yaml_text = _render(b, source)
    try:
        config = parse_config(yaml_text, "the translated config")
    except ConfigError as error:
        raise MigrationError(str(error)) from None
    external = b.ext_ip
    if external is None:
        external = (address_of or system_address_of)(config.wan.interface)
    return Translation(yaml_text, config, b.notices, b.lease_file, external)


def _option(b: _Builder, o: _Option, find_interface: Callable[[IPv4Address], str | None]) -> None:
    name, value, line = o.name, o.value, o.line
    here = f"line {line}: {o.shown}"
    if name == "ext_ifname":
        if value:
            b.set("wan", "interface", value, here)
    elif name == "ext_ifname6":
        if value and value != b.values["wan"].get("interface", (None,))[0]:
            b.note(
                line,
                f"{o.shown}: not translated: portgate has one WAN interface "
                "(wan.interface); its IPv6 pinholes do not depend on it",
            )
    elif name == "ext_ip":
        try:
            b.ext_ip = IPv4Address(value)
        except ValueError:
            b.note(line, f"{o.shown}: not translated: not an IPv4 address")
            return
        b.set("wan", "external_address", str(b.ext_ip), here)
    elif name == "ext_allow_private_ipv4":
        if not _yes(value):
            b.note(
                line,
                f"{o.shown}: not translated: portgate also maps on a private "
                "external address (double NAT)",
            )
    elif name == "ext_perform_stun":
        if value in ("yes", "allow-filtered"):
            b.note(
                line,
                f"{o.shown}: not translated: portgate asks no STUN server; set "
                "wan.external_address to the public address",
            )
    elif name == "listening_ip":
        _listening_ip(b, o, find_interface)
    elif name == "ipv6_disable":
        if _yes(value):
            b.set("upnp", "ipv6", False, here)
            b.set("pcp", "ipv6", False, here)
    elif name in ("port", "http_port"):
        port = _integer(value)
        if port is None or port > 65535:
            b.note(line, f"{o.shown}: not translated: not a port number")
        else:
            b.set("upnp", "http_port", port, here)
    elif name == "friendly_name":
        if value:
            if len(value) > FRIENDLY_NAME_MAX:
                b.note(line, f"{o.shown}: shortened to {FRIENDLY_NAME_MAX} characters")
            b.set("upnp", "friendly_name", value[:FRIENDLY_NAME_MAX], here)
    elif name == "notify_interval":
        _notify_interval(b, o)
    elif name == "uuid":
        _uuid(b, o)
    elif name == "force_igd_desc_v1":
        if value == "yes":
            b.set("upnp", "igd_version", 1, here)
        elif value != "no":
            b.note(line, f"{o.shown}: not translated: yes or no (miniupnpd refuses this file)")
    elif name in ("enable_natpmp", "enable_pcp_pmp"):
        on = _enabled_natpmp(value)
        b.set("natpmp", "enabled", on, here)
        b.set("pcp", "enabled", on, here)
    elif name == "enable_upnp":
        b.set("upnp", "enabled", _yes(value), here)
    elif name == "secure_mode":
        b.set("policy", "secure_mode", value != "no", here)
    elif name == "pcp_allow_thirdparty":
        b.set("policy", "allow_third_party", _yes(value), here)
    elif name in ("min_lifetime", "max_lifetime"):
        _lifetime(b, o)
    elif name == "lease_file":
        if value:
            b.lease_file = value
    elif name in _NFT_NAMES:
        if value:
            b.note(line, f"{o.shown}: not translated: {_OWN_TABLE}")
    elif name in _NOT_TRANSLATED:
        if value:
            b.note(line, f"{o.shown}: not translated: {_NOT_TRANSLATED[name]}")
    else:
        b.note(line, f"{o.shown}: not translated: unknown option (miniupnpd refuses it too)")


def _listening_ip(
    b: _Builder, o: _Option, find_interface: Callable[[IPv4Address], str | None]
) -> None:
    if not o.value.split():
        return
    first, *more = o.value.split()
    here = f"line {o.line}: {o.shown}"
    head = re.match(r"^([0-9.]+)(?:/(.*))?$", first)
    if head is None or head.group(1).count(".") != 3:
        if "/" in first:
            b.note(o.line, f"{o.shown}: not translated: not an interface name or IPv4 address")
            return
        b.lan_entry(first, here)
    else:
        try:
            address = IPv4Address(head.group(1))
            mask = head.group(2)
            network = IPv4Network(f"{address}/{24 if mask is None else mask}", strict=False)
        except ValueError:
            b.note(o.line, f"{o.shown}: not translated: not an IPv4 address and mask")
            return
        interface = find_interface(address)
        if interface is None:
            b.pending_prefixes.append((o.line, str(network), o.shown))
        else:
            b.lan_entry(interface, f"{here} ({address} is on {interface})").prefixes.append(
                str(network)
            )
    if more:
        b.note(
            o.line,
            f"{o.shown}: {' '.join(more)} not translated: portgate serves the "
            f"bridge {first} itself, not its member interfaces",
        )


def _notify_interval(b: _Builder, o: _Option) -> None:
    seconds = _integer(o.value)
    if seconds is None:
        b.note(o.line, f"{o.shown}: not translated: not a number of seconds")
        return
    kept = min(max(seconds, NOTIFY_INTERVAL_MIN), NOTIFY_INTERVAL_MAX)
    if kept != seconds:
        b.note(
            o.line,
            f"{o.shown}: changed to {kept} (portgate's range is "
            f"{NOTIFY_INTERVAL_MIN}-{NOTIFY_INTERVAL_MAX} seconds)",
        )
    b.set("upnp", "notify_interval", kept, f"line {o.line}: {o.shown}")


def _uuid(b: _Builder, o: _Option) -> None:
    if not o.value:
        return  # Debian's postinst fills it in; empty means "make one"
    try:
        value = str(uuid.UUID(o.value))
    except ValueError:
        b.note(o.line, f"{o.shown}: not translated: not a UUID; portgate makes one and keeps it")
        return
    b.set("upnp", "uuid", value, f"line {o.line}: {o.shown}")


def _lifetime(b: _Builder, o: _Option) -> None:
    seconds = _integer(o.value)
    if seconds is None:
        b.note(o.line, f"{o.shown}: not translated: not a number of seconds")
        return
    key = "pcp_min" if o.name == "min_lifetime" else "pcp_max"
    # miniupnpd's own clamps (they are what the router did), then portgate's range
    kept = max(seconds, MINIUPNPD_PCP_MIN) if key == "pcp_min" else min(seconds, MINIUPNPD_PCP_MAX)
    kept = max(kept, 1)
    if kept != seconds:
        b.note(
            o.line,
            f"{o.shown}: {kept} (miniupnpd itself uses {kept}: PCP lifetimes are "
            f"{MINIUPNPD_PCP_MIN}-{MINIUPNPD_PCP_MAX} seconds)",
        )
    b.set("lifetimes", key, kept, f"line {o.line}: {o.shown}")
    b.lifetime_lines[key] = o.line


def _finish_lifetimes(b: _Builder) -> None:
    lifetimes = b.values["lifetimes"]
    if "pcp_min" in lifetimes and "pcp_max" in lifetimes:
        (low, low_comment), (high, _) = lifetimes["pcp_min"], lifetimes["pcp_max"]
        if low > high:
            b.note(
                b.lifetime_lines.get("pcp_min"),
                f"min_lifetime {low} is above max_lifetime {high}: pcp_min set to {high}",
            )
            b.set("lifetimes", "pcp_min", high, low_comment + f", lowered to max_lifetime {high}")


def _rule(b: _Builder, number: int, line: str) -> None:
    try:
        rule = _parse_rule(number, line)
    except ValueError as error:
        b.note(number, f"{line}: not translated: {error} (miniupnpd refuses this file)")
        return
    if rule.regex is not None:
        if rule.action == "allow":
            b.note(
                number,
                f"{line}: not translated: portgate's rules do not match descriptions "
                "(left out, so what it allowed is refused)",
            )
            return
        b.note(
            number,
            f"{line}: description match {rule.regex!r} dropped: the rule now denies "
            "whatever the description",
        )
    entry: dict[str, Any] = {
        "action": rule.action,
        "internal": str(rule.network),
        "internal_ports": _ports(rule.internal),
        "external_ports": _ports(rule.external),
    }
    remark = line.split("#", 1)[1].strip() if "#" in line else ""
    b.rules.append((entry, f"line {number}" + (f": {remark}" if remark else "")))
    b.rule_lines.append(number)


def _ports(span: tuple[int, int]) -> int | str:
    return span[0] if span[0] == span[1] else f"{span[0]}-{span[1]}"


def _finish_rules(b: _Builder) -> None:
    if not b.rules:
        b.note(
            None,
            "no allow/deny rules: miniupnpd allowed every port; portgate keeps its "
            "default rule (external ports 1024-65535 for LAN hosts)",
        )
        return
    last = b.rules[-1][0]
    closed = (
        last["action"] == "deny"
        and last["internal"] == "0.0.0.0/0"
        and _covers_all(last["internal_ports"])
        and _covers_all(last["external_ports"])
    )
    if closed:
        b.set("policy", "default", "deny", "the rules end with a deny for everything")
    else:
        b.set("policy", "default", "allow", "miniupnpd allows what no rule matches")
        b.note(
            b.rule_lines[-1],
            "the rules do not end with 'deny 0-65535 0.0.0.0/0 0-65535': like miniupnpd, "
            "portgate allows what no rule matches (policy.default: allow)",
        )


def _covers_all(ports: int | str) -> bool:
    return isinstance(ports, str) and ports in ("0-65535", "1-65535")


def _finish_lan(b: _Builder, lan: Sequence[str]) -> None:
    if lan:
        found = list(b.lan)
        b.lan = [_Lan(name, comment="--lan") for name in lan]
        for entry in found:  # prefixes learned from listening_ip=ADDR/MASK stay
            for prefix in entry.prefixes:
                b.lan[0].prefixes.append(prefix)
        for _, prefix, _ in b.pending_prefixes:
            b.lan[0].prefixes.append(prefix)
        return
    if b.pending_prefixes:
        line, _, shown = b.pending_prefixes[0]
        raise MigrationError(
            f"line {line}: {shown}: no interface of this machine has that address; "
            "give the LAN interface with --lan IFACE"
        )
    if not b.lan:
        raise MigrationError(
            "no listening_ip= in the miniupnpd config: give the LAN interface with --lan IFACE"
        )


# -- writing YAML ------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = yaml.safe_dump(str(value), default_style='"', width=1_000_000)
    return text.rstrip("\n")


def _comment(text: str) -> str:
    return "  # " + " ".join(text.split()) if text else ""


def _render(b: _Builder, source: str) -> str:
    out = [
        f"# portgate configuration translated from {' '.join(source.split())} by",
        "# `portgate import-miniupnpd`. Each value names the miniupnpd line it came from; keys",
        "# not set here take the defaults documented in etc/portgate.yaml and",
        "# docs/configuration.md. Check it with: portgate config check FILE",
    ]
    for section in _SECTIONS:
        values = b.values[section]
        rules = b.rules if section == "policy" else []
        if section != "wan" and not values and not rules:
            continue
        out.append(f"{section}:")
        for key, (value, comment) in values.items():
            out.append(f"  {key}: {_scalar(value)}{_comment(comment)}")
        if rules:
            out.append("  rules:")
            for rule, comment in rules:
                inner = ", ".join(f"{k}: {_scalar(v)}" for k, v in rule.items())
                out.append(f"    - {{{inner}}}{_comment(comment)}")
        if section == "wan":
            out.append("lan:")
            for entry in b.lan:
                out.append(f"  - interface: {_scalar(entry.interface)}{_comment(entry.comment)}")
                if entry.prefixes:
                    prefixes = ", ".join(_scalar(p) for p in dict.fromkeys(entry.prefixes))
                    out.append(f"    prefixes: [{prefixes}]")
    return "\n".join(out) + "\n"


# -- this machine ------------------------------------------------------------------------------


def system_interface_for(address: IPv4Address) -> str | None:
    """The interface of this machine that has ``address``, if any."""
    try:
        from gateway.netinfo import read_interfaces

        names = [name for _, name in socket.if_nameindex()]
        for name, info in read_interfaces(names).items():
            if info is not None and any(iface.ip == address for iface in info.ipv4):
                return name
    except Exception:
        return None
    return None


def system_address_of(interface: str) -> IPv4Address | None:
    """The first global IPv4 address of ``interface`` on this machine, if any."""
    try:
        from gateway.netinfo import external_ipv4, read_interfaces

        return external_ipv4(read_interfaces([interface]).get(interface))
    except Exception:
        return None


# -- leases ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """One line of a miniupnpd lease file."""

    line: int
    proto: Proto
    external_port: int
    internal: Endpoint
    #: Unix time of expiry; None: permanent.
    expires_wall: float | None
    description: str
    origin: Origin


_LEASE = re.compile(
    r"^(?P<proto>[A-Za-z]+):(?P<eport>[0-9]+):(?P<iaddr>[0-9.]+):(?P<iport>[0-9]+):"
    r"(?P<ts>[0-9]+):(?P<desc>.*)$"
)


def read_leases(text: str, wall: float) -> tuple[list[Lease], list[Notice]]:
    """The leases of a miniupnpd lease file still valid at ``wall`` (Unix time), and a notice
    for each line left out."""
    leases: list[Lease] = []
    notices: list[Notice] = []
    taken: dict[tuple[Proto, int], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        match = _LEASE.match(raw)
        if match is None:
            notices.append(Notice(number, f"{raw.strip()}: not a lease line, skipped"))
            continue
        try:
            proto = Proto(match["proto"].lower())
        except ValueError:
            notices.append(Notice(number, f"{raw.strip()}: skipped: portgate maps TCP and UDP"))
            continue
        try:
            eport, iport = int(match["eport"]), int(match["iport"])
            if not (1 <= eport <= 65535 and 1 <= iport <= 65535):
                raise ValueError("port outside 1-65535")
            internal = Endpoint(IPv4Address(match["iaddr"]), iport)
        except ValueError as error:
            notices.append(Notice(number, f"{raw.strip()}: skipped: {error}"))
            continue
        stamp = int(match["ts"])
        if stamp == 0:
            expires: float | None = None
        elif stamp < REMAINING_TIME_LIMIT:
            expires = wall + stamp
        elif stamp <= wall:
            notices.append(Notice(number, f"{raw.strip()}: skipped: expired"))
            continue
        else:
            expires = float(stamp)
        if (proto, eport) in taken:
            notices.append(
                Notice(
                    number,
                    f"{raw.strip()}: skipped: {proto.value} {eport} is already taken by line "
                    f"{taken[(proto, eport)]}",
                )
            )
            continue
        taken[(proto, eport)] = number
        description = match["desc"].strip()
        origin = Origin.NATPMP if NATPMP_DESCRIPTION.match(description) else Origin.UPNP
        leases.append(Lease(number, proto, eport, internal, expires, description, origin))
    return leases, notices


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: list[Mapping]
    notices: list[Notice]


def import_leases(
    store_path: str,
    leases: Iterable[Lease],
    external: IPv4Address | None,
    now: float,
    wall: float,
) -> ImportResult:
    """Add ``leases`` to the lease store at ``store_path`` in one transaction, skipping any
    whose external port the store already holds. ``external`` is the external address they
    are recorded at (the daemon moves them to the current one when it starts; unknown:
    0.0.0.0). ``now`` is monotonic and ``wall`` Unix time, read at the same moment."""
    address = external if external is not None else IPv4Address(0)
    notices: list[Notice] = []
    try:
        with LeaseStore(store_path) as store:
            existing = store.load(now, wall)
            held = {(m.proto, m.external.port) for m in existing if m.kind is Kind.PORT_MAP}
            # port mappings take ids from FIRST_PORT_MAP_UID up, in creation order
            uid = max(
                [FIRST_PORT_MAP_UID] + [m.uid + 1 for m in existing if m.kind is Kind.PORT_MAP]
            )
            taken = {m.uid for m in existing}
            mappings: list[Mapping] = []
            for lease in leases:
                if (lease.proto, lease.external_port) in held:
                    notices.append(
                        Notice(
                            lease.line,
                            f"skipped: {store_path} already holds {lease.proto.value} "
                            f"{lease.external_port}",
                        )
                    )
                    continue
                held.add((lease.proto, lease.external_port))
                while uid in taken:
                    uid += 1
                mappings.append(_lease_mapping(lease, uid, address, now, wall))
                uid += 1
            store.stage([Change(ChangeKind.ADDED, None, m) for m in mappings], now, wall)
            store.commit()
    except StoreError as error:
        raise MigrationError(str(error)) from None
    return ImportResult(mappings, notices)


def _lease_mapping(
    lease: Lease, uid: int, external: IPv4Address, now: float, wall: float
) -> Mapping:
    if lease.expires_wall is None:
        expires, lifetime = None, None
    else:
        remaining = lease.expires_wall - wall
        expires, lifetime = now + remaining, max(1, round(remaining))
    return Mapping(
        uid=uid,
        kind=Kind.PORT_MAP,
        key=MappingKey(lease.proto, Endpoint(external, lease.external_port)),
        internal=lease.internal,
        owner=Owner(lease.origin, lease.internal.address),
        description=lease.description,
        expires=expires,
        created=now,
        lifetime=lifetime,
    )


def daemon_running(control_socket: str) -> bool:
    """True when something answers on the daemon's control socket. Raises MigrationError when
    that cannot be told (permission denied)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    try:
        sock.connect(control_socket)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return False
    except PermissionError:
        raise MigrationError(
            f"cannot tell whether portgate runs: permission denied on {control_socket}"
        ) from None
    except OSError as error:
        raise MigrationError(
            f"cannot tell whether portgate runs ({control_socket}): {error.strerror or error}"
        ) from None
    finally:
        sock.close()
    return True


def read_text(path: str | Path, what: str) -> str:
    """A file's text, or MigrationError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise MigrationError(f"cannot read {what} {path}: {error.strerror or error}") from None


# -- the command -------------------------------------------------------------------------------


def run_import(
    args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``portgate import-miniupnpd``: 0 done (notices or not), 1 nothing usable came out."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    try:
        return _run_import(args, out, err)
    except MigrationError as error:
        print(f"portgate: {error}", file=err)
        return 1


def _run_import(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    output: str | None = args.output
    if output is not None and output != "-" and os.path.exists(output) and not args.force:
        raise MigrationError(f"{output} exists; give --force to replace it")
    text = read_text(args.conf, "the miniupnpd config")
    translation = translate_conf(
        text,
        wan=args.wan,
        lan=tuple(args.lan),
        lease_store=args.lease_store,
        control_socket=args.control_socket,
        source=args.conf,
    )
    for notice in translation.notices:
        print(notice.render(args.conf), file=err)
    if args.leases is not None:
        _import_lease_file(args.leases or translation.lease_file, translation, err)
    if output is None or output == "-":
        out.write(translation.text)
    else:
        try:
            Path(output).write_text(translation.text, encoding="utf-8")
        except OSError as error:
            raise MigrationError(f"cannot write {output}: {error.strerror or error}") from None
        print(f"portgate: wrote {output}; check it with: portgate config check {output}", file=err)
    return 0


def _import_lease_file(path: str | None, translation: Translation, err: TextIO) -> None:
    if not path:
        raise MigrationError(
            "--leases: the miniupnpd config has no lease_file=; give the file: --leases FILE"
        )
    config = translation.config
    if daemon_running(config.control.socket):
        raise MigrationError(
            f"portgate is running (it answers on {config.control.socket}): stop it before "
            "importing leases, then start it again"
        )
    if not os.path.exists(path):
        print(f"portgate: {path}: no lease file, no leases to import", file=err)
        return
    now, wall = time.monotonic(), time.time()
    leases, notices = read_leases(read_text(path, "the lease file"), wall)
    result = import_leases(config.state.lease_file, leases, translation.external_address, now, wall)
    for notice in notices + result.notices:
        print(notice.render(path), file=err)
    address = translation.external_address
    where = "" if address is not None else " (at 0.0.0.0 until portgate learns the WAN address)"
    print(
        f"portgate: imported {len(result.imported)} lease(s) from {path} into "
        f"{config.state.lease_file}{where}",
        file=err,
    )

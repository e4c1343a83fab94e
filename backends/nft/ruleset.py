"""Our nftables table as libnftables JSON: the skeleton, and mappings as set/map elements.

Pure: values in, JSON-ready dicts out (and back, for reading a dump). One ``inet`` table holds

- ``dnat4``: ``daddr . l4proto . dport : internal addr . port`` for port mappings open to
  anyone; ``dnat4_peer`` (interval flags) adds ``saddr . sport`` in front of the key for
  mappings restricted to remote hosts (UPnP RemoteHost, PCP FILTER), one element per filter;
- ``pin6`` / ``pin6_peer``: IPv6 pinholes (``daddr . l4proto . dport``, optionally with
  ``saddr . sport``), accepted in the forward chain;
- ``lan_ifaces``: the LAN interface names, for hairpin masquerade.

Every packet does one lookup per map, and every change adds or deletes elements: the cost of
a packet or a change does not grow with the number of mappings, and no rule is per mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from gateway.model import Endpoint, KernelEntry, Kind, MappingKey, Proto, RemoteFilter

Json = dict[str, Any]

FAMILY = "inet"
MARKER = "portgate"  # the comment on every rule we create
DNAT4 = "dnat4"
DNAT4_PEER = "dnat4_peer"
PIN6 = "pin6"
PIN6_PEER = "pin6_peer"
LAN_IFACES = "lan_ifaces"
SETS = (DNAT4, DNAT4_PEER, PIN6, PIN6_PEER, LAN_IFACES)
CHAINS = ("prerouting", "postrouting", "forward")
FORWARD_SETS = (PIN6, PIN6_PEER)
ANY_PORT = {"range": [0, 65535]}


@dataclass(frozen=True, slots=True)
class Layout:
    """What the skeleton depends on (from the config)."""

    table: str = "portgate"
    dnat_priority: int = -100
    snat_priority: int = 100
    forward_priority: int = 0
    hairpin: bool = True
    lan_interfaces: tuple[str, ...] = ()
    #: the WAN interface; with ``ipv6_firewall`` new inbound IPv6 connections from it to the
    #: LAN are dropped unless a pinhole admits them (for gateways with no firewall of their own)
    wan_interface: str = ""
    ipv6_firewall: bool = False
    #: jump mode: our forward rules and pinhole sets live in an existing firewall's table and
    #: are reached by a jump from one of its chains (OpenWrt's fw4: ``inet fw4 forward_wan``)
    forward_jump: JumpTarget | None = None

    @property
    def own_sets(self) -> tuple[str, ...]:
        """The sets and maps that live in our own table."""
        if self.forward_jump is None:
            return SETS
        return tuple(name for name in SETS if name not in FORWARD_SETS)

    @property
    def own_chains(self) -> tuple[str, ...]:
        if self.forward_jump is None:
            return CHAINS
        return ("prerouting", "postrouting")

    @property
    def jump_chain(self) -> str:
        """Our regular chain inside the firewall's table (jump mode)."""
        return f"{self.table}_forward"

    def set_location(self, name: str) -> tuple[str, str, str]:
        """(family, table, set name) where one of our sets lives."""
        if self.forward_jump is not None and name in FORWARD_SETS:
            jump = self.forward_jump
            return jump.family, jump.table, f"{self.table}_{name}"
        return FAMILY, self.table, name


@dataclass(frozen=True, slots=True)
class JumpTarget:
    """An existing base chain of another table that should jump to our forward rules."""

    family: str
    table: str
    chain: str

    @classmethod
    def parse(cls, text: str) -> JumpTarget:
        parts = text.split()
        if len(parts) != 3 or parts[0] not in ("inet", "ip6", "ip"):
            raise ValueError(
                f"expected 'FAMILY TABLE CHAIN' (like 'inet fw4 forward_wan'), got {text!r}"
            )
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.family} {self.table} {self.chain}"


# -- skeleton ------------------------------------------------------------------------------
#
# The skeleton is written in nft's own syntax: libnftables 1.0.6 (Debian 12) crashes parsing
# the JSON form of ``dnat ip addr . port to <concatenation> map @m``. Elements, which is what
# every batch of changes consists of, go through the JSON API.


def expected_rules(layout: Layout) -> dict[str, int]:
    """How many rules each of our chains holds when intact."""
    counts = {"prerouting": 2, "postrouting": 1 if layout.hairpin else 0}
    if layout.forward_jump is None:
        counts["forward"] = 3 + (3 if layout.ipv6_firewall else 0)
    return counts


def skeleton_text(layout: Layout) -> str:
    """The nft script that creates our table, its maps, sets, chains and rules."""
    c = f'comment "{MARKER}"'
    l4 = "meta l4proto { tcp, udp }"
    hairpin = (
        f"        ct status dnat iifname @{LAN_IFACES} oifname @{LAN_IFACES} masquerade {c}\n"
        if layout.hairpin
        else ""
    )
    inbound = f'meta nfproto ipv6 iifname "{layout.wan_interface}" oifname @{LAN_IFACES}'
    firewall = (
        f"        {inbound} ct state established,related accept {c}\n"
        f"        {inbound} icmpv6 type {{ destination-unreachable, packet-too-big,"
        f" time-exceeded, parameter-problem, echo-request }} accept {c}\n"
        f"        {inbound} drop {c}\n"
        if layout.ipv6_firewall
        else ""
    )
    forward = (
        "    chain forward {\n"
        f"        type filter hook forward priority {layout.forward_priority}; policy accept;\n"
        + "".join(f"        {rule}\n" for rule in _forward_rules(PIN6, PIN6_PEER))
        + f"{firewall}"
        "    }\n"
    )
    lan = ", ".join(f'"{name}"' for name in layout.lan_interfaces)
    lan_elements = f"        elements = {{ {lan} }}\n" if lan else ""
    return (
        f"table {FAMILY} {layout.table} {{\n"
        f"    map {DNAT4} {{\n"
        "        type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n"
        "    }\n"
        f"    map {DNAT4_PEER} {{\n"
        "        type ipv4_addr . inet_service . ipv4_addr . inet_proto . inet_service"
        " : ipv4_addr . inet_service\n"
        "        flags interval\n"
        "    }\n"
        f"{'' if layout.forward_jump else _pin_sets_text(PIN6, PIN6_PEER)}"
        f"    set {LAN_IFACES} {{\n"
        "        type ifname\n"
        f"{lan_elements}"
        "    }\n"
        "    chain prerouting {\n"
        f"        type nat hook prerouting priority {layout.dnat_priority}; policy accept;\n"
        f"        {l4} dnat ip addr . port to ip daddr . meta l4proto . th dport"
        f" map @{DNAT4} {c}\n"
        f"        {l4} dnat ip addr . port to ip saddr . th sport . ip daddr . meta l4proto"
        f" . th dport map @{DNAT4_PEER} {c}\n"
        "    }\n"
        "    chain postrouting {\n"
        f"        type nat hook postrouting priority {layout.snat_priority}; policy accept;\n"
        f"{hairpin}"
        "    }\n"
        f"{'' if layout.forward_jump else forward}"
        "}\n"
    )


def _pin_sets_text(pin6: str, pin6_peer: str) -> str:
    return (
        f"    set {pin6} {{\n"
        "        type ipv6_addr . inet_proto . inet_service\n"
        "        flags interval\n"
        "    }\n"
        f"    set {pin6_peer} {{\n"
        "        type ipv6_addr . inet_service . ipv6_addr . inet_proto . inet_service\n"
        "        flags interval\n"
        "    }\n"
    )


def _forward_rules(pin6: str, pin6_peer: str) -> list[str]:
    c = f'comment "{MARKER}"'
    l4 = "meta l4proto { tcp, udp }"
    return [
        f"ct status dnat accept {c}",
        f"{l4} ip6 daddr . meta l4proto . th dport @{pin6} accept {c}",
        f"{l4} ip6 saddr . th sport . ip6 daddr . meta l4proto . th dport @{pin6_peer} accept {c}",
    ]


def jump_text(layout: Layout, existing: ForeignDump | None) -> str:
    """Jump mode: (re)create our forward chain and pinhole sets inside the firewall's table
    and the jump to them, removing what an earlier run left there first."""
    jump = layout.forward_jump
    if jump is None:
        return ""
    where = f"{jump.family} {jump.table}"
    pin6 = layout.set_location(PIN6)[2]
    pin6_peer = layout.set_location(PIN6_PEER)[2]
    script = "" if existing is None else remove_jump_text(layout, existing)
    script += f"table {where} {{\n{_pin_sets_text(pin6, pin6_peer)}"
    script += f"    chain {layout.jump_chain} {{\n"
    script += "".join(f"        {rule}\n" for rule in _forward_rules(pin6, pin6_peer))
    script += "    }\n}\n"
    script += f'insert rule {where} {jump.chain} jump {layout.jump_chain} comment "{MARKER}"\n'
    return script


def remove_jump_text(layout: Layout, existing: ForeignDump) -> str:
    jump = layout.forward_jump
    if jump is None:
        return ""
    where = f"{jump.family} {jump.table}"
    script = "".join(
        f"delete rule {where} {jump.chain} handle {h}\n" for h in existing.jump_handles
    )
    if existing.chain_exists:
        script += f"flush chain {where} {layout.jump_chain}\n"
        script += f"delete chain {where} {layout.jump_chain}\n"
    for name in existing.sets:
        script += f"delete set {where} {layout.set_location(name)[2]}\n"
    return script


def replace_table_text(
    layout: Layout,
    exists: bool,
    entries: Iterable[KernelEntry],
    foreign: ForeignDump | None = None,
) -> str:
    """One script that (re)creates the table (and in jump mode our part of the firewall's
    table) with these entries: run as one transaction it swaps old for new atomically."""
    script = f"delete table {FAMILY} {layout.table}\n" if exists else ""
    script += skeleton_text(layout)
    script += jump_text(layout, foreign)
    by_set: dict[str, list[str]] = {}
    for entry in entries:
        for name, elem in elements(entry):
            by_set.setdefault(name, []).append(element_text(elem))
    for name in SETS:
        items = by_set.get(name)
        for start in range(0, len(items or ()), 4096):
            chunk = ", ".join((items or [])[start : start + 4096])
            family, table, set_name = layout.set_location(name)
            script += f"add element {family} {table} {set_name} {{ {chunk} }}\n"
    return script


# -- elements ------------------------------------------------------------------------------


def _addr(address: IPv4Address | IPv6Address) -> str:
    return str(address)


def _prefix(prefix: IPv4Network | IPv6Network) -> Any:
    if prefix.prefixlen == prefix.max_prefixlen:
        return str(prefix.network_address)
    return {"prefix": {"addr": str(prefix.network_address), "len": prefix.prefixlen}}


def _port(port: int) -> Any:
    return ANY_PORT if port == 0 else port


def elements(entry: KernelEntry) -> Iterator[tuple[str, Any]]:
    """The (set name, element) pairs that install one entry."""
    proto = entry.key.proto.value
    if entry.kind is Kind.PORT_MAP:
        external = entry.key.external
        value = {"concat": [_addr(entry.internal.address), entry.internal.port]}
        if not entry.filters:
            yield DNAT4, [{"concat": [_addr(external.address), proto, external.port]}, value]
            return
        for f in entry.filters:
            if not isinstance(f.prefix, IPv4Network):
                raise ValueError(f"an IPv4 mapping cannot filter on {f.prefix}")
            key = [_prefix(f.prefix), _port(f.port), _addr(external.address), proto, external.port]
            yield DNAT4_PEER, [{"concat": key}, value]
        return
    internal = entry.internal
    if not entry.filters:
        yield PIN6, {"concat": [_addr(internal.address), proto, _port(internal.port)]}
        return
    for f in entry.filters:
        if not isinstance(f.prefix, IPv6Network):
            raise ValueError(f"an IPv6 pinhole cannot filter on {f.prefix}")
        key = [
            _prefix(f.prefix),
            _port(f.port),
            _addr(internal.address),
            proto,
            _port(internal.port),
        ]
        yield PIN6_PEER, {"concat": key}


def _text_part(value: Any) -> str:
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return f"{low}-{high}"
    if isinstance(value, dict) and "concat" in value:
        return " . ".join(_text_part(v) for v in value["concat"])
    return str(value)


def element_text(elem: Any) -> str:
    """An element in nft's own syntax (for the start-up script)."""
    if isinstance(elem, list):
        key, value = elem
        return f"{_text_part(key)} : {_text_part(value)}"
    return _text_part(elem)


def element_command(verb: str, layout: Layout, name: str, elems: list[Any]) -> Json:
    family, table, set_name = layout.set_location(name)
    return {
        "add" if verb == "add" else "delete": {
            "element": {"family": family, "table": table, "name": set_name, "elem": elems}
        }
    }


def element_commands(
    layout: Layout, removed: Iterable[KernelEntry], added: Iterable[KernelEntry]
) -> list[Json]:
    """One delete per set for what goes, then one add per set for what comes."""
    commands: list[Json] = []
    for verb, entries in (("delete", removed), ("add", added)):
        by_set: dict[str, list[Any]] = {}
        for entry in entries:
            for name, elem in elements(entry):
                by_set.setdefault(name, []).append(elem)
        for name in SETS:
            if by_set.get(name):
                commands.append(element_command(verb, layout, name, by_set[name]))
    return commands


# -- reading a dump back -------------------------------------------------------------------


def _parse_addr(value: Any) -> IPv4Address | IPv6Address:
    return ip_address(str(value))


def _parse_prefix(value: Any) -> IPv4Network | IPv6Network:
    if isinstance(value, dict) and "prefix" in value:
        p = value["prefix"]
        return ip_network(f"{p['addr']}/{p['len']}")
    if isinstance(value, dict) and "range" in value:
        low, high = (ip_address(str(v)) for v in value["range"])
        networks = list(_summarize(low, high))
        if len(networks) != 1:
            raise ValueError(f"address range {low}-{high} is not one prefix")
        return networks[0]
    return ip_network(str(value))


def _summarize(low: Any, high: Any) -> Iterator[IPv4Network | IPv6Network]:
    from ipaddress import summarize_address_range

    yield from summarize_address_range(low, high)


def _parse_port(value: Any) -> int:
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        if (int(low), int(high)) == (0, 65535):
            return 0
        if low == high:
            return int(low)
        raise ValueError(f"port range {low}-{high} is not ours")
    return int(value)


def _proto(value: Any) -> Proto:
    if isinstance(value, int):
        return Proto.from_number(value)
    return Proto(str(value))


def _unwrap(elem: Any) -> Any:
    """Elements may come wrapped as {"elem": {"val": ...}} (timeouts, comments)."""
    if isinstance(elem, dict) and "elem" in elem:
        return elem["elem"]["val"]
    return elem


def parse_entries(sets: Mapping[str, list[Any]]) -> set[KernelEntry]:
    """The entries described by the elements of our sets (from ``nft -j list table``)."""
    entries: set[KernelEntry] = set()
    for raw in sets.get(DNAT4, []):
        key, value = raw
        ext_addr, proto, ext_port = _unwrap(key)["concat"]
        int_addr, int_port = value["concat"]
        entries.add(
            KernelEntry(
                Kind.PORT_MAP,
                MappingKey(_proto(proto), Endpoint(_parse_addr(ext_addr), int(ext_port))),
                Endpoint(_parse_addr(int_addr), int(int_port)),
            )
        )
    grouped: dict[tuple[Kind, MappingKey, Endpoint], list[RemoteFilter]] = {}
    for raw in sets.get(DNAT4_PEER, []):
        key, value = raw
        prefix, sport, ext_addr, proto, ext_port = _unwrap(key)["concat"]
        int_addr, int_port = value["concat"]
        ident = (
            Kind.PORT_MAP,
            MappingKey(_proto(proto), Endpoint(_parse_addr(ext_addr), int(ext_port))),
            Endpoint(_parse_addr(int_addr), int(int_port)),
        )
        grouped.setdefault(ident, []).append(
            RemoteFilter(_parse_prefix(prefix), _parse_port(sport))
        )
    for raw in sets.get(PIN6, []):
        addr, proto, port = _unwrap(raw)["concat"]
        internal = Endpoint(_parse_addr(addr), _parse_port(port))
        entries.add(KernelEntry(Kind.PINHOLE, MappingKey(_proto(proto), internal), internal))
    for raw in sets.get(PIN6_PEER, []):
        prefix, sport, addr, proto, port = _unwrap(raw)["concat"]
        internal = Endpoint(_parse_addr(addr), _parse_port(port))
        ident = (Kind.PINHOLE, MappingKey(_proto(proto), internal), internal)
        grouped.setdefault(ident, []).append(
            RemoteFilter(_parse_prefix(prefix), _parse_port(sport))
        )
    for (kind, key, internal), filters in grouped.items():
        entries.add(KernelEntry(kind, key, internal, tuple(filters)).canonical())
    return entries


@dataclass(frozen=True, slots=True)
class TableDump:
    """What ``list table`` said about our table."""

    sets: dict[str, list[Any]]
    chains: dict[str, dict[str, Any]]
    rules: dict[str, list[Json]]
    foreign: tuple[str, ...]  # objects in the table we did not create

    def entries(self) -> set[KernelEntry]:
        return parse_entries(self.sets)


def read_dump(output: list[Json], layout: Layout) -> TableDump | None:
    """Our table from a ``list table`` JSON output; None when the output has no table."""
    sets: dict[str, list[Any]] = {}
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[Json]] = {name: [] for name in layout.own_chains}
    foreign: list[str] = []
    seen_table = False
    for item in output:
        if "table" in item:
            seen_table = True
        elif "map" in item or "set" in item:
            body = item.get("map") or item["set"]
            name = str(body["name"])
            if name in layout.own_sets:
                sets[name] = list(body.get("elem", []))
            else:
                foreign.append(f"set {name}")
        elif "chain" in item:
            body = item["chain"]
            name = str(body["name"])
            if name in layout.own_chains:
                chains[name] = body
            else:
                foreign.append(f"chain {name}")
        elif "rule" in item:
            body = item["rule"]
            chain = str(body.get("chain"))
            if chain in rules and body.get("comment") == MARKER:
                rules[chain].append(body)
            else:
                foreign.append(f"rule in {chain}")
        elif "metainfo" not in item:
            foreign.append(next(iter(item), "?"))
    if not seen_table:
        return None
    return TableDump(sets, chains, rules, tuple(foreign))


def skeleton_intact(dump: TableDump, layout: Layout, elements: bool = True) -> bool:
    """Our chains (with the configured priorities), sets and rules are all there; with
    ``elements`` (not in a terse dump) the LAN interface set holds the configured names."""
    if set(dump.sets) != set(layout.own_sets) or set(dump.chains) != set(layout.own_chains):
        return False
    prios = {
        "prerouting": layout.dnat_priority,
        "postrouting": layout.snat_priority,
        "forward": layout.forward_priority,
    }
    for name, prio in prios.items():
        if name not in layout.own_chains:
            continue
        if int(dump.chains[name].get("prio", 0)) != prio:
            return False
    counts = expected_rules(layout)
    if any(len(dump.rules.get(name, [])) != count for name, count in counts.items()):
        return False
    if not elements:
        return True
    lan = {str(_unwrap(e)) for e in dump.sets.get(LAN_IFACES, [])}
    return lan == set(layout.lan_interfaces)


@dataclass(frozen=True, slots=True)
class ForeignDump:
    """Jump mode: what of ours is in the firewall's table."""

    sets: dict[str, list[Any]]  # by our canonical set name (pin6, pin6_peer)
    chain_exists: bool
    chain_rules: int
    jump_handles: tuple[int, ...]

    def entries(self) -> set[KernelEntry]:
        return parse_entries(self.sets)

    def intact(self) -> bool:
        return (
            set(self.sets) == set(FORWARD_SETS)
            and self.chain_exists
            and self.chain_rules == len(_forward_rules(PIN6, PIN6_PEER))
            and len(self.jump_handles) == 1
        )


def read_foreign(output: list[Json], layout: Layout) -> ForeignDump | None:
    """Our objects in the firewall's table from its ``list table`` JSON; None when that
    table does not exist."""
    jump = layout.forward_jump
    assert jump is not None
    by_location = {layout.set_location(name)[2]: name for name in FORWARD_SETS}
    sets: dict[str, list[Any]] = {}
    chain_exists = False
    chain_rules = 0
    handles: list[int] = []
    seen_table = False
    for item in output:
        if "table" in item:
            seen_table = True
        elif "set" in item or "map" in item:
            body = item.get("set") or item["map"]
            name = by_location.get(str(body["name"]))
            if name is not None:
                sets[name] = list(body.get("elem", []))
        elif "chain" in item and item["chain"].get("name") == layout.jump_chain:
            chain_exists = True
        elif "rule" in item:
            body = item["rule"]
            if body.get("chain") == layout.jump_chain and body.get("comment") == MARKER:
                chain_rules += 1
            elif body.get("chain") == jump.chain and _jumps_to(body, layout.jump_chain):
                handles.append(int(body["handle"]))
    if not seen_table:
        return None
    return ForeignDump(sets, chain_exists, chain_rules, tuple(handles))


def _jumps_to(rule: Json, chain: str) -> bool:
    return any(
        isinstance(expr, dict) and expr.get("jump", {}).get("target") == chain
        for expr in rule.get("expr", [])
    )

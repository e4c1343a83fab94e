"""What the kernel says about our interfaces: addresses and prefixes, read over netlink
(two dumps decoded by pyroute2, ``gateway.rtnl``). Used by the daemon at start, on its periodic
re-check and whenever netlink reports a change (``gateway.netwatch``). Addresses that cannot be
bound yet (IPv6 duplicate address detection still running, or failed) are left out until the
kernel says they are usable."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_interface,
)
from typing import Any

from gateway import rtnl

#: IFF_UP (linux/if.h)
IFF_UP = 0x1
#: RT_SCOPE_UNIVERSE: a global address (not host- or link-scoped).
SCOPE_UNIVERSE = 0
#: ifa_flags (linux/if_addr.h)
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    name: str
    index: int
    addresses: tuple[IPv4Interface | IPv6Interface, ...]
    up: bool

    @property
    def ipv4(self) -> tuple[IPv4Interface, ...]:
        return tuple(a for a in self.addresses if isinstance(a, IPv4Interface))

    @property
    def ipv6(self) -> tuple[IPv6Interface, ...]:
        return tuple(a for a in self.addresses if isinstance(a, IPv6Interface))


def read_interfaces(names: list[str]) -> dict[str, InterfaceInfo | None]:
    """Addresses of the named interfaces; None for an interface that does not exist.
    Raises OSError if netlink cannot be read."""
    links = {
        str(msg.get_attr("IFLA_IFNAME")): msg
        for msg in rtnl.dump(rtnl.RTM_GETLINK)
        if msg.get_attr("IFLA_IFNAME") in names
    }
    by_index: dict[int, list[IPv4Interface | IPv6Interface]] = {
        int(msg["index"]): [] for msg in links.values()
    }
    if by_index:
        for msg in rtnl.dump(rtnl.RTM_GETADDR):
            addresses = by_index.get(int(msg["index"]))
            address = msg.get_attr("IFA_ADDRESS")
            if addresses is None or address is None or _unusable(msg):
                continue
            addresses.append(ip_interface(f"{address}/{int(msg['prefixlen'])}"))
    found: dict[str, InterfaceInfo | None] = {}
    for name in names:
        link = links.get(name)
        if link is None:
            found[name] = None
            continue
        index = int(link["index"])
        up = bool(int(link["flags"]) & IFF_UP)
        found[name] = InterfaceInfo(name, index, tuple(by_index[index]), up)
    return found


def _unusable(msg: Any) -> bool:
    """An IPv6 address still in duplicate address detection (or failed it): it cannot be
    bound yet. The kernel announces it again (RTM_NEWADDR) once DAD is done."""
    flags = msg.get_attr("IFA_FLAGS")
    if flags is None:
        flags = msg.get("flags") or 0
    return bool(int(flags) & (IFA_F_TENTATIVE | IFA_F_DADFAILED))


def external_ipv4(info: InterfaceInfo | None) -> IPv4Address | None:
    """The first global IPv4 address of the WAN interface."""
    if info is None:
        return None
    for iface in info.ipv4:
        address = iface.ip
        if not (address.is_loopback or address.is_link_local or address.is_multicast):
            return address
    return None


def usable_ipv6(iface: IPv6Interface) -> bool:
    address: IPv6Address = iface.ip
    return not (address.is_link_local or address.is_loopback or address.is_multicast)

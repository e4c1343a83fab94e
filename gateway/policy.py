"""Who may map what: the ACL, secure mode, LAN checks, reserved ports, lifetime clamps, quotas.

Pure functions over the configuration and the LAN prefixes known at run time; the table asks
the policy and the policy never looks at the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from gateway.config import LifetimeConfig, PolicyConfig, PortRange, Rule
from gateway.errors import GatewayError, Reason
from gateway.model import Endpoint, IPAddress, IPNetwork, Origin, Owner, Proto

#: IGD:2 caps a control point's lease at one week (WANIPConnection:2, AddPortMapping).
UPNP_V2_MAX_LIFETIME = 604800
#: WANIPv6FirewallControl:1 accepts pinhole lease times of 1 to 86400 seconds.
UPNP_PINHOLE_MAX_LIFETIME = 86400
#: RFC 6887 §11.3: no client mapping may use the PCP/NAT-PMP ports themselves.
ALWAYS_RESERVED_UDP = (PortRange(5350, 5351),)


@dataclass(frozen=True, slots=True)
class Lan:
    """The LAN as known now: prefixes of the LAN interfaces (plus configured extras) and the
    gateway's own addresses on them."""

    prefixes: tuple[IPNetwork, ...]
    own_addresses: frozenset[IPAddress] = frozenset()

    def contains(self, address: IPAddress) -> bool:
        return any(address in prefix for prefix in self.prefixes)

    def prefix_of(self, address: IPAddress) -> IPNetwork | None:
        for prefix in self.prefixes:
            if address in prefix:
                return prefix
        return None


class Policy:
    def __init__(
        self,
        config: PolicyConfig,
        lifetimes: LifetimeConfig,
        lan: Lan,
        *,
        upnp_igd_version: int = 2,
    ) -> None:
        self.config = config
        self.lifetimes = lifetimes
        self.lan = lan
        self.upnp_igd_version = upnp_igd_version
        self._reserved = {
            Proto.TCP: tuple(config.reserved_tcp_ports),
            Proto.UDP: ALWAYS_RESERVED_UDP + tuple(config.reserved_udp_ports),
        }

    @property
    def secure_mode(self) -> bool:
        return self.config.secure_mode

    @property
    def max_per_client(self) -> int:
        return self.config.max_mappings_per_client

    @property
    def max_total(self) -> int:
        return self.config.max_mappings

    # -- who may ask -----------------------------------------------------------------------

    def check_source(self, owner: Owner) -> None:
        """The requester must be a LAN host (the admin is trusted)."""
        if owner.is_admin:
            return
        if not self.lan.contains(owner.client) or owner.client in self.lan.own_addresses:
            raise GatewayError(Reason.NOT_LAN, f"{owner.client} is not a LAN host")

    def check_target(self, owner: Owner, internal: Endpoint) -> None:
        """The internal endpoint must be a usable LAN host, and (secure mode) the requester
        itself unless the admin or an allowed PCP THIRD_PARTY request asks."""
        address = internal.address
        self._check_lan_host(address)
        if owner.is_admin or address == owner.client:
            return
        if owner.third_party and self.config.allow_third_party:
            return
        if owner.third_party or self.config.secure_mode:
            raise GatewayError(
                Reason.THIRD_PARTY,
                f"{owner.client} may not map ports to another host ({address})",
            )

    def _check_lan_host(self, address: IPAddress) -> None:
        if (
            address.is_multicast
            or address.is_loopback
            or address.is_unspecified
            or address.is_link_local
            or (isinstance(address, IPv4Address) and address == IPv4Address("255.255.255.255"))
        ):
            raise GatewayError(Reason.POLICY_DENIED, f"{address} is not a host address")
        if address in self.lan.own_addresses:
            raise GatewayError(Reason.POLICY_DENIED, f"{address} is the gateway itself")
        prefix = self.lan.prefix_of(address)
        if prefix is None:
            raise GatewayError(Reason.POLICY_DENIED, f"{address} is not on the LAN")
        if (
            isinstance(prefix, IPv4Network)
            and prefix.prefixlen < 31
            and address in (prefix.network_address, prefix.broadcast_address)
        ):
            raise GatewayError(
                Reason.POLICY_DENIED, f"{address} is the network or broadcast address"
            )

    # -- what may be mapped ------------------------------------------------------------------

    def is_reserved(self, proto: Proto, port: int) -> bool:
        return any(port in span for span in self._reserved[proto])

    def permits(self, proto: Proto, internal: Endpoint, external_port: int) -> bool:
        """The ACL: the first rule matching (protocol, internal address and port, external
        port) decides; no match means the configured default (deny unless told otherwise)."""
        for rule in self.config.rules:
            if self._matches(rule, proto, internal, external_port):
                return rule.action == "allow"
        return self.config.default == "allow"

    def _matches(self, rule: Rule, proto: Proto, internal: Endpoint, external_port: int) -> bool:
        if rule.proto != "any" and rule.proto != proto.value:
            return False
        if internal.port not in rule.internal_ports or external_port not in rule.external_ports:
            return False
        if rule.internal is None:
            return self.lan.contains(internal.address)
        return internal.address in rule.internal

    def external_ranges(self, proto: Proto, internal: Endpoint) -> Iterable[PortRange]:
        """The external ranges the ACL could allow for this internal endpoint (for search)."""
        for rule in self.config.rules:
            if rule.action == "allow" and self._matches_ignoring_external(rule, proto, internal):
                yield rule.external_ports

    def _matches_ignoring_external(self, rule: Rule, proto: Proto, internal: Endpoint) -> bool:
        return self._matches(rule, proto, internal, rule.external_ports.low)

    # -- how long ----------------------------------------------------------------------------

    def clamp_lifetime(self, origin: Origin, requested: int, upnp_v1: bool = False) -> int | None:
        """protocols.md §7.3. None means permanent."""
        lt = self.lifetimes
        if requested < 0:
            raise GatewayError(Reason.BAD_LIFETIME, f"negative lifetime {requested}")
        if origin is Origin.STATIC:
            return None if requested == 0 else requested
        if origin is Origin.UPNP:
            if upnp_v1:
                if requested == 0:
                    return None if lt.upnp_v1_permanent else lt.upnp_max
                return min(requested, lt.upnp_max)
            if requested == 0:
                requested = UPNP_V2_MAX_LIFETIME
            return min(requested, UPNP_V2_MAX_LIFETIME, lt.upnp_max)
        if requested == 0:
            raise GatewayError(Reason.BAD_LIFETIME, "lifetime 0 deletes; it cannot create")
        if origin is Origin.NATPMP:
            return min(requested, lt.natpmp_max)
        return max(lt.pcp_min, min(requested, lt.pcp_max))

    def clamp_pinhole_lifetime(self, origin: Origin, requested: int) -> int | None:
        lt = self.lifetimes
        if requested < 0:
            raise GatewayError(Reason.BAD_LIFETIME, f"negative lifetime {requested}")
        if origin is Origin.STATIC:
            return None if requested == 0 else requested
        if origin is Origin.UPNP:
            if not 1 <= requested <= UPNP_PINHOLE_MAX_LIFETIME:
                raise GatewayError(
                    Reason.BAD_LIFETIME,
                    f"pinhole lease time {requested} is outside 1-{UPNP_PINHOLE_MAX_LIFETIME}",
                )
            return min(requested, lt.pinhole_max)
        if requested <= 0:
            raise GatewayError(Reason.BAD_LIFETIME, "lifetime 0 deletes; it cannot create")
        return max(min(lt.pcp_min, lt.pinhole_max), min(requested, lt.pcp_max, lt.pinhole_max))


def is_ipv6(address: IPAddress) -> bool:
    return isinstance(address, IPv6Address)

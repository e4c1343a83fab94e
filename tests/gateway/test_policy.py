"""The policy: the LAN, the ACL, reserved ports, source/target checks and lifetime clamps."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from gateway.config import LifetimeConfig, PolicyConfig, PortRange, Rule
from gateway.errors import GatewayError, Reason
from gateway.model import Origin, Owner, Proto
from gateway.policy import Lan, Policy
from tests.gateway.conftest import LAN, ep, make_policy, owner

NONCE = b"n" * 12


def admin(client: str = "127.0.0.1") -> Owner:
    return Owner(Origin.STATIC, ip_address(client))


def reason_of(call: object, *args: object) -> Reason:
    assert callable(call)
    with pytest.raises(GatewayError) as caught:
        call(*args)
    return caught.value.reason


# -- Lan -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "prefix"),
    [
        ("192.168.1.10", IPv4Network("192.168.1.0/24")),
        ("192.168.1.1", IPv4Network("192.168.1.0/24")),
        ("2001:db8:1::abcd", IPv6Network("2001:db8:1::/64")),
        ("192.168.2.10", None),
        ("2001:db8:2::1", None),
        ("10.0.0.1", None),
    ],
)
def test_lan_knows_which_prefix_holds_an_address(address: str, prefix: object) -> None:
    assert LAN.prefix_of(ip_address(address)) == prefix
    assert LAN.contains(ip_address(address)) is (prefix is not None)


def test_the_first_matching_lan_prefix_is_reported() -> None:
    lan = Lan((IPv4Network("10.0.0.0/8"), IPv4Network("10.1.0.0/16")))
    assert lan.prefix_of(ip_address("10.1.2.3")) == IPv4Network("10.0.0.0/8")


def test_an_empty_lan_contains_nothing() -> None:
    assert not Lan(()).contains(ip_address("192.168.1.10"))


# -- the ACL ---------------------------------------------------------------------------------------


def permits(policy: Policy, internal: str, external_port: int, proto: Proto = Proto.TCP) -> bool:
    return policy.permits(proto, ep(internal), external_port)


def test_the_default_rules_allow_lan_hosts_external_ports_from_1024() -> None:
    policy = make_policy()
    assert permits(policy, "192.168.1.10:22", 1024)
    assert permits(policy, "192.168.1.10:22", 65535, Proto.UDP)
    assert not permits(policy, "192.168.1.10:22", 1023)
    assert not permits(policy, "192.168.1.10:80", 80)


def test_the_default_rule_does_not_cover_hosts_outside_the_lan() -> None:
    assert not permits(make_policy(), "10.0.0.5:5000", 6000)
    assert permits(make_policy(default="allow"), "10.0.0.5:5000", 6000)


@pytest.mark.parametrize(("default", "expected"), [("deny", False), ("allow", True)])
def test_without_a_matching_rule_the_default_decides(default: str, expected: bool) -> None:
    assert permits(make_policy(rules=(), default=default), "192.168.1.10:80", 80) is expected


def test_the_first_matching_rule_decides() -> None:
    deny_then_allow = (
        Rule(action="deny", external_ports=PortRange(8000, 8999)),
        Rule(action="allow"),
    )
    policy = make_policy(rules=deny_then_allow)
    assert not permits(policy, "192.168.1.10:5000", 8000)
    assert not permits(policy, "192.168.1.10:5000", 8999)
    assert permits(policy, "192.168.1.10:5000", 7999)
    assert permits(policy, "192.168.1.10:5000", 9000)
    policy = make_policy(rules=tuple(reversed(deny_then_allow)))
    assert permits(policy, "192.168.1.10:5000", 8000)


def test_a_rule_matches_only_its_protocol() -> None:
    policy = make_policy(rules=(Rule(action="allow", proto="tcp"),), default="deny")
    assert permits(policy, "192.168.1.10:5000", 6000, Proto.TCP)
    assert not permits(policy, "192.168.1.10:5000", 6000, Proto.UDP)
    policy = make_policy(rules=(Rule(action="deny", proto="udp"),), default="allow")
    assert permits(policy, "192.168.1.10:5000", 6000, Proto.TCP)
    assert not permits(policy, "192.168.1.10:5000", 6000, Proto.UDP)


def test_a_rule_matches_only_its_internal_port_range() -> None:
    rule = Rule(action="allow", internal_ports=PortRange(5000, 5010))
    policy = make_policy(rules=(rule,))
    assert permits(policy, "192.168.1.10:5000", 6000)
    assert permits(policy, "192.168.1.10:5010", 6000)
    assert not permits(policy, "192.168.1.10:4999", 6000)
    assert not permits(policy, "192.168.1.10:5011", 6000)


def test_a_rule_matches_only_its_internal_prefix() -> None:
    rule = Rule(action="allow", internal=IPv4Network("192.168.1.8/29"))
    policy = make_policy(rules=(rule,))
    assert permits(policy, "192.168.1.8:5000", 6000)
    assert permits(policy, "192.168.1.15:5000", 6000)
    assert not permits(policy, "192.168.1.16:5000", 6000)
    assert not permits(policy, "[2001:db8:1::10]:5000", 6000)


def test_a_rule_may_name_an_address_outside_the_lan() -> None:
    rule = Rule(action="allow", internal=IPv4Network("10.9.0.0/16"))
    assert permits(make_policy(rules=(rule,)), "10.9.1.1:5000", 6000)


def test_a_lan_rule_matches_ipv4_and_ipv6_lan_hosts() -> None:
    policy = make_policy(rules=(Rule(action="allow", internal=None),))
    assert permits(policy, "192.168.1.200:5000", 80)
    assert permits(policy, "[2001:db8:1::99]:5000", 80)
    assert not permits(policy, "[2001:db8:2::99]:5000", 80)


def test_external_ranges_lists_what_the_allow_rules_offer_an_endpoint() -> None:
    rules = (
        Rule(action="allow", external_ports=PortRange(2000, 2999), proto="udp"),
        Rule(action="deny", external_ports=PortRange(3000, 3999)),
        Rule(
            action="allow", external_ports=PortRange(4000, 4999), internal_ports=PortRange(22, 22)
        ),
        Rule(action="allow", external_ports=PortRange(5000, 5999)),
    )
    policy = make_policy(rules=rules)
    ranges = list(policy.external_ranges(Proto.TCP, ep("192.168.1.10:22")))
    assert ranges == [PortRange(4000, 4999), PortRange(5000, 5999)]
    ranges = list(policy.external_ranges(Proto.UDP, ep("192.168.1.10:80")))
    assert ranges == [PortRange(2000, 2999), PortRange(5000, 5999)]


# -- reserved ports --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "port", "reserved"),
    [
        (Proto.UDP, 5350, True),
        (Proto.UDP, 5351, True),
        (Proto.UDP, 5349, False),
        (Proto.UDP, 5352, False),
        (Proto.TCP, 5350, False),
        (Proto.TCP, 5351, False),
    ],
)
def test_udp_5350_and_5351_are_always_reserved(proto: Proto, port: int, reserved: bool) -> None:
    assert make_policy().is_reserved(proto, port) is reserved
    assert make_policy(default="allow", rules=()).is_reserved(proto, port) is reserved


def test_configured_reserved_ports_apply_to_their_protocol() -> None:
    policy = make_policy(
        reserved_tcp_ports=(PortRange(22, 22), PortRange(8000, 8100)),
        reserved_udp_ports=(PortRange(53, 53),),
    )
    assert policy.is_reserved(Proto.TCP, 22)
    assert policy.is_reserved(Proto.TCP, 8000)
    assert policy.is_reserved(Proto.TCP, 8100)
    assert not policy.is_reserved(Proto.TCP, 8101)
    assert not policy.is_reserved(Proto.TCP, 53)
    assert policy.is_reserved(Proto.UDP, 53)
    assert policy.is_reserved(Proto.UDP, 5351)
    assert not policy.is_reserved(Proto.UDP, 22)


# -- who may ask, and for whom ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "requester",
    [
        owner(Origin.UPNP, "192.168.1.10"),
        owner(Origin.NATPMP, "192.168.1.254"),
        owner(Origin.PCP, "2001:db8:1::10"),
        admin("127.0.0.1"),
        admin("203.0.113.50"),
    ],
)
def test_lan_hosts_and_the_admin_may_ask(requester: Owner) -> None:
    make_policy().check_source(requester)


@pytest.mark.parametrize(
    "client", ["10.0.0.5", "203.0.113.1", "192.168.1.1", "2001:db8:1::1", "2001:db8:2::10"]
)
def test_requests_from_outside_the_lan_or_from_the_gateway_are_not_lan(client: str) -> None:
    policy = make_policy()
    assert reason_of(policy.check_source, owner(Origin.UPNP, client)) is Reason.NOT_LAN


def test_a_client_may_map_to_itself() -> None:
    make_policy().check_target(owner(Origin.UPNP, "192.168.1.10"), ep("192.168.1.10:80"))
    make_policy().check_target(owner(Origin.PCP, "2001:db8:1::10"), ep("[2001:db8:1::10]:80"))


def test_secure_mode_refuses_another_host() -> None:
    requester = owner(Origin.UPNP, "192.168.1.10")
    policy = make_policy()
    assert reason_of(policy.check_target, requester, ep("192.168.1.11:80")) is Reason.THIRD_PARTY
    make_policy(secure_mode=False).check_target(requester, ep("192.168.1.11:80"))


def test_the_admin_may_target_any_lan_host() -> None:
    make_policy().check_target(admin(), ep("192.168.1.11:80"))


def test_pcp_third_party_needs_allow_third_party_even_without_secure_mode() -> None:
    third = Owner(Origin.PCP, ip_address("192.168.1.10"), NONCE, third_party=True)
    target = ep("192.168.1.11:80")
    for secure in (True, False):
        policy = make_policy(secure_mode=secure)
        assert reason_of(policy.check_target, third, target) is Reason.THIRD_PARTY
        make_policy(secure_mode=secure, allow_third_party=True).check_target(third, target)


def test_allow_third_party_does_not_open_secure_mode_to_other_protocols() -> None:
    policy = make_policy(allow_third_party=True)
    requester = owner(Origin.UPNP, "192.168.1.10")
    assert reason_of(policy.check_target, requester, ep("192.168.1.11:80")) is Reason.THIRD_PARTY


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",
        "192.168.1.1",
        "192.168.1.0",
        "192.168.1.255",
        "224.0.0.1",
        "239.255.255.250",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "169.254.1.1",
        "2001:db8:1::1",
        "2001:db8:2::1",
        "ff02::1",
        "::1",
        "::",
        "fe80::1",
    ],
)
def test_targets_that_are_not_lan_hosts_are_denied_even_to_the_admin(address: str) -> None:
    target = ep(f"[{address}]:80")
    for policy, requester in (
        (make_policy(secure_mode=False), owner(Origin.UPNP, "192.168.1.10")),
        (make_policy(), admin()),
    ):
        assert reason_of(policy.check_target, requester, target) is Reason.POLICY_DENIED


def test_on_a_point_to_point_prefix_both_addresses_are_hosts() -> None:
    lan = Lan((IPv4Network("192.168.9.0/31"),))
    policy = Policy(PolicyConfig(), LifetimeConfig(), lan)
    for address in ("192.168.9.0", "192.168.9.1"):
        policy.check_target(admin(), ep(f"{address}:80"))


# -- lifetimes -------------------------------------------------------------------------------------


SMALL = LifetimeConfig(
    upnp_max=3600,
    upnp_v1_permanent=False,
    natpmp_max=1800,
    pcp_min=300,
    pcp_max=7200,
    pinhole_max=900,
)


@pytest.mark.parametrize(
    ("origin", "requested", "upnp_v1", "lifetimes", "expected"),
    [
        # UPnP IGD:1: 0 is permanent, or the policy maximum when permanence is off
        (Origin.UPNP, 0, True, LifetimeConfig(), None),
        (Origin.UPNP, 0, True, SMALL, 3600),
        (Origin.UPNP, 100, True, LifetimeConfig(), 100),
        (Origin.UPNP, 10**7, True, LifetimeConfig(), 604800),
        (Origin.UPNP, 5000, True, SMALL, 3600),
        # UPnP IGD:2: 0 means one week, more than a week is a week
        (Origin.UPNP, 0, False, LifetimeConfig(), 604800),
        (Origin.UPNP, 1, False, LifetimeConfig(), 1),
        (Origin.UPNP, 604800, False, LifetimeConfig(), 604800),
        (Origin.UPNP, 604801, False, LifetimeConfig(), 604800),
        (Origin.UPNP, 10**7, False, LifetimeConfig(upnp_max=10**8), 604800),
        (Origin.UPNP, 0, False, SMALL, 3600),
        (Origin.UPNP, 5000, False, SMALL, 3600),
        # NAT-PMP: never more than asked, never more than the policy allows
        (Origin.NATPMP, 1, False, LifetimeConfig(), 1),
        (Origin.NATPMP, 7200, False, LifetimeConfig(), 7200),
        (Origin.NATPMP, 86401, False, LifetimeConfig(), 86400),
        (Origin.NATPMP, 7200, False, SMALL, 1800),
        # PCP: into [pcp_min, pcp_max]
        (Origin.PCP, 1, False, LifetimeConfig(), 120),
        (Origin.PCP, 120, False, LifetimeConfig(), 120),
        (Origin.PCP, 3600, False, LifetimeConfig(), 3600),
        (Origin.PCP, 2**32 - 1, False, LifetimeConfig(), 86400),
        (Origin.PCP, 60, False, SMALL, 300),
        (Origin.PCP, 9000, False, SMALL, 7200),
        # the admin: 0 is permanent, anything else as given
        (Origin.STATIC, 0, False, LifetimeConfig(), None),
        (Origin.STATIC, 10**9, False, SMALL, 10**9),
    ],
)
def test_clamp_lifetime(
    origin: Origin,
    requested: int,
    upnp_v1: bool,
    lifetimes: LifetimeConfig,
    expected: int | None,
) -> None:
    policy = make_policy(lifetimes=lifetimes)
    assert policy.clamp_lifetime(origin, requested, upnp_v1) == expected


@pytest.mark.parametrize("origin", [Origin.NATPMP, Origin.PCP])
def test_lifetime_zero_deletes_and_cannot_create(origin: Origin) -> None:
    assert reason_of(make_policy().clamp_lifetime, origin, 0) is Reason.BAD_LIFETIME


@pytest.mark.parametrize("origin", list(Origin))
def test_a_negative_lifetime_is_refused(origin: Origin) -> None:
    policy = make_policy()
    assert reason_of(policy.clamp_lifetime, origin, -1) is Reason.BAD_LIFETIME
    assert reason_of(policy.clamp_pinhole_lifetime, origin, -1) is Reason.BAD_LIFETIME


@pytest.mark.parametrize(
    ("origin", "requested", "lifetimes", "expected"),
    [
        (Origin.UPNP, 1, LifetimeConfig(), 1),
        (Origin.UPNP, 86400, LifetimeConfig(), 86400),
        (Origin.UPNP, 3600, SMALL, 900),
        (Origin.PCP, 1, LifetimeConfig(), 120),
        (Origin.PCP, 3600, LifetimeConfig(), 3600),
        (Origin.PCP, 10**6, LifetimeConfig(), 86400),
        (Origin.PCP, 1, SMALL, 300),
        (Origin.PCP, 5000, SMALL, 900),
        (Origin.PCP, 10**6, LifetimeConfig(pcp_max=10**6, pinhole_max=3600), 3600),
        # a pinhole maximum below the PCP minimum wins
        (Origin.PCP, 1, LifetimeConfig(pcp_min=600, pinhole_max=300), 300),
        (Origin.STATIC, 0, LifetimeConfig(), None),
        (Origin.STATIC, 10**6, SMALL, 10**6),
    ],
)
def test_clamp_pinhole_lifetime(
    origin: Origin, requested: int, lifetimes: LifetimeConfig, expected: int | None
) -> None:
    policy = make_policy(lifetimes=lifetimes)
    assert policy.clamp_pinhole_lifetime(origin, requested) == expected


@pytest.mark.parametrize(
    ("origin", "requested"),
    [(Origin.UPNP, 0), (Origin.UPNP, 86401), (Origin.PCP, 0)],
)
def test_pinhole_lifetimes_out_of_range_are_refused(origin: Origin, requested: int) -> None:
    policy = make_policy()
    assert reason_of(policy.clamp_pinhole_lifetime, origin, requested) is Reason.BAD_LIFETIME


def test_limits_come_from_the_config() -> None:
    policy = make_policy(secure_mode=False, max_mappings_per_client=3, max_mappings=9)
    assert (policy.secure_mode, policy.max_per_client, policy.max_total) == (False, 3, 9)

"""gateway.config: YAML to a frozen, validated tree; one-line errors naming the key path."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import (
    BackendConfig,
    Config,
    ConfigError,
    ControlConfig,
    LanConfig,
    LifetimeConfig,
    LogConfig,
    MetricsConfig,
    NatPmpConfig,
    PcpConfig,
    PolicyConfig,
    PortRange,
    Rule,
    StateConfig,
    UpnpConfig,
    WanConfig,
    dump_config,
    load_config,
    parse_config,
)

ETC = Path(__file__).resolve().parents[2] / "etc"
BASE = "wan: {interface: eth0}\nlan: [{interface: br-lan}]\n"
DEFAULTS = Config(wan=WanConfig(interface="eth0"), lan=(LanConfig(interface="br-lan"),))


def error_of(text: str, source: str = "x.yaml") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    return message


# -- the shipped files --------------------------------------------------------------------


def test_commented_example_equals_the_defaults() -> None:
    assert load_config(ETC / "portgate.yaml") == DEFAULTS


def test_minimal_example_equals_the_defaults() -> None:
    assert load_config(str(ETC / "minimal.yaml")) == DEFAULTS


def test_commented_example_sets_every_key() -> None:
    data = yaml.safe_load((ETC / "portgate.yaml").read_text(encoding="utf-8"))
    assert data == yaml.safe_load(dump_config(DEFAULTS))


# -- defaults and types -------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_config(BASE)
    assert config == DEFAULTS
    assert config.wan == WanConfig(interface="eth0", external_address=None)
    assert config.lan == (LanConfig(interface="br-lan", prefixes=()),)
    assert config.lifetimes == LifetimeConfig(
        upnp_max=604800,
        upnp_v1_permanent=True,
        natpmp_max=86400,
        pcp_min=120,
        pcp_max=86400,
        pinhole_max=86400,
    )
    assert config.policy.secure_mode is True
    assert config.policy.default == "deny"
    assert config.policy.rules == (
        Rule(
            action="allow",
            internal=None,
            internal_ports=PortRange(1, 65535),
            external_ports=PortRange(1024, 65535),
            proto="any",
        ),
    )
    assert config.policy.reserved_tcp_ports == ()
    assert config.policy.reserved_udp_ports == ()
    assert config.policy.max_mappings_per_client == 128
    assert config.policy.max_mappings == 8192
    assert config.policy.allow_third_party is False
    assert config.upnp == UpnpConfig(
        enabled=True,
        http_port=0,
        igd_version=2,
        igd1_user_agents=("Microsoft", "FDSSDP", "Xbox"),
        friendly_name="portgate router",
        uuid=None,
        notify_interval=900,
        ipv6=True,
    )
    assert config.natpmp == NatPmpConfig(enabled=True)
    assert config.pcp == PcpConfig(enabled=True, ipv6=True)
    assert config.state == StateConfig(
        lease_file="/var/lib/portgate/leases.sqlite3", keep_mappings_on_stop=True
    )
    assert config.control == ControlConfig(socket="/run/portgate/control.sock")
    assert config.backend == BackendConfig(type="nft")
    assert config.log == LogConfig(level="info", format="text")
    assert config.metrics == MetricsConfig(enabled=False, listen="127.0.0.1:9567")


def test_values_get_real_python_types() -> None:
    config = parse_config(
        "wan: {interface: eth0, external_address: 203.0.113.1}\n"
        "lan: [{interface: br-lan, prefixes: [10.8.0.0/16, 'fd00:1::/64', 192.0.2.7]}]\n"
        "policy:\n"
        "  rules:\n"
        "    - {action: deny, internal: 192.168.1.10, internal_ports: 22, proto: tcp}\n"
        "    - {action: allow, internal: 'fd00::/8', external_ports: 2000-3000}\n"
        "    - {action: allow, internal: lan}\n"
        "  reserved_udp_ports: [53, 67-68]\n"
        "upnp: {igd_version: 1, uuid: 2fac1234-31f8-11b4-a222-08002b34c003}\n"
    )
    assert config.wan.external_address == IPv4Address("203.0.113.1")
    assert config.lan[0].prefixes == (
        IPv4Network("10.8.0.0/16"),
        IPv6Network("fd00:1::/64"),
        IPv4Network("192.0.2.7/32"),
    )
    deny, v6, lan = config.policy.rules
    assert deny == Rule(
        action="deny",
        internal=IPv4Network("192.168.1.10/32"),
        internal_ports=PortRange(22, 22),
        external_ports=PortRange(1, 65535),
        proto="tcp",
    )
    assert v6.internal == IPv6Network("fd00::/8")
    assert v6.external_ports == PortRange(2000, 3000)
    assert lan.internal is None
    assert config.policy.reserved_udp_ports == (PortRange(53, 53), PortRange(67, 68))
    assert config.upnp.igd_version == 1
    assert config.upnp.uuid == "2fac1234-31f8-11b4-a222-08002b34c003"


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULTS.wan = WanConfig(interface="eth1")  # type: ignore[misc]


def test_yaml_anchors_and_merge_keys_work() -> None:
    config = parse_config(
        BASE + "policy:\n"
        "  rules:\n"
        "    - &web {action: allow, internal: 192.168.1.0/24, external_ports: 80}\n"
        "    - {<<: *web, external_ports: 443}\n"
    )
    assert [rule.external_ports for rule in config.policy.rules] == [
        PortRange(80, 80),
        PortRange(443, 443),
    ]
    assert config.policy.rules[1].internal == IPv4Network("192.168.1.0/24")


# -- errors: one line, key path first -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            BASE + "policy: {rules: [{action: allow, internal: foo}]}",
            'x.yaml: policy.rules[0].internal: expected an IPv4/IPv6 address or prefix or "lan",'
            " got 'foo'",
            id="bad-address",
        ),
        pytest.param(
            BASE + "policy: {rules: [{action: allow, internal: 192.168.1.10/24}]}",
            'x.yaml: policy.rules[0].internal: expected an IPv4/IPv6 address or prefix or "lan",'
            " got '192.168.1.10/24' (host bits set; the prefix is 192.168.1.0/24)",
            id="prefix-with-host-bits",
        ),
        pytest.param(
            BASE + "policy: {rules: [{action: allow, internal: null}]}",
            'x.yaml: policy.rules[0].internal: expected an IPv4/IPv6 address or prefix or "lan",'
            " got null",
            id="null-address",
        ),
        pytest.param(
            BASE + "policy: {rules: [{action: allow, external_ports: 70000}]}",
            "x.yaml: policy.rules[0].external_ports: expected a port or a port range like"
            " 1024-65535 within 0-65535, got 70000",
            id="port-70000",
        ),
        pytest.param(
            BASE + "policy: {rules: [{action: allow, external_ports: '70000'}]}",
            "x.yaml: policy.rules[0].external_ports: expected a port or a port range like"
            " 1024-65535 within 0-65535, got '70000'",
            id="port-70000-text",
        ),
        pytest.param(
            BASE + "policy: {rules: [{action: allow, internal_ports: 5-3}]}",
            "x.yaml: policy.rules[0].internal_ports: expected a port or a port range like"
            " 1024-65535 with low <= high, got '5-3'",
            id="range-reversed",
        ),
        pytest.param(
            BASE + "policy: {reserved_tcp_ports: [22, http]}",
            "x.yaml: policy.reserved_tcp_ports[1]: expected a port or a port range like"
            " 1024-65535, got 'http'",
            id="range-not-a-number",
        ),
        pytest.param(
            BASE + "policy: {rules: [{action: permit}]}",
            "x.yaml: policy.rules[0].action: expected one of 'allow', 'deny', got 'permit'",
            id="bad-literal",
        ),
        pytest.param(
            BASE + "policy: {rules: [{internal: lan}]}",
            "x.yaml: policy.rules[0].action: missing required key",
            id="rule-without-action",
        ),
        pytest.param(
            BASE + "telemetry: true",
            "x.yaml: telemetry: unknown key (expected one of: wan, lan, lifetimes, policy, upnp,"
            " natpmp, pcp, limits, state, control, backend, log, metrics)",
            id="unknown-top-level-key",
        ),
        pytest.param(
            BASE + "upnp: {port: 5000}",
            "x.yaml: upnp.port: unknown key (expected one of: enabled, http_port, igd_version,"
            " igd1_user_agents, friendly_name, uuid, notify_interval, ipv6)",
            id="unknown-nested-key",
        ),
        pytest.param(
            BASE + "policy: {rules: [{action: allow, ports: 80}]}",
            "x.yaml: policy.rules[0].ports: unknown key (expected one of: action, internal,"
            " internal_ports, external_ports, proto)",
            id="unknown-key-in-list-item",
        ),
        pytest.param(
            "lan: [{interface: br-lan}]\n",
            "x.yaml: wan: missing required key",
            id="missing-wan",
        ),
        pytest.param(
            "wan: {}\nlan: [{interface: br-lan}]\n",
            "x.yaml: wan.interface: missing required key",
            id="missing-wan-interface",
        ),
        pytest.param(
            "wan: {interface: eth0}\n",
            "x.yaml: lan: missing required key",
            id="missing-lan",
        ),
        pytest.param(
            "wan: {interface: eth0}\nlan: []\n",
            "x.yaml: lan: expected at least one LAN interface, got an empty list",
            id="lan-empty",
        ),
        pytest.param(
            "wan: {interface: eth0}\nlan: br-lan\n",
            "x.yaml: lan: expected a list, got 'br-lan'",
            id="lan-not-a-list",
        ),
        pytest.param(
            "wan: {interface: eth0}\nlan: [br-lan]\n",
            "x.yaml: lan[0]: expected a mapping, got 'br-lan'",
            id="lan-item-not-a-mapping",
        ),
        pytest.param(
            "wan: {interface: eth0}\nlan: [{interface: br-lan}, {interface: eth0}]\n",
            "x.yaml: lan[1].interface: expected an interface other than wan.interface, got 'eth0'",
            id="lan-is-wan",
        ),
        pytest.param(
            "wan: {interface: eth0}\nlan: [{interface: br-lan}, {interface: br-lan}]\n",
            "x.yaml: lan[1].interface: 'br-lan' is already lan[0]; each LAN interface may"
            " appear once",
            id="lan-duplicate",
        ),
        pytest.param(
            "wan: {interface: a-very-long-interface}\nlan: [{interface: br-lan}]\n",
            "x.yaml: wan.interface: expected a network interface name (1-15 characters,"
            " no '/', ':' or spaces), got 'a-very-long-interface'",
            id="ifname-too-long",
        ),
        pytest.param(
            "wan: {interface: eth0}\nlan: [{interface: 'br lan'}]\n",
            "x.yaml: lan[0].interface: expected a network interface name (1-15 characters,"
            " no '/', ':' or spaces), got 'br lan'",
            id="ifname-with-space",
        ),
        pytest.param(
            "wan: {interface: eth0, external_address: '2001:db8::1'}\nlan: [{interface: br-lan}]\n",
            "x.yaml: wan.external_address: expected an IPv4 address, got '2001:db8::1'",
            id="external-address-not-ipv4",
        ),
        pytest.param(
            "wan: {interface: eth0}\nlan: [{interface: br-lan, prefixes: [lan]}]\n",
            "x.yaml: lan[0].prefixes[0]: expected an IPv4/IPv6 address or prefix, got 'lan'",
            id="lan-prefix-bad",
        ),
        pytest.param(
            BASE + "upnp: {http_port: '8080'}",
            "x.yaml: upnp.http_port: expected an integer from 0 to 65535, got '8080'",
            id="wrong-type-int",
        ),
        pytest.param(
            BASE + "upnp: {http_port: 70000}",
            "x.yaml: upnp.http_port: expected an integer from 0 to 65535, got 70000",
            id="int-out-of-range",
        ),
        pytest.param(
            BASE + "upnp: {enabled: 1}",
            "x.yaml: upnp.enabled: expected true or false, got 1",
            id="wrong-type-bool",
        ),
        pytest.param(
            BASE + "upnp: [enabled]",
            "x.yaml: upnp: expected a mapping, got a list",
            id="wrong-type-section",
        ),
        pytest.param(
            BASE + "upnp: {igd_version: 3}",
            "x.yaml: upnp.igd_version: expected one of 1, 2, got 3",
            id="igd-version",
        ),
        pytest.param(
            BASE + "upnp: {uuid: not-a-uuid}",
            "x.yaml: upnp.uuid: expected a UUID like 2fac1234-31f8-11b4-a222-08002b34c003 or"
            " null, got 'not-a-uuid'",
            id="bad-uuid",
        ),
        pytest.param(
            BASE + "upnp: {uuid: 'urn:uuid:2fac1234-31f8-11b4-a222-08002b34c003'}",
            "x.yaml: upnp.uuid: expected a UUID like 2fac1234-31f8-11b4-a222-08002b34c003 or"
            " null, got 'urn:uuid:2fac1234-31f8-11b4-a222-08002b34c003'",
            id="uuid-with-prefix",
        ),
        pytest.param(
            BASE + "upnp: {friendly_name: ''}",
            "x.yaml: upnp.friendly_name: expected a string of 1 to 64 characters, got ''",
            id="empty-friendly-name",
        ),
        pytest.param(
            BASE + "upnp: {notify_interval: 10}",
            "x.yaml: upnp.notify_interval: expected an integer from 30 to 86400, got 10",
            id="notify-interval",
        ),
        pytest.param(
            BASE + "lifetimes: {pcp_min: 600, pcp_max: 300}",
            "x.yaml: lifetimes.pcp_min: expected at most pcp_max (300), got 600",
            id="pcp-min-above-max",
        ),
        pytest.param(
            BASE + "lifetimes: {natpmp_max: 0}",
            "x.yaml: lifetimes.natpmp_max: expected an integer from 1 to 4294967295, got 0",
            id="lifetime-zero",
        ),
        pytest.param(
            BASE + "policy: {max_mappings_per_client: 0}",
            "x.yaml: policy.max_mappings_per_client: expected an integer >= 1, got 0",
            id="quota-zero",
        ),
        pytest.param(
            BASE + "backend: {type: iptables}",
            "x.yaml: backend.type: expected one of 'memory', 'nft', got 'iptables'",
            id="unknown-backend",
        ),
        pytest.param(
            BASE + "control: {socket: /" + "s" * 107 + "}",
            "x.yaml: control.socket: expected a socket path of 1-107 characters (the AF_UNIX"
            " limit), got '/" + "s" * 55 + "...",
            id="socket-path-too-long",
        ),
        pytest.param(
            BASE + "state: {lease_file: ''}",
            "x.yaml: state.lease_file: expected a non-empty string, got ''",
            id="empty-lease-file",
        ),
        pytest.param(
            BASE + "log: {level: verbose}",
            "x.yaml: log.level: expected one of 'debug', 'error', 'info', 'warning', got 'verbose'",
            id="log-level",
        ),
        pytest.param(
            BASE + "upnp: {on: true}",
            "x.yaml: upnp: expected keys to be strings, got true (quote it)",
            id="boolean-key",
        ),
        pytest.param(
            BASE + "policy: &p {rules: [*p]}",
            "x.yaml: policy.rules[0]: a YAML alias refers to its own ancestor",
            id="alias-cycle",
        ),
        pytest.param(
            "- wan\n- lan\n",
            "x.yaml: expected a mapping at the top level, got a list",
            id="top-level-list",
        ),
        pytest.param(
            "just text\n",
            "x.yaml: expected a mapping at the top level, got 'just text'",
            id="top-level-scalar",
        ),
        pytest.param(
            "",
            "x.yaml: the config is empty; expected a mapping with at least wan and lan",
            id="empty",
        ),
        pytest.param(
            "# only a comment\n",
            "x.yaml: the config is empty; expected a mapping with at least wan and lan",
            id="only-comments",
        ),
        pytest.param(
            "wan: {interface: eth0\nlan: [{interface: br-lan}]\n",
            "x.yaml: line 2, column 4: invalid YAML: expected ',' or '}', but got ':'"
            " (while parsing a flow mapping started at line 1, column 6)",
            id="yaml-syntax",
        ),
        pytest.param(
            "wan:\n  interface: eth0\n interface: eth1\n",
            "x.yaml: line 3, column 2: invalid YAML: expected <block end>, but found"
            " '<block mapping start>' (while parsing a block mapping started at line 1,"
            " column 1)",
            id="yaml-indentation",
        ),
        pytest.param(
            BASE + "wan: {interface: eth1}\n",
            "x.yaml: line 3, column 1: invalid YAML: found duplicate key 'wan' (while"
            " constructing a mapping started at line 1, column 1)",
            id="duplicate-key",
        ),
        pytest.param(
            "wan: {interface: eth0}\n\tlan: []\n",
            "x.yaml: line 2, column 1: invalid YAML: found character '\\t' that cannot start"
            " any token (while scanning for the next token)",
            id="yaml-tab",
        ),
        pytest.param(
            "wan:\n  interface: eth\x000\n",
            "x.yaml: line 2, column 17: invalid YAML: unacceptable character #x0000: special"
            " characters are not allowed",
            id="yaml-control-character",
        ),
    ],
)
def test_error_is_one_line_naming_the_key_path(text: str, message: str) -> None:
    assert error_of(text) == message


def test_error_names_the_source() -> None:
    message = error_of(BASE + "bogus: 1", source="etc/x.yaml")
    assert message.startswith("etc/x.yaml: bogus: unknown key")


def test_default_source_name() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: wan: missing required key$"):
        parse_config("lan: [{interface: br-lan}]\n")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: config file not found"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == f"{tmp_path}: cannot read config file: Is a directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    before = BASE.encode() + b"upnp: {friendly_name: caf"
    path.write_bytes(before + b"\xe9}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: cannot read config file: not UTF-8 text (byte offset {len(before)})"
    )


def test_load_config_names_the_file_in_validation_errors(tmp_path: Path) -> None:
    path = tmp_path / "portgate.yaml"
    path.write_text(BASE + "pcp: {enabled: maybe}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: pcp.enabled: expected true or false, got 'maybe'"


def test_cross_field_checks_also_guard_direct_construction() -> None:
    with pytest.raises(ValueError, match=r"^lan: expected at least one LAN interface"):
        Config(wan=WanConfig(interface="eth0"), lan=())
    with pytest.raises(ValueError, match=r"^pcp_min: expected at most pcp_max \(10\), got 20$"):
        LifetimeConfig(pcp_min=20, pcp_max=10)


# -- PortRange ----------------------------------------------------------------------------


def test_port_range_parses_text_and_ints() -> None:
    assert PortRange.parse("1024-65535") == PortRange(1024, 65535)
    assert PortRange.parse("8080") == PortRange(8080, 8080)
    assert PortRange.parse(8080) == PortRange(8080, 8080)
    assert PortRange.parse(" 10 - 20 ") == PortRange(10, 20)
    assert PortRange.parse("0") == PortRange(0, 0)


@pytest.mark.parametrize("bad", ["70000", "5-3", "", "-", "1-", "-5", "a-b", "1.5", "80,443"])
def test_port_range_rejects_bad_text(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^expected a port or a port range like 1024-65535"):
        PortRange.parse(bad)


def test_port_range_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match=r"^invalid port range 5-3"):
        PortRange(5, 3)
    with pytest.raises(ValueError, match=r"^invalid port range -1-3"):
        PortRange(-1, 3)
    with pytest.raises(ValueError, match=r"^invalid port range 1-65536"):
        PortRange(1, 65536)
    with pytest.raises(TypeError):
        PortRange(True, 3)


def test_port_range_membership_order_and_text() -> None:
    web = PortRange(80, 90)
    assert 80 in web and 90 in web and 85 in web
    assert 79 not in web and 91 not in web
    assert PortRange(1, 5) < PortRange(1, 6) < PortRange(2, 3)
    assert str(PortRange(1024, 65535)) == "1024-65535"
    assert str(PortRange(8080, 8080)) == "8080"


port_ranges = st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(
    lambda bounds: PortRange(min(bounds), max(bounds))
)


@given(port_ranges)
def test_port_range_text_round_trips(ports: PortRange) -> None:
    assert PortRange.parse(str(ports)) == ports


@given(port_ranges, st.integers(-1, 65536))
def test_port_range_membership_matches_bounds(ports: PortRange, port: int) -> None:
    assert (port in ports) == (ports.low <= port <= ports.high)


# -- dump_config --------------------------------------------------------------------------


def test_dump_round_trips_the_defaults() -> None:
    assert parse_config(dump_config(DEFAULTS)) == DEFAULTS


def test_dump_round_trips_a_config_with_rules() -> None:
    config = parse_config(
        "wan: {interface: eth0, external_address: 203.0.113.1}\n"
        "lan: [{interface: br-lan, prefixes: ['fd00::/8']}, {interface: wlan0}]\n"
        "lifetimes: {upnp_v1_permanent: false, pcp_min: 60}\n"
        "policy:\n"
        "  secure_mode: false\n"
        "  default: allow\n"
        "  rules:\n"
        "    - {action: deny, internal: 192.168.1.10, internal_ports: 22, proto: tcp}\n"
        "    - {action: allow, internal: lan, external_ports: 1024-65535, proto: udp}\n"
        "  reserved_tcp_ports: [22, 8000-8100]\n"
        "upnp: {friendly_name: 'yes', igd1_user_agents: [], uuid:"
        " 2fac1234-31f8-11b4-a222-08002b34c003, http_port: 5000}\n"
        "log: {level: debug, format: json}\n"
    )
    text = dump_config(config)
    assert parse_config(text) == config
    rules = yaml.safe_load(text)["policy"]["rules"]
    assert rules[0]["internal"] == "192.168.1.10/32"
    assert rules[0]["internal_ports"] == 22
    assert rules[1]["internal"] == "lan"
    assert rules[1]["external_ports"] == "1024-65535"


def test_dump_writes_every_key() -> None:
    data = yaml.safe_load(dump_config(DEFAULTS))
    assert list(data) == [field.name for field in msgspec.structs.fields(Config)]
    assert list(data["upnp"]) == [field.name for field in msgspec.structs.fields(UpnpConfig)]


ifnames = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=3, max_size=15)
networks = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
).map(lambda pair: ip_network(pair, strict=False))
rules = st.builds(
    Rule,
    action=st.sampled_from(["allow", "deny"]),
    internal=st.none() | networks,
    internal_ports=port_ranges,
    external_ports=port_ranges,
    proto=st.sampled_from(["tcp", "udp", "any"]),
)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    wan, *lans = draw(st.lists(ifnames, min_size=2, max_size=4, unique=True))
    return Config(
        wan=WanConfig(
            interface=wan,
            external_address=draw(st.none() | st.builds(IPv4Address, st.integers(0, 2**32 - 1))),
        ),
        lan=tuple(
            LanConfig(interface=name, prefixes=tuple(draw(st.lists(networks, max_size=3))))
            for name in lans
        ),
        policy=PolicyConfig(
            default=draw(st.sampled_from(["allow", "deny"])),
            rules=tuple(draw(st.lists(rules, max_size=4))),
            reserved_tcp_ports=tuple(draw(st.lists(port_ranges, max_size=3))),
            reserved_udp_ports=tuple(draw(st.lists(port_ranges, max_size=3))),
        ),
        upnp=UpnpConfig(
            friendly_name=draw(st.text(min_size=1, max_size=64).filter(str.isprintable)),
            igd1_user_agents=tuple(draw(st.lists(st.text(min_size=1, max_size=20)))),
        ),
    )


@given(configs())
def test_dump_round_trips_any_valid_config(config: Config) -> None:
    assert parse_config(dump_config(config)) == config


# -- metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "address", "port"),
    [
        ("127.0.0.1:9567", "127.0.0.1", 9567),
        ("[::1]:9100", "::1", 9100),
        ("192.168.77.1:9567", "192.168.77.1", 9567),
    ],
)
def test_metrics_listen_takes_an_explicit_address(listen: str, address: str, port: int) -> None:
    config = parse_config(BASE + f"metrics: {{enabled: true, listen: '{listen}'}}\n")
    assert config.metrics.enabled is True
    assert str(config.metrics.address) == address
    assert config.metrics.port == port


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:9567", "a wildcard address would serve the metrics on every interface"),
        ("[::]:9567", "a wildcard address"),
        ("localhost:9567", "expected ADDRESS:PORT with an IP address"),
        ("127.0.0.1", "expected ADDRESS:PORT with an IP address"),
        ("127.0.0.1:0", "(port 1-65535)"),
        ("127.0.0.1:70000", "(port 1-65535)"),
        ("::1:9567", "expected ADDRESS:PORT with an IP address"),
    ],
)
def test_metrics_listen_refuses_wildcards_and_non_addresses(listen: str, expected: str) -> None:
    message = error_of(BASE + f"metrics: {{listen: '{listen}'}}\n")
    assert message.startswith("x.yaml: metrics.listen: ")
    assert expected in message


def test_metrics_may_not_listen_on_the_external_address() -> None:
    message = error_of(
        "wan: {interface: eth0, external_address: 203.0.113.1}\n"
        "lan: [{interface: br-lan}]\n"
        "metrics: {enabled: true, listen: '203.0.113.1:9567'}\n"
    )
    assert message.startswith("x.yaml: metrics.listen: expected a loopback or admin address")


# -- portgate config check ------------------------------------------------------------------


def test_config_check_prints_the_effective_config_with_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    path = tmp_path / "portgate.yaml"
    path.write_text(BASE)
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert parse_config(out) == DEFAULTS
    assert "listen: 127.0.0.1:9567" in out


def test_config_check_names_the_bad_key_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    path = tmp_path / "portgate.yaml"
    path.write_text(BASE + "metrics: {listen: '0.0.0.0:9567'}\n")
    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"portgate: {path}: metrics.listen: expected a loopback")
    assert captured.err.count("\n") == 1

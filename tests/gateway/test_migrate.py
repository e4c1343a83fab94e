"""portgate import-miniupnpd: real-world miniupnpd configs (Debian's, OpenWrt's) and
hand-written corner cases to portgate YAML; miniupnpd's lease file into the lease store; the
daemon starting on the result. Fixtures: tests/fixtures/miniupnpd/ (see its README)."""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Config, PortRange, Rule, parse_config
from gateway.migrate import (
    Lease,
    MigrationError,
    Notice,
    Translation,
    daemon_running,
    import_leases,
    read_leases,
    run_import,
    translate_conf,
)
from gateway.model import Endpoint, Kind, Origin, Proto
from gateway.policy import Lan, Policy
from gateway.store import LeaseStore
from gateway.table import FIRST_PORT_MAP_UID
from tests.gateway.test_daemon import PORTGATE, Daemon

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "miniupnpd"
#: 2025-11-24: after every fixture lease that expires "long ago", before those of 2100
WALL = 1_764_000_000.0
NOW = 5_000.0
ADDRESSES = {"192.168.1.1": "br-lan", "10.5.0.1": "lan1", "192.168.77.1": "br-test"}


def fake_interface_for(address: IPv4Address) -> str | None:
    return ADDRESSES.get(str(address))


def no_address(interface: str) -> IPv4Address | None:
    return None


def translate(name: str, **options: object) -> Translation:
    text = (FIXTURES / name).read_text()
    return translate_conf(
        text,
        interface_for=fake_interface_for,
        address_of=no_address,
        source=name,
        **options,  # type: ignore[arg-type]
    )


def lines_of(notices: list[Notice]) -> list[int | None]:
    return [n.line for n in notices]


def rules(config: Config) -> list[tuple[str, str, str, str]]:
    return [
        (r.action, str(r.internal), str(r.internal_ports), str(r.external_ports))
        for r in config.policy.rules
    ]


# -- real-world configs --------------------------------------------------------------------------


def test_debians_file_as_shipped_names_no_interface() -> None:
    """Debian's postinst adds ext_ifname= and listening_ip= from debconf; the file as shipped
    has neither, and says so."""
    with pytest.raises(MigrationError, match=r"no ext_ifname=.*--wan IFACE"):
        translate("debian-12-shipped.conf")
    with pytest.raises(MigrationError, match=r"no listening_ip=.*--lan IFACE"):
        translate("debian-12-shipped.conf", wan="eth1")


def test_debians_file_as_shipped_with_the_interfaces_given() -> None:
    t = translate("debian-12-shipped.conf", wan="eth1", lan=["br0"])
    assert t.config.wan.interface == "eth1"
    assert [lan.interface for lan in t.config.lan] == ["br0"]
    assert t.config.upnp.uuid is None  # "uuid=" is empty: portgate makes one
    assert (t.config.natpmp.enabled, t.config.pcp.enabled) == (False, False)
    assert [n.render("f") for n in t.notices] == [
        "f:125: system_uptime=yes: not translated: portgate reports how long the WAN address "
        "has been up",
        "f: no allow/deny rules: miniupnpd allowed every port; portgate keeps its default rule "
        "(external ports 1024-65535 for LAN hosts)",
    ]


def test_debians_file_as_installed() -> None:
    t = translate("debian-12-configured.conf")
    config = t.config
    assert config.wan.interface == "eth1"
    assert config.wan.external_address is None
    assert [lan.interface for lan in config.lan] == ["br0"]
    assert config.upnp.uuid == "5f0d6c2e-8b1a-4d3e-9c47-2a6b1e0f3d91"
    assert config.upnp.igd_version == 2  # force_igd_desc_v1=no
    assert config.upnp.enabled is True
    assert (config.natpmp.enabled, config.pcp.enabled) == (False, False)
    assert config.policy.secure_mode is True
    assert config.policy.rules == Config(wan=config.wan, lan=config.lan).policy.rules
    assert lines_of(t.notices) == [125, None]
    assert t.lease_file is None
    assert "# line 2: ext_ifname=eth1" in t.text


def test_openwrt_fw4() -> None:
    t = translate("openwrt-fw4.conf")
    config = t.config
    assert config.wan.interface == "pppoe-wan"
    assert [lan.interface for lan in config.lan] == ["br-lan"]
    assert config.upnp.igd_version == 1
    assert config.upnp.http_port == 5000
    assert config.upnp.uuid == "2f6b1c44-0c1e-4a8f-b6a5-1d2e3f405162"
    assert (config.natpmp.enabled, config.pcp.enabled) == (True, True)
    assert (config.upnp.ipv6, config.pcp.ipv6) == (True, True)
    assert config.policy.allow_third_party is False
    assert config.policy.default == "deny"
    lan = "192.168.1.0/24"  # the rules said 192.168.1.1/24: miniupnpd masks the address
    assert rules(config) == [
        ("deny", lan, "21", "21"),
        ("deny", lan, "23", "23"),
        ("deny", lan, "135", "135"),
        ("deny", lan, "137-139", "137-139"),
        ("deny", lan, "445", "445"),
        ("deny", lan, "3389", "3389"),
        ("allow", lan, "1024-65535", "1024-65535"),
        ("deny", lan, "1-65535", "1-65535"),
        ("allow", "0.0.0.0/0", "1024-65535", "1024-65535"),
        ("deny", "0.0.0.0/0", "1-65535", "1-65535"),
    ]
    assert lines_of(t.notices) == [7, 11, 16, 17, 18, 19, 20]
    assert all("not translated" in n.text for n in t.notices)
    assert t.lease_file == "/var/run/miniupnpd.leases"
    assert "# line 29: Accept port 1024-65535 on lan" in t.text


def test_openwrt_fw3_with_an_address_as_listening_ip() -> None:
    t = translate("openwrt-fw3-legacy.conf")
    config = t.config
    assert config.wan.interface == "eth0.2"
    assert [(lan.interface, lan.prefixes) for lan in config.lan] == [
        ("br-lan", (IPv4Network("192.168.1.0/24"),))
    ]
    assert config.upnp.http_port == 5000
    assert config.upnp.notify_interval == 30
    assert (config.natpmp.enabled, config.pcp.enabled) == (True, True)  # enable_natpmp=1
    assert (config.lifetimes.pcp_min, config.lifetimes.pcp_max) == (120, 86400)
    assert rules(config) == [
        ("allow", "192.168.1.0/24", "1024-65535", "1024-65535"),
        ("allow", "192.168.2.0/24", "1024-65535", "1024-65535"),  # dotted mask
        ("deny", "0.0.0.0/0", "0-65535", "0-65535"),
    ]
    assert config.policy.default == "deny"
    assert lines_of(t.notices) == [7, 9, 10, 11, 14, 15, 16, 17]
    assert t.lease_file == "/var/upnp.leases"


def test_an_address_no_interface_has_needs_lan() -> None:
    text = "ext_ifname=eth0\nlistening_ip=172.16.9.1/20\n"
    with pytest.raises(MigrationError, match=r"line 2: listening_ip=172.16.9.1/20: no interf"):
        translate_conf(text, interface_for=fake_interface_for, address_of=no_address)
    t = translate_conf(text, lan=["eth1"], interface_for=fake_interface_for, address_of=no_address)
    assert [(lan.interface, lan.prefixes) for lan in t.config.lan] == [
        ("eth1", (IPv4Network("172.16.0.0/20"),))
    ]


def test_the_corner_cases_are_each_reported_once_with_their_line() -> None:
    t = translate("quirks.conf")
    config = t.config
    assert config.wan.interface == "wan0"  # "\text_ifname = wan0"
    assert config.wan.external_address == IPv4Address("198.51.100.20")
    assert [(lan.interface, lan.prefixes) for lan in config.lan] == [
        ("bridge0", ()),
        ("lan1", (IPv4Network("10.5.0.0/16"),)),
    ]
    assert (config.upnp.ipv6, config.pcp.ipv6) == (False, False)
    assert len(config.upnp.friendly_name) == 64
    assert config.upnp.notify_interval == 30
    assert config.upnp.uuid is None
    assert config.upnp.igd_version == 2
    assert config.upnp.enabled is False
    assert (config.natpmp.enabled, config.pcp.enabled) == (False, False)
    assert (config.lifetimes.pcp_min, config.lifetimes.pcp_max) == (1800, 1800)
    assert config.policy.secure_mode is False
    assert config.policy.allow_third_party is True
    assert rules(config) == [
        ("deny", "192.168.0.5/32", "6000-6010", "6000-6010"),  # its regex dropped
        ("allow", "192.168.0.10/32", "22", "22"),
    ]
    assert config.policy.default == "allow"
    by_line: dict[int | None, list[str]] = {}
    for notice in t.notices:
        by_line.setdefault(notice.line, []).append(notice.text)
    assert sorted(line for line in by_line if line is not None) == [
        4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 25, 26, 27, 28, 29, 30, 31, 32, 33,
        34,
    ]  # fmt: skip
    assert by_line[19] == ["min_lifetime 3600 is above max_lifetime 1800: pcp_min set to 1800"]
    assert by_line[29][0].endswith("(left out, so what it allowed is refused)")
    assert "dropped: the rule now denies whatever the description" in by_line[30][0]
    assert "not a prefix" in by_line[31][0]
    assert by_line[34] == [
        "the rules do not end with 'deny 0-65535 0.0.0.0/0 0-65535': like miniupnpd, portgate "
        "allows what no rule matches (policy.default: allow)"
    ]
    assert None not in by_line


#: Options whose value is what portgate does anyway: carried over without a word.
def silently_equal(name: str, value: str, options: dict[str, str]) -> bool:
    return (
        value == ""
        or name == "lease_file"
        or (name, value)
        in {
            ("ipv6_disable", "no"),
            ("force_igd_desc_v1", "no"),
            ("ext_perform_stun", "no"),
            ("ext_allow_private_ipv4", "yes"),
        }
        or (name == "ext_ifname6" and value == options.get("ext_ifname"))
    )


@pytest.mark.parametrize(
    "name",
    ["debian-12-configured.conf", "openwrt-fw4.conf", "openwrt-fw3-legacy.conf", "quirks.conf"],
)
def test_every_line_is_translated_or_reported(name: str) -> None:
    """Each setting of the file is named in the YAML (by its line) or reported."""
    t = translate(name)
    reported = {n.line for n in t.notices}
    options: dict[str, str] = {}
    for number, raw in enumerate((FIXTURES / name).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        option, _, value = line.partition("=")
        options[option.strip()] = value.strip()
        if silently_equal(option.strip(), value.strip(), options):
            continue
        assert number in reported or f"# line {number}" in t.text, (number, line)


@pytest.mark.parametrize(
    "name",
    ["debian-12-configured.conf", "openwrt-fw4.conf", "openwrt-fw3-legacy.conf", "quirks.conf"],
)
def test_the_yaml_round_trips_through_config_check(name: str, tmp_path: Path) -> None:
    t = translate(name)
    assert parse_config(t.text) == t.config
    path = tmp_path / "portgate.yaml"
    path.write_text(t.text)
    done = subprocess.run(
        [*PORTGATE, "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["wan"]["interface"] == t.config.wan.interface


# -- the rules mean what they meant --------------------------------------------------------------


def miniupnpd_permits(lines: list[str], eport: int, address: IPv4Address, iport: int) -> bool:
    """check_upnp_rule_against_permissions(): first match decides, no match allows."""
    for line in lines:
        action, eports, net, iports = line.split()[:4]
        e_low, _, e_high = eports.partition("-")
        i_low, _, i_high = iports.partition("-")
        if (
            int(e_low) <= eport <= int(e_high or e_low)
            and address in IPv4Network(net, strict=False)
            and int(i_low) <= iport <= int(i_high or i_low)
        ):
            return action == "allow"
    return True


ports = st.integers(0, 65535)
spans = st.tuples(ports, ports).map(lambda p: f"{min(p)}-{max(p)}" if p[0] != p[1] else str(p[0]))
nets = st.sampled_from(
    ["192.168.1.0/24", "192.168.1.10/32", "192.168.0.0/16", "0.0.0.0/0", "192.168.1.128/25"]
)
rule_lines = st.lists(
    st.builds(
        lambda action, e, n, i: f"{action} {e} {n} {i}",
        st.sampled_from(["allow", "deny"]),
        spans,
        nets,
        spans,
    ),
    min_size=1,
    max_size=6,
)
hosts = st.integers(0, 255).map(lambda n: IPv4Address(f"192.168.1.{n}"))


@settings(max_examples=60, deadline=None)
@given(rule_lines, st.lists(st.tuples(ports, hosts, ports), min_size=1, max_size=20))
def test_translated_rules_decide_as_miniupnpd_did(
    lines: list[str], probes: list[tuple[int, IPv4Address, int]]
) -> None:
    text = "ext_ifname=eth0\nlistening_ip=br-lan\n" + "\n".join(lines) + "\n"
    config = translate_conf(text, interface_for=fake_interface_for, address_of=no_address).config
    policy = Policy(config.policy, config.lifetimes, Lan((IPv4Network("192.168.0.0/16"),)))
    for eport, host, iport in probes:
        expected = miniupnpd_permits(lines, eport, host, iport)
        assert policy.permits(Proto.TCP, Endpoint(host, iport), eport) == expected


def test_a_rule_comment_does_not_look_like_a_description_match() -> None:
    text = "ext_ifname=eth0\nlistening_ip=br0\nallow 1024-65535 0.0.0.0/0 1024-65535#high\n"
    t = translate_conf(text, address_of=no_address)
    assert t.config.policy.rules == (
        Rule(
            action="allow",
            internal=IPv4Network("0.0.0.0/0"),
            internal_ports=PortRange(1024, 65535),
            external_ports=PortRange(1024, 65535),
        ),
    )
    assert t.notices[0].line == 3  # no final deny-all: default allow, said once


# -- leases ---------------------------------------------------------------------------------------


def fixture_leases() -> tuple[list[Lease], list[Notice]]:
    return read_leases((FIXTURES / "miniupnpd.leases").read_text(), WALL)


def test_the_lease_file_is_read_as_miniupnpd_reads_it() -> None:
    leases, notices = fixture_leases()
    assert [(le.line, le.proto, le.external_port, str(le.internal)) for le in leases] == [
        (1, Proto.TCP, 6881, "192.168.1.10:6881"),
        (2, Proto.UDP, 6881, "192.168.1.10:6881"),
        (3, Proto.TCP, 3074, "192.168.1.20:3074"),
        (4, Proto.UDP, 5353, "192.168.1.30:5353"),
        (9, Proto.TCP, 2222, "192.168.1.70:22"),
    ]
    assert leases[0].expires_wall == 4102444800.0
    assert leases[2].expires_wall is None  # timestamp 0: permanent
    assert leases[2].description == "Xbox: Live (permanent)"  # a colon in the description
    assert leases[4].expires_wall == WALL + 3600  # a remaining-time build
    assert [le.origin for le in leases] == [
        Origin.UPNP,
        Origin.UPNP,
        Origin.UPNP,
        Origin.NATPMP,
        Origin.UPNP,
    ]
    assert [(n.line, n.text.rsplit(": ", 1)[-1]) for n in notices] == [
        (5, "expired"),
        (6, "tcp 6881 is already taken by line 1"),
        (7, "portgate maps TCP and UDP"),
        (8, "port outside 1-65535"),
        (10, "not a lease line, skipped"),
        (11, "not a lease line, skipped"),
    ]


def test_leases_go_into_the_store_as_mappings(tmp_path: Path) -> None:
    store_path = str(tmp_path / "leases.sqlite3")
    leases, _ = fixture_leases()
    result = import_leases(store_path, leases, IPv4Address("203.0.113.1"), NOW, WALL)
    assert result.notices == []
    with LeaseStore(store_path) as store:
        loaded = {m.key.external.port: m for m in store.load(NOW, WALL) if m.proto is Proto.TCP}
    xbox = loaded[3074]
    assert xbox.kind is Kind.PORT_MAP
    assert str(xbox.external) == "203.0.113.1:3074"
    assert xbox.owner.origin is Origin.UPNP
    assert xbox.owner.client == IPv4Address("192.168.1.20")
    assert xbox.expires is None and xbox.lifetime is None
    ssh = loaded[2222]
    assert ssh.expires == pytest.approx(NOW + 3600)
    assert ssh.lifetime == 3600
    assert sorted(m.uid for m in result.imported) == list(
        range(FIRST_PORT_MAP_UID, FIRST_PORT_MAP_UID + 5)
    )  # port mappings take ids from 65536, in creation order


def test_a_second_import_skips_what_the_store_holds(tmp_path: Path) -> None:
    store_path = str(tmp_path / "leases.sqlite3")
    leases, _ = fixture_leases()
    first = import_leases(store_path, leases[:2], None, NOW, WALL)
    again = import_leases(store_path, leases, None, NOW, WALL)
    assert [n.line for n in again.notices] == [1, 2]
    assert min(m.uid for m in again.imported) > max(m.uid for m in first.imported)
    assert all(str(m.external.address) == "0.0.0.0" for m in again.imported)
    with LeaseStore(store_path) as store:
        assert store.count() == 5


def test_a_store_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    other.write_text("not sqlite")
    with pytest.raises(MigrationError, match="not a portgate store"):
        import_leases(str(other), fixture_leases()[0], None, NOW, WALL)


def test_daemon_running_asks_the_control_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    assert daemon_running(str(path)) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        assert daemon_running(str(path)) is True
    assert daemon_running(str(path)) is False  # a stale socket file: nobody listens


# -- the command ----------------------------------------------------------------------------------


def args(*argv: str) -> argparse.Namespace:
    from gateway.cli import build_parser

    return build_parser().parse_args(["import-miniupnpd", *argv])


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_import(args(*argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def conf(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "miniupnpd.conf"
        path.write_text(text)
        return path

    return write


def test_the_command_prints_yaml_and_reports_on_stderr(tmp_path: Path) -> None:
    code, out, err = run(str(FIXTURES / "openwrt-fw4.conf"), "--lan", "br-lan")
    assert code == 0
    assert parse_config(out).wan.interface == "pppoe-wan"
    report = err.splitlines()
    assert len(report) == 7
    assert all(line.startswith(f"{FIXTURES / 'openwrt-fw4.conf'}:") for line in report)


def test_the_command_will_not_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "portgate.yaml"
    out.write_text("keep me")
    source = str(FIXTURES / "debian-12-configured.conf")
    code, _, err = run(source, "-o", str(out))
    assert code == 1 and "exists; give --force" in err
    assert out.read_text() == "keep me"
    code, _, err = run(source, "-o", str(out), "--force")
    assert code == 0
    assert parse_config(out.read_text()).wan.interface == "eth1"
    assert f"wrote {out}" in err


def test_leases_need_a_lease_file(conf: Callable[[str], Path], tmp_path: Path) -> None:
    path = conf("ext_ifname=eth0\nlistening_ip=br0\n")
    code, _, err = run(str(path), "--leases", "--lease-store", str(tmp_path / "s.sqlite3"))
    assert code == 1
    assert "no lease_file=" in err


def test_leases_are_not_imported_while_portgate_runs(
    conf: Callable[[str], Path], tmp_path: Path
) -> None:
    leases = tmp_path / "upnp.leases"
    leases.write_text("TCP:6881:192.168.1.10:6881:0:x\n")
    path = conf(f"ext_ifname=eth0\nlistening_ip=br0\nlease_file={leases}\n")
    sock_path = tmp_path / "control.sock"
    store = tmp_path / "s.sqlite3"
    output = tmp_path / "portgate.yaml"
    common = ["--lease-store", str(store), "--control-socket", str(sock_path), "-o", str(output)]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock_path))
        listener.listen(1)
        code, _, err = run(str(path), "--leases", *common)
    assert code == 1
    assert "portgate is running" in err
    assert not store.exists() and not output.exists()
    code, _, err = run(str(path), "--leases", *common)
    assert code == 0, err
    assert f"imported 1 lease(s) from {leases} into {store}" in err


def test_a_missing_lease_file_is_not_an_error(conf: Callable[[str], Path], tmp_path: Path) -> None:
    path = conf(f"ext_ifname=eth0\nlistening_ip=br0\nlease_file={tmp_path}/none\n")
    code, _, err = run(
        str(path), "--leases", "--lease-store", str(tmp_path / "s"), "--control-socket",
        str(tmp_path / "c.sock"),
    )  # fmt: skip
    assert code == 0
    assert "no lease file" in err


def test_an_unreadable_config_is_one_line(tmp_path: Path) -> None:
    code, out, err = run(str(tmp_path / "missing.conf"))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "cannot read the miniupnpd config" in err


def test_migrate_does_not_import_twisted() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, gateway.migrate; print(sorted(m for m in sys.modules if "
            "m.split('.')[0] == 'twisted'))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == "[]"


# -- from a miniupnpd config to a running portgate -------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, tmp_path / "portgate.yaml")
    try:
        yield d
    finally:
        d.stop()


def test_the_daemon_starts_with_the_imported_config_and_leases(
    tmp_path: Path, daemon: Daemon
) -> None:
    leases = tmp_path / "upnp.leases"
    leases.write_text(
        "TCP:6881:192.168.77.10:6881:0:qBittorrent\n"
        "UDP:5353:192.168.77.11:5353:4102444800:NAT-PMP 5353 udp\n"
    )
    miniupnpd = tmp_path / "miniupnpd.conf"
    miniupnpd.write_text(
        "ext_ifname=pgt-nowan0\next_ip=203.0.113.1\nlistening_ip=192.168.77.1/24\n"
        f"enable_natpmp=yes\nlease_file={leases}\n"
        "allow 1024-65535 192.168.77.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
    )
    config = tmp_path / "portgate.yaml"
    done = subprocess.run(
        [
            *PORTGATE,
            "import-miniupnpd",
            str(miniupnpd),
            "--lan",
            "lo",
            "--leases",
            "--lease-store",
            str(tmp_path / "leases.sqlite3"),
            "--control-socket",
            str(tmp_path / "control.sock"),
            "-o",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "imported 2 lease(s)" in done.stderr
    # the test has no nftables: the memory backend, appended as a user would edit the file
    config.write_text(config.read_text() + "backend:\n  type: memory\n")
    daemon.start()
    rows = sorted(daemon.listing(), key=lambda r: str(r["proto"]))
    assert [
        (r["proto"], r["external"], r["internal"], r["origin"], r["description"]) for r in rows
    ] == [
        ("tcp", "203.0.113.1:6881", "192.168.77.10:6881", "upnp", "qBittorrent"),
        ("udp", "203.0.113.1:5353", "192.168.77.11:5353", "natpmp", "NAT-PMP 5353 udp"),
    ]
    assert rows[0]["lifetime_remaining"] is None
    assert "restored 2 lease(s)" in daemon.log()
    again = subprocess.run(
        [
            *PORTGATE,
            "import-miniupnpd",
            str(miniupnpd),
            "--lan",
            "lo",
            "--leases",
            "--control-socket",
            str(tmp_path / "control.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert again.returncode == 1
    assert "portgate is running" in again.stderr
    status = json.loads(daemon.ctl("status", "--json").stdout)
    assert status["mappings"] == 2

"""etc/portgate.service (checked by systemd-analyze) and etc/openwrt/portgate.init (run
against a stand-in for OpenWrt's procd shell functions).

This container does not boot systemd, so the unit is not started by systemd here. What is
checked: `systemd-analyze verify` accepts it (with ExecStart pointed at this checkout's
`portgate`, since verify insists the command exists), `systemd-analyze security --offline`
rates its exposure, its settings are the intended ones, and the daemon, started the way the
unit starts it, with the unit's capability bounding set and no_new_privs (setpriv), reaches
READY=1 on a fake $NOTIFY_SOCKET.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.gateway.test_daemon import write_config
from tests.gateway.test_sdnotify import FakeSystemd

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "portgate.service"
INIT = ROOT / "etc" / "openwrt" / "portgate.init"
INSTALLED = "/usr/local/bin/portgate"
CAPABILITIES = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}


def unit_settings() -> dict[str, list[str]]:
    """Key -> values (a key may repeat), comments and section headers left out."""
    found: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def checkout_portgate() -> str:
    found = shutil.which("portgate", path=os.path.dirname(sys.executable))
    assert found, "the venv has no portgate command (scripts/setup.sh installs it)"
    return found


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    text = UNIT.read_text()
    assert INSTALLED in text
    path = tmp_path / "portgate.service"
    path.write_text(text.replace(INSTALLED, checkout_portgate()))
    return path


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: scripts/setup.sh installs the systemd package"
    return found


def test_systemd_analyze_verify_accepts_the_unit(verifiable_unit: Path) -> None:
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # not even a warning


def test_the_unit_exposes_little(verifiable_unit: Path) -> None:
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match[1]) <= 2.5  # 1.9 when written; root with three capabilities


def test_the_unit_says_what_it_should() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == [f"{INSTALLED} run --config /etc/portgate/portgate.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert set(s["CapabilityBoundingSet"][0].split()) == CAPABILITIES
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "StateDirectory": "portgate",
        "RuntimeDirectory": "portgate",
    }.items():
        assert s[key] == [value], key
    assert set(s["ReadWritePaths"][0].split()) == {"/var/lib/portgate", "/run/portgate"}


def test_the_unit_paths_match_the_default_config() -> None:
    """The lease store and the admin socket lie in the directories systemd makes writable."""
    from gateway.config import ControlConfig, StateConfig

    assert StateConfig().lease_file.startswith("/var/lib/portgate/")
    assert ControlConfig().socket.startswith("/run/portgate/")


def test_the_commands_are_ones_portgate_understands() -> None:
    command = unit_settings()["ExecStart"][0].split()
    args = build_parser().parse_args(command[1:])
    assert (args.command, args.config) == ("run", "/etc/portgate/portgate.yaml")


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = str(tmp_path / "notify.sock")
    fake = FakeSystemd(path)
    try:
        yield fake, path
    finally:
        fake.close()


def test_the_daemon_runs_within_the_units_capabilities(
    tmp_path: Path, systemd: tuple[FakeSystemd, str]
) -> None:
    """As the unit starts it: only CAP_NET_ADMIN, CAP_NET_BIND_SERVICE and CAP_NET_RAW in the
    bounding set, no new privileges, READY=1 over $NOTIFY_SOCKET (memory backend here)."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is missing"
    fake, path = systemd
    caps = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(CAPABILITIES))
    config = write_config(tmp_path)
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [setpriv, f"--bounding-set=-all,{caps}", "--no-new-privs", checkout_portgate(), "run",
         "--config", str(config)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": path},
    )  # fmt: skip
    try:
        assert fake.wait_for("READY")["READY"] == "1"
        status = Path(f"/proc/{proc.pid}/status").read_text()
        bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", status)[1], 16)  # type: ignore[index]
        assert bounding == (1 << 12) | (1 << 10) | (1 << 13)  # NET_ADMIN, BIND_SERVICE, RAW
        assert re.search(r"NoNewPrivs:\s*1", status)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# -- OpenWrt ----------------------------------------------------------------------------------

#: Stand-ins for the functions /etc/rc.common and procd.sh give an init script: each prints
#: its name and arguments, one per line.
PROCD_STUBS = r"""
for f in procd_open_instance procd_set_param procd_append_param procd_close_instance \
         procd_send_signal procd_add_reload_trigger; do
    eval "$f() { printf '%s' $f; for a in \"\$@\"; do printf ' [%s]' \"\$a\"; done; echo; }"
done
"""


def run_init(function: str) -> list[str]:
    shell = shutil.which("sh")
    assert shell
    script = f"{PROCD_STUBS}\n. {INIT}\n{function}\n"
    done = subprocess.run(
        [shell, "-c", script], capture_output=True, text=True, timeout=20, check=True
    )
    return done.stdout.splitlines()


def test_the_init_script_is_valid_shell() -> None:
    subprocess.run(["sh", "-n", str(INIT)], check=True, timeout=20)
    assert INIT.read_text().startswith("#!/bin/sh /etc/rc.common\n")
    assert os.access(INIT, os.X_OK)


def test_the_init_script_starts_portgate_under_procd() -> None:
    calls = run_init("start_service")
    assert calls[0] == "procd_open_instance [portgate]"
    assert (
        "procd_set_param [command] [/usr/bin/portgate] [run] [--config] "
        "[/etc/portgate/portgate.yaml]"
    ) in calls
    assert "procd_set_param [respawn] [3600] [5] [5]" in calls
    assert "procd_set_param [stderr] [1]" in calls
    assert "procd_set_param [no_new_privs] [1]" in calls
    assert calls[-1] == "procd_close_instance"
    command = next(c for c in calls if c.startswith("procd_set_param [command]"))
    argv = re.findall(r"\[([^\]]*)\]", command)[2:]
    args = build_parser().parse_args(argv)
    assert (args.command, args.config) == ("run", "/etc/portgate/portgate.yaml")


def test_the_init_script_reloads_with_sighup() -> None:
    assert run_init("reload_service") == ["procd_send_signal [portgate] [portgate] [HUP]"]


def test_the_init_script_starts_after_the_network_and_firewall() -> None:
    text = INIT.read_text()
    start = int(re.search(r"^START=([0-9]+)$", text, re.M)[1])  # type: ignore[index]
    assert start > 19  # OpenWrt's firewall starts at 19, the network at 20
    assert re.search(r"^USE_PROCD=1$", text, re.M)

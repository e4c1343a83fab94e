"""Install what the benchmark needs from Debian: miniupnpd-nftables (the daemon to compare
with) and iperf3 (the throughput tool). Whatever service such a package starts or enables on
the host is stopped and disabled again: the daemons run only inside the benchmark's
namespaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable

PACKAGES = ("miniupnpd-nftables", "iperf3")
SERVICES = ("miniupnpd", "iperf3")


def installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return "install ok installed" in done.stdout


def _host_netns() -> str:
    return os.readlink("/proc/1/ns/net")


def host_processes(name: str) -> set[int]:
    """Pids of processes called ``name`` in the host's network namespace (not in a lab)."""
    host = _host_netns()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if comm.read().strip() != name:
                    continue
            if os.readlink(f"/proc/{entry}/ns/net") == host:
                found.add(int(entry))
        except OSError:
            continue
    return found


def _enabled_units(service: str) -> list[str]:
    wants = "/etc/systemd/system/multi-user.target.wants"
    unit = f"{service}.service"
    return [unit] if os.path.exists(os.path.join(wants, unit)) else []


def _rc_links(service: str) -> bool:
    return any(
        os.path.exists(f"/etc/rc{level}.d")
        and any(
            name.endswith(service) and name.startswith("S")
            for name in os.listdir(f"/etc/rc{level}.d")
        )
        for level in "2345"
    )


def ensure_packages(log: Callable[[str], None], packages: tuple[str, ...] = PACKAGES) -> None:
    missing = [p for p in packages if not installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise PermissionError(f"missing Debian packages {missing}; run as root")
    before = {s: host_processes(s) for s in SERVICES}
    units_before = {s: _enabled_units(s) for s in SERVICES}
    rc_before = {s: _rc_links(s) for s in SERVICES}
    log(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env=env,
        check=True,
        capture_output=True,
    )
    for service in SERVICES:
        # a unit or init script the install enabled is disabled again
        for unit in set(_enabled_units(service)) - set(units_before[service]):
            if shutil.which("systemctl"):
                subprocess.run(
                    ["systemctl", "disable", "--now", unit], check=False, capture_output=True
                )
        if _rc_links(service) and not rc_before[service] and shutil.which("update-rc.d"):
            subprocess.run(["update-rc.d", service, "disable"], check=False, capture_output=True)
        # and any process it started on the host is stopped, by pid
        for pid in sorted(host_processes(service) - before[service]):
            log(f"stopping {service} (pid {pid}) that the package started on the host")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and pid in host_processes(service):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                if pid in host_processes(service):
                    os.kill(pid, signal.SIGKILL)


def ensure_profiler(python: str, root: str, log: Callable[[str], None]) -> str:
    """py-spy from the ``bench`` extra; returns its path."""
    found = shutil.which("py-spy", path=os.path.dirname(python)) or shutil.which("py-spy")
    if found:
        return found
    log("installing the bench extra (py-spy) into the venv")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-e",
            f"{root}[bench]",
        ],
        check=True,
    )
    found = shutil.which("py-spy", path=os.path.dirname(python))
    if not found:
        raise FileNotFoundError("py-spy is not in the venv after installing the bench extra")
    return found

"""Start-up errors of the nftables backend are one clear line, not a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.netlab import require_root

pytestmark = pytest.mark.netns


def test_without_root_the_daemon_says_it_needs_root() -> None:
    require_root()
    # pytest's tmp_path sits under a root-only directory; nobody needs to read this one
    tmp_path = Path(tempfile.mkdtemp(prefix="pgt-nonroot-"))
    try:
        tmp_path.chmod(0o777)
        _run_as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _run_as_nobody(tmp_path: Path) -> None:
    config = tmp_path / "portgate.yaml"
    config.write_text(
        f"""
wan: {{interface: pgt-nowan0, external_address: 203.0.113.1}}
lan: [{{interface: lo, prefixes: [192.168.77.0/24]}}]
state: {{lease_file: {tmp_path}/leases.sqlite3}}
control: {{socket: {tmp_path}/control.sock}}
"""
    )
    config.chmod(0o644)
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("portgate: cannot start:")
    assert "root or CAP_NET_ADMIN" in last
    assert "Traceback" not in done.stderr

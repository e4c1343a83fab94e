"""What keeps the daemon's resident size down (gateway.memory, gateway.rtnl): each check runs
in a fresh interpreter, as the daemon's process starts."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import ip_interface

from gateway.netinfo import read_interfaces


def _fresh(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_the_daemon_runs_without_openssl_and_hashing_still_works() -> None:
    out = _fresh(
        "import gateway.memory as m\n"
        "m.keep_openssl_out()\n"
        "import gateway.daemon, hashlib, uuid\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('libssl' in maps, 'libcrypto' in maps, hashlib.sha1(b'pg').hexdigest())\n"
        "print(uuid.uuid5(uuid.NAMESPACE_DNS, 'portgate'))\n"
    )
    assert out.splitlines() == ["False False " + _sha1(b"pg"), _uuid5("portgate")]


def _sha1(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(data).hexdigest()


def _uuid5(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name))


def test_free_memory_goes_back_to_the_system() -> None:
    out = _fresh(
        "import gateway.memory as m\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS'): return int(line.split()[1])\n"
        "junk = [bytes(2000) + str(i).encode() for i in range(20000)]\n"
        "keep = junk[::100]  # pins the heap's top: only a trim returns what lies below\n"
        "del junk\n"
        "before = rss()\n"
        "done = m.release_free_memory()\n"
        "print(done, before - rss())\n"
    )
    done, freed_kib = out.split()
    assert done == "True"
    assert int(freed_kib) > 10_000  # tens of MB were freed but kept by malloc


def test_only_pyroute2s_decoder_is_loaded_and_the_whole_package_still_works() -> None:
    out = _fresh(
        "import sys\n"
        "import gateway.netinfo, gateway.netwatch\n"
        "print(sorted({n.split('.')[1] for n in sys.modules if n.startswith('pyroute2.')}))\n"
        "from pyroute2 import IPRoute\n"
        "print(IPRoute.__name__, 'pyroute2.ndb' in sys.modules)\n"
    )
    light, whole = out.splitlines()
    assert "ndb" not in light and "ipdb" not in light and "conntrack" not in light
    assert whole == "IPRoute True"


def test_interfaces_are_read_from_the_kernel() -> None:
    found = read_interfaces(["lo", "portgate-no-such-if"])
    lo = found["lo"]
    assert lo is not None and lo.up and lo.index == 1
    assert ip_interface("127.0.0.1/8") in lo.addresses
    assert found["portgate-no-such-if"] is None

"""rtnetlink through pyroute2's message codec, without the rest of pyroute2.

``import pyroute2`` runs the package's ``__init__``, which imports every subsystem pyroute2
has (NDB, IPDB, conntrack, ethtool, ipset, IPVS, wireless, devlink, multiprocessing): about
160 modules and 7 MB of resident memory in the daemon (measured by ``python -m bench.memory``),
of which portgate uses only the decoder of link and address messages.
``light_pyroute2()`` registers the package without running its ``__init__``, so importing
``pyroute2.netlink.rtnl...`` loads just those modules (about 80, under 3 MB). Should anything in
the process later ask the package itself for a name (``from pyroute2 import IPRoute``), the
real ``__init__`` runs then, in the same module object, and the name is there: nothing else
in the process sees a difference.

``dump(kind)`` sends one rtnetlink dump request on a plain ``AF_NETLINK`` socket and returns
the decoded messages; ``gateway.netinfo`` reads links and addresses with it.
"""

from __future__ import annotations

import importlib.util
import itertools
import socket
import sys
from typing import Any

__all__ = [
    "RTMGRP_IPV4_IFADDR",
    "RTMGRP_IPV6_IFADDR",
    "RTMGRP_LINK",
    "RTM_GETADDR",
    "RTM_GETLINK",
    "dump",
    "light_pyroute2",
    "marshal",
]

#: rtnetlink request types (linux/rtnetlink.h)
RTM_GETLINK = 18
RTM_GETADDR = 22
#: netlink control (linux/netlink.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
_READ_SIZE = 1 << 16
#: A dump of a router's links or addresses is a few datagrams; this bounds a runaway one.
_MAX_DATAGRAMS = 4096
_TIMEOUT = 5.0
_sequence = itertools.count(1)


def light_pyroute2() -> None:
    """Make ``pyroute2`` importable sub-module by sub-module (see the module docstring).
    Does nothing once the package is loaded, either way."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError("pyroute2 is not installed")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader
    loading = False

    def whole_package(name: str) -> Any:
        """PEP 562: a name the light package lacks: a sub-module, or else run the real
        ``__init__`` once."""
        nonlocal loading
        if loading or name.startswith("__"):
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            # ``from pyroute2 import config``: a sub-module, which needs no ``__init__``
            return importlib.import_module(f"pyroute2.{name}")
        loading = True
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = whole_package  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


light_pyroute2()

from pyroute2.netlink.marshal import Marshal  # noqa: E402
from pyroute2.netlink.rtnl import (  # noqa: E402
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402


class _LinksAndAddresses(Marshal):  # type: ignore[misc]
    """pyroute2's decoder for the two message families portgate reads. (``MarshalRtnl`` would
    also load routes, qdiscs and the rest, and its probe module imports ``ssl``.)"""

    msg_map = {
        RTM_NEWLINK: ifinfmsg,
        RTM_DELLINK: ifinfmsg,
        RTM_NEWADDR: ifaddrmsg,
        RTM_DELADDR: ifaddrmsg,
    }


def marshal() -> Any:
    """A fresh decoder of link and address messages."""
    return _LinksAndAddresses()


def dump(kind: int) -> list[Any]:
    """Every link (``RTM_GETLINK``) or address (``RTM_GETADDR``) the kernel has, decoded.

    Raises OSError if netlink cannot be used or the kernel answers with an error."""
    request: Any = ifinfmsg() if kind == RTM_GETLINK else ifaddrmsg()
    sequence = next(_sequence) & 0xFFFFFFFF
    request["header"]["type"] = kind
    request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    request["header"]["sequence_number"] = sequence
    request["family"] = socket.AF_UNSPEC
    request.encode()
    decoder = marshal()
    found: list[Any] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(_TIMEOUT)
        sock.bind((0, 0))
        sock.send(bytes(request.data))
        for _ in range(_MAX_DATAGRAMS):
            data = sock.recv(_READ_SIZE)
            if not data:
                raise OSError("netlink: the kernel closed the dump")
            for message in decoder.parse(data):
                header = message["header"]
                if int(header["sequence_number"]) != sequence:
                    continue
                kind_seen = int(header["type"])
                if kind_seen == NLMSG_DONE:
                    return found
                if kind_seen == NLMSG_ERROR:
                    error = header.get("error")
                    if isinstance(error, Exception):  # pyroute2 decodes it as NetlinkError
                        raise OSError(int(getattr(error, "code", 0) or 0), str(error))
                    continue
                found.append(message)
    raise OSError("netlink: the dump did not end")

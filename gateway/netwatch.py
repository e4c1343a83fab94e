"""Interface and address changes as the kernel reports them (rtnetlink multicast), so the
daemon re-reads the network at once instead of at its next periodic check.

``watch_interfaces(reactor, names, on_change)`` opens a netlink socket subscribed to link and
IPv4/IPv6 address events, has the reactor read it, and calls ``on_change()`` shortly after
anything happens to one of ``names`` (created, removed, renamed, up or down, an address added or
removed). Bursts (a DHCP renewal, ``ip addr flush``, a bridge coming up) are coalesced into one
call ``settle`` seconds after the first event. It returns a function that stops watching.

Why a socket of our own rather than pyroute2's ``IPRoute.bind()`` with a reader on its
``fileno()``: pyroute2 0.9's synchronous ``IPRoute`` drives an asyncio loop of its own inside
each call, and ``get()`` hands back one message per call while keeping the rest of a datagram
in an internal queue, so the descriptor's readiness no longer says whether messages are
waiting, and a ``get()`` with nothing queued blocks the reactor. A plain ``AF_NETLINK`` socket
is read without blocking until it is empty on every wake-up; pyroute2 still does the part it is
good at, decoding the messages (its ``Marshal``, loaded without the rest of pyroute2:
``gateway.rtnl``). Should the kernel's queue overflow (ENOBUFS,
events were lost), the watcher reports a change anyway: the daemon re-reads everything.

Nothing here decides what a change means: the daemon's ``recheck_network`` compares what it
reads with what it had.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK, marshal

__all__ = ["SETTLE", "InterfaceWatcher", "watch_interfaces"]

log = Logger(namespace="portgate.netwatch")

#: Seconds between the first event of a burst and the call that reports it.
SETTLE = 0.2
#: rtnetlink message types (linux/rtnetlink.h).
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
_LINK_TYPES = frozenset({RTM_NEWLINK, RTM_DELLINK})
_ADDRESS_TYPES = frozenset({RTM_NEWADDR, RTM_DELADDR})
_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
_RECEIVE_BUFFER = 1 << 20
_READ_SIZE = 1 << 16
#: Datagrams read per wake-up at most, so a flood of events cannot hold the reactor.
_READS_PER_WAKEUP = 64


class InterfaceWatcher:
    """Twisted's ``IReadDescriptor`` (``fileno``, ``doRead``, ``connectionLost``,
    ``logPrefix``; reactors take it by duck typing) over one rtnetlink socket."""

    def __init__(
        self,
        reactor: Any,
        names: Iterable[str],
        on_change: Callable[[], None],
        *,
        settle: float = SETTLE,
    ) -> None:
        self._reactor = reactor
        self._names = frozenset(names)
        self._on_change = on_change
        self._settle = settle
        self._marshal = marshal()
        self._sock: socket.socket | None = None
        self._pending: Any = None
        #: interface index -> name, for address events (which carry only the index)
        self._indexes: dict[int, str] = {}

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Open and subscribe the socket and start reading it; raises OSError."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            sock.bind((0, _GROUPS))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        for name in self._names:
            # one that is not there yet will be named by its RTM_NEWLINK
            with contextlib.suppress(OSError):
                self._indexes[socket.if_nametoindex(name)] = name
        self._reactor.addReader(self)

    def stop(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._sock is not None:
            self._reactor.removeReader(self)
            self._sock.close()
            self._sock = None

    # -- IReadDescriptor ----------------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def logPrefix(self) -> str:
        return "netwatch"

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped us (shutdown): nothing is left to do."""

    def doRead(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    log.warn("netlink: events were lost; re-reading the network")
                    self._changed()
                    continue
                log.error("netlink: cannot read interface events: {error}", error=error)
                return
            if not data:
                return
            self.feed(data)

    # -- events -------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """One datagram of rtnetlink messages (also the seam for tests)."""
        try:
            messages = self._marshal.parse(data)
        except Exception:
            log.failure("netlink: a message did not parse; re-reading the network")
            self._changed()
            return
        for message in messages:
            kind = int(message["header"]["type"])
            if kind in _LINK_TYPES:
                if self._link_event(kind, message):
                    self._changed()
            elif kind in _ADDRESS_TYPES and self._address_event(message):
                self._changed()

    def _link_event(self, kind: int, message: Any) -> bool:
        index = int(message.get("index") or 0)
        name = message.get_attr("IFLA_IFNAME")
        known = self._indexes.get(index)
        if kind == RTM_DELLINK:
            self._indexes.pop(index, None)
        elif name is not None:
            if name in self._names:
                self._indexes[index] = str(name)
            elif known is not None:
                self._indexes.pop(index)  # renamed away from a watched name
        return known is not None or name in self._names

    def _address_event(self, message: Any) -> bool:
        index = int(message.get("index") or 0)
        name = self._indexes.get(index)
        if name is None:
            try:
                name = socket.if_indextoname(index)
            except OSError:
                return False
            if name in self._names:
                self._indexes[index] = name
        return name in self._names

    def _changed(self) -> None:
        if self._pending is not None and self._pending.active():
            return
        self._pending = self._reactor.callLater(self._settle, self._report)

    def _report(self) -> None:
        self._pending = None
        try:
            self._on_change()
        except Exception:
            log.failure("netlink: the change handler failed")


def watch_interfaces(
    reactor: Any,
    names: Iterable[str],
    on_change: Callable[[], None],
    *,
    settle: float = SETTLE,
) -> Callable[[], None]:
    """Call ``on_change()`` soon after a link or address change of one of ``names``; returns
    the function that stops watching. Raises OSError when netlink cannot be opened."""
    watcher = InterfaceWatcher(reactor, names, on_change, settle=settle)
    watcher.start()
    return watcher.stop

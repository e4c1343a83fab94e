"""Is the WAN address reachable from the Internet? Private WAN addresses, CGNAT and double NAT.

A router whose WAN address is private (RFC 1918, or RFC 6598's shared space 100.64.0.0/10
that carrier-grade NATs hand out) sits behind another NAT: a port mapped here is opened on an
address nobody on the Internet can reach. ``WanReachability`` notices that, says so once in
the log in words a person understands, and, per ``wan.private_address``, keeps serving
(``warn``, the default) or makes the gateway behave as if it had no external address
(``refuse``): every front-end then answers its "no external address" error (NAT-PMP and PCP
NETWORK_FAILURE, UPnP's empty GetExternalIPAddress and refused AddPortMapping). Existing
mappings are kept, at their address, and move back into service once it is usable again.

With ``wan.stun`` set, a private address is put to a STUN server (RFC 8489) at once and then
every ``wan.stun.interval`` seconds: if the server sees another address, something translates
in between (CGNAT, an ISP router): "behind another NAT". If it sees the WAN address itself, the
private range is routed to us without translation and the address is served even under
``refuse``. A server that does not answer changes nothing: the last finding stands, one line
says the server is not answering, and it is asked again at the interval. Under ``refuse`` a
private address is refused until a STUN server has shown it untranslated; without
``wan.stun`` it stays refused.

What counts as private (``private_range``) is deliberate: RFC 1918, RFC 6598, 192.0.0.0/24
(DS-Lite's B4 addresses live there), the benchmarking, loopback, link-local, "this network"
and reserved ranges. The documentation ranges of RFC 5737 (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24) are *not*: Python's ``ipaddress`` calls them private, but labs, demos and this
project's tests use them as stand-ins for public addresses, and no ISP hands them out.

The daemon feeds ``update(address, source)`` at start and on every network re-check (netlink
events and the periodic one); ``source`` is the WAN interface's own address, which STUN
requests are sent from. The STUN transaction itself is a ``StunProbe`` handed in by the daemon
(``protocols.stun.client``), so this module knows no concrete front-end.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clock import Clock, DelayedCall
from gateway.config import WanConfig
from gateway.ports import Admin, Listener
from gateway.requests import Request, Result

__all__ = [
    "PRIVATE_RANGES",
    "StunProbe",
    "WanReachability",
    "WanStatusAdmin",
    "private_range",
    "usable_address",
]

log = Logger(namespace="portgate.wan")

#: Sends one STUN Binding request from the given source address (None: the kernel picks);
#: fires with the IPv4 address the server saw, or fails with a one-line reason.
StunProbe = Callable[[IPv4Address | None], Deferred[IPv4Address]]

#: IPv4 ranges a WAN address in which is not reachable from the Internet as it is.
PRIVATE_RANGES: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("10.0.0.0/8"), "RFC 1918 private address space"),
    (IPv4Network("172.16.0.0/12"), "RFC 1918 private address space"),
    (IPv4Network("192.168.0.0/16"), "RFC 1918 private address space"),
    (IPv4Network("100.64.0.0/10"), "RFC 6598 shared address space, used by carrier-grade NAT"),
    (IPv4Network("192.0.0.0/24"), "IETF protocol assignments, used by DS-Lite"),
    (IPv4Network("198.18.0.0/15"), "benchmarking range"),
    (IPv4Network("0.0.0.0/8"), '"this network" range'),
    (IPv4Network("127.0.0.0/8"), "loopback range"),
    (IPv4Network("169.254.0.0/16"), "link-local range"),
    (IPv4Network("240.0.0.0/4"), "reserved range"),
)

PrivateAddressPolicy = Literal["warn", "refuse"]


def private_range(address: IPv4Address) -> str | None:
    """The name of the non-public range ``address`` is in, or None for a public one."""
    for network, name in PRIVATE_RANGES:
        if address in network:
            return name
    return None


def usable_address(
    address: IPv4Address | None,
    policy: PrivateAddressPolicy,
    stun_sees: IPv4Address | None = None,
) -> IPv4Address | None:
    """The external address to serve: ``address``, or None where ``refuse`` applies (a
    private address that no STUN answer has shown to be untranslated)."""
    if address is None or policy == "warn" or private_range(address) is None:
        return address
    return address if stun_sees == address else None


class WanReachability:
    """Follows the WAN address, judges it, and tells the service which address to serve
    (see the module docstring)."""

    def __init__(
        self,
        config: WanConfig,
        clock: Clock,
        apply: Callable[[IPv4Address | None], None],
        probe: StunProbe | None = None,
    ) -> None:
        """``apply`` is told the address to serve (``GatewayService.set_external_address``);
        ``probe`` runs a STUN transaction to ``config.stun.server`` (required when that is
        set)."""
        if (config.stun is None) != (probe is None):
            raise ValueError("a STUN probe is needed exactly when wan.stun is set")
        self._policy: PrivateAddressPolicy = config.private_address
        self._stun = config.stun
        self._server = None if config.stun is None else config.stun.address_text
        self._clock = clock
        self._apply = apply
        self._probe = probe
        self.address: IPv4Address | None = None
        self.source: IPv4Address | None = None
        self.private: str | None = None
        #: what the STUN server last saw, for the current address (None: not known)
        self.stun_sees: IPv4Address | None = None
        self.checked_at: float | None = None
        self.stun_error: str | None = None
        self._known = False
        self._failing = False
        self._pending: Deferred[IPv4Address] | None = None
        self._timer: DelayedCall | None = None
        self._logged: str | None = None
        self._stopped = False

    # -- what the daemon calls -------------------------------------------------------------

    def update(self, address: IPv4Address | None, source: IPv4Address | None = None) -> None:
        """The WAN address as it is now (configured or learned; None: there is none) and the
        address to send STUN requests from. Cheap when nothing changed; re-applies the
        address to serve either way (so a change whose commit failed is tried again)."""
        if self._stopped:
            return
        self.source = source
        if not self._known or address != self.address:
            self._known = True
            self._new_address(address)
        self._apply(self.serving_address)

    def stop(self) -> None:
        self._stopped = True
        self._cancel()

    # -- the finding -----------------------------------------------------------------------

    @property
    def serving_address(self) -> IPv4Address | None:
        return usable_address(self.address, self._policy, self.stun_sees)

    @property
    def behind_nat(self) -> bool | None:
        """True: a STUN server saw another address; False: it saw ours, or ours is public;
        None: private and not (yet) known."""
        if self.address is None:
            return None
        if self.private is None:
            return False
        if self.stun_sees is None:
            return None
        return self.stun_sees != self.address

    def gauges(self) -> tuple[bool, bool]:
        """(the WAN address is private, a STUN server saw another one), for the metrics;
        plain attribute reads, safe from a scrape's thread."""
        return self.private is not None, self.behind_nat is True

    def status(self) -> dict[str, object]:
        """The ``wan`` section of ``portgate status``."""
        now = self._clock.now()
        return {
            "address": None if self.address is None else str(self.address),
            "private": self.private,
            "private_address": self._policy,
            "stun_server": self._server,
            "stun_sees": None if self.stun_sees is None else str(self.stun_sees),
            "stun_checked_ago": None
            if self.checked_at is None
            else max(0, int(now - self.checked_at)),
            "stun_error": self.stun_error,
            "behind_nat": self.behind_nat,
            "serving": self.address is not None and self.serving_address is not None,
        }

    # -- inside ----------------------------------------------------------------------------

    def _new_address(self, address: IPv4Address | None) -> None:
        self._cancel()
        self.address = address
        self.private = None if address is None else private_range(address)
        self.stun_sees = None
        self.checked_at = None
        self.stun_error = None
        self._failing = False
        self._report()
        if self.private is not None and self._probe is not None:
            self._check()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _check(self) -> None:
        self._timer = None
        if self._stopped or self._pending is not None or self._probe is None:
            return
        address = self.address
        try:
            pending = self._probe(self.source)
        except Exception as error:  # a probe that raises instead of failing its Deferred
            self._failed(error, address)
            return
        self._pending = pending
        pending.addCallbacks(
            self._answered,
            self._on_failure,
            callbackArgs=(address,),
            errbackArgs=(address,),
        )

    def _answered(self, sees: IPv4Address, address: IPv4Address | None) -> None:
        if address != self.address or self._stopped:
            return
        self._pending = None
        self.stun_sees = sees
        self.checked_at = self._clock.now()
        self.stun_error = None
        if self._failing:
            self._failing = False
            log.info("STUN server {server} answers again", server=self._server)
        self._apply(self.serving_address)
        self._report()
        self._schedule()

    def _on_failure(self, failure: Failure, address: IPv4Address | None) -> None:
        error = failure.value
        self._failed(error if error is not None else RuntimeError("unknown failure"), address)

    def _failed(self, error: BaseException, address: IPv4Address | None) -> None:
        if isinstance(error, CancelledError) or address != self.address or self._stopped:
            return
        self._pending = None
        reason = str(error) or type(error).__name__
        self.stun_error = reason
        if not self._failing:
            self._failing = True
            if self.stun_sees is None:
                meanwhile = (
                    "mapping requests are refused meanwhile (wan.private_address: refuse)"
                    if self._policy == "refuse"
                    else "serving meanwhile"
                )
            else:
                meanwhile = f"the last answer stands ({self.stun_sees})"
            log.warn(
                "cannot tell whether WAN address {address} is behind another NAT: {reason}; "
                "{meanwhile}; asking again every {interval} s",
                address=address,
                reason=reason,
                meanwhile=meanwhile,
                interval=self._interval,
            )
        self._schedule()

    @property
    def _interval(self) -> int:
        return 0 if self._stun is None else self._stun.interval

    def _schedule(self) -> None:
        if self._stopped or self._stun is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.call_later(self._interval, self._check)

    def _report(self) -> None:
        """Log the finding about the current address once, and again only when it changes."""
        finding = self._finding()
        if finding is None:
            self._logged = None
            return
        warn, text = finding
        if text == self._logged:
            return
        self._logged = text
        if warn:
            log.warn("{finding}", finding=text)
        else:
            log.info("{finding}", finding=text)

    def _finding(self) -> tuple[bool, str] | None:
        """(warning?, text) about a private address; None for a public one or none."""
        address, private, sees = self.address, self.private, self.stun_sees
        if address is None or private is None:
            return None
        refuse = self._policy == "refuse"
        if self._server is None:
            text = (
                f"WAN address {address} is private ({private}): mappings made here are "
                "probably not reachable from the Internet"
            )
            if refuse:
                text += "; refusing mapping requests (wan.private_address: refuse)"
            else:
                text += "; set wan.stun to check whether another NAT is in the way"
            return True, text
        if sees is None:
            text = (
                f"WAN address {address} is private ({private}): asking STUN server "
                f"{self._server} whether another NAT is in the way"
            )
            if refuse:
                text += "; mapping requests are refused until it answers"
            return False, text
        if sees != address:
            text = (
                f"WAN address {address} is behind another NAT: STUN server {self._server} "
                f"sees {sees}; mappings made here are not reachable from the Internet"
            )
            if refuse:
                text += "; refusing mapping requests (wan.private_address: refuse)"
            else:
                text += "; serving anyway (wan.private_address: warn)"
            return True, text
        return False, (
            f"WAN address {address} is private ({private}), but STUN server {self._server} "
            "sees it unchanged: no other NAT in the way; serving"
        )


class WanStatusAdmin:
    """The gateway as the admin socket sees it: the service, with ``portgate status``
    completed by the WAN finding (``wan``)."""

    def __init__(self, admin: Admin, reachability: WanReachability) -> None:
        self._admin = admin
        self._reachability = reachability

    def handle(self, request: Request) -> Deferred[Result]:
        return self._admin.handle(request)

    @property
    def external_address(self) -> IPv4Address | None:
        return self._admin.external_address

    def now(self) -> float:
        return self._admin.now()

    def epoch_seconds(self) -> int:
        return self._admin.epoch_seconds()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._admin.subscribe(listener)

    def status(self) -> dict[str, object]:
        status = self._admin.status()
        status["wan"] = self._reachability.status()
        return status

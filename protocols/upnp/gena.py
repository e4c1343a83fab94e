"""GENA eventing (protocols.md §4): SUBSCRIBE / renew / UNSUBSCRIBE and NOTIFY.

Pure part: header parsing (CALLBACK with the CallStranger rule of §8.3, TIMEOUT, STATEVAR), the
subscription bookkeeping (``Subscriptions``, time passed in as ``now``), SEQ arithmetic and
the message bodies. Twisted part: ``EventService`` (delivers, one NOTIFY in flight per
subscriber, changes coalesced while one is in flight, subscriptions dropped after repeated
failures, on 412 and at expiry) and ``TcpNotifySender`` (short timeouts, no redirects, leaves
from the LAN address the subscription came in on). The sender is injectable for tests.
"""

from __future__ import annotations

import re
import uuid as uuid_module
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from typing import Any, Protocol
from urllib.parse import urlsplit

from lxml import etree  # type: ignore[import-untyped, unused-ignore]  # stubs: types-lxml
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.model import IPAddress
from protocols.ratelimit import RefusalLog
from protocols.upnp.description import Service, UpnpSettings, choose_view
from protocols.upnp.soap import xml_text

__all__ = [
    "DEFAULT_TIMEOUT",
    "EVENT_NS",
    "CallbackUrl",
    "EventService",
    "GenaAnswer",
    "GenaError",
    "NotifyError",
    "NotifyMessage",
    "NotifySender",
    "StateSource",
    "Subscription",
    "Subscriptions",
    "TcpNotifySender",
    "encode_propertyset",
    "next_seq",
    "parse_callbacks",
    "parse_statevar",
    "parse_timeout",
]

log = Logger(namespace="portgate.upnp.gena")

EVENT_NS = "urn:schemas-upnp-org:event-1-0"
DEFAULT_TIMEOUT = 1800
MIN_TIMEOUT = 1800
MAX_TIMEOUT = 86400
MAX_PER_SOURCE = 16
MAX_TOTAL = 256
MAX_CALLBACK_HEADER = 1024
MAX_CALLBACK_URLS = 4
MAX_FAILURES = 3
NOTIFY_TIMEOUT = 5.0
SWEEP_INTERVAL = 30.0
SEQ_MAX = 0xFFFFFFFF
MAX_SID = 128

_CALLBACK_RE = re.compile(r"<([^<>]*)>")
_TIMEOUT_RE = re.compile(r"second-([0-9]{1,10})", re.I)
#: What may appear in a callback path and query: RFC 3986 characters, nothing that could
#: break the NOTIFY request line or headers.
_PATH_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*")


class GenaError(Exception):
    """A refused SUBSCRIBE/UNSUBSCRIBE; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- headers (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallbackUrl:
    """A checked delivery URL: ``http://<literal IP>[:port]/path``."""

    host: IPAddress
    port: int
    path: str

    @property
    def host_header(self) -> str:
        literal = f"[{self.host}]" if isinstance(self.host, IPv6Address) else str(self.host)
        return f"{literal}:{self.port}"

    def __str__(self) -> str:
        return f"http://{self.host_header}{self.path}"


def parse_callbacks(header: str | None, source: IPAddress) -> tuple[CallbackUrl, ...]:
    """CALLBACK: one or more ``<http://...>``. Each must be http:// with a literal IP host
    equal to the subscriber's own address (CallStranger, CVE-2020-12695); else 412."""
    if header is None or not header.strip():
        raise GenaError(412, "CALLBACK is missing")
    if len(header) > MAX_CALLBACK_HEADER:
        raise GenaError(412, "CALLBACK is too long")
    if _CALLBACK_RE.sub("", header).strip():
        raise GenaError(412, "CALLBACK must be URLs in angle brackets")
    urls = _CALLBACK_RE.findall(header)
    if not urls or len(urls) > MAX_CALLBACK_URLS:
        raise GenaError(412, f"CALLBACK must hold 1 to {MAX_CALLBACK_URLS} URLs")
    return tuple(_callback(url, source) for url in urls)


def _callback(url: str, source: IPAddress) -> CallbackUrl:
    if not url.isascii() or any(ch.isspace() for ch in url):
        raise GenaError(412, "CALLBACK URL is not plain ASCII")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise GenaError(412, "CALLBACK URL is malformed") from None
    if parts.scheme != "http":
        raise GenaError(412, "CALLBACK URL must be http://")
    if parts.username is not None or parts.password is not None:
        raise GenaError(412, "CALLBACK URL must not carry credentials")
    try:
        host = ip_address(parts.hostname or "")
    except ValueError:
        raise GenaError(412, "CALLBACK host must be an IP literal") from None
    if host != source:
        raise GenaError(412, "CALLBACK host must be the subscriber's own address")
    if port is None:
        port = 80
    if not 1 <= port <= 65535:
        raise GenaError(412, "CALLBACK port is out of range")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not path.startswith("/") or not _PATH_RE.fullmatch(path):
        raise GenaError(412, "CALLBACK path has characters we will not send")
    return CallbackUrl(host, port, path)


def parse_timeout(header: str | None) -> int:
    """TIMEOUT ``Second-N`` clamped to [1800, 86400]; absent, ``infinite`` (forbidden by UDA
    1.1) or unreadable: the default."""
    if header is None:
        return DEFAULT_TIMEOUT
    match = _TIMEOUT_RE.fullmatch(header.strip())
    if match is None:
        return DEFAULT_TIMEOUT
    return max(MIN_TIMEOUT, min(MAX_TIMEOUT, int(match.group(1))))


def parse_statevar(header: str | None, evented: tuple[str, ...]) -> tuple[str, ...] | None:
    """STATEVAR: a comma-separated subset of the evented variables (``*``: all); None when
    the header is absent. An unknown name is 412."""
    if header is None:
        return None
    names = [name.strip() for name in header.split(",") if name.strip()]
    if names == ["*"]:
        return evented
    if not names or any(name not in evented for name in names):
        raise GenaError(412, "STATEVAR names a variable that is not evented")
    return tuple(name for name in evented if name in names)


def next_seq(seq: int) -> int:
    """SEQ after ``seq``: +1, wrapping from 4294967295 to 1 (0 is only the initial event)."""
    return 1 if seq >= SEQ_MAX else seq + 1


def encode_propertyset(values: Iterable[tuple[str, str]]) -> bytes:
    """The NOTIFY body of §4.3: one ``e:property`` per variable, values escaped."""
    root = etree.Element(f"{{{EVENT_NS}}}propertyset", nsmap={"e": EVENT_NS})
    for name, value in values:
        prop = etree.SubElement(root, f"{{{EVENT_NS}}}property")
        etree.SubElement(prop, name).text = xml_text(value)
    return b'<?xml version="1.0"?>\n' + etree.tostring(root, encoding="utf-8")


# -- subscriptions (pure) ----------------------------------------------------------------------


@dataclass(eq=False)
class Subscription:
    """One subscriber. ``seq`` is the SEQ of the next message; ``variables`` what it hears;
    ``view`` the IGD view its User-Agent gets (no SystemUpdateID for IGD:1 clients)."""

    sid: str
    service: Service
    source: IPAddress
    local_host: str
    callbacks: tuple[CallbackUrl, ...]
    variables: tuple[str, ...]
    view: int
    timeout: int
    expires: float
    seq: int = 0
    pending: set[str] = field(default_factory=set)
    in_flight: bool = False
    failures: int = 0
    active: bool = True
    started: bool = False  # the initial event (SEQ 0, every variable) has been sent


class Subscriptions:
    """Who is subscribed to what, bounded per source and in total (``limits``
    ``gena_subscriptions_per_client`` and ``gena_subscriptions``; ``set_caps`` changes them in
    place: subscriptions above a lowered cap stay until they end, new ones are refused)."""

    def __init__(
        self,
        *,
        per_source: int = MAX_PER_SOURCE,
        total: int = MAX_TOTAL,
        new_sid: Callable[[], str] = lambda: f"uuid:{uuid_module.uuid4()}",
    ) -> None:
        self._per_source = per_source
        self._total = total
        self._new_sid = new_sid
        self._by_sid: dict[str, Subscription] = {}

    @property
    def per_source(self) -> int:
        return self._per_source

    @property
    def total(self) -> int:
        return self._total

    def set_caps(self, *, per_source: int, total: int) -> None:
        if per_source < 1 or total < 1:
            raise ValueError("subscription caps must be positive")
        self._per_source = per_source
        self._total = total

    def __len__(self) -> int:
        return len(self._by_sid)

    def get(self, sid: str) -> Subscription | None:
        return self._by_sid.get(sid)

    def for_service(self, service: Service) -> list[Subscription]:
        return [s for s in self._by_sid.values() if s.service is service]

    def subscribe(
        self,
        service: Service,
        evented: tuple[str, ...],
        *,
        source: IPAddress,
        local_host: str,
        view: int,
        callback: str | None,
        nt: str | None,
        timeout: str | None,
        statevar: str | None,
        now: float,
    ) -> Subscription:
        if nt is None or nt.strip() != "upnp:event":
            raise GenaError(412, "NT must be upnp:event")
        callbacks = parse_callbacks(callback, source)
        variables = parse_statevar(statevar, evented)
        self.expire(now)
        if len(self._by_sid) >= self._total:
            raise GenaError(
                503, f"{self._total} subscriptions in all already (limits.gena_subscriptions)"
            )
        if sum(1 for s in self._by_sid.values() if s.source == source) >= self._per_source:
            raise GenaError(
                503,
                f"it holds {self._per_source} subscriptions already "
                "(limits.gena_subscriptions_per_client)",
            )
        seconds = parse_timeout(timeout)
        subscription = Subscription(
            sid=self._new_sid(),
            service=service,
            source=source,
            local_host=local_host,
            callbacks=callbacks,
            variables=evented if variables is None else variables,
            view=view,
            timeout=seconds,
            expires=now + seconds,
        )
        self._by_sid[subscription.sid] = subscription
        return subscription

    def _known(
        self, service: Service, sid: str | None, source: IPAddress, now: float
    ) -> Subscription:
        if sid is None:
            raise GenaError(412, "SID is missing")
        subscription = self._by_sid.get(sid.strip())
        if subscription is not None and subscription.expires <= now:
            self.drop(subscription)
            subscription = None
        if subscription is None or subscription.service is not service:
            raise GenaError(412, "no such subscription")
        if subscription.source != source:
            raise GenaError(412, "the subscription belongs to another host")
        return subscription

    def renew(
        self, service: Service, sid: str, *, source: IPAddress, timeout: str | None, now: float
    ) -> Subscription:
        subscription = self._known(service, sid, source, now)
        subscription.timeout = parse_timeout(timeout)
        subscription.expires = now + subscription.timeout
        return subscription

    def unsubscribe(
        self, service: Service, sid: str | None, *, source: IPAddress, now: float
    ) -> Subscription:
        subscription = self._known(service, sid, source, now)
        self.drop(subscription)
        return subscription

    def drop(self, subscription: Subscription) -> None:
        subscription.active = False
        self._by_sid.pop(subscription.sid, None)

    def expire(self, now: float) -> list[Subscription]:
        gone = [s for s in self._by_sid.values() if s.expires <= now]
        for subscription in gone:
            self.drop(subscription)
        return gone

    def clear(self) -> None:
        for subscription in list(self._by_sid.values()):
            self.drop(subscription)


# -- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotifyMessage:
    """One event for one subscriber; ``local_host`` is where the connection leaves from."""

    callbacks: tuple[CallbackUrl, ...]
    local_host: str
    sid: str
    seq: int
    body: bytes

    def encode(self, url: CallbackUrl) -> bytes:
        head = (
            f"NOTIFY {url.path} HTTP/1.1\r\n"
            f"HOST: {url.host_header}\r\n"
            'CONTENT-TYPE: text/xml; charset="utf-8"\r\n'
            f"CONTENT-LENGTH: {len(self.body)}\r\n"
            "NT: upnp:event\r\n"
            "NTS: upnp:propchange\r\n"
            f"SID: {self.sid}\r\n"
            f"SEQ: {self.seq}\r\n"
            "CONNECTION: close\r\n"
            "\r\n"
        )
        return head.encode("ascii") + self.body


#: Delivers a NOTIFY; fires with the subscriber's HTTP status, fails when no URL answered.
NotifySender = Callable[[NotifyMessage], Deferred[int]]


class StateSource(Protocol):
    """Where evented values come from (``actions.IgdState``)."""

    def values(self, service: Service, view: int) -> list[tuple[str, str]]: ...

    def listen(self, listener: Callable[[Service, frozenset[str]], None]) -> Callable[[], None]: ...


@dataclass(frozen=True, slots=True)
class GenaAnswer:
    status: int
    headers: tuple[tuple[str, str], ...] = ()


class EventService:
    """Subscriptions of every service, and the NOTIFYs that keep them informed."""

    def __init__(
        self,
        reactor: Any,
        state: StateSource,
        settings: UpnpSettings,
        now: Callable[[], float],
        sender: NotifySender | None = None,
        subscriptions: Subscriptions | None = None,
    ) -> None:
        self._reactor = reactor
        self._state = state
        self._settings = settings
        self._now = now
        self._send_notify: NotifySender = sender or TcpNotifySender(reactor)
        self.subscriptions = subscriptions if subscriptions is not None else Subscriptions()
        self._refusals = RefusalLog()
        self._stop_listening: Callable[[], None] | None = state.listen(self._changed)
        self._sweep_call: Any = reactor.callLater(SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        self.subscriptions.clear()

    def _evented(self, service: Service, view: int) -> tuple[str, ...]:
        return tuple(name for name, _ in self._state.values(service, view))

    def subscribe(
        self,
        service: Service,
        headers: Mapping[str, str | None],
        *,
        source: IPAddress,
        local_host: str,
    ) -> GenaAnswer:
        """SUBSCRIBE (new or renewal). ``headers`` holds lower-case names: sid, callback, nt,
        timeout, statevar, user-agent. A new subscription's initial event follows on the
        next reactor turn, after the answer went out."""
        sid, callback, nt = headers.get("sid"), headers.get("callback"), headers.get("nt")
        now = self._now()
        try:
            if sid is not None:
                if callback is not None or nt is not None:
                    raise GenaError(400, "SID together with CALLBACK or NT")
                subscription = self.subscriptions.renew(
                    service, sid, source=source, timeout=headers.get("timeout"), now=now
                )
                return self._answer(subscription, accepted=None)
            view = choose_view(self._settings, headers.get("user-agent"))
            statevar = headers.get("statevar")
            subscription = self.subscriptions.subscribe(
                service,
                self._evented(service, view),
                source=source,
                local_host=local_host,
                view=view,
                callback=callback,
                nt=nt,
                timeout=headers.get("timeout"),
                statevar=statevar,
                now=now,
            )
        except GenaError as error:
            if error.status == 503 and self._refusals.due(source, now):
                # a cap: worth the operator's attention, once per client per minute
                log.info(
                    "refused a GENA subscription from {source}: {why}",
                    source=source,
                    why=error.reason,
                )
            else:
                log.debug(
                    "gena SUBSCRIBE from {source} refused ({status}): {why}",
                    source=source,
                    status=error.status,
                    why=error.reason,
                )
            return GenaAnswer(error.status)
        log.debug(
            "gena {sid} subscribed {source} to {service} for {timeout}s",
            sid=subscription.sid,
            source=source,
            service=service.value,
            timeout=subscription.timeout,
        )
        self._reactor.callLater(0, self._initial, subscription)
        return self._answer(subscription, accepted=subscription.variables if statevar else None)

    @staticmethod
    def _answer(subscription: Subscription, accepted: tuple[str, ...] | None) -> GenaAnswer:
        headers = [("SID", subscription.sid), ("TIMEOUT", f"Second-{subscription.timeout}")]
        if accepted is not None:
            headers.append(("ACCEPTED-STATEVAR", ",".join(accepted)))
        return GenaAnswer(200, tuple(headers))

    def unsubscribe(
        self, service: Service, headers: Mapping[str, str | None], *, source: IPAddress
    ) -> GenaAnswer:
        if headers.get("callback") is not None or headers.get("nt") is not None:
            return GenaAnswer(400)
        try:
            self.subscriptions.unsubscribe(
                service, headers.get("sid"), source=source, now=self._now()
            )
        except GenaError as error:
            return GenaAnswer(error.status)
        return GenaAnswer(200)

    # -- delivery -------------------------------------------------------------------------------

    def _initial(self, subscription: Subscription) -> None:
        subscription.started = True
        subscription.pending.update(subscription.variables)
        self._deliver(subscription)

    def _changed(self, service: Service, names: frozenset[str]) -> None:
        for subscription in self.subscriptions.for_service(service):
            wanted = names.intersection(subscription.variables)
            if wanted:
                subscription.pending.update(wanted)
                self._deliver(subscription)

    def _deliver(self, subscription: Subscription) -> None:
        if not subscription.active or subscription.in_flight or not subscription.pending:
            return
        if not subscription.started:
            return  # what changed meanwhile goes out with the initial event
        if subscription.expires <= self._now():
            self.subscriptions.drop(subscription)
            return
        values = dict(self._state.values(subscription.service, subscription.view))
        body = encode_propertyset(
            (name, values[name])
            for name in subscription.variables
            if name in subscription.pending and name in values
        )
        message = NotifyMessage(
            subscription.callbacks,
            subscription.local_host,
            subscription.sid,
            subscription.seq,
            body,
        )
        subscription.seq = next_seq(subscription.seq)
        subscription.pending.clear()
        subscription.in_flight = True
        try:
            sending = self._send_notify(message)
        except Exception as error:
            log.failure("gena {sid}: the sender failed", sid=subscription.sid)
            self._delivered(subscription, error)
            return
        sending.addBoth(lambda outcome: self._delivered(subscription, outcome))

    def _delivered(self, subscription: Subscription, outcome: object) -> None:
        subscription.in_flight = False
        if not subscription.active:
            return
        if isinstance(outcome, int) and 200 <= outcome < 300:
            subscription.failures = 0
        elif outcome == 412:
            log.debug("gena {sid}: the subscriber forgot us (412)", sid=subscription.sid)
            self.subscriptions.drop(subscription)
            return
        else:
            subscription.failures += 1
            why = outcome.getErrorMessage() if isinstance(outcome, Failure) else str(outcome)
            log.debug(
                "gena {sid}: NOTIFY failed ({why}), {n} in a row",
                sid=subscription.sid,
                why=why,
                n=subscription.failures,
            )
            if subscription.failures >= MAX_FAILURES:
                self.subscriptions.drop(subscription)
                return
        self._deliver(subscription)

    def _sweep(self) -> None:
        self._sweep_call = self._reactor.callLater(SWEEP_INTERVAL, self._sweep)
        for subscription in self.subscriptions.expire(self._now()):
            log.debug("gena {sid} expired", sid=subscription.sid)


# -- the NOTIFY sender (Twisted) -------------------------------------------------------------------


class NotifyError(Exception):
    """A NOTIFY got no usable answer."""


class _NotifyProtocol(TwistedProtocol):
    """Sends one request, reads the status line (at most 1 KB), hangs up. ``up`` fires
    when the connection is up, ``status`` with the subscriber's HTTP status."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._buffer = b""
        self._transport: Any = None
        self.up: Deferred[None] = Deferred()
        self.status: Deferred[int] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[int]) -> None:
        if self._transport is not None:
            self._transport.abortConnection()

    def connectionMade(self) -> None:
        self._transport = self.transport
        self._transport.write(self._request)
        self.up.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self.status.called:
            return
        self._buffer += data
        line, sep, _ = self._buffer.partition(b"\r\n")
        if not sep:
            if len(self._buffer) > 1024:
                self._fail("no status line")
            return
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._fail("not an HTTP response")
            return
        self.status.callback(int(parts[1]))
        self._transport.loseConnection()

    def _fail(self, why: str) -> None:
        self.status.errback(NotifyError(why))
        self._transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.status.called:
            self.status.errback(reason)


class _NotifyFactory(ClientFactory):
    noisy = False

    def __init__(self, protocol: _NotifyProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> _NotifyProtocol:
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self._protocol.up.called:
            self._protocol.up.errback(reason)


class TcpNotifySender:
    """Delivers NOTIFYs over TCP: tries the callback URLs in order and uses the first that
    accepts the connection; ``timeout`` bounds both the connect and the wait for the status
    line. Redirects are never followed (only the status code is read)."""

    def __init__(self, reactor: Any, timeout: float = NOTIFY_TIMEOUT) -> None:
        self._reactor = reactor
        self._timeout = timeout

    def __call__(self, message: NotifyMessage) -> Deferred[int]:
        return Deferred.fromCoroutine(self._deliver(message))

    async def _deliver(self, message: NotifyMessage) -> int:
        failure: Exception = NotifyError("no callback URL")
        bind = (message.local_host, 0) if message.local_host else None
        for url in message.callbacks:
            protocol = _NotifyProtocol(message.encode(url))
            self._reactor.connectTCP(
                str(url.host),
                url.port,
                _NotifyFactory(protocol),
                timeout=self._timeout,
                bindAddress=bind,
            )
            try:
                await protocol.up
            except Exception as error:
                failure = error
                continue
            waiting = protocol.status
            waiting.addTimeout(self._timeout, self._reactor)
            return await waiting
        raise failure

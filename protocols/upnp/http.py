"""The UPnP HTTP server: descriptions, SOAP control and GENA subscriptions (twisted.web).

``UpnpFrontEnd`` is what the daemon builds (once) and ``listen``s with on each LAN address; it
owns the per-boot URL layout, the rendered descriptions, the state variables, the action
dispatcher and the event service.

Every request passes, in order (protocols.md §2.1, §8.1, §8.4, §8.6): a LAN source (``is_lan``),
bounded headers and body (8 KB of headers, 16 KB of body, checked while they arrive; a larger
declared or chunked body is answered 413 and the connection closed), a Host header naming the
address and port the connection came in on (DNS rebinding), no foreign Origin, a known path
(404) with an allowed method (405; unknown methods 501; no OPTIONS, no CORS). Control requests
further need an XML content type, a well-formed SOAPACTION matching the body and the control
URL's service. Anything unexpected is logged and answered with a generic 500 (a UPnP 501 fault
on control URLs), never with a traceback. Connections are bounded per peer and in total, idle
ones time out, and none lives longer than two minutes.

Requests are rate-limited per client address (a token bucket, ``protocols.ratelimit``): over
the limit, whatever the path, the answer is an empty 503 with Retry-After and the connection is
closed. ``UpnpLimits`` holds the caps (the ``limits`` section of the config); refusals by a cap
are logged once per client and kind per minute.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.model import IPAddress
from gateway.ports import Gateway
from protocols.ratelimit import DEFAULT_MAX_KEYS, RateLimiter, RefusalLog
from protocols.upnp.actions import (
    ActionDispatcher,
    CallContext,
    Fault,
    IgdState,
    LinkInfo,
    Reply,
    Success,
    client_address,
)
from protocols.upnp.description import (
    DESCRIPTION_PATH,
    Descriptions,
    Service,
    UpnpSettings,
    UrlLayout,
    choose_view,
    host_literal,
)
from protocols.upnp.gena import (
    MAX_PER_SOURCE,
    MAX_TOTAL,
    EventService,
    GenaAnswer,
    NotifySender,
    Subscriptions,
)
from protocols.upnp.soap import (
    MAX_BODY,
    SoapDecodeError,
    decode_request,
    encode_fault,
    encode_response,
    parse_soapaction,
)

__all__ = [
    "MAX_BODY",
    "MAX_HEADER_BYTES",
    "UpnpFrontEnd",
    "UpnpLimits",
    "UpnpResource",
    "build_site",
    "listen_http",
]

log = Logger(namespace="portgate.upnp.http")

MAX_HEADER_BYTES = 8192
MAX_HEADERS = 64
IDLE_TIMEOUT = 30
MAX_CONNECTION_SECONDS = 120.0
MAX_CONNECTIONS_PER_PEER = 8
MAX_CONNECTIONS = 64
#: Requests per second per client, and the burst: see ``UpnpLimits``.
REQUESTS_PER_SECOND = 500
REQUEST_BURST = 10000

XML_TYPE = b'text/xml; charset="utf-8"'
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
#: Methods we recognise (others are 501); only some are allowed on each path (else 405).
KNOWN_METHODS = frozenset(
    {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "OPTIONS",
        "TRACE",
        "CONNECT",
        "PATCH",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "NOTIFY",
        "M-POST",
        "M-SEARCH",
    }
)
_XML_MEDIA_TYPES = ("text/xml", "application/xml")


class _Refused(Exception):
    """Answer ``status`` with an empty body."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class UpnpLimits:
    """The caps of the UPnP HTTP side (the config's ``limits``; the defaults are the same).

    - ``connections_per_client`` / ``connections``: open HTTP connections per client address
      and in all (a new connection over the cap is closed unanswered);
    - ``requests_per_second`` / ``request_burst``: each client address's token bucket; every
      request (description, SOAP, GENA, even a bad one) takes a token, and one that finds
      none is answered 503. The defaults leave real clients alone: a GetGenericPortMappingEntry
      walk of a full default table (8,192 entries) fits in the burst however fast it goes
      (a sequential client gets some 800-1,300 answers a second, so a longer walk refills at
      500 a second as it goes), while a host that keeps flooding is held to a fraction of
      what the daemon can answer in all;
    - ``subscriptions_per_client`` / ``subscriptions``: GENA subscriptions (503 over them).
    """

    connections_per_client: int = MAX_CONNECTIONS_PER_PEER
    connections: int = MAX_CONNECTIONS
    requests_per_second: float = REQUESTS_PER_SECOND
    request_burst: int = REQUEST_BURST
    subscriptions_per_client: int = MAX_PER_SOURCE
    subscriptions: int = MAX_TOTAL

    def __post_init__(self) -> None:
        counts = (
            self.connections_per_client,
            self.connections,
            self.request_burst,
            self.subscriptions_per_client,
            self.subscriptions,
        )
        if min(counts) < 1 or self.requests_per_second <= 0:
            raise ValueError("UPnP limits must be positive")


@dataclass(frozen=True, slots=True)
class _Route:
    kind: str  # "description", "scpd", "control", "event"
    service: Service | None
    methods: tuple[str, ...]


class UpnpFrontEnd:
    """Everything the UPnP HTTP side shares across LAN addresses.

    ``is_lan(address)`` decides who may talk to us at all (give it the policy's current LAN).
    ``link`` provides WAN counters and conntrack timeouts (``actions.SysfsLinkInfo``);
    ``notify`` replaces the NOTIFY sender (tests); ``limits`` the caps (``set_limits`` changes
    them in place). Build it after the gateway service has started; call ``stop`` on shutdown.
    """

    def __init__(
        self,
        reactor: Any,
        gateway: Gateway,
        settings: UpnpSettings,
        is_lan: Callable[[IPAddress], bool],
        *,
        link: LinkInfo | None = None,
        layout: UrlLayout | None = None,
        notify: NotifySender | None = None,
        system_update_id: int = 1,
        limits: UpnpLimits | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.is_lan = is_lan
        self.now = gateway.now
        self.limits = limits if limits is not None else UpnpLimits()
        self.requests = RateLimiter(
            self.limits.request_burst, self.limits.requests_per_second, DEFAULT_MAX_KEYS
        )
        #: when a refusal by a cap is logged again: once per (kind, client) per minute
        self.refusals = RefusalLog()
        self.layout = layout or UrlLayout.random()
        self.descriptions = Descriptions(settings, self.layout)
        self.state = IgdState(gateway, settings, system_update_id=system_update_id)
        self.dispatcher = ActionDispatcher(gateway, settings, self.state, link)
        subscriptions = Subscriptions(
            per_source=self.limits.subscriptions_per_client, total=self.limits.subscriptions
        )
        self.events = EventService(
            reactor, self.state, settings, gateway.now, notify, subscriptions
        )
        self.routes = self._routes()
        self.resource = UpnpResource(self)
        self.site = build_site(self)

    def set_limits(self, limits: UpnpLimits) -> None:
        """New caps (a reload), for new connections, requests and subscriptions; what is open
        stays, and each client's bucket keeps its tokens (capped at the new burst)."""
        self.limits = limits
        self.requests.configure(limits.request_burst, limits.requests_per_second)
        self.events.subscriptions.set_caps(
            per_source=limits.subscriptions_per_client, total=limits.subscriptions
        )

    @property
    def config_id(self) -> int:
        """CONFIGID.UPNP.ORG for SSDP (equal to the descriptions' configId)."""
        return self.descriptions.config_id

    def _routes(self) -> dict[str, _Route]:
        routes = {DESCRIPTION_PATH: _Route("description", None, ("GET", "HEAD"))}
        for service in Service:
            if not self.settings.implemented_version(service):
                continue
            routes[service.scpd_path] = _Route("scpd", service, ("GET", "HEAD"))
            routes[self.layout.control_path(service)] = _Route("control", service, ("POST",))
            routes[self.layout.event_path(service)] = _Route(
                "event", service, ("SUBSCRIBE", "UNSUBSCRIBE")
            )
        return routes

    def listen(self, address: str, port: int | None = None) -> Any:
        """Listen on one LAN address; ``port`` None uses the configured one (0: any free).
        Returns the IListeningPort (``.getHost().port`` is the port it got)."""
        chosen = self.settings.http_port if port is None else port
        return listen_http(self.reactor, address, chosen, self)

    def listen_all(self, addresses: Sequence[str]) -> tuple[int, list[Any]]:
        """Listen on every LAN address on one port (SSDP announces a single port): the
        configured one, or the free port the first address got. All or nothing: when one
        address fails, the others stop listening and the error is raised."""
        port = self.settings.http_port
        listening: list[Any] = []
        try:
            for address in addresses:
                opened = self.listen(address, port)
                listening.append(opened)
                port = opened.getHost().port
        except Exception:
            for opened in listening:
                opened.stopListening()
            raise
        return port, listening

    def location(self, address: str, port: int) -> str:
        """The LOCATION URL SSDP announces for ``address`` (what ``listen`` got)."""
        return f"http://{host_literal(address)}:{port}{DESCRIPTION_PATH}"

    def stop(self) -> None:
        self.events.stop()
        self.state.close()


# -- the resource ---------------------------------------------------------------------------------


def _header(request: Any, name: bytes) -> str | None:
    """A request header as text; a header given twice is a bad request."""
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    if len(values) > 1:
        raise _Refused(400)
    value: bytes = values[0]
    return value.decode("latin-1")


def _peer(request: Any) -> IPAddress | None:
    try:
        return client_address(request.getClientAddress().host)
    except (AttributeError, ValueError):
        return None


def scoped_peer(addr: Any) -> IPAddress | None:
    """The peer of a Twisted address, with the zone kept for link-local IPv6 (so the LAN check
    can tell which interface it came in on)."""
    try:
        peer = client_address(str(addr.host))
    except (AttributeError, ValueError):
        return None
    scope = getattr(addr, "scopeID", 0)
    if isinstance(peer, IPv6Address) and peer.is_link_local and scope:
        return ip_address(f"{peer}%{scope}")
    return peer


class UpnpResource(Resource):
    """One resource for every path: routing is a dictionary lookup, checks come first."""

    isLeaf = True

    def __init__(self, front: UpnpFrontEnd) -> None:
        parent: Any = super()  # twisted.web is untyped here
        parent.__init__()
        self.front = front

    def render(self, request: Any) -> bytes | int:
        try:
            return self._render(request)
        except _Refused as refusal:
            return self._empty(request, refusal.status)
        except Exception:
            log.failure("upnp http: {method} failed", method=request.method)
            return self._empty(request, 500)

    # -- answers ------------------------------------------------------------------------------

    def _start(self, request: Any, status: int, content_type: bytes | None, length: int) -> None:
        request.setResponseCode(status, _REASONS.get(status, "Error").encode())
        request.setHeader(b"server", self.front.settings.server.encode())
        if content_type is not None:
            request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", str(length).encode())

    def _empty(self, request: Any, status: int, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
        self._start(request, status, None, 0)
        for name, value in headers:
            request.setHeader(name.encode(), value.encode("latin-1"))
        return b""

    def _xml(self, request: Any, body: bytes, status: int = 200, soap: bool = False) -> bytes:
        self._start(request, status, XML_TYPE, len(body))
        if soap:
            request.setHeader(b"ext", b"")
        return b"" if request.method == b"HEAD" else body

    # -- checks -------------------------------------------------------------------------------

    def _check_host(self, request: Any) -> None:
        """Host must name the address and port this connection came in on; a foreign Origin
        is refused (DNS rebinding, cross-site requests)."""
        local = request.getHost()
        literal = host_literal(str(local.host)).lower()
        allowed = {f"{literal}:{local.port}"}
        if local.port == 80:
            allowed.add(literal)
        host = _header(request, b"host")
        if host is None:
            if request.clientproto != b"HTTP/1.0":
                raise _Refused(400)
        elif host.strip().lower() not in allowed:
            raise _Refused(403)
        origin = _header(request, b"origin")
        if origin is not None and origin.strip().lower() not in {f"http://{a}" for a in allowed}:
            raise _Refused(403)

    def _render(self, request: Any) -> bytes | int:
        client = scoped_peer(request.getClientAddress())
        if client is None or not self.front.is_lan(client):
            log.debug("upnp http: refused a request from {peer}", peer=client)
            raise _Refused(403)
        now = self.front.now()
        if not self.front.requests.allow(client, now):
            return self._too_many(request, client, now)
        method = bytes(request.method).decode("latin-1")
        if method not in KNOWN_METHODS:
            raise _Refused(501)
        self._check_host(request)
        path = bytes(request.path).decode("latin-1")
        route = self.front.routes.get(path)
        if route is None:
            raise _Refused(404)
        if method not in route.methods:
            return self._empty(request, 405, (("Allow", ", ".join(route.methods)),))
        view = choose_view(self.front.settings, _header(request, b"user-agent"))
        local_host = str(request.getHost().host)
        if route.kind == "description":
            return self._xml(request, self.front.descriptions.view(view, local_host).description)
        assert route.service is not None
        if route.kind == "scpd":
            scpd = self.front.descriptions.view(view, local_host).scpds.get(path)
            if scpd is None:
                raise _Refused(404)  # not in this client's view
            return self._xml(request, scpd)
        if route.kind == "control":
            return self._control(request, route.service, CallContext(client, view))
        return self._event(request, method, route.service, client, local_host)

    def _too_many(self, request: Any, client: IPAddress, now: float) -> bytes:
        """Over the client's request rate: an empty 503 saying when to come back, and the
        connection closed (a flood has to connect again for every further request)."""
        front = self.front
        if front.refusals.due(("rate", client), now):
            log.info(
                "refused UPnP HTTP requests from {client}: over {rate:g} per second "
                "(limits.http_requests_per_second), answering 503",
                client=client,
                rate=front.requests.per_second,
            )
        request.channel.persistent = False
        retry = front.requests.retry_after(client, now)
        return self._empty(request, 503, (("Retry-After", str(retry)), ("Connection", "close")))

    # -- SOAP ---------------------------------------------------------------------------------

    def _control(self, request: Any, service: Service, context: CallContext) -> bytes | int:
        content_type = _header(request, b"content-type")
        if content_type is not None and not _is_xml(content_type):
            raise _Refused(415)
        try:
            action = parse_soapaction(_header(request, b"soapaction"))
            body = request.content.read(MAX_BODY + 1)
            call = decode_request(body)
        except SoapDecodeError as error:
            log.debug(
                "upnp http: bad control request from {client}: {why}",
                client=context.client,
                why=error.reason,
            )
            raise _Refused(error.status) from None
        if (action.namespace, action.name) != (call.namespace, call.action):
            return self._xml(request, encode_fault(401, "Invalid Action"), 500, soap=True)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(reply: Reply) -> None:
            if gone:
                return
            if isinstance(reply, Success):
                body = encode_response(reply.namespace, reply.action, reply.outs)
                status = 200
            else:
                assert isinstance(reply, Fault)
                body, status = encode_fault(reply.code, reply.description), 500
            request.write(self._xml(request, body, status, soap=True))
            request.finish()

        def failed(failure: Failure) -> None:
            log.failure("upnp http: {action} failed", failure=failure, action=call.action)
            if not gone:
                request.write(self._xml(request, encode_fault(501, "Action Failed"), 500, True))
                request.finish()

        replying: Deferred[Reply] = self.front.dispatcher.call(service, call, context)
        replying.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    # -- GENA ---------------------------------------------------------------------------------

    def _event(
        self, request: Any, method: str, service: Service, client: IPAddress, local_host: str
    ) -> bytes:
        headers = {
            name: _header(request, name.encode())
            for name in ("sid", "callback", "nt", "timeout", "statevar", "user-agent")
        }
        events = self.front.events
        answer: GenaAnswer
        if method == "SUBSCRIBE":
            answer = events.subscribe(service, headers, source=client, local_host=local_host)
        else:
            answer = events.unsubscribe(service, headers, source=client)
        return self._empty(request, answer.status, answer.headers)


def _is_xml(content_type: str) -> bool:
    media, *params = (part.strip() for part in content_type.split(";"))
    if media.lower() not in _XML_MEDIA_TYPES:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


# -- the site: bounded requests and connections --------------------------------------------------


class _BoundedRequest(Request):
    """A request whose body may not exceed ``MAX_BODY``: a larger Content-Length, or chunks
    adding up to more, get 413 at once and the connection is closed."""

    defaultContentType = None
    _refused = False

    def gotLength(self, length: int | None) -> None:
        self._body = io.BytesIO()
        self.content = self._body
        if length is not None and length > MAX_BODY:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self._body.tell() + len(data) > MAX_BODY:
            self._refuse()
            return
        self._body.write(data)

    def _refuse(self) -> None:
        self._refused = True
        channel: Any = self.channel
        channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        channel.loseConnection()

    def process(self) -> None:
        if self._refused:
            return
        me: Any = self  # twisted.web's Request is untyped
        if self.path == b"*":  # "OPTIONS *" and friends: no such thing here
            me.setResponseCode(501 if self.method == b"OPTIONS" else 400)
            me.setHeader(b"content-length", b"0")
            me.finish()
            return
        parent: Any = super()
        parent.process()

    def processingFailed(self, reason: Failure) -> None:
        log.failure("upnp http: processing failed", failure=reason)
        me: Any = self
        me.setResponseCode(500)
        me.setHeader(b"content-length", b"0")
        me.finish()


class _Channel(HTTPChannel):
    totalHeadersSize = MAX_HEADER_BYTES
    maxHeaders = MAX_HEADERS
    peer_host: str = ""
    site: Any = None
    _deadline: Any = None

    def connectionMade(self) -> None:
        parent: Any = super()  # twisted.web's HTTPChannel is untyped
        parent.connectionMade()
        me: Any = self
        self._deadline = me.callLater(MAX_CONNECTION_SECONDS, self._too_long)

    def _too_long(self) -> None:
        self._deadline = None
        transport: Any = self.transport
        transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self.site is not None:
            self.site.release(self)
        parent: Any = super()
        parent.connectionLost(reason)


class _UpnpSite(Site):
    """A site that bounds connections per peer and in total (the front-end's current
    ``limits``) and keeps no access log (per-request lines are debug only).

    At the total cap a new peer still gets in when another peer holds more connections than
    it: that peer's oldest connection is closed to make room. Otherwise a client with many
    LAN addresses (IPv6 hands them out freely) could hold every slot with slow requests and
    lock everyone else out for minutes."""

    noisy = False
    displayTracebacks = False

    def __init__(self, front: UpnpFrontEnd) -> None:
        parent: Any = super()  # twisted.web's Site is untyped
        parent.__init__(
            front.resource, _BoundedRequest, timeout=IDLE_TIMEOUT, reactor=front.reactor
        )
        self.protocol = _Channel  # type: ignore[assignment]
        #: each peer's open connections, oldest first
        self._open: dict[str, list[_Channel]] = {}
        self._front = front

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", ""))
        front = self._front
        peer = scoped_peer(addr)
        if peer is None or not front.is_lan(peer):
            # not a LAN host: close at once, say nothing (protocols.md §8.1)
            log.debug("upnp http: dropped a connection from {peer}", peer=host)
            return None
        limits = front.limits
        mine = len(self._open.get(host, ()))
        total = sum(len(channels) for channels in self._open.values())
        if mine >= limits.connections_per_client:
            self._refused(peer, f"it holds {mine} already (limits.http_connections_per_client)")
            return None
        if total >= limits.connections and not self._make_room(mine):
            self._refused(peer, f"{total} are open in all (limits.http_connections)")
            return None
        parent: Any = super()
        channel = parent.buildProtocol(addr)
        if channel is None:
            return None
        channel.peer_host = host
        self._open.setdefault(host, []).append(channel)
        return channel

    def _refused(self, peer: IPAddress, why: str) -> None:
        if self._front.refusals.due(("connection", peer), self._front.now()):
            log.info("refused a UPnP HTTP connection from {client}: {why}", client=peer, why=why)
        else:
            log.debug("upnp http: too many connections, refused {client}", client=peer)

    def _make_room(self, mine: int) -> bool:
        """Close the oldest connection of the peer holding the most, if it holds more than
        ``mine``; True when a slot was freed."""
        busiest = max(self._open, key=lambda host: len(self._open[host]), default=None)
        if busiest is None or len(self._open[busiest]) <= mine:
            return False
        oldest = self._open[busiest][0]
        self.release(oldest)
        log.debug("upnp http: at the connection cap, closed one of {peer}'s", peer=busiest)
        transport: Any = oldest.transport
        if transport is not None:
            transport.abortConnection()
        return True

    def release(self, channel: _Channel) -> None:
        channels = self._open.get(channel.peer_host, [])
        if channel in channels:
            channels.remove(channel)
        if not channels:
            self._open.pop(channel.peer_host, None)

    def log(self, request: Any) -> None:
        return None


def build_site(front: UpnpFrontEnd) -> Site:
    """A twisted.web site serving ``front`` (``front.site`` is the one its listeners share,
    so the connection limits hold across LAN addresses)."""
    return _UpnpSite(front)


def listen_http(reactor: Any, address: str, port: int, front: UpnpFrontEnd) -> Any:
    """Listen on ``address``:``port`` (0: any free port; read it back with
    ``listening.getHost().port``). Returns the IListeningPort."""
    return reactor.listenTCP(port, front.site, interface=address)

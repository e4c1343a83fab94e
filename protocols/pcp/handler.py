"""PCP requests to gateway requests, gateway results (or refusals) to PCP answers, and the
Mapping Updates of RFC 6887 §14.2.

``PcpHandler.handle(data, source, reply_to)`` returns a Deferred that fires with the answer's
bytes, or None when the datagram is dropped; it never fails.

- MAP with an IPv4 internal address: ``MapPort`` (``exact`` with PREFER_FAILURE); with an IPv6
  one (no NAT66): ``OpenPinhole``, the assigned external endpoint being the internal one.
- MAP with lifetime 0: ``UnmapInternal`` with the request's nonce.
- FILTER: ``RemoteFilter`` values, added to the mapping's filters (prefix length 0 clears them).
- THIRD_PARTY: ``Owner(third_party=True)`` and the option's address as internal address; the
  gateway's policy refuses it unless allowed (Reason.THIRD_PARTY -> UNSUPP_OPTION).
- PEER: an implicit mapping towards that peer (``MapPort`` filtered to it), answered per §12.
- DESCRIPTION (RFC 7220): kept (128 bytes at most) as the mapping's description and echoed.
- ANNOUNCE: SUCCESS with the epoch.

Before a MAP or PEER the handler reads the client's own mappings of that internal endpoint
(``ListMappings``, an index lookup answered at once by the service, so nothing runs in
between): RFC 6887's filter merging and PREFER_FAILURE on an existing mapping need the
mapping's current state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.errors import GatewayError, Reason
from gateway.model import Endpoint, Kind, Mapping, Origin, Owner, Proto, RemoteFilter
from gateway.ports import Gateway, GatewayEvent, MappingsChanged
from gateway.requests import (
    Granted,
    Listing,
    ListMappings,
    MapPort,
    OpenPinhole,
    Removed,
    Result,
    UnmapInternal,
)
from protocols.pcp.codec import (
    LONG_LIFETIME,
    SHORT_LIFETIME,
    UINT32_MAX,
    MapData,
    Opcode,
    PcpDecodeError,
    PeerData,
    Request,
    Response,
    ResultCode,
    decode_request,
    encode_announce,
    encode_error,
    encode_response,
    error_lifetime,
)
from protocols.pcp.options import Filter, Options, truncate_description

__all__ = [
    "DEFAULT_MAX_FILTERS",
    "PCP_RESULT_FOR_REASON",
    "UPDATE_DELAYS",
    "PcpHandler",
    "Send",
]

log = Logger(namespace="portgate.pcp")

IPAddress = IPv4Address | IPv6Address
#: Where unsolicited datagrams go: ``send(data, (host, port))``.
Send = Callable[[bytes, tuple[str, int]], None]

#: FILTERs one mapping may carry (RFC 6887 §13.3 asks for at least 1).
DEFAULT_MAX_FILTERS = 8
#: When a Mapping Update is sent, from the change: now, +250 ms, +750 ms (§14.2).
UPDATE_DELAYS = (0.0, 0.25, 0.75)

#: Every refusal of the gateway as a PCP result code (RFC 6887 §7.4). CONFLICT, CONFLICT_FOREIGN,
#: RESERVED_PORT and PORT_DENIED only arise for exact requests (PREFER_FAILURE, PEER with a
#: suggestion).
PCP_RESULT_FOR_REASON: dict[Reason, ResultCode] = {
    Reason.CONFLICT: ResultCode.CANNOT_PROVIDE_EXTERNAL,
    Reason.CONFLICT_FOREIGN: ResultCode.CANNOT_PROVIDE_EXTERNAL,
    Reason.NOT_OWNER: ResultCode.NOT_AUTHORIZED,  # nonce mismatch, another origin's entry
    Reason.NOT_FOUND: ResultCode.NOT_AUTHORIZED,
    Reason.NO_PORTS: ResultCode.NO_RESOURCES,
    Reason.POLICY_DENIED: ResultCode.NOT_AUTHORIZED,
    Reason.PORT_DENIED: ResultCode.CANNOT_PROVIDE_EXTERNAL,  # another port would do (§11.3)
    Reason.RESERVED_PORT: ResultCode.CANNOT_PROVIDE_EXTERNAL,
    Reason.THIRD_PARTY: ResultCode.UNSUPP_OPTION,  # THIRD_PARTY not allowed (§13.1)
    Reason.BAD_LIFETIME: ResultCode.MALFORMED_REQUEST,
    Reason.BAD_REQUEST: ResultCode.MALFORMED_REQUEST,
    Reason.NO_EXTERNAL_ADDRESS: ResultCode.NETWORK_FAILURE,
    Reason.QUOTA: ResultCode.USER_EX_QUOTA,
    Reason.TABLE_FULL: ResultCode.NO_RESOURCES,
    Reason.NOT_LAN: ResultCode.NOT_AUTHORIZED,
    Reason.UNSUPPORTED: ResultCode.UNSUPP_PROTOCOL,
    Reason.BACKEND_FAILED: ResultCode.NO_RESOURCES,
}

#: What an unexpected failure is answered with: NO_RESOURCES is PCP's catch-all (short).
GENERIC_FAILURE = ResultCode.NO_RESOURCES

_PROTOCOLS = {6: Proto.TCP, 17: Proto.UDP}


class _Refusal(Exception):
    """A refusal decided by the handler itself."""

    def __init__(self, result: ResultCode, message: str, lifetime: int | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.message = message
        self.lifetime = lifetime


@dataclass
class _Subscriber:
    """What a Mapping Update needs: the last answer and where it went (§14.2)."""

    response: Response
    reply_to: tuple[str, int]
    request: Request
    owner: Owner
    calls: list[Any] = field(default_factory=list)

    def cancel(self) -> None:
        for call in self.calls:
            if call.active():
                call.cancel()
        self.calls.clear()


class PcpHandler:
    """The PCP front-end of one UDP 5351 socket.

    ``epoch`` gives the epoch of every answer (default: ``gateway.epoch_seconds``);
    ``peer_enabled`` False answers PEER with UNSUPP_OPCODE; ``max_filters`` caps the FILTERs
    of one mapping (more: EXCESSIVE_REMOTE_PEERS). Mapping Updates are sent when both
    ``scheduler`` (``callLater``) and ``send`` are given and ``notify`` is called with the
    gateway's events.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        epoch: Callable[[], int] | None = None,
        peer_enabled: bool = True,
        max_filters: int = DEFAULT_MAX_FILTERS,
        scheduler: Any = None,
        send: Send | None = None,
    ) -> None:
        self._gateway = gateway
        self._epoch = epoch if epoch is not None else gateway.epoch_seconds
        self._opcodes: Collection[int] = (
            (Opcode.ANNOUNCE, Opcode.MAP, Opcode.PEER)
            if peer_enabled
            else (Opcode.ANNOUNCE, Opcode.MAP)
        )
        self._max_filters = max_filters
        self._scheduler = scheduler
        self._send = send
        self._subscribers: dict[int, _Subscriber] = {}

    def epoch(self) -> int:
        return max(0, min(self._epoch(), UINT32_MAX))

    def announcement(self) -> bytes:
        """The unsolicited ANNOUNCE (RFC 6887 §14.1.3)."""
        return encode_announce(self.epoch())

    # -- requests ---------------------------------------------------------------------------

    def handle(
        self, data: bytes, source: IPAddress, reply_to: tuple[str, int] | None = None
    ) -> Deferred[bytes | None]:
        try:
            request = decode_request(data, source, opcodes=self._opcodes)
        except PcpDecodeError as error:
            if error.result is None:
                log.debug("pcp: dropped datagram from {client}: {why}", client=source, why=error)
                return succeed(None)
            log.debug(
                "pcp: {why} from {client}: {result}",
                why=error,
                client=source,
                result=error.result.name,
            )
            return succeed(
                encode_error(
                    error.request,
                    error.result,
                    error_lifetime(error.result),
                    self.epoch(),
                    parsed=error.parsed,
                )
            )
        try:
            answer = self._dispatch(request, source, reply_to)
        except Exception:
            answer = fail()
        answer.addErrback(self._refused, request, source)
        return answer.addCallback(self._logged, request, source)

    def _dispatch(
        self, request: Request, source: IPAddress, reply_to: tuple[str, int] | None
    ) -> Deferred[bytes]:
        body = request.body
        if body is None:
            return succeed(encode_announce(self.epoch()))
        proto = _PROTOCOLS.get(body.protocol)
        if proto is None or body.internal_port == 0:
            if body.protocol == 0:
                what = "all protocols"
            elif proto is None:
                what = f"protocol {body.protocol}"
            else:
                what = "all ports"
            raise _Refusal(ResultCode.UNSUPP_PROTOCOL, f"{what} cannot be mapped")
        owner = Owner(
            Origin.PCP, source, body.nonce, third_party=request.options.third_party is not None
        )
        internal = Endpoint(request.internal_address, body.internal_port)
        if isinstance(body, MapData) and request.lifetime == 0:
            return self._gateway.handle(UnmapInternal(owner, proto, internal)).addCallback(
                self._deleted, request
            )
        pinhole = isinstance(internal.address, IPv6Address)
        self._check_suggestion(request, body, internal, pinhole)
        listing = self._gateway.handle(
            ListMappings(client=source, proto=proto, include_pinholes=pinhole, internal=internal)
        )
        granted = listing.addCallback(self._apply, request, body, owner, proto, internal, pinhole)
        return granted.addCallback(self._granted, request, body, owner, reply_to)

    def _check_suggestion(
        self, request: Request, body: MapData | PeerData, internal: Endpoint, pinhole: bool
    ) -> None:
        """A suggestion that cannot be honoured fails the request only when it must be exact
        (PREFER_FAILURE, or PEER with a suggested port); otherwise it is ignored (§11.3)."""
        if not _exact(request, body):
            return
        suggested = body.external_address
        if pinhole:
            wrong = (not _is_zero(suggested) and suggested != internal.address) or (
                body.external_port != internal.port
            )
        else:
            external = self._gateway.external_address
            wrong = not _is_zero(suggested) and (
                isinstance(suggested, IPv6Address)
                or (external is not None and suggested != external)
            )
        if wrong:
            raise _Refusal(
                ResultCode.CANNOT_PROVIDE_EXTERNAL,
                f"{suggested} port {body.external_port} cannot be provided",
            )

    def _apply(
        self,
        result: Result,
        request: Request,
        body: MapData | PeerData,
        owner: Owner,
        proto: Proto,
        internal: Endpoint,
        pinhole: bool,
    ) -> Deferred[Result]:
        if not isinstance(result, Listing):
            raise TypeError(f"expected Listing, got {type(result).__name__}")
        kind = Kind.PINHOLE if pinhole else Kind.PORT_MAP
        mine = next(
            (
                m
                for m in result.mappings
                if m.kind is kind
                and m.internal == internal
                and m.owner.origin is Origin.PCP
                and m.owner.nonce == owner.nonce
            ),
            None,
        )
        description = request.options.description
        text = "" if description is None else truncate_description(description)
        if isinstance(body, PeerData):
            peer: tuple[RemoteFilter, ...] = (
                RemoteFilter.host(body.remote_address, body.remote_port),
            )
            if mine is not None and mine.filters != peer:
                # an inbound mapping of this client already fixes the external endpoint
                return succeed(
                    Granted(mine, mine.remaining(self._gateway.now()), created=False, owned=False)
                )
            filters = peer
            lifetime = max(request.lifetime, 1)  # PEER cannot delete (§12.3)
        else:
            filters = _merge_filters(() if mine is None else mine.filters, request.options.filters)
            if len(filters) > self._max_filters:
                raise _Refusal(
                    ResultCode.EXCESSIVE_REMOTE_PEERS,
                    f"{len(filters)} filters exceed the limit of {self._max_filters}",
                )
            if (
                request.options.prefer_failure
                and mine is not None
                and mine.external.port != body.external_port
            ):
                raise _Refusal(
                    ResultCode.CANNOT_PROVIDE_EXTERNAL,
                    f"the mapping already uses external port {mine.external.port}",
                    mine.remaining(self._gateway.now()),
                )
            lifetime = request.lifetime
        if pinhole:
            return self._gateway.handle(
                OpenPinhole(owner, proto, internal, lifetime, filters, description=text)
            )
        return self._gateway.handle(
            MapPort(
                owner,
                proto,
                internal,
                body.external_port,
                lifetime,
                description=text,
                filters=filters,
                exact=_exact(request, body),
            )
        )

    def _granted(
        self,
        result: Result,
        request: Request,
        body: MapData | PeerData,
        owner: Owner,
        reply_to: tuple[str, int] | None,
    ) -> bytes:
        if not isinstance(result, Granted):
            raise TypeError(f"expected Granted, got {type(result).__name__}")
        mapping = result.mapping
        if _exact(request, body) and mapping.external.port != body.external_port:
            # another origin's entry for this endpoint (nothing changed): not what was asked
            raise _Refusal(
                ResultCode.CANNOT_PROVIDE_EXTERNAL,
                f"the endpoint is mapped to external port {mapping.external.port}",
                mapping.remaining(self._gateway.now()),
            )
        options = Options(
            third_party=request.options.third_party,
            prefer_failure=request.options.prefer_failure,
            filters=request.options.filters if result.owned else (),
            description=(
                truncate_description(request.options.description)
                if result.owned and request.options.description is not None
                else None
            ),
        )
        response = Response(
            request.opcode,
            ResultCode.SUCCESS,
            UINT32_MAX if result.lifetime is None else min(result.lifetime, UINT32_MAX),
            self.epoch(),
            _assigned(body, mapping),
            options,
        )
        try:
            data = encode_response(response)
        except ValueError as error:
            raise _Refusal(ResultCode.MALFORMED_REQUEST, str(error)) from None
        if result.owned:
            self._subscribe(mapping.uid, response, request, owner, reply_to)
        return data

    def _deleted(self, result: Result, request: Request) -> bytes:
        if not isinstance(result, Removed):
            raise TypeError(f"expected Removed, got {type(result).__name__}")
        for mapping in result.mappings:
            self._forget(mapping.uid)
        # protocol, internal port and the suggestion are copied, lifetime 0 (§15)
        options = Options(third_party=request.options.third_party)
        return encode_response(
            Response(request.opcode, ResultCode.SUCCESS, 0, self.epoch(), request.body, options)
        )

    def _refused(self, failure: Failure, request: Request, source: IPAddress) -> bytes:
        error = failure.value
        lifetime: int | None
        if isinstance(error, _Refusal):
            result, lifetime, why = error.result, error.lifetime, error.message
        elif isinstance(error, GatewayError):
            result, why = PCP_RESULT_FOR_REASON[error.reason], error.message
            lifetime = None
            if result in (ResultCode.NOT_AUTHORIZED, ResultCode.CANNOT_PROVIDE_EXTERNAL):
                # how long the conflicting mapping still lives (§15; permanent: long)
                if error.lifetime is not None:
                    lifetime = error.lifetime
                elif error.mapping is not None:
                    lifetime = LONG_LIFETIME
        else:
            result, lifetime, why = GENERIC_FAILURE, SHORT_LIFETIME, "internal error"
            log.failure(
                "pcp: {opcode} request from {client} failed",
                failure,
                opcode=request.opcode.name,
                client=source,
            )
        log.debug(
            "pcp: refused {opcode} from {client}: {result} ({why})",
            opcode=request.opcode.name,
            client=source,
            result=result.name,
            why=why,
        )
        if lifetime is None:
            lifetime = error_lifetime(result)
        return encode_error(request.raw, result, min(lifetime, UINT32_MAX), self.epoch())

    def _logged(self, answer: bytes, request: Request, source: IPAddress) -> bytes | None:
        log.debug(
            "pcp: {opcode} from {client} -> result {result}",
            opcode=request.opcode.name,
            client=source,
            result=answer[3],
        )
        return answer

    # -- Mapping Updates (RFC 6887 §14.2) -----------------------------------------------------

    @property
    def sends_updates(self) -> bool:
        return self._scheduler is not None and self._send is not None

    def _subscribe(
        self,
        uid: int,
        response: Response,
        request: Request,
        owner: Owner,
        reply_to: tuple[str, int] | None,
    ) -> None:
        if not self.sends_updates or reply_to is None:
            return
        self._forget(uid)  # a refresh stops the updates still pending
        # no optional options in updates (§14.2)
        unsolicited = replace(response, options=replace(response.options, description=None))
        self._subscribers[uid] = _Subscriber(unsolicited, reply_to, request, owner)

    def _forget(self, uid: int) -> None:
        subscriber = self._subscribers.pop(uid, None)
        if subscriber is not None:
            subscriber.cancel()

    def notify(self, event: GatewayEvent) -> None:
        """Feed the gateway's events: a PCP mapping of ours that moved to another external
        endpoint gets a Mapping Update; a removed one is forgotten."""
        if not isinstance(event, MappingsChanged):
            return
        for change in event.changes:
            uid = change.mapping.uid
            if change.after is None:
                self._forget(uid)
                continue
            before = change.before
            subscriber = self._subscribers.get(uid)
            if subscriber is None or before is None or before.external == change.after.external:
                continue
            self._update(uid, subscriber, change.after)

    def _update(self, uid: int, subscriber: _Subscriber, mapping: Mapping) -> None:
        subscriber.cancel()
        request, body = subscriber.request, subscriber.response.body
        if body is None or request.body is None:
            return
        suggested = request.body.external_address
        if (
            request.options.prefer_failure
            and not _is_zero(suggested)
            and suggested != mapping.external.address
        ):
            # the exact endpoint asked for is gone: say so and drop the mapping
            self._subscribers.pop(uid, None)
            data = encode_error(
                request.raw, ResultCode.CANNOT_PROVIDE_EXTERNAL, SHORT_LIFETIME, self.epoch()
            )
            self._schedule(subscriber, lambda: data)
            proto = _PROTOCOLS[request.body.protocol]
            command = UnmapInternal(subscriber.owner, proto, mapping.internal)
            self._gateway.handle(command).addErrback(self._update_failed, mapping)
            return

        def encode() -> bytes:
            remaining = mapping.remaining(self._gateway.now())
            return encode_response(
                replace(
                    subscriber.response,
                    lifetime=UINT32_MAX if remaining is None else min(remaining, UINT32_MAX),
                    epoch=self.epoch(),
                    body=_assigned(body, mapping),
                )
            )

        log.debug(
            "pcp: mapping update for {client}: {what}",
            client=subscriber.reply_to[0],
            what=mapping.describe(),
        )
        self._schedule(subscriber, encode)

    def _schedule(self, subscriber: _Subscriber, encode: Callable[[], bytes]) -> None:
        for delay in UPDATE_DELAYS:
            subscriber.calls.append(
                self._scheduler.callLater(delay, self._send_update, subscriber, encode)
            )

    def _send_update(self, subscriber: _Subscriber, encode: Callable[[], bytes]) -> None:
        assert self._send is not None
        try:
            self._send(encode(), subscriber.reply_to)
        except Exception:
            log.failure("pcp: could not send a mapping update to {to}", to=subscriber.reply_to)

    def _update_failed(self, failure: Failure, mapping: Mapping) -> None:
        log.warn(
            "pcp: could not remove {what} after its external address changed: {why}",
            what=mapping.describe(),
            why=failure.getErrorMessage(),
        )

    def close(self) -> None:
        """Stop every pending Mapping Update (the socket is closing)."""
        for subscriber in self._subscribers.values():
            subscriber.cancel()
        self._subscribers.clear()


def _exact(request: Request, body: MapData | PeerData) -> bool:
    """Must the suggested external endpoint be granted exactly? PREFER_FAILURE says so for
    MAP; PEER implies it whenever a port is suggested (§12.3)."""
    if isinstance(body, PeerData):
        return body.external_port != 0
    return request.options.prefer_failure


def _is_zero(address: IPAddress) -> bool:
    return address.is_unspecified


def _assigned(body: MapData | PeerData, mapping: Mapping) -> MapData | PeerData:
    """The request's opcode data with the assigned external endpoint filled in."""
    external = mapping.internal if mapping.kind is Kind.PINHOLE else mapping.external
    return replace(body, external_port=external.port, external_address=external.address)


def _merge_filters(
    current: tuple[RemoteFilter, ...], requested: tuple[Filter, ...]
) -> tuple[RemoteFilter, ...]:
    """FILTERs add to a mapping's filters; prefix length 0 removes them all (§13.3)."""
    merged = list(current)
    for item in requested:
        if item.clears:
            merged.clear()
            continue
        value = RemoteFilter(item.network(), item.remote_port)
        if value not in merged:
            merged.append(value)
    return tuple(merged)

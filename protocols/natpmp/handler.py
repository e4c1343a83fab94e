"""NAT-PMP requests to gateway requests, and gateway results (or refusals) to NAT-PMP answers.

``NatPmpHandler.handle(data, source)`` returns a Deferred that fires with the answer's bytes, or
None when the datagram is dropped; it never fails. The rules are those of protocols.md §5.3 and
§7.2: the source address is always the internal address; lifetime 0 deletes (``UnmapInternal``),
internal port 0 with lifetime 0 deletes all of the client's NAT-PMP mappings of the protocol
(``Flush``); a mapping of another origin for the same internal endpoint is reported, not taken.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.errors import GatewayError, Reason
from gateway.model import Endpoint, Origin, Owner, Proto
from gateway.ports import Gateway
from gateway.requests import (
    ExternalAddress,
    Flush,
    GetExternalAddress,
    Granted,
    MapPort,
    Removed,
    Result,
    UnmapInternal,
)
from protocols.natpmp.codec import (
    ErrorResponse,
    MapRequest,
    MapResponse,
    NatPmpDecodeError,
    PublicAddressRequest,
    PublicAddressResponse,
    Request,
    Response,
    ResultCode,
    decode_request,
    encode_response,
)

__all__ = ["NATPMP_RESULT_FOR_REASON", "NatPmpHandler"]

log = Logger(namespace="portgate.natpmp")

IPAddress = IPv4Address | IPv6Address
_UINT32_MAX = 2**32 - 1
_NO_ADDRESS = IPv4Address(0)

#: Every refusal of the gateway as a NAT-PMP result code (RFC 6886 §3.5).
NATPMP_RESULT_FOR_REASON: dict[Reason, ResultCode] = {
    Reason.CONFLICT: ResultCode.OUT_OF_RESOURCES,
    Reason.CONFLICT_FOREIGN: ResultCode.OUT_OF_RESOURCES,
    Reason.NOT_OWNER: ResultCode.NOT_AUTHORIZED,  # deleting someone else's or a manual mapping
    Reason.NOT_FOUND: ResultCode.NOT_AUTHORIZED,
    Reason.NO_PORTS: ResultCode.OUT_OF_RESOURCES,
    Reason.POLICY_DENIED: ResultCode.NOT_AUTHORIZED,
    Reason.PORT_DENIED: ResultCode.NOT_AUTHORIZED,
    Reason.RESERVED_PORT: ResultCode.NOT_AUTHORIZED,
    Reason.THIRD_PARTY: ResultCode.NOT_AUTHORIZED,
    Reason.BAD_LIFETIME: ResultCode.NOT_AUTHORIZED,
    Reason.BAD_REQUEST: ResultCode.NOT_AUTHORIZED,  # internal port 0 with a lifetime (miniupnpd)
    Reason.NO_EXTERNAL_ADDRESS: ResultCode.NETWORK_FAILURE,
    Reason.QUOTA: ResultCode.OUT_OF_RESOURCES,
    Reason.TABLE_FULL: ResultCode.OUT_OF_RESOURCES,
    Reason.NOT_LAN: ResultCode.NOT_AUTHORIZED,
    Reason.UNSUPPORTED: ResultCode.NOT_AUTHORIZED,
    Reason.BACKEND_FAILED: ResultCode.NETWORK_FAILURE,
}

#: What an unexpected failure is answered with: the generic "try again later" of NAT-PMP.
GENERIC_FAILURE = ResultCode.NETWORK_FAILURE


class NatPmpHandler:
    """The NAT-PMP front-end of one UDP 5351 socket.

    ``epoch`` gives the SSSoE of every answer (default: ``gateway.epoch_seconds``).
    """

    def __init__(self, gateway: Gateway, *, epoch: Callable[[], int] | None = None) -> None:
        self._gateway = gateway
        self._epoch = epoch if epoch is not None else gateway.epoch_seconds

    def epoch(self) -> int:
        return max(0, min(self._epoch(), _UINT32_MAX))

    # -- announcements ----------------------------------------------------------------------

    def announcement(self) -> bytes | None:
        """The public address response multicast after a restart or an address change
        (RFC 6886 §3.2.1); None while the external address is unknown (nothing to announce)."""
        address = self._gateway.external_address
        if address is None:
            return None
        return encode_response(PublicAddressResponse(ResultCode.SUCCESS, self.epoch(), address))

    # -- requests ---------------------------------------------------------------------------

    def handle(self, data: bytes, source: IPAddress) -> Deferred[bytes | None]:
        try:
            request = decode_request(data)
        except NatPmpDecodeError as error:
            if error.result is None:
                log.debug("natpmp: dropped datagram from {client}: {why}", client=source, why=error)
                return succeed(None)
            log.debug(
                "natpmp: {why} from {client}: result {result}",
                why=error,
                client=source,
                result=error.result.name,
            )
            return succeed(encode_response(ErrorResponse(error.opcode, error.result, self.epoch())))
        if not isinstance(source, IPv4Address):
            log.debug("natpmp: dropped request from non-IPv4 {client}", client=source)
            return succeed(None)
        try:
            answer = self._dispatch(request, source)
        except Exception:
            answer = fail()
        encoded = answer.addCallback(self._encode)
        encoded.addErrback(self._refused, request, source)
        return encoded.addCallback(self._logged, request, source)

    def _dispatch(self, request: Request, source: IPv4Address) -> Deferred[Response]:
        if isinstance(request, PublicAddressRequest):
            return self._gateway.handle(GetExternalAddress()).addCallback(self._address)
        proto = Proto.TCP if request.is_tcp else Proto.UDP
        owner = Owner(Origin.NATPMP, source)
        if request.lifetime == 0:
            if request.internal_port == 0:
                command: Flush | UnmapInternal | MapPort = Flush(
                    owner, client=source, proto=proto, origin=Origin.NATPMP
                )
            else:
                command = UnmapInternal(owner, proto, Endpoint(source, request.internal_port))
            return self._gateway.handle(command).addCallback(self._deleted, request)
        command = MapPort(
            owner,
            proto,
            Endpoint(source, request.internal_port),
            request.external_port,
            request.lifetime,
            description=f"NAT-PMP {request.internal_port} {proto.value}",
        )
        return self._gateway.handle(command).addCallback(self._granted, request)

    def _address(self, result: Result) -> Response:
        if not isinstance(result, ExternalAddress):
            raise TypeError(f"expected ExternalAddress, got {type(result).__name__}")
        if result.address is None:
            return PublicAddressResponse(ResultCode.NETWORK_FAILURE, self.epoch(), _NO_ADDRESS)
        return PublicAddressResponse(ResultCode.SUCCESS, self.epoch(), result.address)

    def _deleted(self, result: Result, request: MapRequest) -> Response:
        if not isinstance(result, Removed):
            raise TypeError(f"expected Removed, got {type(result).__name__}")
        return MapResponse(
            request.opcode, ResultCode.SUCCESS, self.epoch(), request.internal_port, 0, 0
        )

    def _granted(self, result: Result, request: MapRequest) -> Response:
        if not isinstance(result, Granted):
            raise TypeError(f"expected Granted, got {type(result).__name__}")
        if result.owned and result.lifetime is not None:
            lifetime = result.lifetime
        elif result.lifetime is None:
            # permanent (static or UPnP v1) entry: tell the client what it asked for
            lifetime = request.lifetime
        else:
            # another origin's entry: never more than asked for, never past its expiry
            lifetime = min(request.lifetime, result.lifetime)
        return MapResponse(
            request.opcode,
            ResultCode.SUCCESS,
            self.epoch(),
            request.internal_port,
            result.mapping.external.port,
            min(lifetime, _UINT32_MAX),
        )

    def _encode(self, response: Response) -> bytes:
        return encode_response(response)

    def _refused(self, failure: Failure, request: Request, source: IPv4Address) -> bytes:
        error = failure.value
        if isinstance(error, GatewayError):
            code = NATPMP_RESULT_FOR_REASON[error.reason]
            log.debug(
                "natpmp: refused {request} from {client}: {reason} ({why})",
                request=request,
                client=source,
                reason=error.reason.name,
                why=error.message,
            )
        else:
            code = GENERIC_FAILURE
            log.failure(
                "natpmp: request {request} from {client} failed",
                failure,
                request=request,
                client=source,
            )
        epoch = self.epoch()
        if isinstance(request, PublicAddressRequest):
            return encode_response(PublicAddressResponse(code, epoch, _NO_ADDRESS))
        external, lifetime = 0, 0
        if request.lifetime == 0 and isinstance(error, GatewayError):
            # a refused delete echoes the request (protocols.md §5.3)
            external, lifetime = request.external_port, request.lifetime
        return encode_response(
            MapResponse(request.opcode, code, epoch, request.internal_port, external, lifetime)
        )

    def _logged(self, answer: bytes, request: Request, source: IPv4Address) -> bytes | None:
        log.debug(
            "natpmp: {request} from {client} -> result {result}",
            request=request,
            client=source,
            result=int.from_bytes(answer[2:4], "big"),
        )
        return answer

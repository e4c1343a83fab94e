"""The error families of the core and the backends (codecs have their own DecodeErrors)."""

from __future__ import annotations

import enum

from gateway.model import Mapping


class Reason(enum.Enum):
    """Why the gateway refused a request. Each front-end maps every member to a wire code."""

    CONFLICT = "conflict"  # the external port is held by another client of the same protocol
    CONFLICT_FOREIGN = "conflict_foreign"  # ... held by another protocol or a static entry
    NOT_OWNER = "not_owner"  # the entry exists but belongs to someone else
    NOT_FOUND = "not_found"
    NO_PORTS = "no_ports"  # no free external port the policy allows
    POLICY_DENIED = "policy_denied"  # the ACL refused it
    PORT_DENIED = "port_denied"  # the ACL refused this external port, but allows others
    RESERVED_PORT = "reserved_port"  # the gateway's own or a reserved port (e.g. UDP 5350-5351)
    THIRD_PARTY = "third_party"  # internal address is not the requester (secure mode)
    BAD_LIFETIME = "bad_lifetime"
    BAD_REQUEST = "bad_request"  # inconsistent or out-of-range arguments
    NO_EXTERNAL_ADDRESS = "no_external_address"
    QUOTA = "quota"  # the client's mapping quota is used up
    TABLE_FULL = "table_full"  # the global mapping limit is reached
    NOT_LAN = "not_lan"  # the request did not come from a LAN address
    UNSUPPORTED = "unsupported"  # e.g. a protocol or address family we cannot map
    BACKEND_FAILED = "backend_failed"


class GatewayError(Exception):
    """A refusal from the core or the service.

    ``mapping`` is the entry that caused a conflict or ownership refusal, when there is one;
    ``lifetime`` its remaining lease (PCP answers NOT_AUTHORIZED with it).
    """

    def __init__(
        self,
        reason: Reason,
        message: str = "",
        *,
        mapping: Mapping | None = None,
        lifetime: int | None = None,
    ) -> None:
        super().__init__(message or reason.value)
        self.reason = reason
        self.message = message or reason.value
        self.mapping = mapping
        self.lifetime = lifetime

    def __repr__(self) -> str:
        return f"GatewayError({self.reason.name}, {self.message!r})"


class BackendError(Exception):
    """The kernel (or the fake) refused a batch; nothing of the batch was applied."""


class StoreError(Exception):
    """The lease store could not be opened, read or written; str() is a one-line reason."""

"""systemd's readiness protocol (sd_notify(3)) with the standard library only.

A service of ``Type=notify`` tells systemd how it is doing by sending datagrams of
newline-separated ``KEY=VALUE`` fields to the UNIX socket named in ``$NOTIFY_SOCKET``:
``READY=1`` once it serves, ``RELOADING=1`` (with ``MONOTONIC_USEC``) while it reloads its
configuration, ``STOPPING=1`` when it begins to shut down, ``STATUS=...`` as free text for
``systemctl status``. Without ``$NOTIFY_SOCKET`` (not started by systemd) every call does
nothing. A name starting with ``@`` is a socket in the abstract namespace.

Sending never raises: a lost notification must not take the daemon down (systemd then times
the start out and says so).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

ENV = "NOTIFY_SOCKET"


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``fields`` (each ``KEY=VALUE``) as one message; True when it was sent."""
    env = os.environ if environ is None else environ
    path = env.get(ENV, "")
    if path.startswith("@"):
        address = "\0" + path[1:]
    elif path.startswith("/"):
        address = path
    else:
        return False  # unset, or a kind of socket we do not speak (vsock:...)
    message = "\n".join(field.replace("\n", " ") for field in fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError:
        return False
    return True


def ready(status: str = "", *, environ: Mapping[str, str] | None = None) -> bool:
    """The service is up (or done reloading)."""
    fields = ["READY=1"] + ([f"STATUS={status}"] if status else [])
    return notify(*fields, environ=environ)


def reloading(*, environ: Mapping[str, str] | None = None) -> bool:
    """A reload starts; follow it with ``ready()``. ``MONOTONIC_USEC`` is CLOCK_MONOTONIC, as
    systemd requires with ``RELOADING=1``."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading", environ=environ)


def stopping(*, environ: Mapping[str, str] | None = None) -> bool:
    """Shutdown begins."""
    return notify("STOPPING=1", "STATUS=stopping", environ=environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Free text for ``systemctl status``."""
    return notify(f"STATUS={text}", environ=environ)

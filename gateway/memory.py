"""The daemon's resident size: keeping OpenSSL out, and giving freed memory back.

OpenSSL. The daemon speaks plain HTTP and UDP only, yet its imports would load pyOpenSSL and
cryptography (Twisted's TCP module loads TLS support whenever pyOpenSSL is importable, as
Debian's python3-openssl is through the venv's system site-packages), ``ssl`` (asyncio) and
``_hashlib`` (hashlib), and with them libssl and libcrypto: 9 MB of its resident size
(``python -m bench.memory``). ``keep_openssl_out()``, called before the daemon's imports,
blocks them; each importer then takes its documented fallback (Twisted and asyncio run without
TLS, hashlib uses its built-in digests). With metrics on, ``gateway.cli`` does not block them:
prometheus_client imports ``ssl`` and urllib's HTTPS support unconditionally.

Freed memory. Python frees the objects of a large transient (the nftables dump parsed at start-up, a
10,000-entry install script, a GetListOfPortMappings answer of thousands of entries) but glibc's
allocator keeps the pages for reuse: measured after installing 10,000 mappings, the daemon's
resident size stayed 30 MB above what it held, and ``malloc_trim(0)`` gave 28 MB of it back.
The daemon calls ``release_free_memory()`` after start-up and then once a minute (it walks the
free lists: well under a millisecond at these sizes).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

__all__ = ["keep_openssl_out", "release_free_memory"]

_OPENSSL_MODULES = ("OpenSSL", "cryptography", "ssl", "_ssl", "_hashlib")


def keep_openssl_out() -> None:
    """Make the OpenSSL-backed modules unimportable (those not imported already)."""
    for name in _OPENSSL_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):  # one without malloc_trim (musl)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    result: Callable[[int], int] = trim
    return result


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    return bool(_TRIM(0))

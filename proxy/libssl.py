"""OpenSSL past the ssl module: the one module that reaches libssl with ctypes.

Two things Portico needs have no API in Python's ssl module: rotating a listener's session
ticket keys (proxy/tls.py, `SSL_CTX_ctrl`) and asking one connection for a client certificate
from the SNI callback, then reading its verification result (proxy/peercert.py, `SSL_set_verify`,
`SSL_get_verify_result`), as nginx does. Both need the OpenSSL object behind an ssl object:
`ctx_pointer` reads the `SSL_CTX *` of an `SSLContext` (the first field after the object header
of CPython's PySSLContext) and `ssl_pointer` the `SSL *` of a connection (after the socket
weakref in PySSLSocket). Each pointer is checked before use (the context's options read back
through it; the connection's SSL_CTX equal to its context's), and they are read only on the
CPython versions whose layouts were checked (`KNOWN_LAYOUTS`). Anywhere else `LIB` is None and
the callers do without: no ticket rotation (logged), no client certificate asked for (hosts that
need one answer 400: fail closed), never a read of an unknown layout.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from typing import Final

KNOWN_LAYOUTS: Final = frozenset({(3, 11), (3, 12), (3, 13)})


def _load() -> ctypes.CDLL | None:
    if sys.version_info[:2] not in KNOWN_LAYOUTS or sys.implementation.name != "cpython":
        return None
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_set_verify.restype = None
        lib.SSL_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.SSL_set_verify_depth.restype = None
        lib.SSL_set_verify_depth.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.SSL_get_verify_result.restype = ctypes.c_long
        lib.SSL_get_verify_result.argtypes = [ctypes.c_void_p]
        lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
        lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
        lib.X509_verify_cert_error_string.restype = ctypes.c_char_p
        lib.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        return lib
    except (OSError, AttributeError):
        return None


LIB: Final = _load()


def ctx_pointer(context: ssl.SSLContext) -> int | None:
    """The SSL_CTX of a context (the first field after the object header, checked)."""
    if LIB is None:
        return None
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or LIB.SSL_CTX_get_options(pointer) != int(context.options):
        return None
    return pointer


def ssl_pointer(sock: ssl.SSLSocket | ssl.SSLObject) -> int | None:
    """The SSL of a connection: the field after the socket weakref in the ssl module's
    object, checked against its context's SSL_CTX."""
    if LIB is None:
        return None
    inner = getattr(sock, "_sslobj", None) or sock
    address = id(inner) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(address).value
    ctx = ctx_pointer(sock.context)
    if not pointer or ctx is None or LIB.SSL_get_SSL_CTX(pointer) != ctx:
        return None
    return pointer

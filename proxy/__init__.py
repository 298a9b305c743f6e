"""Portico's data plane: the worker process, its HTTP/TLS proxy and the snapshot it serves.

The request-path modules may be compiled with mypyc (see proxy/native.py); this decides, before
any of them is imported, whether the compiled build is current or the sources run instead.
"""

from proxy import native

native.activate()

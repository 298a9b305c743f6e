"""The HTTPS listener: accepts connections and runs TLS straight on each socket.

Data flow: `TLSListener` accepts on the HTTPS socket, wraps each connection in an `SSLSocket`
of the listener's context (whose SNI callback picks the certificate, see tls.py) and hands it
to a `TLSTransport`, which drives the handshake from the event loop's readiness callbacks and,
once it is done, gives the `DownstreamProtocol` the same asyncio transport API a plain TCP
connection has.

Why not the event loop's own TLS (`create_server(ssl=...)`): that runs OpenSSL over memory
BIOs. Every response is encrypted into a growing memory buffer (zero-filled as it grows),
copied out of it into a new bytes object and only then written to the socket: two extra copies
of every byte, a tenth of the worker's time on 64 KiB responses. Here OpenSSL reads and
writes the socket itself (as nginx does): one encryption, one write.

OpenSSL writes each record (16 KiB at most) with its own send(). A burst of several records
(a large response) is corked (TCP_CORK) until its last record is written, so the kernel sends
it as a few full segments instead of one packet per record: on loopback every packet costs a
run of the receive path and a wake-up of the reader (measured: `--tls --body 64k` went from
0.83-0.89 to 0.93-0.99 of nginx).

OpenSSL's rules this module follows: a write that stopped half-way (`SSLWantWriteError`) is
retried with the very same bytes before anything else is written; a read may need the socket
writable (and the other way round), so each wait says which way it waits; plaintext OpenSSL
already holds is read before waiting on the socket again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Final

from proxy.clienthello import MAX_HELLO, HelloError, Incomplete, server_name
from proxy.peercert import VerifyingContext, peer_certificate
from proxy.proxyprotocol import MAX_HEADER, ProxyHeaderError, Source, parse, refused

logger = logging.getLogger("portico.tls")

# One TLS record holds at most 16 KiB of plaintext; a read returns one record at most.
READ_SIZE: Final = 65536
# Plaintext a multiplexed connection may read per readiness event (TLSTransport._burst).
BURST: Final = 262144
# The plaintext of one TLS record (its maximum).
RECORD: Final = 16384
# Flow control towards the protocol, as asyncio's transports do by default.
HIGH_WATER: Final = 65536
LOW_WATER: Final = 16384
# Connections accepted per readiness event of the listening socket.
ACCEPT_BURST: Final = 64
# After accept() ran out of file descriptors, wait this long before accepting again.
ACCEPT_BACKOFF: Final = 0.5

# What the protocols write: bytes, or views of bytes (never of a buffer that is reused).
Data = bytes | memoryview

_WANT_READ: Final = 1
_WANT_WRITE: Final = 2
# Linux's TCP_CORK; -1 where the platform has none (bursts then go out uncorked). Not Final:
# mypyc miscompiles a Final optional int.
_TCP_CORK: int = getattr(socket, "TCP_CORK", -1)
# Without SO_RCVLOWAT, a partial ClientHello is peeked again at this interval (seconds).
HELLO_POLL: Final = 0.01

# Given a connection, its PROXY protocol source and the server name of its ClientHello (None:
# no SNI), takes the connection over (True: TLS passthrough) or leaves it to be terminated.
Handoff = Callable[[socket.socket, Source, str | None], bool]


class TLSListener:
    """Accepts TLS connections on a listening socket for a protocol factory.

    Stands in for the `asyncio.Server` the event loop would return: `sockets`, `close`,
    `wait_closed`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        context: ssl.SSLContext,
        protocol_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        proxy_protocol: bool = False,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.sockets = [sock]
        self.context = context
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        # Each connection begins with a PROXY protocol header, read before the handshake.
        self.proxy_protocol = proxy_protocol
        self.closed = False
        self.handshaking: set[TLSTransport] = set()
        self.reading_headers: set[ProxyHeaderRead] = set()
        # Set (by the server, per snapshot) only while some host is TLS passthrough: each new
        # connection's ClientHello is then peeked at first. None: no peek, no cost.
        self.handoff: Handoff | None = None
        self.reading_hellos: set[ClientHelloRead] = set()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a moment instead of spinning;
                    # the backlog keeps the waiting clients.
                    logger.warning("tls.accept_failed", extra={"error": str(exc)})
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(ACCEPT_BACKOFF, self._resume_accepting)
                else:
                    logger.debug("tls.accept_error", extra={"error": str(exc)})
                return
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:  # the peer already reset
                logger.debug("tls.accept_error", extra={"error": str(exc)})
                conn.close()
                continue
            if self.proxy_protocol:
                ProxyHeaderRead(self, conn)
            elif self.handoff is not None:
                ClientHelloRead(self, conn, None)
            else:
                self.start_tls(conn, None)

    def accepted(self, conn: socket.socket, source: Source) -> None:
        """A connection whose PROXY protocol header is read: on to its ClientHello or TLS."""
        if self.handoff is not None:
            ClientHelloRead(self, conn, source)
        else:
            self.start_tls(conn, source)

    def start_tls(self, conn: socket.socket, source: Source) -> None:
        """Wrap an accepted connection and start its handshake; `source` (from a PROXY
        protocol header) stands for the peer address."""
        try:
            tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:  # wrapping failed
            logger.debug("tls.accept_error", extra={"error": str(exc)})
            conn.close()
            return
        TLSTransport(self, tls, self.protocol_factory(), source)

    def _resume_accepting(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections already accepted (and their handshakes) go on."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    async def wait_closed(self) -> None:
        return None


class TLSTransport:
    """One server-side TLS connection, with asyncio's `Transport` API for its protocol."""

    def __init__(
        self,
        listener: TLSListener,
        sock: ssl.SSLSocket,
        protocol: asyncio.Protocol,
        source: Source = None,
    ) -> None:
        self.loop = listener.loop
        self.listener: TLSListener | None = listener
        self.sock = sock
        self.source = source  # the PROXY protocol's client address, reported as the peer
        # The C-level TLS connection inside the SSLSocket: reads and writes call it directly,
        # skipping the ssl module's Python wrappers (seven calls per response).
        self.tls: Any = getattr(sock, "_sslobj", None) or sock
        self.fd = sock.fileno()
        self.protocol = protocol
        self.extra: dict[str, Any] = {}
        self.handshaking = True
        self.reading = True  # the protocol wants data (pause_reading clears it)
        self.closing = False  # close() called: no more reads, shut down once written
        self.closed = False  # the socket is closed; connection_lost is (being) called
        # Outgoing data: `current` is the bytes a write stopped half-way in (OpenSSL needs it
        # again, unchanged); `pending` what came after it.
        self.current: Data | None = None
        self.pending: list[Data] = []
        self.buffered = 0
        self.protocol_paused = False
        self.corked = False  # TCP_CORK is set for the burst being written (see _cork)
        # Which readiness each operation waits for (bits of _WANT_READ / _WANT_WRITE).
        self.read_waits = _WANT_READ
        self.write_waits = 0
        self.registered = 0  # the readiness callbacks installed with the loop
        # HTTP/2 (ALPN h2): many requests per connection, each read drains the socket (_burst).
        self.multiplexed = False
        listener.handshaking.add(self)
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(
            listener.handshake_timeout, self._handshake_timed_out
        )
        self._handshake()

    # ---- handshake ---------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._wait(_WANT_READ, 0)
            return
        except ssl.SSLWantWriteError:
            self._wait(_WANT_WRITE, 0)
            return
        except (ssl.SSLError, OSError) as exc:
            self._handshake_failed(exc)
            return
        self.handshaking = False
        self._end_handshake_phase()
        self.multiplexed = self.sock.selected_alpn_protocol() == "h2"
        try:
            self.extra["peername"] = self.source or self.sock.getpeername()
        except OSError:
            self.extra["peername"] = None
        if isinstance(self.sock.context, VerifyingContext):
            # A host that asks for client certificates: what this handshake found, for the
            # policy step of the connection's requests (proxy/clientauth.py).
            self.extra["client_certificate"] = peer_certificate(self.sock)
        try:
            self.protocol.connection_made(self)  # type: ignore[arg-type]
        except Exception as exc:
            self._protocol_failed(exc)
            return
        if self.closed:
            return
        self.read_waits = _WANT_READ if self.reading and not self.closing else 0
        self._sync()
        if self.read_waits and self.sock.pending():
            self.loop.call_soon(self._read)

    def _handshake_failed(self, exc: BaseException) -> None:
        # Scanners, clients that reject the certificate, plain HTTP on the HTTPS port: not
        # the proxy's problem, and far too common to log above debug.
        logger.debug("tls.handshake_failed", extra={"error": _describe(exc)})
        self._end_handshake_phase()
        self._close_socket()

    def _handshake_timed_out(self) -> None:
        self.timer = None
        if self.handshaking:
            self._handshake_failed(TimeoutError("TLS handshake timed out"))

    def _end_handshake_phase(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.listener is not None:
            self.listener.handshaking.discard(self)
            self.listener = None

    # ---- readiness ---------------------------------------------------------------------------

    def _wait(self, read_waits: int, write_waits: int) -> None:
        self.read_waits = read_waits
        self.write_waits = write_waits
        self._sync()

    def _sync(self) -> None:
        """Install exactly the readiness callbacks the current reads and writes wait for."""
        if self.closed:
            return
        wanted = self.read_waits | self.write_waits
        have = self.registered
        if wanted == have:
            return
        loop = self.loop
        if wanted & _WANT_READ and not have & _WANT_READ:
            loop.add_reader(self.fd, self._on_readable)
        elif have & _WANT_READ and not wanted & _WANT_READ:
            loop.remove_reader(self.fd)
        if wanted & _WANT_WRITE and not have & _WANT_WRITE:
            loop.add_writer(self.fd, self._on_writable)
        elif have & _WANT_WRITE and not wanted & _WANT_WRITE:
            loop.remove_writer(self.fd)
        self.registered = wanted

    def _on_readable(self) -> None:
        if self.handshaking:
            self._handshake()
            return
        if self.read_waits & _WANT_READ:
            self._read()
        if self.write_waits & _WANT_READ:
            self._flush()

    def _on_writable(self) -> None:
        if self.handshaking:
            self._handshake()
            return
        if self.write_waits & _WANT_WRITE:
            self._flush()
        if self.read_waits & _WANT_WRITE:
            self._read()

    # ---- reading -----------------------------------------------------------------------------

    def _read(self) -> None:
        # One record per readiness event: OpenSSL reads the socket only as far as the record
        # it returns, so what is left stays in the kernel and the loop reports it again (a
        # second read here would mostly cost a failed syscall). A multiplexed connection
        # (ALPN h2) is the exception, see `_burst`.
        tls = self.tls
        while self.reading and not self.closing and not self.closed:
            try:
                data = tls.read(READ_SIZE)
            except (ssl.SSLError, OSError) as exc:
                self._read_stopped(exc)
                return
            if not data:
                self._eof()
                return
            self._set_read_waits(_WANT_READ)
            stopped = None
            if self.multiplexed:
                data, stopped = self._burst(data)
            try:
                self.protocol.data_received(data)
            except Exception as exc:
                self._protocol_failed(exc)
                return
            if stopped is not None:
                if not self.closing and not self.closed:
                    self._read_stopped(stopped)
                return
            if not tls.pending():
                return

    def _burst(self, first: bytes) -> tuple[bytes, ssl.SSLError | OSError | None]:
        """`first` and the records after it that are in the socket already, up to BURST bytes,
        joined; and why reading stopped (None: BURST was reached).

        An HTTP/2 client writes many streams' frames at once, often a record each; read one
        per readiness event, a connection got a loop iteration per record while the others
        were served (proxy-bench --h2: the connections that happened to send small records
        ran at half the rate of the rest, p99 3.9x nginx's). All of them are taken in one
        go instead, and the protocol answers them with one write."""
        pieces = [first]
        size = len(first)
        tls = self.tls
        stopped: ssl.SSLError | OSError | None = None
        while size < BURST:
            try:
                more = tls.read(READ_SIZE)
            except (ssl.SSLError, OSError) as exc:
                stopped = exc
                break
            if not more:
                stopped = ssl.SSLEOFError()
                break
            pieces.append(more)
            size += len(more)
        return (first if len(pieces) == 1 else b"".join(pieces)), stopped

    def _read_stopped(self, exc: ssl.SSLError | OSError) -> None:
        """A read raised `exc`: wait for what OpenSSL needs, or end the connection."""
        if isinstance(exc, ssl.SSLWantReadError):
            self._set_read_waits(_WANT_READ)
        elif isinstance(exc, ssl.SSLWantWriteError):
            self._set_read_waits(_WANT_WRITE)
        elif isinstance(exc, ssl.SSLEOFError):  # the client closed (without close_notify)
            self._eof()
        else:
            self._fatal(exc)

    def _set_read_waits(self, waits: int) -> None:
        if self.read_waits != waits:
            self.read_waits = waits
            self._sync()

    def _eof(self) -> None:
        self.read_waits = 0
        self._sync()
        try:
            self.protocol.eof_received()
        except Exception as exc:
            self._fatal(exc)
            return
        # TLS has no half-close: the connection ends once what is buffered is written.
        self.close()

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            if not self.handshaking and self.read_waits:
                self._set_read_waits(0)

    def resume_reading(self) -> None:
        if self.reading or self.closed:
            return
        self.reading = True
        if self.handshaking or self.closing:
            return
        self._set_read_waits(_WANT_READ)
        if self.sock.pending():
            self.loop.call_soon(self._read)

    def is_reading(self) -> bool:
        return self.reading and not self.closing

    # ---- writing -----------------------------------------------------------------------------

    def write(self, data: Data) -> None:
        if self.closing or self.closed or not data:
            return
        if len(data) > RECORD and self._cork():
            try:
                self._write(data)
            finally:
                self._uncork()
        else:
            self._write(data)

    def _write(self, data: Data) -> None:
        if self.current is None and not self.pending:
            try:
                self.tls.write(data)
                return
            except ssl.SSLWantWriteError:
                self.current = data
                self.write_waits = _WANT_WRITE
            except ssl.SSLWantReadError:
                self.current = data
                self.write_waits = _WANT_READ
            except (ssl.SSLError, OSError) as exc:
                self._fatal(exc)
                return
            self.buffered = len(data)
            self._sync()
        else:
            self.pending.append(data)
            self.buffered += len(data)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[Data]) -> None:
        # Pieces up to one record's worth are joined into one record. A larger piece (a body
        # read) is written as it is, after what precedes it, in one corked burst: joining the
        # head to the start of the body would save at most one record, and its 16 KiB copy
        # cost more than that record (measured: `--tls --body 64k` 0.91 -> 0.96 of nginx).
        pieces = list(list_of_data)
        head: list[Data] = []
        size = 0
        for index, piece in enumerate(pieces):
            length = len(piece)
            if size + length <= RECORD:
                head.append(piece)
                size += length
                continue
            corked = self._cork()
            try:
                if size:
                    self.write(head[0] if len(head) == 1 else b"".join(head))
                self.write(piece)
                for rest in pieces[index + 1 :]:
                    self.write(rest)
            finally:
                if corked:
                    self._uncork()
            return
        if head:
            self.write(head[0] if len(head) == 1 else b"".join(head))

    def _flush(self) -> None:
        corked = self.buffered > RECORD and self._cork()
        try:
            self._flush_buffered()
        finally:
            if corked:
                self._uncork()
        if self.closing and not self.closed and self.current is None and not self.pending:
            self._shutdown()

    def _flush_buffered(self) -> None:
        tls = self.tls
        while True:
            data = self.current
            if data is None:
                pending = self.pending
                if not pending:
                    break
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                self.pending = []
                self.current = data
            try:
                tls.write(data)
            except ssl.SSLWantWriteError:
                self._set_write_waits(_WANT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._set_write_waits(_WANT_READ)
                return
            except (ssl.SSLError, OSError) as exc:
                self._fatal(exc)
                return
            self.current = None
            self.buffered -= len(data)
        self.buffered = 0
        self._set_write_waits(0)
        if self.protocol_paused:
            self.protocol_paused = False
            try:
                self.protocol.resume_writing()
            except Exception as exc:
                self._fatal(exc)
                return

    def _cork(self) -> bool:
        """Hold back partial segments until `_uncork` (False: corked already, closed, no cork)."""
        if self.corked or self.closed or _TCP_CORK < 0:
            return False
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
        except OSError:
            return False
        self.corked = True
        return True

    def _uncork(self) -> None:
        """Send what the burst left in a partial segment now (not after the 200 ms cap)."""
        self.corked = False
        if not self.closed and _TCP_CORK >= 0:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)

    def _set_write_waits(self, waits: int) -> None:
        if self.write_waits != waits:
            self.write_waits = waits
            self._sync()

    def _maybe_pause_protocol(self) -> None:
        if self.buffered > HIGH_WATER and not self.protocol_paused:
            self.protocol_paused = True
            try:
                self.protocol.pause_writing()
            except Exception as exc:
                self._fatal(exc)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (LOW_WATER, HIGH_WATER)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    # ---- closing -----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.closing or self.closed

    def close(self) -> None:
        """Stop reading; send what is buffered, then close_notify, then close."""
        if self.closing or self.closed:
            return
        self.closing = True
        self.read_waits = 0
        self._sync()
        if self.current is None and not self.pending:
            self._shutdown()

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        if not self.closed:
            self.closing = True
            self._close_socket(None)

    def _shutdown(self) -> None:
        # One close_notify, without waiting for the client's: it is about to see the close.
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self.sock.unwrap()
        self._close_socket(None)

    def _protocol_failed(self, exc: Exception) -> None:
        # A bug in the protocol, not a network event: logged loudly, and only this
        # connection pays for it (as the event loop's own transports do).
        logger.error(
            "tls.protocol_error",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"protocol": type(self.protocol).__name__},
        )
        if not self.closed:
            self.closing = True
            self._close_socket(exc)

    def _fatal(self, exc: BaseException) -> None:
        logger.debug("tls.connection_error", extra={"error": _describe(exc)})
        if not self.closed:
            self.closing = True
            self._close_socket(exc if isinstance(exc, Exception) else None)

    def _close_socket(self, exc: Exception | None = None) -> None:
        """Remove the callbacks, close the socket and, if the protocol saw it, tell it."""
        if self.closed:
            return
        self.read_waits = 0
        self.write_waits = 0
        self._sync()
        self.closed = True
        self.current = None
        self.pending = []
        self.buffered = 0
        self.sock.close()
        if not self.handshaking:
            self.loop.call_soon(self.protocol.connection_lost, exc)

    # ---- the rest of the transport API ---------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self.extra:
            return self.extra[name]
        if name == "ssl_object":
            return self.sock
        if name == "sslcontext":
            return self.sock.context
        if name == "sockname":
            try:
                return self.sock.getsockname()
            except OSError:
                return default
        if name == "cipher":
            return self.sock.cipher()
        if name == "peercert":
            return self.sock.getpeercert()
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        # Fixed limits (HIGH_WATER, LOW_WATER); the proxy does not change them.
        return None


class ProxyHeaderRead:
    """Reads the PROXY protocol header of an accepted HTTPS connection, then starts TLS.

    The header's bytes only are consumed: the client may send its ClientHello in the same
    segment, and OpenSSL must find it in the socket. So each read peeks (MSG_PEEK) and takes
    from the socket what `parse` says is header: all of what was peeked while the header is
    incomplete (it is all header then), exactly the rest once it is complete."""

    def __init__(self, listener: TLSListener, conn: socket.socket) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.conn = conn
        self.fd = conn.fileno()
        self.buffer = b""
        self.done = False
        listener.reading_headers.add(self)
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(
            listener.handshake_timeout, self._timed_out
        )
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        if self.done:
            return
        conn = self.conn
        try:
            data = conn.recv(MAX_HEADER - len(self.buffer), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._refuse(str(exc))
            return
        if not data:
            self._refuse("connection closed before a complete PROXY protocol header")
            return
        candidate = self.buffer + data
        try:
            found = parse(candidate)
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        try:
            if found is None:
                _consume(conn, len(data))
                self.buffer = candidate
                return
            length, source = found
            _consume(conn, length - len(self.buffer))
        except OSError as exc:
            self._refuse(str(exc))
            return
        self._finish()
        self.listener.accepted(conn, source)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.done:
            self._refuse("no complete PROXY protocol header in time")

    def _refuse(self, reason: str) -> None:
        refused(reason)
        self._finish()
        self.conn.close()

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.loop.remove_reader(self.fd)
        self.listener.reading_headers.discard(self)


class ClientHelloRead:
    """Peeks at an accepted HTTPS connection's ClientHello for its server name (TLS
    passthrough), then hands the connection on: to the listener's `handoff`, else to TLS.

    Nothing is taken from the socket: the ClientHello stays for OpenSSL or the pod. So that a
    partial hello does not keep the socket readable (a busy loop), each wait sets SO_RCVLOWAT
    to the bytes the parser needs next: the loop then wakes when they are all there, or at
    EOF (readable, yet still short: closed). Bounded like the PROXY header: at most MAX_HELLO
    bytes, within the client header timeout (a slow client is cut off); a hello that cannot
    be read is refused (closed)."""

    def __init__(self, listener: TLSListener, conn: socket.socket, source: Source) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.conn = conn
        self.source = source
        self.fd = conn.fileno()
        self.done = False
        self.peeked = 0  # bytes seen by the previous peek
        self.lowat = 1  # SO_RCVLOWAT as set on the socket (1: the default)
        self.polling = False  # no SO_RCVLOWAT here: peek again after HELLO_POLL
        listener.reading_hellos.add(self)
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(
            listener.handshake_timeout, self._timed_out
        )
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        if self.done:
            return
        conn = self.conn
        try:
            data = conn.recv(MAX_HELLO, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._refuse(str(exc))
            return
        if not data or (len(data) == self.peeked and self.lowat > 1):
            self._refuse("connection closed before a complete ClientHello")
            return
        self.peeked = len(data)
        try:
            name = server_name(data)
        except Incomplete as more:
            self._wait_for(more.needed)
            return
        except HelloError as exc:
            self._refuse(str(exc))
            return
        if not self._finish():
            return
        listener = self.listener
        handoff = listener.handoff
        if handoff is not None and handoff(conn, self.source, name):
            return
        listener.start_tls(conn, self.source)

    def _wait_for(self, needed: int) -> None:
        if not self.polling:
            try:
                self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, needed)
                self.lowat = needed
                return
            except OSError:
                self.polling = True
        self.loop.remove_reader(self.fd)
        self.loop.call_later(HELLO_POLL, self._poll)

    def _poll(self) -> None:
        if not self.done:
            self.loop.add_reader(self.fd, self._readable)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.done:
            self._refuse("no complete ClientHello in time")

    def _refuse(self, reason: str) -> None:
        # Scanners and plain HTTP on the HTTPS port land here: debug, as failed handshakes.
        logger.debug("tls.client_hello_refused", extra={"reason": reason})
        self._finish()
        self.conn.close()

    def _finish(self) -> bool:
        """Stop reading; False when the socket can no longer be used."""
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.loop.remove_reader(self.fd)
        self.listener.reading_hellos.discard(self)
        if self.lowat != 1:
            try:
                self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                self.conn.close()
                return False
            self.lowat = 1
        return True


def _consume(conn: socket.socket, n: int) -> None:
    """Take `n` bytes already peeked from the socket (they are there: no wait)."""
    while n > 0:
        taken = conn.recv(n)
        if not taken:
            raise ConnectionResetError("connection closed while reading the PROXY header")
        n -= len(taken)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__

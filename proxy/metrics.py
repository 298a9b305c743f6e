"""Per-request accounting of one worker: counters and histograms with bounded label sets.

Every finished exchange makes one `RequestMetrics.record` call (from `proxy/exchange.py`), which
appends one tuple of its numbers to a short batch; every BATCH requests (and before each export) the
batch is folded into the cells: counters and histogram buckets in flat lists, one cell per path
rule, status class, method and client protocol. Each bytecode amid the request path costs several
times what it costs in a tight loop (the path's code keeps evicting it from the CPU's caches), so
folding in bulk costs about half as much per request as incrementing in place (measured with
tests/bench/hotpath.py), as the access log's batches do. Labels are bounded by the snapshot: the
rule gives namespace, Ingress, Service, host and path pattern (never the raw path), the status is
reduced to its class and the method to a fixed set. Requests without a rule (404, malformed) share
one cell set with empty labels. The protocol is the client connection's, in the access log's words
(PROTOCOLS): "HTTP/2.0" for an HTTP/2 stream, "HTTP/1.1" for an HTTP/1.x connection (HTTP/1.0
requests included: the exchange reads one attribute of its client for it, never the head's version).

Once a second the worker sends `export()` (a `proxy.channel.RequestCounts`) in its STATS message:
the cumulative values of only the cells that moved since the last export. The controller
(`controller/metrics.py`) keeps the latest values per worker and sums them over workers for
/metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

from proxy.channel import RequestCounts, SeriesKey

# Typed explicitly: mypyc inlines a bare Final tuple and then leaves len() of it unset.
Buckets = tuple[float, ...]
# ingress-nginx's default buckets: time (Prometheus' defaults), length (request/response size)
# and size (bytes sent), so dashboards built for it read the same quantiles.
TIME_BUCKETS: Final[Buckets] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LENGTH_BUCKETS: Final[Buckets] = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
SIZE_BUCKETS: Final[Buckets] = (10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7)

METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER")
OTHER_METHOD: Final = b"OTHER"
# The client protocols (`ClientSide.metrics_protocol`), as the access log's `protocol` says them.
HTTP1: Final = "HTTP/1.1"
HTTP2: Final = "HTTP/2.0"
PROTOCOLS: Final = (HTTP1, HTTP2)
_MAX_METHOD_KEYS: Final = 32  # unknown methods seen before they all map to OTHER's row
_CLASSES: Final = 10  # status classes 0xx..9xx (httptools takes any 3-digit status from a pod)
BATCH: Final = 256  # requests recorded before they are folded into the cells

# Layout of one cell (a flat list of floats, also sent as is). Buckets are not cumulative and
# end with +Inf; counts are the sums of the buckets.
DURATION_SUM: Final = 0
UPSTREAM_SUM: Final = 1
BYTES_IN: Final = 2
BYTES_OUT: Final = 3
DURATION: Final = 4
UPSTREAM: Final = DURATION + len(TIME_BUCKETS) + 1
_BASIC_CELL: Final = UPSTREAM + len(TIME_BUCKETS) + 1
REQUEST_SIZE: Final = _BASIC_CELL
RESPONSE_SIZE: Final = REQUEST_SIZE + len(LENGTH_BUCKETS) + 1
BYTES_SENT: Final = RESPONSE_SIZE + len(LENGTH_BUCKETS) + 1
_SIZED_CELL: Final = BYTES_SENT + len(SIZE_BUCKETS) + 1

# (ingress "ns/name", service "ns/name", host, path): "" where there is none.
SeriesLabels = tuple[str, str, str, str]
# Method (as sent) -> cells by status class.
Rows = list[list[float] | None]
# One recorded request: series, method, status, seconds, upstream seconds (< 0: no response
# head), body bytes in, body bytes out, reason, client protocol.
Pending = tuple["Series", bytes, int, float, float, int, int, str | None, str]


class Series:
    """The cells of one label set: rows by client protocol and request method, cells by status
    class."""

    __slots__ = ("labels", "methods", "rows")

    def __init__(self, labels: SeriesLabels) -> None:
        self.labels = labels
        # One row per PROTOCOLS x METHODS entry; `methods` maps protocol, then the method bytes,
        # to it.
        self.rows: dict[tuple[str, str], Rows] = {}
        self.methods: dict[str, dict[bytes, Rows]] = {}
        for protocol in PROTOCOLS:
            by_method: dict[bytes, Rows] = {}
            for m in METHODS:
                row: Rows = [None] * _CLASSES
                self.rows[(protocol, m)] = row
                by_method[m.encode()] = row
            self.methods[protocol] = by_method


class RequestMetrics:
    """Counters of one worker's finished exchanges (see the module docstring)."""

    __slots__ = (
        "_by_labels",
        "_cell_size",
        "_exported",
        "ejections",
        "local_replies",
        "pending",
        "retries",
        "sizes",
        "unrouted",
    )

    def __init__(self, sizes: bool = False) -> None:
        # Size histograms are only kept for the ingress-nginx names (three bisects less per
        # request otherwise).
        self.sizes = sizes
        self._cell_size = _SIZED_CELL if sizes else _BASIC_CELL
        # Routes of successive snapshots with the same labels share one series.
        self._by_labels: dict[SeriesLabels, Series] = {}
        self.unrouted = self.series_for(("", "", "", ""))
        self.local_replies: dict[str, int] = {}
        self.pending: list[Pending] = []
        self.retries = 0  # attempts on another endpoint after a failed one
        self.ejections = 0  # endpoints ejected after a connect failure
        # id(cell) -> request count at the last export.
        self._exported: dict[int, float] = {}

    # ---- the request path ----------------------------------------------------------------------

    def record(
        self,
        series: Series,
        method: bytes,
        status: int,
        seconds: float,
        upstream_seconds: float,
        received: int,
        sent: int,
        reason: str | None,
        protocol: str,
    ) -> None:
        """Account one finished exchange (answered, refused, cut or abandoned): `series` is its
        route's (`Route.series_in`, or `unrouted`); `upstream_seconds` < 0: no response head;
        `protocol`: one of PROTOCOLS."""
        pending = self.pending
        pending.append(
            (series, method, status, seconds, upstream_seconds, received, sent, reason, protocol)
        )
        if len(pending) >= BATCH:
            self.fold()

    def record_refusal(self, status: int, reason: str) -> None:
        """A request refused before it became an exchange (an unparsable HTTP/1.x head)."""
        self.pending.append((self.unrouted, OTHER_METHOD, status, 0.0, -1.0, 0, 0, reason, HTTP1))

    def fold(self) -> None:
        """Add the recorded requests to their cells."""
        pending = self.pending
        if not pending:
            return
        self.pending = []
        size = self._cell_size
        sizes = self.sizes
        replies = self.local_replies
        for series, method, status, duration, upstream, received, sent, reason, protocol in pending:
            methods = series.methods.get(protocol)
            if methods is None:
                methods = series.methods[HTTP1]  # not a protocol of PROTOCOLS: never happens
            rows = methods.get(method)
            if rows is None:
                rows = self._other(methods, method)
            status_class = status // 100 % _CLASSES
            cell = rows[status_class]
            if cell is None:
                cell = rows[status_class] = [0.0] * size
            cell[DURATION_SUM] += duration
            cell[DURATION + bisect_left(TIME_BUCKETS, duration)] += 1
            if upstream >= 0.0:
                cell[UPSTREAM_SUM] += upstream
                cell[UPSTREAM + bisect_left(TIME_BUCKETS, upstream)] += 1
            cell[BYTES_IN] += received
            cell[BYTES_OUT] += sent
            if reason is not None:
                replies[reason] = replies.get(reason, 0) + 1
            if sizes:
                cell[REQUEST_SIZE + bisect_left(LENGTH_BUCKETS, received)] += 1
                cell[RESPONSE_SIZE + bisect_left(LENGTH_BUCKETS, sent)] += 1
                cell[BYTES_SENT + bisect_left(SIZE_BUCKETS, sent)] += 1

    # ---- label sets (once per route) -----------------------------------------------------------

    def _other(self, methods: dict[bytes, Rows], method: bytes) -> Rows:
        """A method outside METHODS: counted as OTHER (remembered, up to a bound)."""
        rows = methods[OTHER_METHOD]
        if len(methods) < _MAX_METHOD_KEYS:
            methods[method] = rows
        return rows

    def series_for(self, labels: SeriesLabels) -> Series:
        """The series of a label set: routes of successive snapshots with the same labels
        share one."""
        series = self._by_labels.get(labels)
        if series is None:
            series = self._by_labels[labels] = Series(labels)
        return series

    # ---- export (once a second) ----------------------------------------------------------------

    def export(self) -> RequestCounts:
        """Cumulative values of the cells that moved since the last export, by (ingress,
        service, host, path, status class, method, protocol): the controller replaces what it
        held for that label set with these values. Folds the recorded requests first.
        """
        self.fold()
        moved: dict[SeriesKey, tuple[float, ...]] = {}
        exported = self._exported
        count_end = DURATION + len(TIME_BUCKETS) + 1
        for series in self._by_labels.values():
            labels = series.labels
            for (protocol, method), cells in series.rows.items():
                for status_class, cell in enumerate(cells):
                    if cell is None:
                        continue
                    count = sum(cell[DURATION:count_end])
                    if exported.get(id(cell)) == count:
                        continue
                    exported[id(cell)] = count
                    moved[(*labels, status_class, method, protocol)] = tuple(cell)
        return RequestCounts(
            moved, self.sizes, dict(self.local_replies), self.retries, self.ejections
        )

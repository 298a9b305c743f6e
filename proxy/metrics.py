"""Per-request accounting of one worker: counters and histograms with bounded label sets.

Every finished exchange makes one `RequestMetrics.record` call (from `ProxyServer`), which only
increments numbers in a flat list: the cell of its path rule, status class and method. Labels
are bounded by the snapshot: the rule gives namespace, Ingress, Service, host and path pattern
(never the raw path), the status is reduced to its class and the method to a fixed set.
Requests without a rule (404, malformed) share one cell set with empty labels.

Once a second the worker sends `export()` with its STATS message: the cumulative values of only
the cells that moved since the last export. The controller (`controller/metrics.py`) keeps the
latest values per worker and sums them over workers for /metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Final

from proxy.cluster import Cluster

if TYPE_CHECKING:
    from proxy.config import PathRule
    from proxy.exchange import Exchange
    from proxy.server import Generation

# ingress-nginx's default buckets: time (Prometheus' defaults), length (request/response size)
# and size (bytes sent), so dashboards built for it read the same quantiles.
TIME_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LENGTH_BUCKETS: Final = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
SIZE_BUCKETS: Final = (10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7)

METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER")
_KNOWN: Final = frozenset(m.encode() for m in METHODS[:-1])
_OTHER: Final = b"OTHER"
_MAX_METHOD_KEYS: Final = 32  # unknown methods seen before they all map to OTHER's row
_CLASSES: Final = 10  # status classes 0xx..9xx (httptools takes any 3-digit status from a pod)

# Layout of one cell (a flat list of floats). Buckets are not cumulative and end with +Inf;
# counts are the sums of the buckets (one increment less per request).
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
assert (DURATION_SUM, UPSTREAM_SUM, BYTES_IN, BYTES_OUT, DURATION, UPSTREAM) == (0, 1, 2, 3, 4, 16)
assert TIME_BUCKETS[0] == 0.005

# (ingress "ns/name", service "ns/name", host, path): "" where there is none.
SeriesLabels = tuple[str, str, str, str]
# Method (as sent) -> cells by status class.
Rows = list[list[float] | None]


class Series:
    """The cells of one label set: rows by request method, cells by status class."""

    __slots__ = ("labels", "methods", "rows")

    def __init__(self, labels: SeriesLabels) -> None:
        self.labels = labels
        # One row per METHODS entry; `methods` maps the method bytes to it.
        self.rows: dict[str, Rows] = {m: [None] * _CLASSES for m in METHODS}
        self.methods: dict[bytes, Rows] = {m.encode(): self.rows[m] for m in METHODS}


class RequestMetrics:
    """Counters of one worker's finished exchanges (see the module docstring)."""

    __slots__ = (
        "_by_labels",
        "_cell_size",
        "_exported",
        "_hosts",
        "_hosts_of",
        "local_replies",
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
        self.unrouted = self._series_for(("", "", "", ""))
        self.local_replies: dict[str, int] = {}
        self.retries = 0  # attempts on another endpoint after a failed one
        # id(cell) -> request count at the last export.
        self._exported: dict[int, float] = {}
        # The host of each rule of one route table, built when a new route first shows up.
        self._hosts: dict[int, str] = {}
        self._hosts_of: object = None

    # ---- the request path ----------------------------------------------------------------------

    def record(self, exchange: Exchange, reason: str | None, now: float) -> None:
        """Account one finished exchange (answered, refused, cut or abandoned)."""
        # Cell offsets are literals here (see the layout above): globals cost a lookup each.
        route = exchange.route
        if route is None:
            series = self.unrouted
        else:
            known = route.series
            if known is None:
                series = route.series = self._series_of(route.rule, exchange)
            else:
                series = known
        head = exchange.head
        rows = series.methods.get(head.method) if head is not None else series.methods[_OTHER]
        if rows is None:
            rows = self._other(series, exchange)
        status = exchange.status // 100
        cell = rows[status]
        if cell is None:
            cell = rows[status] = [0.0] * self._cell_size
        duration = now - exchange.started
        cell[0] += duration  # DURATION_SUM
        if duration <= 0.005:  # TIME_BUCKETS[0]
            cell[4] += 1  # DURATION
        else:
            cell[4 + bisect_left(TIME_BUCKETS, duration)] += 1
        head_at = exchange.head_at
        if head_at:
            upstream = head_at - exchange.sent_at
            cell[1] += upstream  # UPSTREAM_SUM
            if upstream <= 0.005:
                cell[16] += 1  # UPSTREAM
            else:
                cell[16 + bisect_left(TIME_BUCKETS, upstream)] += 1
        received = exchange.body_received
        if received:
            cell[2] += received  # BYTES_IN
        sent = exchange.sent
        cell[3] += sent  # BYTES_OUT
        if reason is not None:
            self.local_replies[reason] = self.local_replies.get(reason, 0) + 1
        if self.sizes:
            cell[REQUEST_SIZE + bisect_left(LENGTH_BUCKETS, received)] += 1
            cell[RESPONSE_SIZE + bisect_left(LENGTH_BUCKETS, sent)] += 1
            cell[BYTES_SENT + bisect_left(SIZE_BUCKETS, sent)] += 1

    def record_refusal(self, status: int, reason: str) -> None:
        """A request refused before it became an exchange (an unparsable head)."""
        rows = self.unrouted.methods[_OTHER]
        cell = rows[status // 100 % _CLASSES]
        if cell is None:
            cell = rows[status // 100 % _CLASSES] = [0.0] * self._cell_size
        cell[DURATION] += 1  # answered at once: the first bucket
        self.local_replies[reason] = self.local_replies.get(reason, 0) + 1
        if self.sizes:
            cell[REQUEST_SIZE] += 1
            cell[RESPONSE_SIZE] += 1
            cell[BYTES_SENT] += 1

    # ---- label sets (once per route) -----------------------------------------------------------

    def _other(self, series: Series, exchange: Exchange) -> Rows:
        """A method outside METHODS: counted as OTHER (remembered, up to a bound)."""
        rows = series.methods[_OTHER]
        head = exchange.head
        if head is not None and len(series.methods) < _MAX_METHOD_KEYS:
            series.methods[head.method] = rows
        return rows

    def _series_of(self, rule: PathRule, exchange: Exchange) -> Series:
        host = self._host(rule, exchange.down.server.generation)
        return self._series_for((rule.ingress, rule.service or "", host, rule.path))

    def _series_for(self, labels: SeriesLabels) -> Series:
        series = self._by_labels.get(labels)
        if series is None:
            series = self._by_labels[labels] = Series(labels)
        return series

    def _host(self, rule: PathRule, generation: Generation | None) -> str:
        if generation is None:
            return ""
        routes = generation.snapshot.routes
        if self._hosts_of is not routes:
            hosts: dict[int, str] = {}
            for vhost in routes.virtual_hosts:
                for r in vhost.rules:
                    hosts[id(r)] = vhost.host
                if vhost.fallback is not None:
                    hosts[id(vhost.fallback)] = vhost.host
            self._hosts = hosts
            self._hosts_of = routes
        return self._hosts.get(id(rule), "")

    # ---- export (once a second) ----------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Cumulative values of the cells that moved since the last export, JSON-ready.

        `series`: [ingress, service, host, path, status class, method, *cell]; the controller
        replaces what it held for that label set with these values.
        """
        rows: list[list[Any]] = []
        exported = self._exported
        count_end = DURATION + len(TIME_BUCKETS) + 1
        for series in self._by_labels.values():
            labels = series.labels
            for method, cells in series.rows.items():
                for status_class, cell in enumerate(cells):
                    if cell is None:
                        continue
                    count = sum(cell[DURATION:count_end])
                    if exported.get(id(cell)) == count:
                        continue
                    exported[id(cell)] = count
                    values = [int(v) if v.is_integer() else v for v in cell]
                    rows.append([*labels, status_class, method, *values])
        return {
            "series": rows,
            "sizes": self.sizes,
            "local_replies": dict(self.local_replies),
            "retries": self.retries,
            "ejections": Cluster.ejections,
        }

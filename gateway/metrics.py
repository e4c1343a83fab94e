"""Prometheus metrics: what the gateway holds and does, served over HTTP by Twisted.

``GatewayMetrics`` keeps its own ``CollectorRegistry`` (nothing global) and follows a running
``GatewayService``:

- ``portgate_mappings{origin,proto,kind}``: entries in the table, kept up to date from the
  committed changes the service publishes (so the gauge never shows a change the backend has
  not accepted);
- ``portgate_requests_total{origin,request}`` and ``portgate_refusals_total{origin,reason}``:
  every request a front-end or the admin socket put to the service, and those refused, by the
  requester's protocol (``none`` for read-only queries that carry no owner) and the
  ``GatewayError`` reason (``internal_error`` for anything else);
- ``portgate_changes_total{change}`` and ``portgate_expirations_total``: committed changes;
- ``portgate_backend_batch_seconds{operation}``: how long each backend transaction took
  (``apply`` for a batch of changes, ``install`` for a full reinstall after a repair), and
  ``portgate_backend_failures_total{operation}``;
- ``portgate_backend_repairs_total`` and ``portgate_upnp_subscriptions`` (GENA subscribers),
  read when scraped;
- ``portgate_wan_private`` and ``portgate_wan_behind_nat``: is the WAN address in a private
  range, and did a STUN server see another address (``gateway.reachability``), read when
  scraped.

``prometheus_client.twisted.MetricsResource`` answers scrapes from the reactor's thread pool:
everything a scrape reads is either a prometheus_client value (thread-safe) or a single
attribute read; the table itself is only ever touched in the reactor thread.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.config import MetricsConfig
from gateway.errors import BackendError, GatewayError
from gateway.model import Change, ChangeKind, KernelEntry, Kind, Mapping, Origin, Owner, Proto
from gateway.ports import Backend, GatewayEvent, MappingsChanged
from gateway.requests import Request
from gateway.service import GatewayService

log = Logger(namespace="portgate.metrics")

#: Backend transactions take milliseconds; a slow one (a big reinstall) takes seconds.
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
NO_OWNER = "none"
INTERNAL_ERROR = "internal_error"

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def request_name(request: Request) -> str:
    """``MapPort`` -> ``map_port``."""
    return _CAMEL.sub("_", type(request).__name__).lower()


def request_origin(request: Request) -> str:
    owner = getattr(request, "owner", None)
    return owner.origin.value if isinstance(owner, Owner) else NO_OWNER


def refusal_reason(error: BaseException) -> str:
    return error.reason.value if isinstance(error, GatewayError) else INTERNAL_ERROR


_T = TypeVar("_T")


class TimedBackend:
    """A ``Backend`` that times each transaction of the one it wraps and counts failures."""

    def __init__(self, inner: Backend, observe: Callable[[str, float, bool], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self._observe = observe

    def install(self, mappings: Iterable[Mapping]) -> tuple[int, int]:
        return self._timed("install", self.inner.install, mappings)

    def apply(self, changes: Sequence[Change]) -> None:
        self._timed("apply", self.inner.apply, changes)

    def snapshot(self) -> frozenset[KernelEntry]:
        return self.inner.snapshot()

    def reset_owned(self) -> None:
        self.inner.reset_owned()

    def healthy(self) -> bool:
        return self.inner.healthy()

    def _timed(self, operation: str, call: Callable[[Any], _T], argument: Any) -> _T:
        started = time.perf_counter()
        try:
            result = call(argument)
        except BackendError:
            self._observe(operation, time.perf_counter() - started, False)
            raise
        self._observe(operation, time.perf_counter() - started, True)
        return result


class GatewayMetrics:
    """The metrics of one gateway, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.mappings = Gauge(
            "portgate_mappings",
            "Port mappings and IPv6 pinholes in the table, by the protocol that made them",
            ["origin", "proto", "kind"],
            registry=r,
        )
        self.requests = Counter(
            "portgate_requests",
            "Requests answered by the gateway, by the requester's protocol and request type",
            ["origin", "request"],
            registry=r,
        )
        self.refusals = Counter(
            "portgate_refusals",
            "Requests refused, by the requester's protocol and the reason",
            ["origin", "reason"],
            registry=r,
        )
        self.changes = Counter(
            "portgate_changes",
            "Committed changes to the table, by kind (add, refresh, update, remove, expire)",
            ["change"],
            registry=r,
        )
        self.expirations = Counter(
            "portgate_expirations", "Leases that expired (were not renewed in time)", registry=r
        )
        self.batch_seconds = Histogram(
            "portgate_backend_batch_seconds",
            "Duration of one backend transaction (apply: a batch of changes; install: all)",
            ["operation"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.backend_failures = Counter(
            "portgate_backend_failures",
            "Backend transactions that failed (the batch was rolled back)",
            ["operation"],
            registry=r,
        )
        self.subscriptions = Gauge(
            "portgate_upnp_subscriptions", "Active UPnP event (GENA) subscriptions", registry=r
        )
        self.wan_private = Gauge(
            "portgate_wan_private",
            "1 when the WAN address is private (RFC 1918, RFC 6598 CGNAT, ...), else 0",
            registry=r,
        )
        self.wan_behind_nat = Gauge(
            "portgate_wan_behind_nat",
            "1 when a STUN server sees another address than the WAN address (CGNAT, double "
            "NAT), else 0",
            registry=r,
        )
        for origin in Origin:
            for proto in Proto:
                for kind in Kind:
                    self.mappings.labels(origin.value, proto.value, kind.value).set(0)
        for change in ChangeKind:
            self.changes.labels(change.value)
        for operation in ("apply", "install"):
            self.batch_seconds.labels(operation)
            self.backend_failures.labels(operation)
        self._detach: list[Callable[[], None]] = []

    # -- following a service ---------------------------------------------------------------

    def attach(
        self,
        service: GatewayService,
        *,
        subscriptions: Callable[[], int] | None = None,
        wan: Callable[[], tuple[bool, bool]] | None = None,
    ) -> None:
        """Count what the table holds now, then follow the service: its committed changes,
        its requests and its backend's transactions. Call in the reactor thread."""
        for mapping in service.table:
            self._count(mapping, 1)
        self._detach.append(service.subscribe(self._on_event))
        self._detach.append(service.observe_requests(self._on_request))
        inner = service.backend
        timed = TimedBackend(inner, self._on_batch)
        service.backend = timed

        def unwrap() -> None:
            if service.backend is timed:
                service.backend = inner

        self._detach.append(unwrap)
        repairs = _RepairsCollector(service)
        self.registry.register(repairs)
        self._detach.append(lambda: self.registry.unregister(repairs))
        if subscriptions is not None:
            self.subscriptions.set_function(_guarded(subscriptions))
        if wan is not None:
            read = wan
            self.wan_private.set_function(_guarded(lambda: int(read()[0])))
            self.wan_behind_nat.set_function(_guarded(lambda: int(read()[1])))

    def detach(self) -> None:
        while self._detach:
            self._detach.pop()()

    def _count(self, mapping: Mapping, step: int) -> None:
        self.mappings.labels(
            mapping.owner.origin.value, mapping.proto.value, mapping.kind.value
        ).inc(step)

    def _on_event(self, event: GatewayEvent) -> None:
        if not isinstance(event, MappingsChanged):
            return
        for change in event.changes:
            self.changes.labels(change.kind.value).inc()
            if change.kind is ChangeKind.EXPIRED:
                self.expirations.inc()
            if change.before is not None:
                self._count(change.before, -1)
            if change.after is not None:
                self._count(change.after, 1)

    def _on_request(self, request: Request, error: BaseException | None) -> None:
        origin = request_origin(request)
        self.requests.labels(origin, request_name(request)).inc()
        if error is not None:
            self.refusals.labels(origin, refusal_reason(error)).inc()

    def _on_batch(self, operation: str, seconds: float, ok: bool) -> None:
        self.batch_seconds.labels(operation).observe(seconds)
        if not ok:
            self.backend_failures.labels(operation).inc()


class _RepairsCollector(Collector):
    """``portgate_backend_repairs_total``, read from the service's own count when scraped."""

    def __init__(self, service: GatewayService) -> None:
        self._service = service

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "portgate_backend_repairs",
            "Times the backend state was restored after someone removed it",
            value=self._service.stats.repairs,
        )


def _guarded(read: Callable[[], int]) -> Callable[[], float]:
    """A scrape must not fail because one reading did: NaN instead."""

    def value() -> float:
        try:
            return float(read())
        except Exception:
            return math.nan

    return value


# -- serving -----------------------------------------------------------------------------------


class _Index(Resource):
    """``/``: says where the metrics are."""

    isLeaf = True

    def __init__(self) -> None:
        parent: Any = super()  # twisted.web is untyped
        parent.__init__()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"portgate: metrics are at /metrics\n"


class _QuietSite(Site):
    """No access log line per scrape (the log is for changes) and no factory chatter."""

    noisy = False
    displayTracebacks = False

    def __init__(self, resource: Resource, reactor: Any) -> None:
        parent: Any = super()  # twisted.web's Site is untyped
        parent.__init__(resource, reactor=reactor)

    def log(self, request: Any) -> None:
        return None


def metrics_site(registry: CollectorRegistry, reactor: Any) -> Site:
    from prometheus_client.twisted import MetricsResource  # imports the global reactor

    make_resource: Any = Resource  # untyped constructor
    root = make_resource()
    root.putChild(b"", _Index())
    make: Any = MetricsResource  # untyped: a WSGIResource run in the reactor's thread pool
    resource = make(registry)
    root.putChild(b"metrics", resource)
    return _QuietSite(root, reactor)


def listen_metrics(
    reactor: Any, registry: CollectorRegistry, address: IPv4Address | IPv6Address, port: int
) -> Any:
    """Serve ``registry`` at ``http://address:port/metrics``; returns the listening port."""
    return reactor.listenTCP(port, metrics_site(registry, reactor), interface=str(address))


def start_metrics(
    config: MetricsConfig,
    reactor: Any,
    service: GatewayService,
    *,
    subscriptions: Callable[[], int] | None = None,
    wan: Callable[[], tuple[bool, bool]] | None = None,
) -> GatewayMetrics | None:
    """Follow ``service`` and serve its metrics as configured; the port closes when the
    reactor shuts down. A port that cannot be opened is logged and the daemon runs on
    without metrics (None)."""
    metrics = GatewayMetrics()
    metrics.attach(service, subscriptions=subscriptions, wan=wan)
    try:
        port = listen_metrics(reactor, metrics.registry, config.address, config.port)
    except CannotListenError as error:
        metrics.detach()
        log.error("metrics: cannot listen on {listen}: {error}", listen=config.listen, error=error)
        return None
    reactor.addSystemEventTrigger("before", "shutdown", port.stopListening)
    log.info("metrics at http://{listen}/metrics", listen=config.listen)
    return metrics

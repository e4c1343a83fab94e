"""Metrics: the values against the service (memory backend, task.Clock), then the real daemon
scraped over HTTP."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.errors import GatewayError, Reason
from gateway.metrics import GatewayMetrics, TimedBackend, request_name
from gateway.model import Endpoint, Kind, MappingKey, Origin, Proto
from gateway.requests import (
    GetExternalAddress,
    ListMappings,
    MapPort,
    OpenPinhole,
    UnmapPort,
)
from tests.gateway.conftest import EXTERNAL, ep, owner
from tests.gateway.test_daemon import Daemon, write_config
from tests.gateway.test_service import Rig, natpmp_map


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path / "leases.sqlite3")
    r.service.start()
    return r


@pytest.fixture
def metrics(rig: Rig) -> Iterator[GatewayMetrics]:
    m = GatewayMetrics()
    m.attach(rig.service, subscriptions=lambda: 3)
    try:
        yield m
    finally:
        m.detach()


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def answer(rig: Rig, d: Deferred[Any]) -> object:
    out: list[object] = []
    d.addBoth(out.append)
    rig.reactor.advance(0)
    assert out
    return out[0]


def upnp_map(port: int, client: str = "192.168.1.11", lifetime: int = 3600) -> MapPort:
    return MapPort(
        owner(Origin.UPNP, client), Proto.UDP, ep(f"{client}:{port}"), port, lifetime, exact=True
    )


def assert_gauge_matches_table(rig: Rig, metrics: GatewayMetrics) -> None:
    for origin in Origin:
        for proto in Proto:
            for kind in Kind:
                held = sum(
                    1
                    for m in rig.table
                    if (m.owner.origin, m.proto, m.kind) == (origin, proto, kind)
                )
                labels = {"origin": origin.value, "proto": proto.value, "kind": kind.value}
                assert value(metrics, "portgate_mappings", **labels) == held, labels


def test_request_names_are_snake_case() -> None:
    assert request_name(natpmp_map(1)) == "map_port"
    assert request_name(GetExternalAddress()) == "get_external_address"


def test_the_mapping_gauge_follows_committed_changes(rig: Rig, metrics: GatewayMetrics) -> None:
    answer(rig, rig.service.handle(natpmp_map(8080)))
    answer(rig, rig.service.handle(natpmp_map(8081, client="192.168.1.12", lifetime=60)))
    answer(rig, rig.service.handle(upnp_map(9000)))
    pinhole = OpenPinhole(
        owner(Origin.PCP, "2001:db8:1::10"), Proto.TCP, ep("[2001:db8:1::10]:22"), 600
    )
    answer(rig, rig.service.handle(pinhole))
    assert value(metrics, "portgate_mappings", origin="natpmp", proto="tcp", kind="port_map") == 2
    assert value(metrics, "portgate_mappings", origin="upnp", proto="udp", kind="port_map") == 1
    assert value(metrics, "portgate_mappings", origin="pcp", proto="tcp", kind="pinhole") == 1
    assert_gauge_matches_table(rig, metrics)
    unmap = UnmapPort(
        owner(Origin.UPNP, "192.168.1.11"), MappingKey(Proto.UDP, Endpoint(EXTERNAL, 9000))
    )
    answer(rig, rig.service.handle(unmap))
    rig.reactor.advance(61)  # the second NAT-PMP lease expires
    assert value(metrics, "portgate_mappings", origin="natpmp", proto="tcp", kind="port_map") == 1
    assert value(metrics, "portgate_mappings", origin="upnp", proto="udp", kind="port_map") == 0
    assert_gauge_matches_table(rig, metrics)
    assert value(metrics, "portgate_expirations_total") == 1
    assert value(metrics, "portgate_changes_total", change="add") == 4
    assert value(metrics, "portgate_changes_total", change="remove") == 1
    assert value(metrics, "portgate_changes_total", change="expire") == 1


def test_a_refresh_leaves_the_gauge_alone(rig: Rig, metrics: GatewayMetrics) -> None:
    answer(rig, rig.service.handle(natpmp_map(8080)))
    answer(rig, rig.service.handle(natpmp_map(8080)))
    assert value(metrics, "portgate_mappings", origin="natpmp", proto="tcp", kind="port_map") == 1
    assert value(metrics, "portgate_changes_total", change="refresh") == 1


def test_what_the_table_held_before_attaching_is_counted(rig: Rig) -> None:
    answer(rig, rig.service.handle(natpmp_map(8080)))
    late = GatewayMetrics()
    late.attach(rig.service)
    assert value(late, "portgate_mappings", origin="natpmp", proto="tcp", kind="port_map") == 1
    late.detach()


def test_requests_and_refusals_by_origin_and_reason(rig: Rig, metrics: GatewayMetrics) -> None:
    answer(rig, rig.service.handle(natpmp_map(8080)))
    conflict = MapPort(
        owner(Origin.UPNP, "192.168.1.11"),
        Proto.TCP,
        ep("192.168.1.11:8080"),
        8080,
        3600,
        exact=True,
    )
    refused = answer(rig, rig.service.handle(conflict))
    assert isinstance(refused, Failure) and isinstance(refused.value, GatewayError)
    reason = refused.value.reason.value
    denied = answer(rig, rig.service.handle(upnp_map(80)))  # the ACL allows 1024 and up
    assert isinstance(denied, Failure) and isinstance(denied.value, GatewayError)
    assert denied.value.reason is Reason.PORT_DENIED
    answer(rig, rig.service.handle(GetExternalAddress()))
    answer(rig, rig.service.handle(ListMappings()))
    assert value(metrics, "portgate_requests_total", origin="natpmp", request="map_port") == 1
    assert value(metrics, "portgate_requests_total", origin="upnp", request="map_port") == 2
    assert (
        value(metrics, "portgate_requests_total", origin="none", request="get_external_address")
        == 1
    )
    assert value(metrics, "portgate_requests_total", origin="none", request="list_mappings") == 1
    assert value(metrics, "portgate_refusals_total", origin="upnp", reason=reason) == 1
    assert value(metrics, "portgate_refusals_total", origin="upnp", reason="port_denied") == 1
    assert value(metrics, "portgate_refusals_total", origin="natpmp", reason=reason) == 0


def test_backend_batches_are_timed_and_failures_counted(rig: Rig, metrics: GatewayMetrics) -> None:
    assert isinstance(rig.service.backend, TimedBackend)
    answer(rig, rig.service.handle(natpmp_map(8080)))
    rig.backend.fail_next()
    failed = answer(rig, rig.service.handle(natpmp_map(8081)))
    assert isinstance(failed, Failure) and isinstance(failed.value, GatewayError)
    assert value(metrics, "portgate_backend_batch_seconds_count", operation="apply") == 2
    assert value(metrics, "portgate_backend_batch_seconds_sum", operation="apply") >= 0
    assert value(metrics, "portgate_backend_failures_total", operation="apply") == 1
    assert value(metrics, "portgate_refusals_total", origin="natpmp", reason="backend_failed") == 1
    assert value(metrics, "portgate_mappings", origin="natpmp", proto="tcp", kind="port_map") == 1


def test_repairs_and_subscriptions_are_read_when_scraped(rig: Rig, metrics: GatewayMetrics) -> None:
    assert value(metrics, "portgate_upnp_subscriptions") == 3
    assert value(metrics, "portgate_backend_repairs_total") == 0
    rig.backend.simulate_flush()
    rig.reactor.advance(2.5)  # the health check notices and reinstalls
    assert value(metrics, "portgate_backend_repairs_total") == 1
    assert value(metrics, "portgate_backend_batch_seconds_count", operation="install") == 1


def test_a_failing_reading_does_not_break_the_scrape(rig: Rig) -> None:
    def broken() -> int:
        raise RuntimeError("gone")

    m = GatewayMetrics()
    m.attach(rig.service, subscriptions=broken)
    reading = value(m, "portgate_upnp_subscriptions")
    assert reading != reading  # NaN
    m.detach()


def test_detach_unwraps_the_backend_and_stops_counting(rig: Rig) -> None:
    m = GatewayMetrics()
    m.attach(rig.service)
    m.detach()
    assert rig.service.backend is rig.backend
    answer(rig, rig.service.handle(natpmp_map(8080)))
    assert value(m, "portgate_requests_total", origin="natpmp", request="map_port") == 0


# -- the real daemon, scraped over HTTP ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_daemon_serves_metrics_over_http(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, f"metrics:\n  enabled: true\n  listen: 127.0.0.1:{port}\n")
    daemon = Daemon(tmp_path, config)
    try:
        daemon.start()
        assert daemon.ctl("add", "tcp", "8080", "192.168.77.10:80").returncode == 0
        assert daemon.ctl("add", "udp", "9000", "192.168.77.11:9000").returncode == 0
        assert daemon.ctl("add", "tcp", "8080", "192.168.77.12:80").returncode == 1
        samples = scrape(f"http://127.0.0.1:{port}/metrics")

        def get(name: str, **labels: str) -> float:
            return samples.get((name, frozenset(labels.items())), 0.0)

        assert get("portgate_mappings", origin="static", proto="tcp", kind="port_map") == 1
        assert get("portgate_mappings", origin="static", proto="udp", kind="port_map") == 1
        assert get("portgate_requests_total", origin="static", request="map_port") == 3
        refusals = {
            dict(labels)["reason"]: count
            for (name, labels), count in samples.items()
            if name == "portgate_refusals_total"
        }
        assert sum(refusals.values()) == 1
        assert get("portgate_backend_batch_seconds_count", operation="apply") == 2
        assert get("portgate_upnp_subscriptions") == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert b"/metrics" in response.read()
        assert f"metrics at http://127.0.0.1:{port}/metrics" in daemon.log()
        # a scrape is not a change: the log holds no line for it
        assert "GET /metrics" not in daemon.log()
    finally:
        daemon.stop()


def test_a_taken_metrics_port_is_logged_and_the_daemon_runs_on(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = int(taken.getsockname()[1])
        config = write_config(tmp_path, f"metrics: {{enabled: true, listen: '127.0.0.1:{port}'}}\n")
        daemon = Daemon(tmp_path, config)
        try:
            daemon.start()
            deadline = time.monotonic() + 10
            while "metrics: cannot listen" not in daemon.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert f"metrics: cannot listen on 127.0.0.1:{port}" in daemon.log()
            assert daemon.ctl("status").returncode == 0
        finally:
            daemon.stop()


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, write_config(tmp_path))
    try:
        daemon.start()
        assert "metrics at" not in daemon.log()
    finally:
        daemon.stop()

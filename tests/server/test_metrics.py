"""The server's metrics, scraped over real HTTP as Prometheus would."""

import urllib.error
import urllib.request

import pytest

from fedrl.server.metrics import ServerMetrics, serve_metrics


def _scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode().splitlines()


@pytest.fixture
def served():
    """Two servers' metrics, each on its own free port."""
    first, second = ServerMetrics.create(), ServerMetrics.create()
    endpoints = [serve_metrics(first), serve_metrics(second)]
    yield (first, endpoints[0].port), (second, endpoints[1].port)
    for endpoint in endpoints:
        endpoint.close()


def test_the_endpoint_serves_every_metric_the_server_sets(served):
    (metrics, port), _ = served
    metrics.clients_connected.set(3)
    metrics.deployed_version.set(7)
    metrics.current_round.set(8)
    metrics.round_duration_seconds.observe(4.2)
    metrics.updates_accepted.inc(5)
    metrics.updates_rejected.labels(reason="INVALID_ARGUMENT").inc()
    metrics.bytes_received.labels(transport="grpc").inc(1024)
    metrics.bytes_sent.labels(transport="mqtt").inc(2048)
    metrics.candidates_rejected.inc()
    lines = _scrape(port)
    for expected in (
        "fedrl_clients_connected 3.0",
        "fedrl_deployed_version 7.0",
        "fedrl_current_round 8.0",
        'fedrl_round_duration_seconds_bucket{le="5.0"} 1.0',
        "fedrl_round_duration_seconds_count 1.0",
        "fedrl_updates_accepted_total 5.0",
        'fedrl_updates_rejected_total{reason="INVALID_ARGUMENT"} 1.0',
        'fedrl_bytes_received_total{transport="grpc"} 1024.0',
        'fedrl_bytes_sent_total{transport="mqtt"} 2048.0',
        "fedrl_candidates_rejected_total 1.0",
    ):
        assert expected in lines


def test_two_servers_in_one_process_keep_their_own_counts(served):
    (first, first_port), (_, second_port) = served
    assert first_port != second_port
    first.updates_accepted.inc(2)
    assert "fedrl_updates_accepted_total 2.0" in _scrape(first_port)
    assert "fedrl_updates_accepted_total 0.0" in _scrape(second_port)


def test_close_releases_the_port():
    endpoint = serve_metrics(ServerMetrics.create())
    port = endpoint.port
    assert port > 0
    endpoint.close()
    with pytest.raises(OSError):
        _scrape(port)


def test_the_health_endpoint_answers_503_with_the_reason_when_unhealthy():
    state = {"healthy": True}
    endpoint = serve_metrics(ServerMetrics.create(), health=lambda: (state["healthy"], {"status": str(state)}))
    url = f"http://127.0.0.1:{endpoint.port}/healthz"
    try:
        ok = urllib.request.urlopen(url, timeout=10)
        state["healthy"] = False
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(url, timeout=10)
    finally:
        endpoint.close()
    assert ok.status == 200 and unhealthy.value.code == 503
    assert "False" in unhealthy.value.read().decode()


def test_every_metric_the_grafana_dashboard_queries_is_one_the_server_exports():
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "deploy" / "grafana" / "fedrl-server.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bfedrl_[a-z_]+", target["expr"])
    }
    metrics = ServerMetrics.create()
    metrics.updates_rejected.labels(reason="INVALID_ARGUMENT").inc()  # a labelled family shows once it has a child
    metrics.bytes_received.labels(transport="grpc").inc()
    metrics.bytes_sent.labels(transport="grpc").inc()
    exported = {sample.name for family in metrics.registry.collect() for sample in family.samples}

    assert len(dashboard["panels"]) >= 8 and queried
    assert queried <= exported, f"the dashboard queries metrics the server does not export: {queried - exported}"

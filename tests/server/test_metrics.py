"""The server's metrics, scraped over real HTTP as Prometheus would."""

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

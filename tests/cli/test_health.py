"""``fedrl health``: the probe of the images' HEALTHCHECK and the pods' liveness, exit 0 or 1."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.edge.health import HealthBeat

runner = CliRunner()


@pytest.fixture
def endpoint():
    """A /healthz on a free loopback port answering what ``answer["status"]`` says."""
    answer = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status": "ok"}' if answer["status"] == 200 else b'{"status": "stalled"}'
            self.send_response(answer["status"])
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/healthz", answer
    httpd.shutdown()
    httpd.server_close()


def test_a_server_is_healthy_while_its_endpoint_answers_200(endpoint):
    url, answer = endpoint

    healthy = runner.invoke(app, ["health", url])
    answer["status"] = 503
    unhealthy = runner.invoke(app, ["health", url])

    assert healthy.exit_code == 0 and healthy.stdout.startswith('healthy: {"status": "ok"}')
    assert unhealthy.exit_code == 1 and "answered 503" in unhealthy.stdout


def test_a_server_that_does_not_answer_is_unhealthy():
    result = runner.invoke(app, ["health", "http://127.0.0.1:9/healthz", "--timeout", "1"])  # nothing listens

    assert result.exit_code == 1 and "did not answer" in result.stdout


def test_a_device_is_healthy_while_its_agent_beats(tmp_path):
    HealthBeat(tmp_path, lambda: {"acting": True, "acting_version": 4}).beat()

    healthy = runner.invoke(app, ["health", str(tmp_path)])
    never_ran = runner.invoke(app, ["health", str(tmp_path / "other")])

    assert healthy.exit_code == 0 and "acting version 4" in healthy.stdout
    assert never_ran.exit_code == 1 and "no agent has run" in never_ran.stdout

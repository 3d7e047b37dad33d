"""The live dashboard of ``fedrl server``, in a real browser: a server process and two agent
processes train while headless Chromium (Debian's, driven by Playwright) watches the page; the
page shows both clients and a newly deployed version without a reload, and a screenshot is saved
(``build/dashboard.png``) for a person to look at."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
TOOLS = ROOT / "build" / "test-tools"
SCREENSHOT = ROOT / "build" / "dashboard.png"
CHROMIUM_ARGS = [  # the closed network here refuses Chromium's background connections
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fedrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedrl.cli", *args]


@pytest.fixture
def fleet(tmp_path):
    """A server (metrics and dashboard on a free port) and two agents training CartPole."""
    grpc_port, http_port = _free_port(), _free_port()
    config = {
        "experiment": {
            "name": "dashboard",
            "seed": 2,
            "env": {"family": "cartpole", "heterogeneity": 0.5},
            "learner": {"name": "ppo", "n_envs": 4, "n_steps": 64, "lr": 0.005, "hidden": [32, 32]},
            "federation": {"n_clients": 2, "rounds": 30, "local_steps": 512, "stop_at_target": False},
        },
        "rounds": {"deadline_s": 60, "heartbeat_s": 0.5, "retry_s": 0.2},
        "gate": {"heldout_clients": 2, "episodes": 1},
    }
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(config))
    for name in ("dev0", "dev1"):
        subprocess.run(
            _fedrl(
                "fleet", "add-client", name, "--state-dir", str(tmp_path / "srv"), "--token-file", str(tmp_path / name)
            ),
            check=True,
            capture_output=True,
        )
    server = [
        "server", "--config", str(tmp_path / "server.yaml"), "--state-dir", str(tmp_path / "srv"),
        "--listen", f"127.0.0.1:{grpc_port}", "--metrics", f"127.0.0.1:{http_port}", "--insecure",
    ]  # fmt: skip
    processes = [subprocess.Popen(_fedrl(*server), stderr=subprocess.DEVNULL, env=ENV)]
    url = f"http://127.0.0.1:{http_port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "healthz", timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline and processes[0].poll() is None, "the server did not start"
            time.sleep(0.1)
    yield {"url": url, "start_agents": lambda: processes.extend(_agents(tmp_path, grpc_port))}
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def _agents(root: Path, port: int) -> list[subprocess.Popen]:
    started = []
    for i, name in enumerate(("dev0", "dev1")):
        command = _fedrl(
            "client", "--server", f"127.0.0.1:{port}", "--name", name, "--client-index", str(i),
            "--token-file", str(root / name), "--state-dir", str(root / f"{name}-state"), "--env", "cartpole",
            "--insecure", "--act-period", "0.001",
        )  # fmt: skip
        started.append(subprocess.Popen(command, stderr=subprocess.DEVNULL, env=ENV))
    return started


def test_the_status_the_page_reads_is_json_with_the_fleet(fleet):
    status = json.loads(urllib.request.urlopen(fleet["url"] + "api/status", timeout=5).read())
    page = urllib.request.urlopen(fleet["url"], timeout=5).read().decode()

    assert status["kind"] == "server" and status["deployed_version"] == 0
    assert sorted(c["name"] for c in status["clients"]) == ["dev0", "dev1"]
    assert "<title>fedrl dashboard</title>" in page and "api/status" in page


def test_the_page_shows_the_fleet_and_a_new_version_live(fleet):
    assert (TOOLS / ".installed").exists(), f"playwright is missing: `make test-tools` installs it into {TOOLS}"
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make test-tools` installs it (apt-get install chromium)"
    sys.path.append(str(TOOLS))  # last: .venv's own packages win over the tools' copies
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(fleet["url"])
        page.wait_for_function("document.getElementById('deployed').textContent === '0'", timeout=30_000, polling=200)
        fleet["start_agents"]()

        page.wait_for_function(
            "Number(document.getElementById('deployed').textContent) >= 2", timeout=120_000, polling=200
        )
        page.wait_for_function(
            "document.querySelectorAll('#returns polyline').length >= 1", timeout=30_000, polling=200
        )
        clients = page.eval_on_selector_all("#clients tr", "rows => rows.map(r => r.dataset.client)")
        acting = page.eval_on_selector_all("#clients tr td:nth-child(3)", "cells => cells.map(c => c.textContent)")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()

    assert sorted(clients) == ["dev0", "dev1"]
    assert all(a != "-" for a in acting)  # both report the version they act with

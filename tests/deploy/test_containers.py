"""The images of deploy/containers: the Containerfile lints clean (hadolint), and, built with Podman
as `make images` builds them, a server container answers its health check and two agent containers
join it over a private network and train, all with a read-only root and no capabilities; the
torch-free inference container follows the version they trained."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CONTAINERS = ROOT / "deploy" / "containers"
CONTAINERFILE = CONTAINERS / "Containerfile"
TAG = "test"
HARDENED = ("--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--tmpfs=/run/secrets")
DEVICE_ENV = """\
# A device's own environment with the shape of CartPole and no Gymnasium (the inference image has none).
from types import SimpleNamespace

import numpy as np


class Pole:
    observation_space, action_space = SimpleNamespace(shape=(4,)), SimpleNamespace(n=2)

    def reset(self, seed=None):
        self.rng, self.t = np.random.default_rng(seed), 0
        return self.rng.normal(0, 0.05, 4).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        return self.rng.normal(0, 0.05, 4).astype(np.float32), 1.0, False, self.t >= 200, {}

    def close(self):
        pass


def make_env():
    return Pole()
"""
SERVER_CONFIG = """\
experiment:
  name: containers
  seed: 0
  env: {family: cartpole, heterogeneity: 1.0}
  learner: {name: ppo, n_envs: 4, n_steps: 64, epochs: 2, minibatches: 2}
  federation: {n_clients: 2, rounds: 2, local_steps: 256}
rounds: {deadline_s: 120}
gate: {enabled: false}
"""


def test_the_containerfile_lints_clean(run_tool):
    linted = run_tool("hadolint", "--no-color", str(CONTAINERFILE))

    assert linted.returncode == 0, linted.stdout


def test_the_lint_catches_an_image_that_runs_as_root(run_tool, tmp_path):
    copy = tmp_path / "Containerfile"
    copy.write_text(CONTAINERFILE.read_text().replace("USER 10001:10001", "USER root"))

    linted = run_tool("hadolint", "--no-color", str(copy))

    assert linted.returncode == 1 and "DL3002" in linted.stdout


# -- built and run with Podman -------------------------------------------------------------------


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS / "containers.conf"))}
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def _logs(name: str) -> list[dict]:
    """The container's JSON log lines (stdout and stderr)."""
    out = _podman("logs", name).stdout + _podman("logs", name).stderr
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _wait_for(name: str, event: str, timeout: float = 150, **fields: object) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in _logs(name):
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record
        time.sleep(1)
    raise AssertionError(f"{name} never logged {event} {fields}; its last lines: {_logs(name)[-5:]}")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """localhost/fedrl-{server,agent,act}:test, built by the script `make images` runs."""
    assert shutil.which("podman"), "podman is missing: `make test` installs it (apt-get install podman runc mmdebstrap)"
    work = tmp_path_factory.mktemp("images")
    built = subprocess.run(
        [str(CONTAINERS / "build-images")],
        env={**os.environ, "TAG": TAG, "WORK": str(work), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    return {name: f"localhost/fedrl-{name}:{TAG}" for name in ("server", "agent", "act")}


class Made:
    """What a test made with Podman under one prefix, removed in reverse order by ``remove``."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.things = prefix, []

    def add(self, kind: str, name: str, *create: str) -> str:
        if create:
            _podman(*create)
        self.things.append((kind, name))
        return name

    def remove(self) -> None:
        for kind, name in reversed(self.things):
            _podman(kind, "rm", *(() if kind == "secret" else ("--force",)), name, check=False)


def _start(made: Made, name: str, image: str, *args: str, command: tuple[str, ...] = ()) -> str:
    """A detached, hardened container on the run's network: ``args`` for Podman, ``command`` for the image."""
    made.add("container", name)
    _podman(
        "run", "--detach", "--name", name, "--network", made.prefix, *HARDENED, "--health-interval=disable",
        *args, image, *command,
    )  # fmt: skip
    return name


@pytest.fixture(scope="module")
def fleet(images, tmp_path_factory):
    """A server container and two agent containers on a private network, the agents training
    through the whole (two-round) run; all removed after the module."""
    made = Made(f"fedrl-test-{uuid.uuid4().hex[:8]}")
    folder = tmp_path_factory.mktemp("fleet")
    (folder / "server.yaml").write_text(SERVER_CONFIG)
    try:
        made.add("network", made.prefix, "network", "create", made.prefix)
        state = made.add("volume", f"{made.prefix}-server-state", "volume", "create", f"{made.prefix}-server-state")
        server = f"{made.prefix}-server"
        fedrl = Path(sys.executable).parent / "fedrl"
        subprocess.run([fedrl, "certs", folder / "pki", "--host", server], check=True, capture_output=True)

        def secret(name: str, path: Path) -> str:
            return made.add("secret", f"{made.prefix}-{name}", "secret", "create", f"{made.prefix}-{name}", str(path))

        tokens = {}
        for device in ("dev0", "dev1", "viewer"):
            enrolled = _podman(
                "run", "--rm", *HARDENED, "--network=none", "-v", f"{state}:/var/lib/fedrl", images["server"],
                "fleet", "add-client", device, "--state-dir", "/var/lib/fedrl",
            )  # fmt: skip
            (folder / f"{device}.token").write_text(enrolled.stdout.strip())
            tokens[device] = secret(f"token-{device}", folder / f"{device}.token")
        cert, key, ca = (secret(f, folder / "pki" / f) for f in ("server.pem", "server.key", "ca.pem"))
        _start(
            made, server, images["server"],
            "-v", f"{state}:/var/lib/fedrl", "-v", f"{folder / 'server.yaml'}:/etc/fedrl/server.yaml:ro",
            "--secret", f"{cert},target=server.pem,uid=10001,mode=0400",
            "--secret", f"{key},target=server.key,uid=10001,mode=0400",
        )  # fmt: skip
        _wait_for(server, "server_started", timeout=60)
        policy = folder / "policy"  # version 0, which the inference container starts with
        policy.mkdir(mode=0o777)
        policy.chmod(0o777)  # written by the image's user
        (policy / "pole.py").write_text(DEVICE_ENV)
        _podman(
            "run", "--rm", *HARDENED, "--network=none", "-v", f"{state}:/var/lib/fedrl:ro", "-v", f"{policy}:/out",
            images["server"], "export", "/var/lib/fedrl", "--out", "/out/policy.npz",
        )  # fmt: skip
        agents = []
        for index, device in enumerate(("dev0", "dev1")):
            name = made.add("volume", f"{made.prefix}-{device}")
            agents.append(name)
            _start(
                made, name, images["agent"], "-v", f"{name}:/var/lib/fedrl",
                "--secret", f"{tokens[device]},target=token,uid=10001,mode=0400",
                "--secret", f"{ca},target=ca.pem,uid=10001,mode=0444",
                "-e", f"FEDRL_SERVER={server}:50051", "-e", f"FEDRL_NAME={device}",
                "-e", f"FEDRL_CLIENT_INDEX={index}", "-e", "FEDRL_ENV=cartpole",
            )  # fmt: skip
        yield {"made": made, "server": server, "agents": agents, "policy": policy, "tokens": tokens, "ca": ca}
    finally:
        made.remove()


@pytest.mark.slow
def test_the_server_container_answers_its_health_check(fleet):
    checked = _podman("healthcheck", "run", fleet["server"], check=False)
    probe = _podman("exec", fleet["server"], "fedrl", "health", "http://127.0.0.1:9108/healthz", check=False)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert probe.returncode == 0 and probe.stdout.startswith("healthy:"), probe.stdout


@pytest.mark.slow
def test_two_agent_containers_join_the_server_container_and_train_its_rounds(fleet):
    for round_ in (1, 2):
        closed = _wait_for(fleet["server"], "round_closed", round=round_)
        assert closed["updates"] == 2 and closed["deployed_version"] == round_
    for agent in fleet["agents"]:
        assert _wait_for(agent, "acknowledged", round=2)["duplicate"] is False
        _wait_for(agent, "acting", version=2)
        assert _podman("healthcheck", "run", agent, check=False).returncode == 0


@pytest.mark.slow
def test_the_containers_run_as_a_numeric_user_with_a_read_only_root_and_no_capabilities(fleet):
    for name in (fleet["server"], *fleet["agents"]):
        config = json.loads(_podman("inspect", name).stdout)[0]
        wrote = _podman("exec", name, "sh", "-c", "touch /opt/fedrl/x", check=False)
        status = _podman("exec", name, "grep", "^Cap", "/proc/self/status").stdout

        assert config["HostConfig"]["ReadonlyRootfs"] is True
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr
        assert _podman("exec", name, "id", "-u").stdout.strip() == "10001"
        assert set(re.findall(r"Cap(?:Prm|Eff|Bnd):\s*([0-9a-f]+)", status)) == {"0" * 16}


@pytest.mark.slow
def test_no_secret_is_baked_into_an_image(images):
    for image in images.values():
        config = json.loads(_podman("image", "inspect", image).stdout)[0]["Config"]
        found = _podman("run", "--rm", "--network=none", "--user=0", "--health-interval=disable", "--entrypoint",
                        "sh", image, "-c", "find /run/secrets /var/lib/fedrl -mindepth 1; "
                        "find / -xdev \\( -name '*.key' -o -name '*.token' \\)")  # fmt: skip

        assert found.stdout.strip() == "", f"{image}: {found.stdout}"
        assert not any("TOKEN=" in e and not e.endswith("/run/secrets/token") for e in config.get("Env", []))


@pytest.mark.slow
def test_the_inference_image_is_a_fraction_of_the_training_image_and_has_no_torch(images):
    sizes = {name: json.loads(_podman("image", "inspect", image).stdout)[0]["Size"] for name, image in images.items()}
    torch = _podman("run", "--rm", "--network=none", "--health-interval=disable", "--entrypoint", "python3",
                    images["act"], "-c", "import torch", check=False)  # fmt: skip

    assert sizes["act"] < 0.3 * sizes["agent"], sizes
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr


@pytest.mark.slow
def test_the_server_image_runs_the_regional_aggregator_deploy_k8s_region_starts_from_it(images):
    usage = _podman("run", "--rm", "--network=none", "--health-interval=disable", images["server"],
                    "aggregator", "--help", check=False)  # fmt: skip
    loaded = _podman("run", "--rm", "--network=none", "--health-interval=disable", "--entrypoint", "python3",
                     images["server"], "-c", "import fedrl.region.app, fedrl.edge.failover", check=False)  # fmt: skip

    assert usage.returncode == 0 and "--parent" in usage.stdout, usage.stderr
    assert loaded.returncode == 0, loaded.stderr


@pytest.mark.slow
def test_the_inference_container_follows_the_version_the_fleet_trained(fleet, images):
    made = fleet["made"]
    viewer = made.add("volume", f"{made.prefix}-viewer")
    _wait_for(fleet["server"], "round_closed", round=2)

    _start(
        made, viewer, images["act"], "-v", f"{viewer}:/var/lib/fedrl", "-v", f"{fleet['policy']}:/etc/fedrl:ro",
        "--secret", f"{fleet['tokens']['viewer']},target=token,uid=10001,mode=0400",
        "--secret", f"{fleet['ca']},target=ca.pem,uid=10001,mode=0444",
        "-e", f"FEDRL_SERVER={fleet['server']}:50051", "-e", "FEDRL_NAME=viewer",
        "-e", "FEDRL_POLICY=/etc/fedrl/policy.npz", "-e", "FEDRL_ENV=pole:make_env",
        command=("--env-dir", "/etc/fedrl", "--act-period", "0.01", "--heartbeat", "1"),
    )  # fmt: skip

    _wait_for(viewer, "acting", version=2, timeout=60)
    checked = _podman("healthcheck", "run", viewer, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

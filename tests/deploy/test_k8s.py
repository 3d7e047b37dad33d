"""The K3s/Kubernetes manifests of deploy/k8s: every resource validates offline against the schemas
of the Kubernetes versions we support (``kubernetes-validate --strict``: a misspelt field fails),
and what they ask of fedrl exists: the options and environment variables they pass, the health
endpoint their probes ask, the images `make images` tags, an experiment the server accepts; every
container runs hardened within limits, and no secret sits in a ConfigMap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fedrl
from fedrl.server.config import load_server_config

K8S = Path(__file__).parents[2] / "deploy" / "k8s"
VERSIONS = ("1.30.0", "1.33.0", "1.37.0")  # the oldest K3s still maintained to the newest schemas here
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
MANIFESTS = sorted(
    K8S / folder.relative_to(K8S) / name
    for path in KUSTOMIZATIONS
    for folder in [path.parent]
    for name in yaml.safe_load(path.read_text()).get("resources", [])
)


STRICT = ("--strict", "--no-warn", "-k")


def _resources() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pods() -> dict[str, dict]:
    """Each workload's pod spec, by name."""
    return {
        r["metadata"]["name"]: r["spec"]["template"]["spec"] for r in _resources() if "template" in r.get("spec", {})
    }


def _help(command: str) -> str:
    """``fedrl COMMAND --help``: its options, and the environment variables they read."""
    usage = subprocess.run(
        [sys.executable, "-m", "fedrl.cli", command, "--help"], capture_output=True, text=True, timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert usage.returncode == 0, usage.stderr
    return usage.stdout


def test_there_is_a_server_statefulset_a_service_and_an_agent_daemonset():
    kinds = {(r["kind"], r["metadata"]["name"]) for r in _resources()}

    assert {
        ("StatefulSet", "fedrl-server"),
        ("Service", "fedrl-server"),
        ("DaemonSet", "fedrl-agent-cartpole"),
    } <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(run_tool, version):
    validated = run_tool("kubernetes-validate", *STRICT, version, *map(str, MANIFESTS))

    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_a_misspelt_field_fails_validation(run_tool, tmp_path):
    copy = tmp_path / "server.yaml"
    copy.write_text(
        (K8S / "base" / "server.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")
    )

    validated = run_tool("kubernetes-validate", *STRICT, VERSIONS[-1], str(copy))

    assert validated.returncode != 0 and "readOnlyRootFileSystem" in validated.stdout + validated.stderr


def test_every_file_a_kustomization_names_exists():
    for path in KUSTOMIZATIONS:
        spec = yaml.safe_load(path.read_text())
        named = list(spec.get("resources", [])) + list(spec.get("components", []))
        named += [f.split("=")[-1] for g in spec.get("configMapGenerator", []) for f in g.get("files", [])]
        missing = [name for name in named if not (path.parent / name).exists()]
        assert not missing, f"{path} names missing files: {missing}"


def test_the_experiment_is_one_the_server_accepts():
    config = load_server_config(K8S / "base" / "experiment.yaml")

    assert config.experiment.federation.n_clients >= 1


def test_the_server_is_passed_options_that_exist_and_probed_on_its_health_endpoint():
    server = _pods()["fedrl-server"]["containers"][0]
    usage = _help("server")
    args = server["args"]
    metrics_port = next(a.rsplit(":", 1)[1] for a in args if a.startswith("--metrics="))
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}

    assert args[0] == "server" and all(f"{a.split('=')[0]} " in usage for a in args[1:])
    assert ports["metrics"] == int(metrics_port)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_the_agents_set_environment_variables_and_options_fedrl_client_reads():
    agent = _pods()["fedrl-agent-cartpole"]["containers"][0]
    usage = _help("client")

    assert all(f"env var: {e['name']}]" in usage for e in agent["env"])
    assert all(f"{a.split('=')[0]} " in usage for a in agent["args"])
    assert agent["livenessProbe"]["exec"]["command"] == ["fedrl", "health", "/var/lib/fedrl"]


def test_the_images_are_those_make_images_tags():
    images = {c["image"] for pod in _pods().values() for c in pod["containers"]}

    assert images == {f"localhost/fedrl-{name}:{fedrl.__version__}" for name in ("server", "agent")}


def test_every_container_runs_hardened_within_limits():
    for name, pod in _pods().items():
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name


def test_keys_and_tokens_come_from_secrets_never_from_a_configmap():
    pods = _pods()
    server_tls = pods["fedrl-server"]["volumes"]
    sources = [s["secret"]["name"] for v in server_tls if "projected" in v for s in v["projected"]["sources"]]
    configmap_files = [
        K8S / path.parent.relative_to(K8S) / f.split("=")[-1]
        for path in KUSTOMIZATIONS
        for g in yaml.safe_load(path.read_text()).get("configMapGenerator", [])
        for f in g.get("files", [])
    ]

    assert sources == ["fedrl-server-tls"]
    assert not any(r["kind"] == "Secret" for r in _resources())  # created by the operator, never committed
    for path in configmap_files:
        text = path.read_text()
        assert "PRIVATE KEY" not in text and "token" not in text.lower(), path

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
from fedrl.server.config import load_region_config, load_server_config

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


def test_there_are_a_server_an_aggregator_with_their_services_and_agents_for_each():
    kinds = {(r["kind"], r["metadata"]["name"]) for r in _resources()}

    assert {
        ("StatefulSet", "fedrl-server"),
        ("Service", "fedrl-server"),
        ("DaemonSet", "fedrl-agent-cartpole"),
        ("StatefulSet", "fedrl-aggregator"),
        ("Service", "fedrl-aggregator"),
        ("DaemonSet", "fedrl-region-agent-cartpole"),
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


def test_the_region_settings_are_ones_an_aggregator_accepts():
    root = load_server_config(K8S / "base" / "experiment.yaml").experiment
    hierarchy = root.model_copy(update={"federation": root.federation.model_copy(update={"regions": 2})})

    config = load_region_config(K8S / "region" / "region.yaml", [], hierarchy)

    assert config.rounds.deadline_s == 90 and config.limits.max_concurrent_streams == 1024


@pytest.mark.parametrize("workload, command", [("fedrl-server", "server"), ("fedrl-aggregator", "aggregator")])
def test_a_server_is_passed_options_that_exist_and_probed_on_its_health_endpoint(workload, command):
    server = _pods()[workload]["containers"][0]
    usage = _help(command)
    args = server["args"]
    listen_port = next(a.rsplit(":", 1)[1] for a in args if a.startswith("--listen="))
    metrics_port = next(a.rsplit(":", 1)[1] for a in args if a.startswith("--metrics="))
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    service = next(r for r in _resources() if r["kind"] == "Service" and r["metadata"]["name"] == workload)

    assert args[0] == command and all(f"{a.split('=')[0]} " in usage for a in args[1:])
    assert all(f"env var: {e['name']}]" in usage for e in server.get("env", []))
    assert ports == {"grpc": int(listen_port), "metrics": int(metrics_port)}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}


@pytest.mark.parametrize("daemonset", ["fedrl-agent-cartpole", "fedrl-region-agent-cartpole"])
def test_the_agents_set_environment_variables_and_options_fedrl_client_reads(daemonset):
    agent = _pods()[daemonset]["containers"][0]
    usage = _help("client")

    assert all(f"env var: {e['name']}]" in usage for e in agent["env"])
    assert all(f"{a.split('=')[0]} " in usage for a in agent["args"])
    assert agent["livenessProbe"]["exec"]["command"] == ["fedrl", "health", "/var/lib/fedrl"]


def _service_address(name: str) -> str:
    service = next(r for r in _resources() if r["kind"] == "Service" and r["metadata"]["name"] == name)
    return f"{name}.fedrl.svc:{service['spec']['ports'][0]['port']}"


def test_a_regions_agents_talk_to_its_aggregator_and_fall_back_to_the_root_it_forwards_to():
    agent = _pods()["fedrl-region-agent-cartpole"]["containers"][0]
    aggregator = _pods()["fedrl-aggregator"]["containers"][0]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    fallback = next(a.split("=", 1)[1] for a in agent["args"] if a.startswith("--fallback="))
    parent = next(e["value"] for e in aggregator["env"] if e["name"] == "FEDRL_PARENT")

    assert env["FEDRL_SERVER"] == _service_address("fedrl-aggregator")
    assert fallback == parent


def test_the_roots_agents_talk_to_the_root_and_leave_a_regions_nodes_to_it():
    pods = _pods()
    root_agent = pods["fedrl-agent-cartpole"]
    region_agent = pods["fedrl-region-agent-cartpole"]
    env = {e["name"]: e.get("value") for e in root_agent["containers"][0]["env"]}
    terms = root_agent["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]

    assert env["FEDRL_SERVER"] == _service_address("fedrl-server")
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "fedrl.dev/region", "operator": "DoesNotExist"}]}
    ]
    assert "fedrl.dev/region" in region_agent["nodeSelector"]


def test_no_workloads_selector_matches_another_workloads_pods():
    workloads = [r for r in _resources() if "template" in r.get("spec", {})]
    for owner in workloads:
        selector = owner["spec"]["selector"]["matchLabels"]
        for other in workloads:
            labels = other["spec"]["template"]["metadata"]["labels"]
            if other is not owner:
                assert not selector.items() <= labels.items(), (owner["metadata"]["name"], other["metadata"]["name"])


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

    def projected(workload: str) -> list[str]:
        volumes = [v for v in pods[workload]["volumes"] if "projected" in v]
        return [s["secret"]["name"] for v in volumes for s in v["projected"]["sources"]]

    configmap_files = [
        K8S / path.parent.relative_to(K8S) / f.split("=")[-1]
        for path in KUSTOMIZATIONS
        for g in yaml.safe_load(path.read_text()).get("configMapGenerator", [])
        for f in g.get("files", [])
    ]

    assert projected("fedrl-server") == ["fedrl-server-tls"]
    assert projected("fedrl-aggregator") == ["fedrl-region-tls", "fedrl-region-token", "fedrl-ca"]
    assert not any(r["kind"] == "Secret" for r in _resources())  # created by the operator, never committed
    for path in configmap_files:
        text = path.read_text()
        assert "PRIVATE KEY" not in text and "token" not in text.lower(), path

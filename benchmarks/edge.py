"""Edge runtime: what acting on a device costs with the numpy runtime (``fedrl.policy``), onnxruntime
and the torch network the edge agent trains with.

For the default 64x64 CartPole policy (4 observations, 2 actions), each runtime runs in a fresh
process, so that its import time and memory are its own: the time to import it, the time to load
the policy, the peak and final resident memory of the process (``VmHWM`` and ``VmRSS`` of
``/proc/self/status``; not ``ru_maxrss``, which Linux carries over from the parent across fork and
exec, so that it would report this script's own, torch-laden peak), and the latency of one greedy
action for one observation (``time.perf_counter_ns`` around each of 20,000 calls, after 2,000 to
warm up, cycling through 1,000 observations). Each process runs three times; the table shows the
median of each figure. Every runtime uses one thread (``OMP_NUM_THREADS=1``,
``OPENBLAS_NUM_THREADS=1``, and torch's and onnxruntime's own settings), as a control loop on a
small device would. The torch path unpacks the parameters once, then runs ``PolicyNet.policy``
and ``greedy`` per call: the edge agent's forward pass, without its per-call unpacking.

A learning device acts while it trains: the second table runs the edge agent's acting loop
(``fedrl.edge.actor``: numpy runtime, exploring, recording) as a 1 kHz control loop on CartPole in one
thread and measures its decision latency for 3 s with nothing else running, then while the agent's
thread trains PPO on 2,048 recorded transitions five times over (torch, one thread): what training
costs the control loop.

    python benchmarks/edge.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import machine, markdown_table, write_section

from fedrl.agents import init_params
from fedrl.edge.acting import ActingPolicy
from fedrl.edge.actor import Actor
from fedrl.edge.agent import recorder_for
from fedrl.edge.device_env import DeviceEnvSpec, make_env
from fedrl.edge.trainer import EdgeTrainer
from fedrl.experiment.card import policy_card
from fedrl.experiment.loading import load_config
from fedrl.experiment.setup import Setup
from fedrl.policy.export import export
from fedrl.policy.runtime import Policy

COMMAND = "python benchmarks/edge.py"
REPEATS = 3
TARGET_RSS_MB = 50
TARGET_P99_US = 20
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FIGURES = ("import_ms", "load_ms", "peak_rss_mb", "rss_mb", "p50_us", "p99_us", "max_us")

# The start and end of every measuring process: ``act(obs)`` is defined between them.
_PRELUDE = """
import json, sys, time
start = time.perf_counter()
"""
_MEASURE = """
loaded = time.perf_counter()
import numpy as np
observations = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32)
for i in range(2000):
    act(observations[i % 1000])
latencies = np.empty(20000, dtype=np.int64)
clock = time.perf_counter_ns
for i in range(20000):
    obs = observations[i % 1000]
    t = clock()
    act(obs)
    latencies[i] = clock() - t
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({
    "import_ms": 1000 * (imported - start),
    "load_ms": 1000 * (loaded - imported),
    "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
    "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
    "p50_us": float(np.percentile(latencies, 50)) / 1000,
    "p99_us": float(np.percentile(latencies, 99)) / 1000,
    "max_us": float(latencies.max()) / 1000,
}))
"""
RUNTIMES = {
    "numpy (fedrl.policy)": """
import fedrl.policy
imported = time.perf_counter()
policy = fedrl.policy.load_policy(sys.argv[1])
act = policy.predict
""",
    "onnxruntime": """
import onnxruntime
imported = time.perf_counter()
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(sys.argv[2], options, providers=["CPUExecutionProvider"])
def act(obs):
    return int(session.run(["action"], {"obs": obs[None]})[0][0])
""",
    "torch (fedrl.agents)": """
import torch
from fedrl.agents import PolicyNet
from fedrl.agents.distributions import greedy
from fedrl.agents.nets import PolicyShape
from fedrl.envs.base import Discrete
imported = time.perf_counter()
torch.set_num_threads(1)
import numpy as np
with np.load(sys.argv[1], allow_pickle=False) as file:
    card = json.loads(str(file["card"][()]))
    net = PolicyNet(PolicyShape(card["obs_dim"], Discrete(card["action"]["n"]), tuple(card["hidden"])))
    flat = np.concatenate([file[name].reshape(-1) for name, _ in card["layout"]])
weights = net.unpack(torch.from_numpy(flat).unsqueeze(0))
@torch.inference_mode()
def act(obs):
    return int(greedy(net.policy(weights, torch.from_numpy(obs).reshape(1, 1, -1)))[0, 0])
""",
}


def artifacts(folder: Path) -> tuple[Path, Path]:
    """The benchmark's policy (CartPole, 64x64, perturbed initial parameters) as ``.npz`` and ONNX."""
    setup = Setup(load_config(None, ["env.family=cartpole"]))
    params = init_params(setup.net.shape, 0)
    params += 0.2 * np.random.default_rng(1).standard_normal(params.size).astype(np.float32)
    policy = Policy(policy_card(setup, params, version=1), params)
    (npz,) = export(policy, "npz", folder / "policy.npz")
    (onnx,) = export(policy, "onnx", folder / "policy.onnx")
    return npz, onnx


def measure(code: str, npz: Path, onnx: Path) -> dict[str, float]:
    """The median figures of ``REPEATS`` fresh processes running ``code``."""
    runs = []
    for _ in range(REPEATS):
        script = _PRELUDE + code + _MEASURE
        command = [sys.executable, "-c", script, str(npz), str(onnx)]
        result = subprocess.run(command, capture_output=True, text=True, env=ONE_THREAD)
        if result.returncode != 0:
            raise RuntimeError(f"a measuring process failed:\n{result.stderr}")
        runs.append(json.loads(result.stdout))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def available(name: str) -> bool:
    """Whether ``name`` imports in this environment (onnxruntime is an optional extra)."""
    return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True).returncode == 0


TRAINING_STEPS = 2048
CONTROL_PERIOD_S = 0.001


def latency_while_training() -> list[list[str]]:
    """Rows of the second table: the acting loop's latency idle, then while training runs."""
    torch.set_num_threads(1)
    setup = Setup(load_config(None, ["env.family=cartpole", f"federation.local_steps={TRAINING_STEPS}"]))
    trainer = EdgeTrainer(setup, 0)
    state, params = trainer.fresh_state(), setup.initial_params()
    acting, recorder = ActingPolicy(), recorder_for(trainer, 4 * TRAINING_STEPS)
    acting.swap(trainer.policy(0, params, state, time.time()))
    actor = Actor(make_env(DeviceEnvSpec("cartpole"), setup, 0), acting, recorder, 0, period_s=CONTROL_PERIOD_S)
    actor.start()
    rows = []
    try:
        time.sleep(3.0)  # records the first experience, and warms up
        for phase in ("idle", "training"):
            actor.reset_latency()
            steps, started = actor.steps, time.perf_counter()
            if phase == "idle":
                time.sleep(3.0)
            else:
                for round_ in range(1, 6):
                    trainer.train(state, params, round_, recorder.take(0, TRAINING_STEPS)[0])
            seconds = time.perf_counter() - started
            latency = actor.latency_us()
            made, due = actor.steps - steps, seconds / CONTROL_PERIOD_S
            rows.append(
                [phase, f"{seconds:.1f}", f"{made:,}", f"{made / due:.0%}"]
                + [f"{latency[key]:.1f}" for key in ("p50", "p99", "max")]
            )
    finally:
        actor.stop()
    return rows


def main() -> None:
    """Measure every runtime, print the table and write the report's ``edge`` section."""
    with tempfile.TemporaryDirectory() as folder:
        npz, onnx = artifacts(Path(folder))
        results = {
            name: measure(code, npz, onnx)
            for name, code in RUNTIMES.items()
            if name != "onnxruntime" or available("onnxruntime")
        }
    torch = results["torch (fedrl.agents)"]
    header = ["runtime", "import ms", "load ms", "peak RSS MB", "RSS MB", "p50 us", "p99 us", "max us"]
    header += ["speed vs torch (p50)", "peak RSS vs torch"]
    rows = [
        [
            name,
            *(f"{r[key]:.1f}" for key in FIGURES),
            f"{torch['p50_us'] / r['p50_us']:.1f}x",
            f"{r['peak_rss_mb'] / torch['peak_rss_mb']:.2f}x",
        ]
        for name, r in results.items()
    ]
    table = markdown_table(header, rows)
    ours = results["numpy (fedrl.policy)"]
    verdict = (
        f"Targets for the numpy runtime: peak RSS <= {TARGET_RSS_MB} MB "
        f"({'met' if ours['peak_rss_mb'] <= TARGET_RSS_MB else 'MISSED'}: {ours['peak_rss_mb']:.1f} MB) and "
        f"p99 <= {TARGET_P99_US} us ({'met' if ours['p99_us'] <= TARGET_P99_US else 'MISSED'}: "
        f"{ours['p99_us']:.1f} us)."
    )
    print(table)
    print(verdict)
    loop = markdown_table(
        ["acting loop", "seconds", "decisions", "of 1 kHz", "p50 us", "p99 us", "max us"], latency_while_training()
    )
    print(loop)
    write_section(
        "edge",
        f"""## Edge runtime: one greedy action for one observation

The default 64x64 CartPole policy acting in a fresh process per runtime (median of {REPEATS} processes,
20,000 single-observation calls each after a warm-up; one thread). Import and load times exclude the
interpreter's start; RSS is the whole process. See `benchmarks/edge.py` for what each runtime runs.

    {COMMAND}

Measured on {machine()}.

{table}

{verdict}

### A learning device: decision latency while it trains

The edge agent's acting loop (numpy runtime, exploring, recording each transition) as a 1 kHz control
loop on CartPole, first alone for 3 s, then while the agent's thread trains PPO on {TRAINING_STEPS:,}
recorded transitions five times over (torch, one thread). "of 1 kHz": decisions made against the
periods that passed.

{loop}
""",
    )


if __name__ == "__main__":
    main()

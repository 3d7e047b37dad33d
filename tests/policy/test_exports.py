"""Exported policies act as the torch network does: ``.npz`` through the numpy runtime, ONNX through
onnxruntime and C99 compiled by the system's ``cc``; int8 exports within the stated tolerances.

int8 tolerances, measured on the 10,000 observations of the cases (64x64 tanh networks): the
argmax agrees on 99.8% of them (cartpole PPO and DQN) and the pendulum's clipped means are off by
at most 0.07 (C) and 0.11 (onnxruntime, whose default optimisations turn ``DequantizeLinear``
+ ``MatMul`` into ``MatMulNBits``, which also quantises the activations). The tests assert 99%
and 0.2, and that both int8 artifacts compute exactly the dequantised network where the
runtime does not re-quantise.
"""

import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest

from fedrl.policy import PolicyCard, load_policy
from fedrl.policy.card import CARD_KEY, ObsNorm
from fedrl.policy.export import export
from fedrl.policy.export_c import c_footprint, export_c, quantize_int8
from fedrl.policy.runtime import Policy

INT8_AGREEMENT = 0.99
INT8_MEAN_ERROR = 0.2
HARNESS = r"""
#include <stdio.h>
#include "policy.h"

/* Reads observations (float32) from argv[1]; writes each one's action then raw outputs to argv[2]. */
int main(int argc, char **argv)
{
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    float obs[POLICY_OBS_DIM], raw[POLICY_ACTION_DIM];
    (void)argc;
    while (fread(obs, sizeof obs, 1, in) == 1) {
        policy_actor_out(obs, raw);
#if POLICY_DISCRETE
        float action = (float)policy_act(obs);
        fwrite(&action, sizeof action, 1, out);
#else
        float action[POLICY_ACTION_DIM];
        policy_act(obs, action);
        fwrite(action, sizeof action, 1, out);
#endif
        fwrite(raw, sizeof raw, 1, out);
    }
    fclose(in);
    return fclose(out) != 0;
}
"""


def dequantised_actor(policy, obs):
    """The actor's outputs with int8-quantised weights, computed in float32 by numpy."""
    x = obs
    for i, layer in enumerate(policy.layers):
        q, scale = quantize_int8(layer.weight)
        x = x @ (q.astype(np.float32) * scale) + layer.bias
        if i < len(policy.layers) - 1:
            x = np.tanh(x)
    return x


def assert_matches_torch(case, actions, actor_out):
    np.testing.assert_allclose(actor_out, case.actor_out, rtol=1e-6, atol=1e-5)
    if case.card.action.kind == "discrete":
        np.testing.assert_array_equal(actions, case.action)
    else:
        np.testing.assert_allclose(actions, case.action, rtol=1e-6, atol=1e-5)


def assert_within_int8_tolerance(case, actions):
    if case.card.action.kind == "discrete":
        assert (actions == case.action).mean() >= INT8_AGREEMENT
    else:
        assert np.abs(actions - case.action).max() <= INT8_MEAN_ERROR


def run_c(case, tmp_path, int8):
    """Compile the C export of ``case`` with a harness and run it on every observation."""
    cc = shutil.which("cc")
    assert cc is not None, "the C export is tested by compiling it: install a C compiler (make test does: gcc)"
    c_path, _ = export_c(Policy(case.card, case.params), tmp_path / "policy", int8=int8, name="policy")
    (tmp_path / "harness.c").write_text(HARNESS)
    binary = tmp_path / "harness"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    subprocess.run([cc, *flags, "-o", binary, tmp_path / "harness.c", c_path, "-lm"], check=True)
    case.obs.tofile(tmp_path / "obs.bin")
    subprocess.run([binary, tmp_path / "obs.bin", tmp_path / "out.bin"], check=True)
    n = case.card.action.n
    out = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(len(case.obs), -1)
    actions, actor_out = out[:, :-n], out[:, -n:]
    return (actions[:, 0].astype(np.int64) if case.card.action.kind == "discrete" else actions), actor_out


def run_onnx(case, tmp_path, int8, optimise=True):
    """Export ``case`` as ONNX and run onnxruntime (one thread) on every observation."""
    ort = pytest.importorskip("onnxruntime")
    (path,) = export(Policy(case.card, case.params), "onnx", tmp_path / "policy", int8=int8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["action", "actor_out"], {"obs": case.obs})


def test_an_npz_artifact_acts_as_the_torch_network(case, tmp_path):
    (path,) = export(Policy(case.card, case.params), "npz", tmp_path / "policy")

    policy = load_policy(path)

    assert path.name == "policy.npz" and policy.card == case.card
    assert_matches_torch(case, policy.predict(case.obs), policy.logits_or_mean(case.obs))


def test_c_acts_as_the_torch_network(case, tmp_path):
    assert_matches_torch(case, *run_c(case, tmp_path, int8=False))


def test_c_int8_computes_the_dequantised_network_within_tolerance(case, tmp_path):
    actions, actor_out = run_c(case, tmp_path, int8=True)

    np.testing.assert_allclose(actor_out, dequantised_actor(Policy(case.card, case.params), case.obs), atol=1e-4)
    assert_within_int8_tolerance(case, actions)


def test_onnx_acts_as_the_torch_network(case, tmp_path):
    actions, actor_out = run_onnx(case, tmp_path, int8=False)

    assert actions.dtype == (np.int64 if case.card.action.kind == "discrete" else np.float32)
    assert_matches_torch(case, actions, actor_out)


def test_onnx_int8_is_the_dequantised_network_and_within_tolerance_as_optimised(case, tmp_path):
    _, exact = run_onnx(case, tmp_path, int8=True, optimise=False)
    actions, _ = run_onnx(case, tmp_path, int8=True)

    np.testing.assert_allclose(exact, dequantised_actor(Policy(case.card, case.params), case.obs), atol=1e-4)
    assert_within_int8_tolerance(case, actions)


def test_an_onnx_model_carries_its_card_and_int8_weights(cases, tmp_path):
    onnx = pytest.importorskip("onnx")
    policy = Policy(cases["cartpole"].card, cases["cartpole"].params)

    (full,) = export(policy, "onnx", tmp_path / "full.onnx")
    (small,) = export(policy, "onnx", tmp_path / "small", int8=True)

    model = onnx.load(small)
    props = {p.key: p.value for p in model.metadata_props}
    assert PolicyCard.from_json(props[CARD_KEY]) == policy.card and props["fedrl_weights"] == "int8"
    assert {i.name for i in model.graph.initializer} >= {"actor.0.weight.int8", "actor.0.weight.scale"}
    assert small.name == "small.onnx" and small.stat().st_size < full.stat().st_size / 2


def test_the_c_header_documents_the_policy_and_its_footprint(cases, tmp_path):
    policy = Policy(cases["pendulum"].card, cases["pendulum"].params)

    paths = export(policy, "c", tmp_path / "pendulum.c", int8=True)

    header = (tmp_path / "pendulum.h").read_text()
    assert paths == [tmp_path / "pendulum.c", tmp_path / "pendulum.h"]
    assert c_footprint(policy, int8=True) == (3 * 64 + 64 * 64 + 64 + 4 * (2 * (64 + 64 + 1)) + 4, 4 * 2 * 64)
    for line in (
        f"digest       {policy.card.digest}",
        "network      3 -> 64 -> 64 -> 1, tanh between layers",
        "weights      int8, symmetric, one float scale per output",
        "action       continuous, 1 reals clipped to [-bound, bound], bound = [2.0]",
        "#define FEDRL_POLICY_VERSION 7",
        "#define FEDRL_POLICY_FLASH_BYTES 5388",
        "void fedrl_policy_act(const float *obs, float *action);",
    ):
        assert line in header


def test_export_refuses_what_it_cannot_write(cases, tmp_path):
    policy = Policy(cases["cartpole"].card, cases["cartpole"].params)

    with pytest.raises(ValueError, match="unknown format 'tflite'; choose one of npz, onnx, c"):
        export(policy, "tflite", tmp_path / "policy")
    with pytest.raises(ValueError, match="an npz artifact keeps the float32 parameters"):
        export(policy, "npz", tmp_path / "policy", int8=True)
    with pytest.raises(ValueError, match="'my-policy' is not a C identifier"):
        export_c(policy, tmp_path / "policy", name="my-policy")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("run_export", [run_onnx, run_c], ids=["onnx", "c"])
def test_exports_normalise_observations_as_the_runtime_does(cases, tmp_path, run_export):
    plain = cases["cartpole"]
    norm = ObsNorm((0.5, -1.0, 0.05, 0.0), (4.0, 0.25, 0.01, 9.0), clip=1.5)
    card = PolicyCard(**{**vars(plain.card), "obs_norm": norm})
    runtime = Policy(card, plain.params)
    case = replace(plain, card=card, action=runtime.predict(plain.obs), actor_out=runtime.logits_or_mean(plain.obs))
    assert not np.array_equal(case.actor_out, plain.actor_out)  # the statistics matter to these observations

    assert_matches_torch(case, *run_export(case, tmp_path, int8=False))

"""A policy as an ONNX model, for onnxruntime and the accelerators that read ONNX.

The graph takes ``obs`` float32 ``[N, obs_dim]`` and gives ``action`` -- int64 ``[N]`` (argmax) for
discrete actions, float32 ``[N, A]`` (means clipped to the bound) for continuous ones -- and
``actor_out``, the actor's raw outputs ``[N, A]``. The card's JSON is in the model's metadata
under ``CARD_KEY``. With ``int8`` the weights are stored as int8 initialisers with one scale per
output (the C export's quantisation) and restored by ``DequantizeLinear`` in the graph: the file
is about four times smaller and the arithmetic stays float32, so any ONNX runtime runs it
unchanged, without calibration data. Needs the optional ``onnx`` package (``fedrl[onnx]``). A policy
that runs a user's own torch network is exported by torch's TorchScript-based exporter, with the
same inputs, outputs and metadata (float32 only).
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path

import numpy as np

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ModuleNotFoundError:  # an optional extra: only this export needs it
    onnx = None

from fedrl.policy.card import CARD_KEY
from fedrl.policy.export_c import quantize_int8
from fedrl.policy.runtime import Policy

OPSET = 13  # the first with per-axis DequantizeLinear
MODULE_OPSET = 17  # a user's network: the first opset with LayerNormalization
IR_VERSION = 7  # the oldest that holds opset 13, so older runtimes load the model too


def export_onnx(policy: Policy, out_path: Path, int8: bool = False) -> Path:
    """Write ``policy`` as an ONNX model at ``out_path`` (see the module docstring)."""
    out_path = Path(out_path)
    out_path.write_bytes(onnx_model(policy, int8).SerializeToString())
    return out_path


def onnx_model(policy: Policy, int8: bool = False) -> onnx.ModelProto:
    """The checked ONNX model of ``policy``; ``ModuleNotFoundError`` without the ``onnx`` package."""
    if onnx is None:
        raise ModuleNotFoundError("ONNX export needs the onnx package: pip install 'fedrl[onnx]'")
    if policy.module_actor is not None:
        return _module_model(policy, int8)
    graph = _Graph()
    x = "obs"
    if policy.norm is not None:
        mean, std, clip = policy.norm
        x = graph.op("Sub", x, graph.const("obs_mean", mean))
        x = graph.op("Div", x, graph.const("obs_std", std))
        x = graph.op("Clip", x, graph.const("obs_low", -clip), graph.const("obs_high", clip))
    last = len(policy.layers) - 1
    for i, layer in enumerate(policy.layers):
        x = graph.op("MatMul", x, graph.weight(f"actor.{i}.weight", layer.weight, int8))
        x = graph.op("Add", x, graph.const(f"actor.{i}.bias", layer.bias), out="actor_out" if i == last else None)
        if i < last:
            x = graph.op("Tanh", x)
    n, batch = policy.card.action.n, "N"
    if policy.bound is None:
        graph.op("ArgMax", x, out="action", axis=1, keepdims=0)
        action = helper.make_tensor_value_info("action", TensorProto.INT64, [batch])
    else:
        low = graph.op("Max", x, graph.const("action_low", -policy.bound))
        graph.op("Min", low, graph.const("action_high", policy.bound), out="action")
        action = helper.make_tensor_value_info("action", TensorProto.FLOAT, [batch, n])
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "fedrl_policy",
            [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [batch, policy.card.obs_dim])],
            [action, helper.make_tensor_value_info("actor_out", TensorProto.FLOAT, [batch, n])],
            graph.initializers,
        ),
        producer_name="fedrl",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    helper.set_model_props(model, {CARD_KEY: policy.card.to_json(), "fedrl_weights": "int8" if int8 else "float32"})
    onnx.checker.check_model(model)
    return model


def _module_model(policy: Policy, int8: bool) -> onnx.ModelProto:
    """The model of a policy that runs a user's torch network: the network traced by torch's
    TorchScript-based exporter inside the same normalisation and action choice, same inputs and outputs."""
    import torch

    if int8:
        raise ValueError("export: --int8 quantises fedrl's own MLP; this policy runs your network, exported as float32")
    card = policy.card
    buffer = io.BytesIO()
    # The TorchScript exporter: the torch.export one needs onnxscript. Before torch 2.5 it was the
    # only one (no ``dynamo`` argument); since 2.9 it is deprecated, hence the silenced warning.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _acting_module(policy),
                (torch.zeros(1, card.obs_dim),),
                buffer,
                input_names=["obs"],
                output_names=["action", "actor_out"],
                dynamic_axes={"obs": {0: "N"}, "action": {0: "N"}, "actor_out": {0: "N"}},
                opset_version=MODULE_OPSET,
                **legacy,
            )
    except Exception as exc:  # what the exporter cannot trace in the user's module
        raise ValueError(f"export: torch could not export your network {card.network!r} to ONNX: {exc}") from None
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "fedrl"
    helper.set_model_props(model, {CARD_KEY: card.to_json(), "fedrl_weights": "float32"})
    onnx.checker.check_model(model)
    return model


def _acting_module(policy: Policy):
    """A torch module from observations to ``(action, actor_out)``: the card's normalisation, the
    user's actor, then argmax or the clip to the bound, as ``Policy.predict`` acts greedily."""
    import torch

    norm, bound = policy.norm, policy.bound

    class Acting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.actor = policy.module_actor.module

        def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = obs
            if norm is not None:
                x = ((x - torch.from_numpy(norm.mean)) / torch.from_numpy(norm.std)).clamp(
                    -float(norm.clip), float(norm.clip)
                )
            out = self.actor(x)
            if bound is None:
                return out.argmax(1), out
            high = torch.from_numpy(bound)
            return torch.minimum(torch.maximum(out, -high), high), out

    return Acting().eval()


class _Graph:
    """Nodes and initialisers, gathered in order."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []

    def const(self, name: str, array: np.ndarray) -> str:
        """An initialiser holding ``array``."""
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, weight: np.ndarray, int8: bool) -> str:
        """A float32 weight: stored as it is, or as int8 with per-output scales and dequantised in the graph."""
        if not int8:
            return self.const(name, weight)
        q, scale = quantize_int8(weight)
        parts = (self.const(f"{name}.int8", q), self.const(f"{name}.scale", scale))
        zero = self.const(f"{name}.zero", np.zeros(scale.shape, np.int8))
        return self.op("DequantizeLinear", *parts, zero, out=name, axis=1)

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes) -> str:
        """Append one node; its output is ``out`` or a fresh name."""
        out = out or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attributes))
        return out

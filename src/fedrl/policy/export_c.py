"""A policy as dependency-free C99: a ``.c`` file of constant weights and one ``.h`` that documents it.

The generated code needs only ``<math.h>`` (``tanhf``, so link with ``-lm``) and ``<stdint.h>``;
it allocates nothing on the heap and writes no global, so it is reentrant. The weights are
``static const`` arrays (flash on a microcontroller), each layer's stored transposed -- one row
per output -- so the inner loop reads memory in order. With ``int8`` each row is stored as
``int8_t`` with one float scale (symmetric, per output: ``w ~= q * scale``, ``|q| <= 127``),
applied once to the row's dot product; biases, normalisation and bounds stay float.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedrl.policy.runtime import Policy

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PER_LINE = 8


class Footprint(NamedTuple):
    """The memory a C export needs: constant data (flash) and activation buffers on the stack (RAM)."""

    flash_bytes: int  # weights, scales, biases, normalisation and bounds; the code itself not counted
    stack_bytes: int  # the activation buffers of one ``act`` call; no heap, no writable globals


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output quantisation of ``weight`` ``(in, out)``: int8 ``q`` ``(in, out)`` and
    float32 ``scale`` ``(out,)`` with ``weight ~= q * scale``. The ONNX export uses it too, so
    both int8 artifacts hold the same numbers."""
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / 127, 1).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return q, scale


def c_footprint(policy: Policy, int8: bool = False) -> Footprint:
    """The flash and stack bytes of ``policy`` exported as C (with ``int8`` weights or float32)."""
    flash = 0
    for layer in policy.layers:
        n_in, n_out = layer.weight.shape
        flash += n_in * n_out * (1 if int8 else 4) + n_out * (8 if int8 else 4)  # weights, (scales), biases
    if policy.norm is not None:
        flash += 2 * 4 * policy.card.obs_dim
    if policy.bound is not None:
        flash += 4 * policy.bound.size
    buffers, _ = _buffer_plan(policy)
    extra = policy.card.action.n if policy.bound is None else 0  # act()'s outputs, before the argmax
    return Footprint(flash, 4 * (sum(buffers.values()) + extra))


def export_c(policy: Policy, out_stem: Path, int8: bool = False, name: str = "fedrl_policy") -> tuple[Path, Path]:
    """Write ``out_stem.c`` and ``out_stem.h``: ``policy`` as C functions prefixed ``name``
    (documented in the header). ``ValueError`` if ``name`` is not a C identifier."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"C export: the name {name!r} is not a C identifier")
    if policy.card.network:
        raise ValueError(
            f"C export: this policy runs your network {policy.card.network!r}; C99 export writes fedrl's own MLP "
            "only: export it to ONNX (--format onnx)"
        )
    out_stem = Path(out_stem)
    c_path, h_path = out_stem.with_name(out_stem.name + ".c"), out_stem.with_name(out_stem.name + ".h")
    h_path.write_text(_header(policy, name, int8, h_path.name))
    c_path.write_text(_source(policy, name, int8, h_path.name))
    return c_path, h_path


def _header(policy: Policy, name: str, int8: bool, file_name: str) -> str:
    card, footprint, upper = policy.card, c_footprint(policy, int8), name.upper()
    n, discrete = card.action.n, card.action.kind == "discrete"
    if discrete:
        act_doc = (
            f"/* The greedy action: the index (0 .. {n - 1}) of the largest output. */\n"
            f"int {name}_act(const float *obs);"
        )
    else:
        act_doc = (
            "/* The greedy action: the Gaussian means, clipped to [-bound, bound] per dimension, written to\n"
            f"   action[0 .. {n - 1}]. */\nvoid {name}_act(const float *obs, float *action);"
        )
    return f"""/* {file_name} -- a fedrl policy as dependency-free C99, written by `fedrl export --format c`.
 *
{_description(policy, int8, footprint)}
 *
 * Observations must be finite (nothing here checks them). Compile as C99 and link with -lm (tanhf).
 */
#ifndef {upper}_H
#define {upper}_H

#ifdef __cplusplus
extern "C" {{
#endif

#define {upper}_OBS_DIM {card.obs_dim}
#define {upper}_ACTION_DIM {n} /* choices (discrete) or reals (continuous) */
#define {upper}_DISCRETE {int(discrete)}
#define {upper}_VERSION {-1 if card.version is None else card.version} /* -1: not a numbered version */
#define {upper}_FLASH_BYTES {footprint.flash_bytes}
#define {upper}_STACK_BYTES {footprint.stack_bytes}

/* The actor's raw outputs for one observation ({upper}_OBS_DIM floats): {upper}_ACTION_DIM logits, Q values
   or Gaussian means (unclipped), written to out. */
void {name}_actor_out(const float *obs, float *out);

{act_doc}

#ifdef __cplusplus
}}
#endif

#endif /* {upper}_H */
"""


def _description(policy: Policy, int8: bool, footprint: Footprint) -> str:
    """The header's account of the policy: origin, network, spaces and memory, one `` * key  value`` line each."""
    card, norm, n = policy.card, policy.norm, policy.card.action.n
    if card.action.kind == "discrete":
        action = f"discrete, {n} choices ({'Q values' if card.q_values else 'logits'}; act by argmax)"
    else:
        action = f"continuous, {n} reals clipped to [-bound, bound], bound = {list(card.action.bound)}"
    observation = f"{card.obs_dim} floats"
    if norm is not None:
        observation += f", normalised inside: clip((obs - mean) / std, -{norm.clip:g}, {norm.clip:g})"
    rows = {
        "environment": f"{card.env or '?'}, experiment {card.experiment or '?'}, version {card.version}",
        "digest": f"{card.digest} (of the float32 parameters exported)",
        "network": " -> ".join(map(str, [card.obs_dim, *card.hidden, n])) + ", tanh between layers",
        "weights": "int8, symmetric, one float scale per output" if int8 else "float32",
        "observation": observation,
        "action": action,
        "flash": f"{footprint.flash_bytes} bytes of constant data (weights, biases, scales, normalisation, bounds)",
        "RAM": f"{footprint.stack_bytes} bytes of activation buffers on the stack; no heap, no writable globals",
    }
    return "\n".join(f" * {key:<12} {value}" for key, value in rows.items())


def _source(policy: Policy, name: str, int8: bool, header: str) -> str:
    parts = [
        f"/* {policy.card.env or 'fedrl'} policy, digest {policy.card.digest}: see {header}. */",
        "#include <math.h>",
        "#include <stdint.h>",
        "",
        f'#include "{header}"',
        "",
        *_constants(policy, name, int8),
        _dense(name, int8),
        _actor_out(policy, name, int8),
        _act(policy, name),
    ]
    return "\n".join(parts)


def _constants(policy: Policy, name: str, int8: bool) -> list[str]:
    lines = []
    for i, layer in enumerate(policy.layers):
        if int8:
            q, scale = quantize_int8(layer.weight)
            lines.append(_array("int8_t", f"{name}_w{i}", q.T, str))
            lines.append(_array("float", f"{name}_s{i}", scale, _float))
        else:
            lines.append(_array("float", f"{name}_w{i}", layer.weight.T, _float))
        lines.append(_array("float", f"{name}_b{i}", layer.bias, _float))
    if policy.norm is not None:
        lines.append(_array("float", f"{name}_mean", policy.norm.mean, _float))
        lines.append(_array("float", f"{name}_std", policy.norm.std, _float))
    if policy.bound is not None:
        lines.append(_array("float", f"{name}_bound", policy.bound, _float))
    return lines


def _array(ctype: str, symbol: str, values: np.ndarray, fmt) -> str:
    flat = [fmt(v) for v in np.asarray(values).reshape(-1)]
    rows = [", ".join(flat[i : i + _PER_LINE]) for i in range(0, len(flat), _PER_LINE)]
    return f"static const {ctype} {symbol}[{len(flat)}] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


def _float(value: np.float32) -> str:
    """A C float literal that reads back as exactly ``value`` (numpy prints the shortest such decimal)."""
    text = str(np.float32(value))
    return text + ("f" if any(c in text for c in ".e") else ".0f")


def _dense(name: str, int8: bool) -> str:
    """The one layer routine: ``y = act(W x + b)`` with ``W`` stored one row per output."""
    weight, term, scaled = (
        ("const int8_t *w, const float *s", "(float)row[i] * x[i]", "acc * s[j] + b[j]")
        if int8
        else ("const float *w", "row[i] * x[i]", "acc + b[j]")
    )
    signature = f"{weight}, const float *b, int n_in, int n_out, const float *x, float *y, int squash"
    return f"""static void {name}_dense({signature})
{{
    for (int j = 0; j < n_out; ++j) {{
        const {"int8_t" if int8 else "float"} *row = w + j * n_in;
        float acc = 0.0f;
        for (int i = 0; i < n_in; ++i)
            acc += {term};
        acc = {scaled};
        y[j] = squash ? tanhf(acc) : acc;
    }}
}}
"""


def _buffer_plan(policy: Policy) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The stack buffers (name -> floats) and each layer's (input, output) buffer: two buffers in
    turn, the observation (or its normalised copy in ``a``) first and ``out`` last."""
    sizes: dict[str, int] = {}
    source = "obs"
    if policy.norm is not None:
        source, sizes["a"] = "a", policy.card.obs_dim
    plan = []
    for i, layer in enumerate(policy.layers):
        target = "out" if i == len(policy.layers) - 1 else ("h" if source != "h" else "a")
        if target != "out":
            sizes[target] = max(sizes.get(target, 0), layer.bias.size)
        plan.append((source, target))
        source = target
    return sizes, plan


def _actor_out(policy: Policy, name: str, int8: bool) -> str:
    sizes, plan = _buffer_plan(policy)
    body = [f"    float {buffer}[{size}];" for buffer, size in sizes.items()]
    if policy.norm is not None:
        clip = _float(policy.norm.clip)
        body += [
            f"    for (int i = 0; i < {policy.card.obs_dim}; ++i) {{",
            f"        float v = (obs[i] - {name}_mean[i]) / {name}_std[i];",
            f"        a[i] = v < -{clip} ? -{clip} : (v > {clip} ? {clip} : v);",
            "    }",
        ]
    last = len(policy.layers) - 1
    for i, ((source, target), layer) in enumerate(zip(plan, policy.layers)):
        n_in, n_out = layer.weight.shape
        weights = f"{name}_w{i}, {name}_s{i}" if int8 else f"{name}_w{i}"
        body.append(f"    {name}_dense({weights}, {name}_b{i}, {n_in}, {n_out}, {source}, {target}, {int(i < last)});")
    return f"void {name}_actor_out(const float *obs, float *out)\n{{\n" + "\n".join(body) + "\n}\n"


def _act(policy: Policy, name: str) -> str:
    n = policy.card.action.n
    if policy.bound is None:
        return f"""int {name}_act(const float *obs)
{{
    float out[{n}];
    int best = 0;
    {name}_actor_out(obs, out);
    for (int j = 1; j < {n}; ++j)
        if (out[j] > out[best])
            best = j;
    return best;
}}
"""
    return f"""void {name}_act(const float *obs, float *action)
{{
    {name}_actor_out(obs, action);
    for (int j = 0; j < {n}; ++j) {{
        if (action[j] > {name}_bound[j])
            action[j] = {name}_bound[j];
        else if (action[j] < -{name}_bound[j])
            action[j] = -{name}_bound[j];
    }}
}}
"""

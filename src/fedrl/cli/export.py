"""``fedrl export``: a saved policy as a file a device runs without fedrl -- ``.npz`` for the numpy
runtime (``fedrl.policy``), an ONNX model, or dependency-free C99."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from fedrl.cli.console import console, fail

if TYPE_CHECKING:  # imported where used: `fedrl --help` need not load numpy
    from fedrl.policy import Policy, PolicyCard


class Format(str, enum.Enum):
    """What ``fedrl export`` writes."""

    npz = "npz"
    onnx = "onnx"
    c = "c"


def export(
    source: Path = typer.Argument(
        ...,
        help="A run directory, an edge agent's or a server's state directory (its deployed version), "
        "or a policy file (.safetensors, .npz).",
    ),
    fmt: Format = typer.Option(
        Format.npz,
        "--format",
        help="npz (numpy runtime: fedrl.policy.load_policy), onnx (needs fedrl[onnx]), or c (a .c and a .h).",
    ),
    int8: bool = typer.Option(False, "--int8", help="Store the weights as int8, one scale per output (onnx, c)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Where to write (default ENV-vVERSION here); for c, the stem of the .c and .h files."
    ),
    allow_code: list[str] = typer.Option(
        [],
        "--allow-code",
        help="module:function: the network of your own that a policy file names, imported by that name "
        "(a run directory's policy finds its experiment's own without it).",
    ),
) -> None:
    """Export a saved policy for a device: the numpy runtime, ONNX or C, checked against its digest."""
    from contextlib import nullcontext

    from fedrl.policy.export import export as write
    from fedrl.policy.export_c import c_footprint
    from fedrl.policy.usercode import only_code

    try:
        with only_code(allow_code) if allow_code else nullcontext():
            policy = _load(source)
        written = write(policy, fmt.value, out or _default_out(policy.card, int8), int8=int8)
    except (ValueError, OSError, ModuleNotFoundError) as exc:
        fail(str(exc))
    lines = [f"wrote {path} ({path.stat().st_size:,} bytes)" for path in written]
    lines.append(f"policy: {policy.card.env or '?'} version {policy.card.version}, {policy.card.digest}")
    if fmt is Format.c:
        flash, stack = c_footprint(policy, int8)
        lines.append(f"C footprint: {flash:,} bytes flash (constant data), {stack:,} bytes stack")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _default_out(card: PolicyCard, int8: bool) -> Path:
    """``ENV-vVERSION[-int8]`` in the current folder."""
    version = "" if card.version is None else f"-v{card.version}"
    return Path(f"{card.env or 'policy'}{version}{'-int8' if int8 else ''}")


def _load(source: Path) -> Policy:
    """The policy at ``source``; a run directory written before policy cards gets its card rebuilt
    from its ``config.yaml``, and the policy of a run whose experiment names a network of the user's
    finds it where the experiment does."""
    from fedrl.policy.files import RUN_POLICY, MissingCard, load_policy, read_card

    try:
        network = _run_network(source, read_card(source).network) if source.suffix != ".zip" else None
        return load_policy(source, network)
    except MissingCard:
        run_dir = source if source.is_dir() else source.parent
        if (source.is_file() and source.name != RUN_POLICY) or not (run_dir / "config.yaml").is_file():
            raise
        return _rebuilt(run_dir)


def _run_network(source: Path, network: str) -> Callable[..., Any] | None:
    """The factory of ``network`` (the card's) when ``source`` is a run directory, or its final
    policy, whose experiment trains that network: imported from the folder the experiment names
    first. None otherwise: the policy then runs its network only if --allow-code names it."""
    from fedrl.experiment.loading import read_resolved
    from fedrl.policy.files import RUN_POLICY
    from fedrl.policy.usercode import import_function

    config_file = (source if source.is_dir() else source.parent) / "config.yaml"
    if not network or not (source.is_dir() or source.name == RUN_POLICY) or not config_file.is_file():
        return None
    learner = read_resolved(config_file.read_text()).learner
    if learner.network != network:
        return None
    return import_function(learner.network, learner.network_dir, "network")


def _rebuilt(run_dir: Path) -> Policy:
    """The final policy of ``run_dir`` with the card of its resolved experiment config."""
    from safetensors.numpy import load_file

    from fedrl.experiment.card import policy_card
    from fedrl.experiment.loading import read_resolved
    from fedrl.experiment.setup import Setup
    from fedrl.policy import Policy
    from fedrl.policy.files import RUN_POLICY

    setup = Setup(read_resolved((run_dir / "config.yaml").read_text()))
    params = setup.net.spec.flatten(load_file(str(run_dir / RUN_POLICY)))
    return Policy(policy_card(setup, params), params)

"""``fedrl export``'s formats: one policy written as an ``.npz`` artifact, an ONNX model or C99 source.

Imported by the CLI only: ``fedrl.policy`` itself never loads the exporters (nor, through them, ``onnx``).
"""

from __future__ import annotations

from pathlib import Path

from fedrl.policy.export_c import export_c
from fedrl.policy.export_onnx import export_onnx
from fedrl.policy.files import save_npz
from fedrl.policy.runtime import Policy

FORMATS = ("npz", "onnx", "c")
SUFFIXES = {"npz": ".npz", "onnx": ".onnx"}


def export(policy: Policy, fmt: str, out: Path, int8: bool = False) -> list[Path]:
    """Write ``policy`` in format ``fmt`` to ``out`` (given the format's suffix if it lacks it; for
    ``c``, the stem of ``out.c`` and ``out.h``) and return the files written. ``int8`` quantises
    the weights of ``onnx`` and ``c``; ``ValueError`` for an unknown format or ``npz`` with ``int8``."""
    if fmt not in FORMATS:
        raise ValueError(f"export: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "c":
        return list(export_c(policy, out.with_suffix("") if out.suffix in (".c", ".h") else out, int8=int8))
    if out.suffix != SUFFIXES[fmt]:
        out = out.with_name(out.name + SUFFIXES[fmt])
    if fmt == "onnx":
        return [export_onnx(policy, out, int8=int8)]
    if int8:
        raise ValueError("export: --int8 quantises onnx and c exports; an npz artifact keeps the float32 parameters")
    return [save_npz(out, policy.params, policy.card)]

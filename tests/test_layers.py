"""The package's layers, read from its source: imports point down only (docs/architecture.md).

Each failure names the file, the line and the rule it breaks, so a wrong import is found before
anyone has to untangle it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fedrl"

# What each part of fedrl may import of fedrl (its own modules always).
ALLOWED = {
    "core": set(),
    "policy": set(),
    "envs": {"core"},
    "wire": {"core", "policy"},
    "agents": {"core", "envs"},
    "experiment": {"core", "envs", "agents", "wire", "policy"},
    "sim": {"core", "envs", "agents", "wire", "experiment", "policy"},
    "server": {"core", "envs", "agents", "wire", "experiment", "policy"},
    "edge": {"core", "envs", "agents", "wire", "experiment", "policy"},
    # a regional aggregator is a server to its devices and a client to its parent
    "region": {"core", "envs", "agents", "wire", "experiment", "policy", "server", "edge"},
    "cli": {"core", "envs", "agents", "wire", "experiment", "sim", "server", "edge", "region", "policy"},
}
# Pure maths on flat vectors: no torch, no files, no network.
CORE_FORBIDS = {
    "torch",
    "grpc",
    "paho",
    "socket",
    "ssl",
    "http",
    "urllib",
    "pathlib",
    "shutil",
    "tempfile",
    "io",
    "sqlite3",
    "safetensors",
    "yaml",
}


def _sources(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")))


def _part(package: Path, path: Path) -> str:
    parts = path.relative_to(package).parts
    return parts[0] if len(parts) > 1 else "fedrl"


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _where(package: Path, path: Path, line: int) -> str:
    return f"{path.relative_to(package.parent)}:{line}"


def layer_violations(package: Path = PACKAGE) -> list[str]:
    """Every import of a fedrl part that the importing part may not use."""
    problems = []
    for path in _sources(package):
        part = _part(package, path)
        if part not in ALLOWED:
            continue
        for line, module in _imports(ast.parse(path.read_text())):
            names = module.split(".")
            if names[0] != "fedrl" or len(names) < 2 or names[1] in (part, "__version__"):
                continue
            if names[1] not in ALLOWED[part]:
                problems.append(
                    f"{_where(package, path, line)} imports {module}: {part} may import only "
                    f"{', '.join(sorted(ALLOWED[part])) or 'itself'}"
                )
    return problems


def core_violations(package: Path = PACKAGE) -> list[str]:
    """Imports of torch, files or transports in ``core``, and calls of ``open``."""
    problems = []
    for path in (package / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for line, module in _imports(tree):
            if module.split(".")[0] in CORE_FORBIDS:
                problems.append(
                    f"{_where(package, path, line)} imports {module}: core is maths on arrays (no torch, files, "
                    "network)"
                )
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                problems.append(f"{_where(package, path, node.lineno)} opens a file: core reads and writes no files")
    return problems


def deferred_imports(package: Path = PACKAGE) -> list[str]:
    """Imports of fedrl modules inside functions, outside ``cli`` (which defers them so that a
    command loads only what it runs). Elsewhere a deferred import only hides a cycle."""
    problems = []
    for path in _sources(package):
        if _part(package, path) == "cli":
            continue
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for line, module in _imports(function):
                if module.startswith("fedrl"):
                    problems.append(
                        f"{_where(package, path, line)} imports {module} inside {function.name}(): import at the top"
                    )
    return problems


@pytest.mark.parametrize("check", [layer_violations, core_violations, deferred_imports], ids=lambda c: c.__name__)
def test_the_package_keeps_its_layers(check):
    assert check() == []


def test_the_layer_check_names_the_file_line_and_rule_broken(tmp_path):
    # Prepare: a copy of the rules applied to a server module that imports the simulator
    fake = tmp_path / "src" / "fedrl"
    (fake / "server").mkdir(parents=True)
    (fake / "server" / "bad.py").write_text("import numpy\n\nfrom fedrl.sim.engine import run_rounds\n")
    (fake / "core").mkdir()
    (fake / "core" / "bad.py").write_text("import torch\n\n\ndef f():\n    from fedrl.core import x\n    open('x')\n")

    # Execute
    problems = layer_violations(fake) + core_violations(fake) + deferred_imports(fake)

    # Assert: each problem names its file, line and rule
    assert (
        "fedrl/server/bad.py:3 imports fedrl.sim.engine: server may import only agents, core, envs, experiment, "
        "policy, wire" in problems
    )
    assert "fedrl/core/bad.py:1 imports torch: core is maths on arrays (no torch, files, network)" in problems
    assert "fedrl/core/bad.py:6 opens a file: core reads and writes no files" in problems
    assert "fedrl/core/bad.py:5 imports fedrl.core inside f(): import at the top" in problems

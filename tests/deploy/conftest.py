"""Where the deploy files' linters are: `make test-tools` installs them beside .venv, not in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).parents[2] / "build" / "test-tools"


def _run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    assert (TOOLS / ".installed").exists(), f"{name} is missing: `make test-tools` installs it into {TOOLS}"
    command = [str(TOOLS / "bin" / "hadolint")] if name == "hadolint" else [sys.executable, "-m", "kubernetes_validate"]
    env = {**os.environ, "PYTHONPATH": str(TOOLS)}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def run_tool():
    """``run_tool(name, *args)``: run hadolint or kubernetes-validate from ``build/test-tools``."""
    return _run_tool

"""The systemd units under deploy/systemd: they parse without a single warning
(``systemd-analyze verify`` exits 0 on typos, so any output fails), they score as hardened
(``systemd-analyze security``), they keep the settings a device needs, and every option their
command lines pass exists in the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/fedrl/bin/fedrl"  # where the units expect fedrl (docs/deploy-systemd.md)
EXPOSURE = 20  # systemd-analyze security's exposure in tenths (2.0 of 10 is "OK"; lower is safer)
NAMES = ("fedrl-agent.service", "fedrl-server.service", "fedrl-aggregator.service")


def _here(unit: str, tmp_path: Path) -> Path:
    """The unit with its fedrl path replaced by this environment's, which verify requires to exist."""
    fedrl = Path(sys.executable).parent / "fedrl"
    copy = tmp_path / unit
    copy.write_text((UNITS / unit).read_text().replace(INSTALLED, str(fedrl)))
    return copy


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.fixture(autouse=True)
def _systemd_analyze():
    assert shutil.which("systemd-analyze"), (
        "systemd-analyze is missing: `make test` installs it (apt-get install systemd)"
    )


@pytest.mark.parametrize("unit", NAMES)
def test_a_unit_verifies_without_a_word_and_scores_as_hardened(unit, tmp_path):
    copy = _here(unit, tmp_path)

    verified = _analyze("verify", f"./{copy.name}", cwd=tmp_path)
    security = _analyze("security", "--offline=true", f"--threshold={EXPOSURE}", f"./{copy.name}", cwd=tmp_path)

    assert verified.returncode == 0 and verified.stdout + verified.stderr == ""
    assert security.returncode == 0, security.stdout[-400:]


def test_a_misspelt_key_is_caught(tmp_path):
    copy = _here("fedrl-agent.service", tmp_path)
    copy.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))

    verified = _analyze("verify", f"./{copy.name}", cwd=tmp_path)

    assert "ProtectSytem" in verified.stdout + verified.stderr


@pytest.mark.parametrize("unit", NAMES)
def test_a_unit_restarts_runs_unprivileged_within_a_budget_and_keeps_its_state(unit):
    settings = dict(re.findall(r"^(\w+)=(.*)$", (UNITS / unit).read_text(), re.MULTILINE))

    assert settings["Restart"] == "always" and settings["RestartPreventExitStatus"] == "2"
    assert settings["DynamicUser"] == "yes" and settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict" and settings["StateDirectory"] and settings["UMask"] == "0077"
    assert "MemoryMax" in settings and ("CPUQuota" in settings or unit != "fedrl-agent.service")  # a device's budget
    assert "--token" not in settings["ExecStart"] or "%d/" in settings["ExecStart"]  # secrets come as credentials


@pytest.mark.parametrize(
    ("unit", "command"),
    [("fedrl-agent.service", "client"), ("fedrl-server.service", "server"), ("fedrl-aggregator.service", "aggregator")],
)
def test_every_option_a_unit_passes_exists(unit, command):
    execstart = re.search(r"^ExecStart=(.*)$", (UNITS / unit).read_text(), re.MULTILINE).group(1)
    options = set(re.findall(r"(--[a-z-]+)", execstart))
    usage = subprocess.run(
        [sys.executable, "-m", "fedrl.cli", command, "--help"], capture_output=True, text=True, timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip

    assert execstart.split()[:2] == [INSTALLED, command]
    assert options and all(option in usage.stdout for option in options), options - set(usage.stdout.split())

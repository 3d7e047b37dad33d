"""``fedrl compare``: runs grouped by setting over their seeds, each figure an interquartile mean
with a bootstrap interval, learning curves with bands, and the fairness columns."""

import numpy as np
import pytest
import yaml
from scipy.stats import trim_mean
from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.sim.compare import bootstrap_iqm, group_runs, iqm, read_run, summarize

runner = CliRunner()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 11])
def test_the_interquartile_mean_is_scipys_quarter_trimmed_mean(n):
    values = np.random.default_rng(n).normal(size=n) ** 3  # skewed, so trimming matters

    assert iqm(values) == pytest.approx(trim_mean(values, 0.25))


def test_the_bootstrap_interval_is_fixed_by_its_seed_and_holds_the_iqm():
    values = [480.0, 12.0, 495.0, 470.0, 490.0]  # one failed seed

    first, again = bootstrap_iqm(values), bootstrap_iqm(values)

    assert first == again
    value, low, high = first
    assert value == pytest.approx(480.0) and low <= value <= high  # the failed seed is trimmed, not averaged
    assert bootstrap_iqm([7.0, 7.0, 7.0]) == (7.0, 7.0, 7.0)
    assert all(np.isnan(bootstrap_iqm([float("nan")])))


@pytest.fixture
def four_runs(tmp_path, config_file):
    """Two seeds each of FedAvg and FedAvgM on the tiny experiment."""
    paths = []
    for strategy in ("fedavg", "fedavgm"):
        for seed in (1, 2):
            out = tmp_path / f"{strategy}-{seed}"
            sets = ["--set", f"seed={seed}", "--set", f"strategy.name={strategy}"]
            result = runner.invoke(app, ["run", str(config_file), "--out", str(out), "--quiet", *sets])
            assert result.exit_code == 0, result.output
            paths.append(out)
    return paths


def test_runs_are_grouped_by_setting_and_labelled_by_what_differs(four_runs, tmp_path):
    runs = [read_run(p) for p in four_runs]

    groups = group_runs(runs)
    summaries = summarize(groups)
    result = runner.invoke(app, ["compare", *map(str, four_runs), "--out", str(tmp_path / "cmp")])

    assert list(groups) == ["strategy.name=fedavg", "strategy.name=fedavgm"]
    assert [s.runs for s in summaries] == [2, 2]
    fedavg = [r for r in runs if r.config["strategy"]["name"] == "fedavg"]
    assert summaries[0].final_mean[0] == pytest.approx(np.mean([r.final_mean for r in fedavg]))  # 2 runs: no trim
    assert summaries[0].final_worst[0] == pytest.approx(np.mean([r.final_worst for r in fedavg]))
    assert result.exit_code == 0, result.output
    assert "strategy.name=fedavgm" in result.output and "IQM" in result.output
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table.count("\n| strategy.name=") == 2
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    assert yaml.safe_load((tmp_path / "cmp" / "compare.json").read_text())[0]["runs"] == 2


def test_one_setting_is_labelled_by_its_name_and_a_folder_that_is_no_run_is_named(four_runs, tmp_path):
    assert list(group_runs([read_run(p) for p in four_runs[:2]])) == ["tiny"]

    result = runner.invoke(app, ["compare", str(four_runs[0]), str(tmp_path)])

    assert result.exit_code == 2 and "not a run directory (no config.yaml)" in " ".join(result.output.split())


def test_settings_that_share_a_name_are_told_apart_by_the_keys_only_some_have():
    from fedrl.sim.compare import RunResult

    def run(seed, strategy):
        config = {"name": "c", "seed": seed, "strategy": strategy}
        return RunResult(None, config, 1.0, 1.0, 1.0, 1.0, 1.0, True, 475.0, np.ones(1), np.ones(1))

    runs = [run(0, {"name": "fedavg"}), run(0, {"name": "fedadam", "server_lr": 0.01})]
    runs += [run(1, {"name": "fedadam", "server_lr": 0.1}), run(2, {"name": "fedadam", "server_lr": 0.1})]

    assert {label: len(members) for label, members in group_runs(runs).items()} == {
        "strategy.name=fedavg": 1,
        "strategy.name=fedadam, strategy.server_lr=0.01": 1,
        "strategy.name=fedadam, strategy.server_lr=0.1": 2,
    }


def test_steps_to_target_count_a_crossing_only_once_it_is_confirmed(tmp_path, config_file):
    sets = ["federation.stop_at_target=true", "federation.target_return=9", "eval.confirm_episodes=6"]
    args = ["run", str(config_file), "--out", str(tmp_path / "run"), "--quiet"]
    assert runner.invoke(app, [*args, *(x for s in sets for x in ("--set", s))]).exit_code == 0

    run = read_run(tmp_path / "run")

    assert run.solved and run.steps_to_target == run.env_steps[0]  # crossed and confirmed at round 1


def test_settings_no_key_tells_apart_are_all_kept_and_numbered():
    from fedrl.sim.compare import RunResult

    def run(config):
        return RunResult(None, {"seed": 0, **config}, 1.0, 1.0, 1.0, 1.0, 1.0, True, 475.0, np.ones(1), np.ones(1))

    named = group_runs([run({"name": "a", "lr": 1}), run({"name": "b", "lr": 1}), run({"name": "c", "lr": 2})])
    unlabelled = group_runs([run({"name": "x", "k": None}), run({"name": "x"})])

    assert list(named) == ["lr=1, name=a", "lr=1, name=b", "lr=2, name=c"]  # no setting dropped
    assert len(unlabelled) == 2 and all("#" in label for label in unlabelled)

"""Held-out clients adapting a policy before evaluation (eval.adapt_steps)."""

import numpy as np
import pytest

from fedrl.agents.normalize import init_stats
from fedrl.experiment.adaptation import adapted_returns
from fedrl.experiment.aggregation import heldout_returns
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import apply_override, parse_config
from fedrl.experiment.setup import Setup
from fedrl.sim import run as runs


def _setup(tiny_config, *overrides):
    data = tiny_config
    for assignment in overrides:
        data = apply_override(data, assignment)
    return Setup(parse_config(data))


@pytest.mark.parametrize("normalize", ["false", "true"])
def test_no_adaptation_is_the_heldout_evaluation_and_adapting_is_reproducible(tiny_config, normalize):
    setup = _setup(tiny_config, f"learner.normalize.obs={normalize}")
    params = setup.initial_params()
    norm = init_stats(setup.config.learner.normalize, setup.family.obs_dim)  # None when off
    np.testing.assert_array_equal(
        adapted_returns(setup, params, norm, 3, 0), heldout_returns(setup, params, 3, 2, norm)
    )
    first = adapted_returns(setup, params, norm, 3, 512)
    np.testing.assert_array_equal(first, adapted_returns(setup, params, norm, 3, 512))
    assert not np.array_equal(first, adapted_returns(setup, params, norm, 3, 0))


def test_a_run_reports_adaptation_from_its_policy_and_from_scratch(tmp_path, tiny_config):
    config = parse_config(apply_override(tiny_config, "eval.adapt_steps=[0, 256]"))
    current = runs.start(config, tmp_path / "r")
    *_, (_, state) = current.rounds()
    summary = runs.finish(current, state)
    assert summary["heldout_adapted_0"] == summary["heldout_mean_return"]
    assert {"heldout_scratch_0", "heldout_adapted_256", "heldout_scratch_256"} <= summary.keys()
    assert summary["heldout_scratch_0"] != summary["heldout_adapted_0"]


@pytest.mark.parametrize("steps", ["[256, 0]", "[0, 0]", "[-1]"])
def test_adaptation_steps_must_be_distinct_increasing_counts(tiny_config, steps):
    with pytest.raises(ConfigError, match="eval.adapt_steps"):
        parse_config(apply_override(tiny_config, f"eval.adapt_steps={steps}"))


def test_adaptation_needs_heldout_clients(tiny_config):
    with pytest.raises(ConfigError, match="eval.adapt_steps.*heldout_clients"):
        parse_config(apply_override(apply_override(tiny_config, "eval.adapt_steps=[0]"), "eval.heldout_clients=0"))

"""Rounds, determinism and resume of the simulation engine."""

import sqlite3

import numpy as np
import pytest

from fedrl.core.update import stack_vectors
from fedrl.experiment import aggregation
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import apply_override, parse_config
from fedrl.server.config import load_server_config
from fedrl.sim import run as runs
from fedrl.sim.clients import sample_clients, shards, train_clients
from fedrl.sim.engine import initial_state, run_round
from fedrl.sim.rundir import ROUND_COLUMNS
from fedrl.sim.setup import SimSetup


def _metrics(run_dir):
    """Every metric except wall-clock time."""
    rows = np.array(run_dir.rounds(), dtype=np.float64)
    return np.delete(rows, ROUND_COLUMNS.index("wall_s"), axis=1), np.array(run_dir.client_returns(), dtype=np.float64)


def _run_to_end(config, path):
    current = runs.start(config, path)
    list(current.rounds())  # run to the end
    return current


def test_same_seed_gives_the_same_metrics_twice(tmp_path, tiny_config):
    config = parse_config(tiny_config)
    a = _run_to_end(config, tmp_path / "a")
    b = _run_to_end(config, tmp_path / "b")
    ra, ca = _metrics(a.dir)
    rb, cb = _metrics(b.dir)
    assert len(ra) == 3
    np.testing.assert_array_equal(np.nan_to_num(ra), np.nan_to_num(rb))
    np.testing.assert_array_equal(ca, cb)


def test_a_different_seed_gives_different_numbers(tmp_path, tiny_config):
    a = _run_to_end(parse_config(tiny_config), tmp_path / "a")
    b = _run_to_end(parse_config({**tiny_config, "seed": 4}), tmp_path / "b")
    assert not np.array_equal(_metrics(a.dir)[1], _metrics(b.dir)[1])


def test_resume_gives_the_same_final_numbers_as_an_unbroken_run(tmp_path, tiny_config):
    config = parse_config(apply_override(tiny_config, "federation.rounds=4"))
    unbroken = _run_to_end(config, tmp_path / "unbroken")
    short = parse_config(apply_override(tiny_config, "federation.rounds=2"))
    _run_to_end(short, tmp_path / "resumed")
    resumed = runs.resume(tmp_path / "resumed", ["federation.rounds=4"])
    assert resumed.state.round == 2
    list(resumed.rounds())  # run to the end
    ru, cu = _metrics(unbroken.dir)
    rr, cr = _metrics(resumed.dir)
    np.testing.assert_array_equal(np.nan_to_num(ru), np.nan_to_num(rr))
    np.testing.assert_array_equal(cu, cr)
    np.testing.assert_array_equal(
        unbroken.dir.load_checkpoint(unbroken.setup, unbroken.dir.latest_checkpoint()).params,
        resumed.dir.load_checkpoint(resumed.setup, resumed.dir.latest_checkpoint()).params,
    )


def test_resume_drops_metrics_of_rounds_that_were_not_checkpointed(tmp_path, tiny_config):
    current = _run_to_end(parse_config(tiny_config), tmp_path / "r")
    (tmp_path / "r" / "checkpoints" / "round_00003.json").unlink()  # as if killed before the checkpoint
    resumed = runs.resume(tmp_path / "r")
    assert resumed.state.round == 2
    assert [row[0] for row in resumed.dir.rounds()] == [1, 2]
    assert (tmp_path / "r" / "metrics.csv").read_text().count("\n") == 3  # header + 2 rounds
    assert current.setup.config == resumed.setup.config


def test_client_sampling_uses_the_configured_fraction(tiny_config):
    setup = SimSetup(
        parse_config(apply_override(apply_override(tiny_config, "federation.n_clients=10"), "federation.fraction=0.3"))
    )
    chosen = [tuple(sample_clients(setup, r)) for r in range(1, 6)]
    assert all(len(c) == 3 and len(set(c)) == 3 for c in chosen)
    assert len(set(chosen)) > 1
    assert [len(s) for s in shards(np.arange(10), 4)] == [4, 4, 2]


def test_one_round_updates_the_policy_and_counts_steps(tiny_config):
    setup = SimSetup(parse_config(apply_override(tiny_config, "federation.shard_size=2")))
    state = initial_state(setup)
    result, after = run_round(setup, state)
    assert result.stats.n_updates == 3 and after.env_steps == 3 * 256 == result.env_steps
    assert not np.array_equal(after.params, state.params)
    assert result.client_returns.shape == (3,)
    assert result.worst_client_return <= result.p10_client_return <= result.global_mean_return


def test_a_shards_updates_are_rows_of_one_array_so_aggregation_stacks_no_copy(tiny_config):
    setup = SimSetup(parse_config(tiny_config))
    state = initial_state(setup)

    received, _, _ = train_clients(setup, state, np.arange(3), (0,))

    deltas = [r.update.delta for r in received]
    stack = stack_vectors(deltas)
    assert np.shares_memory(stack, deltas[0]) and np.array_equal(stack[2], deltas[2])


@pytest.mark.parametrize(
    "strategy",
    [{"name": "fedavgm"}, {"name": "fedavg", "robust": {"rule": "median"}}, {"name": "reptile", "anneal_rounds": 3}],
)
def test_strategies_run_in_the_engine(tiny_config, strategy):
    setup = SimSetup(parse_config({**tiny_config, "strategy": strategy}))
    result, state = run_round(setup, initial_state(setup))
    assert np.isfinite(state.params).all() and result.stats.n_updates == 3


def test_personalisation_reports_personal_returns_beside_global(tiny_config):
    setup = SimSetup(parse_config({**tiny_config, "personalization": {"steps": 256}}))
    result, _ = run_round(setup, initial_state(setup))
    assert result.personalized_returns.shape == result.client_returns.shape == (3,)
    assert not np.array_equal(result.personalized_returns, result.client_returns)


def test_explicit_client_parameters_are_used(tiny_config):
    rows = [{"length": 0.2}, {"length": 0.5, "masscart": 2.0}, {}]
    setup = SimSetup(parse_config({**tiny_config, "env": {"family": "cartpole", "clients": rows}}))
    names = setup.family.param_names
    assert setup.env_params[0, names.index("length")] == 0.2
    assert setup.env_params[1, names.index("masscart")] == 2.0
    np.testing.assert_array_equal(setup.env_params[2], setup.family.standard_params)


def test_a_run_written_before_newer_metric_columns_still_resumes(tmp_path, tiny_config):
    _run_to_end(parse_config(tiny_config), tmp_path / "r")
    (tmp_path / "r" / "checkpoints" / "round_00003.json").unlink()
    with sqlite3.connect(tmp_path / "r" / "metrics.sqlite") as db:  # as an older fedrl wrote it
        db.execute("ALTER TABLE rounds DROP COLUMN epsilon")
    resumed = runs.resume(tmp_path / "r")
    list(resumed.rounds())
    assert [len(row) for row in resumed.dir.rounds()] == [len(ROUND_COLUMNS)] * 3
    assert (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0] == ",".join(ROUND_COLUMNS)


def test_a_run_written_before_newer_metric_columns_is_read_without_resuming_it(tmp_path, tiny_config):
    from fedrl.sim.rundir import RunDir

    _run_to_end(parse_config(tiny_config), tmp_path / "r")
    with sqlite3.connect(tmp_path / "r" / "metrics.sqlite") as db:  # as an older fedrl wrote it
        db.execute("ALTER TABLE rounds DROP COLUMN confirmed_return")

    rows = RunDir(tmp_path / "r").rounds()  # what fedrl plot and fedrl compare read

    assert len(rows) == 3 and all(r.confirmed_return is None for r in rows)


def _run(tmp_path, tiny_config, *overrides):
    config = tiny_config
    for assignment in ("federation.stop_at_target=true", *overrides):
        config = apply_override(config, assignment)
    current = runs.start(parse_config(config), tmp_path / "run")
    *_, (_, state) = current.rounds(tensorboard=False)
    return runs.finish(current, state), current.dir.rounds()


def test_a_crossing_of_the_target_is_confirmed_on_fresh_episodes_before_the_run_stops(tmp_path, tiny_config):
    summary, rows = _run(tmp_path, tiny_config, "federation.target_return=9", "eval.confirm_episodes=6")

    assert summary["solved"] and summary["rounds"] == len(rows) == 1  # crossed at round 1, and confirmed
    assert summary["confirmed_return"] == rows[-1].confirmed_return >= 9
    assert summary["confirmed_return"] != rows[-1].global_mean_return  # other episodes, more of them


def test_a_crossing_that_a_larger_evaluation_does_not_confirm_lets_the_run_go_on():
    from fedrl.sim.engine import is_solved
    from fedrl.sim.state import RoundResult

    setup = SimSetup(parse_config({"federation": {"target_return": 100.0}}))
    unconfirmed = setup.config.model_copy(update={"eval": setup.config.eval.model_copy(update={"confirm_episodes": 0})})

    def result(routine, confirmed):
        return RoundResult(1, 0, 0.0, 0.0, None, np.array(routine), None, confirmed_returns=confirmed)

    assert not is_solved(setup, result([120.0, 90.0], np.array([101.0, 95.0])))  # mean 98: not confirmed
    assert is_solved(setup, result([120.0, 90.0], np.array([110.0, 95.0])))
    assert not is_solved(setup, result([90.0, 90.0], None))
    assert is_solved(SimSetup(unconfirmed), result([120.0, 90.0], None))  # confirm_episodes 0: the first crossing


def test_without_a_confirmation_no_larger_evaluation_runs(tmp_path, tiny_config):
    summary, rows = _run(tmp_path, tiny_config, "federation.target_return=9", "eval.confirm_episodes=0")

    assert summary["solved"] and "confirmed_return" not in summary
    assert all(r.confirmed_return is None for r in rows)  # NaN is stored as NULL


def test_a_sampled_evaluation_draws_its_clients_afresh_and_its_interval_holds_the_fleets_mean(tmp_path, tiny_config):
    from fedrl.experiment.aggregation import client_returns, eval_sample

    config = apply_override(tiny_config, "federation.n_clients=12")
    summary, rows = _run(tmp_path, config, "eval.clients=5", "eval.confirm_episodes=0", "federation.rounds=2")
    setup = SimSetup(parse_config(apply_override(config, "eval.clients=5")))
    current = runs.open_run(tmp_path / "run")
    full = client_returns(setup, current.state.params).mean()  # every client, the same final policy
    logged = np.array(current.dir.client_returns(), dtype=np.float64)

    assert [len(eval_sample(setup, r)) for r in (1, 2)] == [5, 5]
    assert not np.array_equal(eval_sample(setup, 1), eval_sample(setup, 2))  # a fresh draw each round
    np.testing.assert_array_equal(eval_sample(setup, 2), eval_sample(setup, 2))
    assert eval_sample(SimSetup(parse_config(config)), 1) is None
    assert [r.eval_clients for r in rows] == [5, 5]
    np.testing.assert_array_equal(logged[logged[:, 0] == 2, 1], eval_sample(setup, 2))  # the ids, not 0..4
    assert rows[-1].mean_return_low <= full <= rows[-1].mean_return_high
    assert summary["eval_clients"] == 5 and summary["global_mean_low"] == rows[-1].mean_return_low


def test_a_run_trains_on_its_own_thread_count_and_gives_the_process_its_count_back(tmp_path, tiny_config):
    import torch

    from fedrl.experiment.callbacks import RoundReport

    seen = []

    class Watch:
        def on_round(self, report: RoundReport):
            seen.append(torch.get_num_threads())

        def close(self):
            pass

    before = torch.get_num_threads()
    current = runs.start(parse_config(apply_override(tiny_config, "threads=1")), tmp_path / "run")
    *_, (_, state) = current.rounds([Watch()], tensorboard=False)
    runs.finish(current, state)

    assert seen == [1, 1, 1] and torch.get_num_threads() == before


def test_a_run_that_does_not_stop_at_its_target_confirms_its_last_evaluation_at_the_end(tmp_path, tiny_config):
    summary, rows = _run(
        tmp_path,
        tiny_config,
        "federation.stop_at_target=false",
        "federation.target_return=9",
        "eval.confirm_episodes=6",
    )

    assert len(rows) == 3 and all(r.confirmed_return is None for r in rows)  # rounds checked nothing
    assert summary["solved"] and summary["confirmed_return"] >= 9  # the summary's solved is confirmed


def test_local_training_alone_shares_nothing_and_each_client_acts_with_its_own(tiny_config):
    setup = SimSetup(parse_config(apply_override(tiny_config, "learner.federate=none")))
    start = initial_state(setup)
    _, state = run_round(setup, start)
    np.testing.assert_array_equal(state.params, start.params)  # every delta is zero
    personal = state.client_state.personal
    assert personal.shape == (3, setup.net.spec.dim) and np.isfinite(personal).all()
    assert not np.array_equal(personal[0], personal[1]) and not np.array_equal(personal[0], start.params)


def test_local_training_alone_refuses_central_dp(tiny_config):
    central = {"clip_norm": 1.0, "dp": {"mode": "central", "noise_multiplier": 1.0}}
    with pytest.raises(ConfigError, match="learner.federate.*central DP has nothing to protect"):
        parse_config({**apply_override(tiny_config, "learner.federate=none"), "pipeline": central})


def test_every_evaluation_stream_tag_is_its_own():
    tags = {name: value for name, value in vars(aggregation).items() if name.endswith("_TAG")}
    assert len(set(tags.values())) == len(tags), tags


def test_checkpoint_every_writes_fewer_and_a_resume_redoes_the_rounds_after_the_newest(tmp_path, tiny_config):
    # Prepare: 5 rounds checkpointed every 2 (and the last), and the same run stopped after round 3
    config = parse_config(
        apply_override(apply_override(tiny_config, "federation.rounds=5"), "federation.checkpoint_every=2")
    )
    unbroken = _run_to_end(config, tmp_path / "unbroken")
    stopped = runs.start(config, tmp_path / "stopped")
    rounds = stopped.rounds()
    for _ in range(3):
        next(rounds)
    rounds.close()  # the process ends after round 3 (its metrics written, its state not)
    # Act
    resumed = runs.resume(tmp_path / "stopped")
    list(resumed.rounds())
    # Assert: checkpoints of rounds 0, 2, 4 and the last; the resumed run went back to round 2 and ends the same
    names = sorted(p.name for p in (tmp_path / "unbroken" / "checkpoints").glob("round_*.json"))
    assert names == ["round_00000.json", "round_00002.json", "round_00004.json", "round_00005.json"]
    assert resumed.state.round == 2
    ru, cu = _metrics(unbroken.dir)
    rr, cr = _metrics(resumed.dir)
    np.testing.assert_array_equal(np.nan_to_num(ru), np.nan_to_num(rr))
    np.testing.assert_array_equal(cu, cr)


def test_checkpoint_every_is_the_simulators_only():
    with pytest.raises(ConfigError, match="experiment.federation.checkpoint_every.*stores every round"):
        load_server_config(None, ["experiment.federation.checkpoint_every=5"])

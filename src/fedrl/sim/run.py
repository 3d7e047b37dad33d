"""Starting, resuming and finishing a simulated run in its run directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from fedrl.agents.runtime import threads, tune_allocator
from fedrl.experiment.adaptation import adaptation_summary
from fedrl.experiment.aggregation import CONFIRM_SAMPLE_TAG, confirmed_returns, eval_sample, heldout_returns
from fedrl.experiment.callbacks import Callback, Deployed, RoundReport, TensorBoardCallback, finite, tell
from fedrl.experiment.card import policy_card
from fedrl.experiment.config import ConfigError, ExperimentConfig
from fedrl.experiment.loading import apply_override, parse_config, to_yaml, upgrade
from fedrl.sim.clusters import heldout_choice
from fedrl.sim.engine import acting_params, initial_state, is_solved, run_rounds
from fedrl.sim.rundir import RoundRow, RunDir
from fedrl.sim.setup import SimSetup
from fedrl.sim.state import RoundResult, SimState


@dataclass(frozen=True)
class Run:
    """A run ready to go: its fixed setup, the state to continue from, and its directory."""

    setup: SimSetup
    state: SimState
    dir: RunDir

    def rounds(
        self, callbacks: Sequence[Callback] = (), tensorboard: bool = True
    ) -> Iterator[tuple[RoundResult, SimState]]:
        """Run the remaining rounds, recording metrics and a checkpoint after each (or every
        ``federation.checkpoint_every``, and the last), then telling
        ``callbacks`` (and TensorBoard, in ``RUN_DIR/tensorboard``) about the round, its evaluation
        and the version it made; they are closed at the end, and the backend's workers released."""
        tune_allocator()
        told = list(callbacks)
        if tensorboard:
            state = self.state
            told.append(TensorBoardCallback(self.dir.path / TENSORBOARD_DIR, state.round + 1, state.env_steps + 1))
        version = self.state.version
        try:
            with threads(self.setup.config.threads):
                for result, state in run_rounds(self.setup, self.state):
                    row = self.dir.record(result)
                    if checkpoint_due(self.setup, result):
                        self.dir.save_checkpoint(self.setup, state)
                    deployed = None
                    if state.version != version:  # a round without usable updates makes no version
                        version = state.version
                        deployed = Deployed(
                            version, state.params, policy_card(self.setup, state.params, version, norm=state.norm)
                        )
                    report = round_report(row, result, deployed)
                    for callback in told:
                        tell(callback, report)
                    yield result, state
        finally:
            self.setup.close()
            for callback in told:
                callback.close()


def checkpoint_due(setup: SimSetup, result: RoundResult) -> bool:
    """Whether the round of ``result`` is checkpointed: every ``federation.checkpoint_every`` rounds,
    and the run's last (its round limit, or the target reached)."""
    fed = setup.config.federation
    return result.round % fed.checkpoint_every == 0 or result.round >= fed.rounds or is_solved(setup, result)


TENSORBOARD_DIR = "tensorboard"
TAGS = {  # RoundRow column -> TensorBoard tag
    "global_mean_return": "return/mean",
    "p10_client_return": "return/p10_client",
    "worst_client_return": "return/worst_client",
    "confirmed_return": "return/confirmed",
    "mean_return_low": "return/mean_low",
    "mean_return_high": "return/mean_high",
    "personalized_mean_return": "return/personalized_mean",
    "personalized_worst_client_return": "return/personalized_worst_client",
    "train_loss": "train/loss",
    "train_episodes": "train/episodes",
    "n_updates": "round/updates",
    "n_sampled": "round/sampled",
    "n_dropped": "round/dropped",
    "n_rejected": "round/rejected",
    "mean_staleness": "round/mean_staleness",
    "wall_s": "time/wall_s",
    "sim_time_s": "time/simulated_s",
    "uplink_bytes": "traffic/uplink_bytes",
    "downlink_bytes": "traffic/downlink_bytes",
    "compression_ratio": "traffic/compression_ratio",
    "epsilon": "privacy/epsilon",
    "secagg_recovered": "secure_aggregation/recovered",
}


def round_report(row: RoundRow, result: RoundResult, deployed: Deployed | None = None) -> RoundReport:
    """A round's row as callbacks see it: its measured values by tag; the clients' returns (and,
    for a sampled evaluation, whose they are); evaluated when it measured them; ``deployed``, the
    global version it made."""
    values = row._asdict()
    scalars = finite({tag: values[name] for name, tag in TAGS.items()})
    returns = result.client_returns
    return RoundReport(row.round, scalars, row.env_steps, returns, returns is not None, deployed, result.eval_clients)


def default_run_dir(config: ExperimentConfig, root: Path = Path("runs")) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` (UTC)."""
    return root / f"{config.name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def start(config: ExperimentConfig, path: Path) -> Run:
    """A new run in ``path`` (which must not hold a run yet); nothing is written if the
    config cannot be built."""
    run_dir = RunDir(Path(path))
    if (run_dir.path / "config.yaml").exists():
        raise FileExistsError(f"{path} already holds a run; use --resume to continue it")
    setup = SimSetup(config)
    if not setup.simulated:
        raise ConfigError(
            "bad config: env.family = 'device': the devices bring their own environments, which the "
            "simulator cannot step; run it with `fedrl server` and `fedrl client --env ...`"
        )
    state = initial_state(setup)
    setup.start_backend()  # it says what is missing before anything is written
    run_dir.create(to_yaml(config))
    run_dir.save_checkpoint(setup, state)
    return Run(setup, state, run_dir)


def open_run(path: Path, overrides: list[str] = ()) -> Run:
    """The run in ``path`` at its last checkpoint, read only; ``overrides`` apply to its config."""
    run_dir = RunDir(Path(path))
    config_file = run_dir.path / "config.yaml"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} holds no run (no config.yaml)")
    data = upgrade(yaml.safe_load(config_file.read_text()))
    for assignment in overrides:
        data = apply_override(data, assignment)
    setup = SimSetup(parse_config(data))
    checkpoint = run_dir.latest_checkpoint()
    if checkpoint is None:
        raise FileNotFoundError(f"{path} has no checkpoint to resume from")
    return Run(setup, run_dir.load_checkpoint(setup, checkpoint), run_dir)


def resume(path: Path, overrides: list[str] = ()) -> Run:
    """Continue the run in ``path`` from its last checkpoint: metrics of later rounds (written
    before a crash, never checkpointed) are dropped; ``overrides`` (e.g. a larger
    ``federation.rounds``) are written into the run's config."""
    run = open_run(path, overrides)
    run.setup.start_backend()  # a bad backend (--backend, --address) is said before anything is rewritten
    run.dir.truncate_after(run.state.round)
    if overrides:
        run.dir.create(to_yaml(run.setup.config))
    return run


def _traffic_and_privacy(rows: list[RoundRow]) -> dict:
    """The total uplink bytes (where measured) and the DP epsilon spent (where there is DP)."""
    out: dict = {}
    uplink = [r.uplink_bytes for r in rows if r.uplink_bytes is not None]
    if uplink:
        out["uplink_bytes"] = int(sum(uplink))
    if rows and np.isfinite(rows[-1].epsilon):
        out["epsilon"] = rows[-1].epsilon
    return out


Plotter = Callable[[RunDir, float | None], list[Path]]
"""Draws a run's PNG plots (``fedrl.sim.plots.plot_run``): the command line passes it, so that a
run starts without importing matplotlib."""


def finish(run: Run, state: SimState, plot: Plotter | None = None) -> dict:
    """Save the final policy, evaluate held-out clients, write the summary and, with ``plot``, the
    plots (their paths under ``"plots"``)."""
    with threads(run.setup.config.threads):
        summary = _finish(run, state)
    if plot is not None:
        summary["plots"] = [str(p) for p in plot(run.dir, run.setup.target_return)]
    return summary


def _confirmed(run: Run, state: SimState, last: RoundRow) -> float | None:
    """The confirmed mean return of the last evaluation when it reached the target: the round's
    own check, or -- in a run that does not stop at its target, whose rounds check nothing -- one
    made now on the final policy. None when confirmation is off or the target was not reached."""
    setup = run.setup
    if not setup.config.eval.confirm_episodes or last.global_mean_return < setup.target_return:
        return None
    if last.confirmed_return is not None and np.isfinite(last.confirmed_return):
        return float(last.confirmed_return)
    if last.round != state.round:  # the state is not that of the last evaluation
        return None
    acting = acting_params(setup, state)
    ids = eval_sample(setup, state.round, CONFIRM_SAMPLE_TAG)
    return float(confirmed_returns(setup, acting, state.round, ids, state.norm).mean())


def heldout_acting(setup: SimSetup, state: SimState, env_params: np.ndarray) -> np.ndarray:
    """What held-out clients of physics ``env_params`` act with: the global policy, or with clustered
    federation the model each of them chooses."""
    if state.clusters is None:
        return state.params
    return heldout_choice(setup, state.clusters, env_params, state.norm)


def _finish(run: Run, state: SimState) -> dict:
    setup = run.setup
    rows = run.dir.rounds()
    evaluated = [r for r in rows if r.global_mean_return is not None and np.isfinite(r.global_mean_return)]
    summary: dict = {
        "rounds": state.round,
        "env_steps": state.env_steps,
        "wall_s": round(state.wall_s, 3),
        "target_return": setup.target_return,  # None: the family sets none and neither did the config
    }
    if setup.target_return is not None:
        summary["solved"] = False
    if evaluated:
        last = evaluated[-1]
        summary.update(global_mean_return=last.global_mean_return, worst_client_return=last.worst_client_return)
        if last.mean_return_low is not None and np.isfinite(last.mean_return_low):  # a sampled evaluation
            summary.update(
                eval_clients=int(last.eval_clients),
                global_mean_low=last.mean_return_low,
                global_mean_high=last.mean_return_high,
            )
        if setup.target_return is not None:
            summary["solved"] = bool(last.global_mean_return >= setup.target_return)
            confirmed = _confirmed(run, state, last)
            if confirmed is not None:  # the crossing checked on eval.confirm_episodes fresh episodes per client
                summary["confirmed_return"] = confirmed
                summary["solved"] = bool(summary["solved"] and confirmed >= setup.target_return)
    summary.update(_traffic_and_privacy(rows))
    n_heldout = setup.config.eval.heldout_clients
    if n_heldout:
        acting = heldout_acting(setup, state, setup.heldout_params(n_heldout))
        held = heldout_returns(setup, acting, n_heldout, setup.config.eval.episodes, state.norm)
        summary.update(heldout_mean_return=float(held.mean()), heldout_worst_return=float(held.min()))
        summary.update(adaptation_summary(setup, state.params, None if state.norm is None else state.norm.pooled()))
    run.dir.save_policy(setup, state.params, "final_policy", {"round": state.round}, state.norm)
    if state.clusters is not None:
        summary["cluster_sizes"] = state.clusters.sizes.tolist()  # how many clients chose each model last
        for k, model in enumerate(state.clusters.params):
            run.dir.save_policy(setup, model, f"cluster_{k}_policy", {"round": state.round, "cluster": k}, state.norm)
    run.dir.write_summary(summary)
    return summary

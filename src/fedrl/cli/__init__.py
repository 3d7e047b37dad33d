"""The ``fedrl`` command line: run, resume, inspect, evaluate and plot federated RL runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedrl import __version__
from fedrl.cli.certs import certs
from fedrl.cli.console import console, fail
from fedrl.cli.deploy import fleet, server
from fedrl.cli.edge import act, client
from fedrl.cli.export import export
from fedrl.cli.health import health
from fedrl.cli.region import aggregator

app = typer.Typer(
    help="Federated reinforcement learning: many clients, each in its own environment, learn one policy.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(shown: bool) -> None:
    if shown:
        console.print(f"fedrl {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Federated reinforcement learning: many clients, each in its own environment, learn one policy."""


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="YAML experiment config (defaults are used without one)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set federation.rounds=50."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last checkpoint."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/NAME-TIMESTAMP)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    callback: list[str] = typer.Option(
        [],
        "--callback",
        help="module:factory making a round callback (on_round, close) from the run directory; repeatable.",
    ),
    tensorboard: bool = typer.Option(
        True, "--tensorboard/--no-tensorboard", help="Write TensorBoard event files to RUN_DIR/tensorboard."
    ),
    dashboard: Optional[str] = typer.Option(
        None, "--dashboard", help="Serve a live dashboard at HOST:PORT while the run goes (port 0: any free one)."
    ),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="Where shards of clients train: inprocess, or ray (sets backend.name)."
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="The Ray cluster to join: auto or HOST:PORT (sets backend.address; default: start a local one).",
    ),
) -> None:
    """Train a federated policy in simulation, with a progress bar; writes a run directory."""
    from fedrl.envs.gym_adapter import UserCodeError
    from fedrl.experiment.callbacks import callback_factories, make_callbacks
    from fedrl.experiment.config import ConfigError
    from fedrl.experiment.loading import load_config
    from fedrl.sim import run as runs

    set_ = [*set_, *_backend_overrides(backend, address)]
    try:
        factories = callback_factories(callback)  # imported before the run exists: a bad one leaves nothing
        if resume is not None:
            if config is not None or out is not None:
                fail("--resume takes the run directory only; change settings with --set")
            current = runs.resume(resume, set_)
        else:
            cfg = load_config(config, set_)
            current = runs.start(cfg, out or runs.default_run_dir(cfg))
    except (ConfigError, FileExistsError, FileNotFoundError, UserCodeError) as exc:
        fail(str(exc))
    console.print(f"run directory: [bold]{current.dir.path}[/bold]", highlight=False)
    live = _serve_dashboard(current, dashboard) if dashboard else None
    try:
        callbacks = make_callbacks(factories, current.dir.path)
        state = _train(current, callbacks, tensorboard, quiet)  # closes the callbacks, however it ends
    except ConfigError as exc:
        fail(str(exc))
    finally:
        if live is not None:
            live.close()
    from fedrl.sim.plots import plot_run  # matplotlib, only once the rounds are done

    summary = runs.finish(current, state, plot_run)
    _print_summary(summary, current.dir.path)


def _backend_overrides(backend: str | None, address: str | None) -> list[str]:
    """``--backend`` and ``--address`` as the ``--set`` overrides they stand for (the address
    quoted, so that YAML keeps HOST:PORT a string)."""
    overrides = [] if backend is None else [f"backend.name={backend}"]
    if address is not None:
        overrides.append(f"backend.address={json.dumps(address)}")
    return overrides


def _serve_dashboard(current, listen: str):
    """The live dashboard of ``current`` at ``listen`` (HOST:PORT), its address printed."""
    from fedrl.experiment.dashboard import Dashboard
    from fedrl.sim.dashboard import run_status

    host, _, port = listen.rpartition(":")
    try:
        live = Dashboard(lambda: run_status(current), host or "127.0.0.1", int(port))
    except (ValueError, OSError) as exc:
        fail(f"--dashboard {listen}: {exc}")
    console.print(f"dashboard: [bold]{live.url}[/bold]", highlight=False)
    return live


def _train(current, callbacks: list, tensorboard: bool, quiet: bool):
    """Run ``current``'s remaining rounds with a progress bar (plain lines without a terminal);
    the last state."""
    from fedrl.envs.gym_adapter import UserCodeError
    from fedrl.sim.shards import ShardLost

    state = current.state
    total = current.setup.config.federation.rounds
    lines = not quiet and not console.is_terminal  # a log file or CI: one plain line per round, not a bar
    with Progress(
        TextColumn("[bold]round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or lines,
    ) as progress:
        task = progress.add_task("rounds", total=total, completed=state.round, status="")
        try:
            for result, reached in current.rounds(callbacks, tensorboard):
                state = reached
                status = f"steps {result.env_steps:,}  updates {result.stats.n_updates}/{result.stats.n_sampled}"
                if result.client_returns is not None:
                    status += f"  mean {result.global_mean_return:7.1f}  worst {result.worst_client_return:7.1f}"
                    if result.eval_clients is not None:  # a sample: the fleet's mean lies in this interval
                        low, high = result.mean_return_interval
                        status += f" [{low:.1f}, {high:.1f}] ({len(result.eval_clients)} clients)"
                if result.confirmed_returns is not None:  # the crossing of the target, checked on more episodes
                    status += f"  confirmed {result.confirmed_return:7.1f}"
                progress.update(task, completed=result.round, status=status)
                if lines:
                    console.print(f"round {result.round}/{total}  {status}  {state.wall_s:.1f} s", highlight=False)
        except UserCodeError as exc:
            progress.stop()
            fail(str(exc))
        except ShardLost as exc:
            progress.stop()
            fail(f"{exc}; the run stopped at its last checkpoint (continue it with --resume)")
    return state


def _print_summary(summary: dict, path: Path) -> None:
    table = Table(title="result", show_header=False)
    for key, value in summary.items():
        if key == "target_return" and value is None:
            table.add_row(key, "no target")
        elif key != "plots":
            table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(
        f"results in [bold]{path}[/bold]: metrics.csv, metrics.sqlite, checkpoints/, final_policy.safetensors",
        highlight=False,
    )
    for plot in summary.get("plots", []):
        console.print(f"plot: {plot}", highlight=False)


@app.command()
def envs() -> None:
    """List the environment families, their per-client physical parameters and their learner defaults."""
    from fedrl.envs import FAMILIES

    for family in FAMILIES.values():
        table = Table(title=f"{family.name}: {family.description}", title_justify="left")
        for column in ("parameter", "standard", "range at heterogeneity 1", "meaning"):
            table.add_column(column)
        for r in family.param_ranges:
            table.add_row(r.name, f"{r.standard:g}", f"{r.low:g} .. {r.high:g}", r.doc)
        console.print(table)
        solved = "no target" if family.solved_return is None else f"solved at return {family.solved_return:g}"
        console.print(f"  time limit {family.time_limit} steps, {solved}")
        for learner, defaults in family.learner_defaults.items():
            settings = ", ".join(f"{key}={value}" for key, value in defaults.items())
            console.print(f"  {learner}: {settings} (where the experiment sets none)", highlight=False)
        console.print()


def _parse_clients(spec: str, n_clients: int) -> tuple[str, list[int] | int]:
    if spec == "all":
        return "trained", list(range(n_clients))
    if spec.startswith("heldout:"):
        count = spec.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--clients {spec!r}: expected heldout:N with N >= 1")
        return "heldout", int(count)
    try:
        ids = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"--clients {spec!r}: expected all, heldout:N or comma-separated client ids") from None
    bad = [i for i in ids if not 0 <= i < n_clients]
    if bad:
        raise ValueError(f"--clients: no client {bad[0]} in this run (clients are 0..{n_clients - 1})")
    return "trained", ids


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A run directory written by `fedrl run`."),
    clients: str = typer.Option(
        "all", help="all, comma-separated client ids (0,3,5), or heldout:N for N never-trained clients."
    ),
    episodes: int = typer.Option(10, min=1, help="Episodes per client."),
    seed: int = typer.Option(12345, help="Seed of the evaluation episodes."),
) -> None:
    """Evaluate a run's final (or latest checkpointed) policy, client by client."""

    from fedrl.agents import evaluate
    from fedrl.agents.normalize import obs_scale
    from fedrl.agents.runtime import threads
    from fedrl.envs.gym_adapter import UserCodeError
    from fedrl.sim import run as runs
    from fedrl.sim.engine import acting_params

    try:
        current = runs.open_run(run_dir)
        kind, chosen = _parse_clients(clients, current.setup.config.federation.n_clients)
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        fail(str(exc))
    setup = current.setup
    final = current.dir.path / "final_policy.safetensors"
    params = current.dir.load_policy(setup) if final.exists() else current.state.params
    env_params = setup.heldout_params(chosen) if kind == "heldout" else setup.env_params[chosen]
    ids = [f"h{i}" for i in range(chosen)] if kind == "heldout" else chosen  # never mistaken for a trained id
    own_models = current.state.clusters is not None or not setup.federated.all()
    try:
        with threads(setup.config.threads):  # the run's own: the same numbers on any machine
            state = current.state
            if kind == "heldout":  # with clusters, the model each chooses now
                params = runs.heldout_acting(setup, state, env_params) if state.clusters is not None else params
            elif own_models:  # the model each chose last, and its own towers
                params = acting_params(setup, state)[chosen]
            norm = state.norm  # the final policy's too; personal statistics: each client's own, pooled for new ones
            if norm is not None:
                norm = norm.pooled() if kind == "heldout" else norm.acting(chosen)
            scale = obs_scale(setup.config.learner.normalize, norm)
            returns = evaluate(setup.net, params, setup.family, env_params, episodes, seed, obs_norm=scale)
    except UserCodeError as exc:
        fail(str(exc))
    policy = "final policy" if final.exists() else f"round {current.state.round}"
    if current.state.clusters is not None:
        policy = f"each client's model of {len(current.state.clusters.params)}, round {current.state.round}"
    elif kind != "heldout" and own_models:
        policy = f"each client's own towers, round {current.state.round}"
    table = Table(title=f"{kind} clients, {episodes} episodes each ({policy})")
    for column in ["client", *setup.family.param_names, "mean return", "std"]:
        table.add_column(column, justify="right")
    for i, row, ret in zip(ids, env_params, returns):
        table.add_row(str(i), *(f"{v:.3g}" for v in row), f"{ret.mean():.1f}", f"{ret.std():.1f}")
    console.print(table)
    console.print(f"mean {returns.mean():.1f}, worst client {returns.mean(1).min():.1f}", highlight=False)


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(
        ..., help="Run directories written by `fedrl run`: several seeds per setting."
    ),
    out: Path = typer.Option(Path("compare"), "--out", help="Folder for compare.md, compare.json and compare.png."),
) -> None:
    """Compare runs over their seeds: IQM with 95% bootstrap intervals, fairness, learning curves."""
    import json

    from fedrl.sim.compare import as_records, fmt, group_runs, markdown, plot_comparison, read_run, summarize

    try:
        runs = [read_run(path) for path in run_dirs]
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        fail(str(exc))
    groups = group_runs(runs)
    summaries = summarize(groups)
    table = Table(title="final global policy, IQM over seeds [95% bootstrap CI]")
    for column in ("#", "runs", "solved", "mean return", "worst client", "p10 client", "held-out", "steps to target"):
        table.add_column(column, justify="right")
    for i, s in enumerate(summaries, 1):
        steps = "-" if s.steps_to_target != s.steps_to_target else f"{s.steps_to_target:,.0f}"
        cells = (fmt(s.final_mean), fmt(s.final_worst), fmt(s.final_p10), fmt(s.heldout_mean))
        table.add_row(str(i), str(s.runs), s.solved, *cells, steps)
    console.print(table)
    for i, s in enumerate(summaries, 1):
        console.print(f"#{i}: {s.label}", highlight=False, soft_wrap=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown(summaries))
    (out / "compare.json").write_text(json.dumps(as_records(summaries), indent=2, allow_nan=False))
    targets = {r.target for r in runs}
    plot = plot_comparison(groups, out / "compare.png", targets.pop() if len(targets) == 1 else None)
    console.print(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {plot}", highlight=False)


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="A run directory written by `fedrl run`.")) -> None:
    """(Re)draw a run's PNG plots from its metrics."""
    from fedrl.experiment.config import ConfigError
    from fedrl.sim import run as runs
    from fedrl.sim.plots import plot_run

    try:
        current = runs.open_run(run_dir)
    except (ConfigError, FileNotFoundError) as exc:
        fail(str(exc))
    for path in plot_run(current.dir, current.setup.target_return):
        console.print(f"plot: {path}", highlight=False)


app.command("certs")(certs)
app.command("server")(server)
app.command("aggregator")(aggregator)
app.add_typer(fleet, name="fleet")
app.command("client")(client)
app.command("act")(act)
app.command("export")(export)
app.command("health")(health)

TRAINING_STACK = {
    "torch",
    "gymnasium",
    "pydantic",
    "yaml",
    "matplotlib",
    "prometheus_client",
    "dp_accounting",
    "tensorboardX",
    "stable_baselines3",
}


def run_cli() -> None:
    """The ``fedrl`` command: ``app``, with one line instead of a traceback when a command needs a
    part of fedrl this install left out (``pip install fedrl[edge]`` has no training stack)."""
    try:
        app()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        extra = "train" if missing in TRAINING_STACK else "onnx" if missing in ("onnx", "onnxruntime") else None
        if extra is None:
            raise
        needs = escape(f"this command needs {missing}, which this install left out: pip install 'fedrl[{extra}]'")
        console.print(f"[red]error:[/red] {needs}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None

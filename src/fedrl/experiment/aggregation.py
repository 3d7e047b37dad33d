"""A round's aggregation and the held-out evaluation, one function each for every runtime.

The simulator's engine and the deployed server's coordinator both close a round with
``aggregate_round``::

    updates (decoded on receipt) -> screen -> weights capped -> (central DP: one noised mean)
        -> (regions: one reduced update per region) -> strategy

``screen`` rejects what no rule may see (NaN or Inf values, the wrong length); where a NaN or an Inf
would spread to the candidate anyway (the weighted mean), the values are judged by the candidate
instead, and screened only when it is not finite (``aggregate_round``). A client reports its
own step count, which is its FedAvg weight, so a count above the round's step budget
(``federation.local_steps``) counts as the budget: claiming more buys no more weight. The strategy
reduces the deltas with its robust rule (``strategy.robust``); in a hierarchy
(``federation.regions``) each region applies it to its own clients' deltas and the root's strategy
takes the weighted mean of the regions' (``Setup.root_strategy``). Under central DP
the strategy receives a single update, the noised sum of the accepted deltas over the expected
number of clients, its noise drawn from the run seed and the round (``NOISE_STREAM``), so a
restarted server, a resumed run and the simulator all draw the same noise for the same round,
and no two rounds share it, even when a round made no new version.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedrl.agents import evaluate
from fedrl.agents.normalize import obs_scale
from fedrl.core.aggregation import all_finite, screen, weighted_mean
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import central_mean, mean_of_secure_sum
from fedrl.core.robust import combine
from fedrl.core.secagg import dequantize
from fedrl.core.strategies import state_to_arrays
from fedrl.core.update import Update, as_screened, stack_deltas
from fedrl.experiment.setup import Setup
from fedrl.experiment.streams import EVAL_STREAM, NOISE_STREAM

HELDOUT_EPISODES_TAG = 1  # after EVAL_STREAM: the held-out clients' episodes, apart from the training clients'
CONFIRM_EPISODES_TAG = 2  # after EVAL_STREAM, then the round: the episodes that confirm a crossing of the target
EVAL_SAMPLE_TAG = 3  # after EVAL_STREAM, then the round: which clients a sampled evaluation draws
CONFIRM_SAMPLE_TAG = 4  # after EVAL_STREAM, then the round: which clients a sampled confirmation draws
CHOOSE_TAG = 5  # after EVAL_STREAM, then the round: the probe episodes a client chooses a clustered model on


@dataclass(frozen=True)
class Aggregated:
    """What closing a round made: the candidate global policy and strategy state, and what
    became of the updates."""

    params: np.ndarray  # (d,)
    strategy_state: object
    n_rejected: int  # refused by screening: non-finite values, the wrong length
    mean_staleness: float  # of the accepted updates, in versions behind ``version``


def noise_rng(setup: Setup, round_: int) -> np.random.Generator:
    """The generator of central DP's noise (and a secure sum's) in ``round_``."""
    return setup.rng(NOISE_STREAM, round_)


def expected_clients(setup: Setup) -> float:
    """``fraction * n_clients``: central DP's fixed denominator, which hides how many took part."""
    fed = setup.config.federation
    return fed.fraction * fed.n_clients


def central_update(setup: Setup, updates: list[Update], version: int, round_: int) -> Update:
    """Under central DP, the one update the strategy sees: the noised sum of ``updates`` over
    the expected number of clients (client id -1: no single client's)."""
    stack = stack_deltas(updates) if updates else np.zeros((0, setup.net.spec.dim), dtype=np.float32)
    mean = central_mean(setup.config.pipeline, stack, expected_clients(setup), noise_rng(setup, round_))
    return Update(-1, version, mean, sum(u.env_steps for u in updates))


def secure_update(setup: Setup, total: np.ndarray, n_survivors: int, version: int, round_: int) -> Update:
    """The one update the strategy sees from a deployed secure round: the unmasked uint32 sum
    ``total`` of ``n_survivors`` inputs, dequantized, as its mean (or central DP's noised mean),
    weighted as that many clients' step budgets (client id -1: no single client's)."""
    pipeline = setup.config.pipeline
    floats = dequantize(total, pipeline.secure_aggregation)
    mean = mean_of_secure_sum(pipeline, floats, n_survivors, expected_clients(setup), noise_rng(setup, round_))
    return Update(-1, version, mean, n_survivors * (setup.config.federation.local_steps or 1))


def capped_weights(setup: Setup, updates: list[Update]) -> list[Update]:
    """``updates`` with every step count above the step budget of the clients it stands for (one, or a
    region's) set to that budget (under an episode budget, counts honestly differ and are left as they are)."""
    budget = setup.config.federation.local_steps
    if budget is None:
        return updates
    return [u if u.env_steps <= budget * u.clients else _capped(u, budget * u.clients) for u in updates]


def _capped(update: Update, budget: int) -> Update:
    """``update`` weighted as ``budget`` steps, still marked screened if it was (its values did not change)."""
    capped = replace(update, env_steps=budget)
    return as_screened(capped) if update.screened else capped


def region_of(setup: Setup, clients: np.ndarray) -> np.ndarray:
    """The region of each client id: ``c * regions // n_clients`` (consecutive ids share one)."""
    fed = setup.config.federation
    return np.asarray(clients, dtype=np.int64) * fed.regions // fed.n_clients


def regional_updates(setup: Setup, updates: list[Update], version: int, by_sender: bool = False) -> list[Update]:
    """What each region with accepted ``updates`` forwards to the root: its clients' deltas clipped and
    reduced by the strategy's robust rule, weighted by their env steps in all (client id -1: no single
    client's), in region order. ``by_sender``: each sender is a region of its own (a deployed root, whose
    senders are regional aggregators that reduced their devices' updates, or devices that failed over to it)."""
    ids = np.array([u.client_id for u in updates], dtype=np.int64)
    regions = ids if by_sender else region_of(setup, ids)
    return [
        _reduced(setup, [u for u, r in zip(updates, regions) if r == region], version) for region in np.unique(regions)
    ]


def _reduced(setup: Setup, members: list[Update], version: int) -> Update:
    """One region's ``members`` clipped and reduced by the robust rule, weighted by their env steps
    in all (client id -1: no single client's); a region's update that a deployed region reduced
    already passes as it is."""
    steps, clients = sum(u.env_steps for u in members), sum(u.clients for u in members)
    reduced = len(members) == 1 and members[0].clients > 1
    delta = members[0].delta if reduced else combine(setup.config.strategy.robust, members)
    return Update(-1, version, delta, steps, clients=clients)


def region_update(
    setup: Setup, updates: list[Update], version: int, regions_below: frozenset[int] = frozenset()
) -> tuple[Update | None, int]:
    """What a deployed regional aggregator forwards for its round: ``updates`` screened, their weights
    capped, clipped and reduced by the robust rule into one update weighted by their env steps in
    all, as a simulated region reduces its clients' (``regional_updates``); None when the screen
    refused them all. Also returns how many the screen refused.

    ``regions_below``: the client ids of regions that forward to this one (regions of regions). Their
    updates were reduced there already, so they pass as they came, as they would at the root: the
    region's own devices' reduction and theirs make one mean weighted by env steps, whose devices
    are all of theirs."""
    screened = screen(updates, setup.net.spec.dim)
    if not screened.accepted:
        return None, len(screened.rejected)
    accepted = capped_weights(setup, screened.accepted)
    devices = [u for u in accepted if u.client_id not in regions_below]
    parts = [_reduced(setup, devices, version)] if devices else []
    parts += [replace(u, client_id=-1, base_version=version) for u in accepted if u.client_id in regions_below]
    if len(parts) == 1:
        return parts[0], len(screened.rejected)
    delta = weighted_mean(stack_deltas(parts), [u.env_steps for u in parts])
    steps, clients = sum(u.env_steps for u in parts), sum(u.clients for u in parts)
    return Update(-1, version, delta, steps, clients=clients), len(screened.rejected)


def aggregate_round(
    setup: Setup,
    strategy_state: object,
    params: np.ndarray,
    version: int,
    round_: int,
    updates: list[Update],
    by_sender: bool = False,
) -> Aggregated:
    """Close ``round_``: screen ``updates`` (based on versions up to ``version``, the newest), cap
    their weights, noise them under central DP, and let the strategy make the candidate from ``params``.

    Where a NaN or an Inf in any delta would make the candidate non-finite (``carries_non_finite``),
    the values are not screened first: the strategy runs on every well-formed update, and only a
    non-finite candidate sends the round through the screen and the strategy again. A finite
    candidate is then exactly the one the screen-first path makes (it would have accepted them all),
    made without reading every update once more for NaN. Screened updates are marked, so the
    strategy does not read them again either. ``by_sender``: with ``federation.regions``, each
    sender is a region of its own (``regional_updates``: the deployed root)."""
    dim = setup.net.spec.dim
    if carries_non_finite(setup) and all(u.env_steps > 0 for u in updates):  # every weight positive
        shaped = screen(updates, dim, values=False)
        trusted = [as_screened(u) for u in shaped.accepted]
        try:
            with np.errstate(invalid="ignore", over="ignore"):  # a poisoned round is expected to make NaN here
                trial = _aggregated(setup, strategy_state, params, version, round_, trusted, by_sender)
        except ValueError:  # e.g. SCAFFOLD's count of updates, which the screen may lower
            trial = None
        if trial is not None and _finite(trial):
            return replace(trial, n_rejected=len(shaped.rejected))
    screened = screen(updates, dim)
    return replace(
        _aggregated(setup, strategy_state, params, version, round_, screened.accepted, by_sender),
        n_rejected=len(screened.rejected),
    )


SPREADING = ("fedavg", "fedavgm", "reptile", "fedadam", "fedyogi", "fedadagrad", "scaffold")  # see carries_non_finite


def carries_non_finite(setup: Setup) -> bool:
    """Whether a NaN or an Inf in any update's delta (or control delta) with a positive weight makes
    the candidate or the strategy state non-finite: fedrl's synchronous strategies with the weighted
    mean (clipping an Inf makes a NaN), without central DP and without regions (whose root would
    drop a poisoned region's update whole). Not the median or a trimmed mean, which an Inf may pass
    by, nor a user's rule or strategy, which may refuse one."""
    config = setup.config
    strategy = config.strategy
    plain = config.pipeline.dp.mode != "central" and config.federation.regions == 1
    return strategy.name in SPREADING and strategy.robust.rule == "mean" and plain


def _finite(done: Aggregated) -> bool:
    arrays = [done.params, *state_to_arrays(done.strategy_state).values()]
    return all(all_finite(a) if a.dtype == np.float32 and a.ndim == 1 else np.isfinite(a).all() for a in arrays)


def _aggregated(
    setup: Setup,
    strategy_state: object,
    params: np.ndarray,
    version: int,
    round_: int,
    accepted: list[Update],
    by_sender: bool = False,
) -> Aggregated:
    """The candidate from ``accepted`` (screened) updates: weights capped, central DP's noised mean,
    regions reduced, then the strategy (``n_rejected`` left 0 for the caller)."""
    accepted = capped_weights(setup, accepted)
    staleness = float(np.mean([version - u.base_version for u in accepted])) if accepted else 0.0
    strategy = setup.strategy
    if setup.config.pipeline.dp.mode == "central":
        given = [central_update(setup, accepted, version, round_)]
    elif setup.config.federation.regions > 1:
        given, strategy = regional_updates(setup, accepted, version, by_sender), setup.root_strategy
    else:
        given = accepted
    new_params, new_state = strategy.aggregate(strategy_state, params, given)
    return Aggregated(new_params, new_state, 0, staleness)


def mean_returns(
    setup: Setup, params: np.ndarray, env_params: np.ndarray, episodes: int, *tags: int, norm: NormStats | None = None
) -> np.ndarray:
    """Mean return per client of ``params`` (shared ``(d,)`` or per-client ``(N, d)``) on the
    clients with physics ``env_params``, over ``episodes`` seeded by ``EVAL_STREAM`` and ``tags``,
    observations normalised by the fleet's ``norm`` statistics when the learner normalises them."""
    seed = int(setup.rng(EVAL_STREAM, *tags).integers(2**31))
    scale = obs_scale(setup.config.learner.normalize, norm)
    returns = evaluate(setup.net, params, setup.family, env_params, episodes, seed, setup.config.eval.greedy, scale)
    return returns.mean(axis=1)


def eval_sample(setup: Setup, round_: int, tag: int = EVAL_SAMPLE_TAG) -> np.ndarray | None:
    """The training clients an evaluation in ``round_`` draws (sorted ids; ``eval.clients`` of them,
    a fresh draw each round, and another for a confirmation: ``tag`` CONFIRM_SAMPLE_TAG), or None
    when every client is evaluated."""
    n, wanted = setup.config.federation.n_clients, setup.config.eval.clients
    if wanted is None or wanted >= n:
        return None
    return np.sort(setup.rng(EVAL_STREAM, tag, round_).choice(n, wanted, replace=False))


def _on(setup: Setup, params: np.ndarray, ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(params, env_params)`` of the clients ``ids`` (all for None); shared params stay shared."""
    if ids is None:
        return params, setup.env_params
    return (params if np.ndim(params) == 1 else params[ids]), setup.env_params[ids]


def _norm_on(norm: NormStats | None, ids: np.ndarray | None) -> NormStats | None:
    """The statistics the clients ``ids`` (all for None) are evaluated with."""
    return None if norm is None else norm.acting(ids)


def client_returns(
    setup: Setup, params: np.ndarray, ids: np.ndarray | None = None, norm: NormStats | None = None
) -> np.ndarray:
    """Mean return per training client (those ``ids``; default all), ``eval.episodes`` each, the
    same episodes every round for the same clients."""
    return mean_returns(setup, *_on(setup, params, ids), setup.config.eval.episodes, norm=_norm_on(norm, ids))


def confirmed_returns(
    setup: Setup, params: np.ndarray, round_: int, ids: np.ndarray | None = None, norm: NormStats | None = None
) -> np.ndarray:
    """Mean return per training client (those ``ids``) over ``eval.confirm_episodes`` episodes of
    their own (not the routine evaluation's): the check that a crossing of the target was not luck."""
    episodes = setup.config.eval.confirm_episodes
    norm = _norm_on(norm, ids)
    return mean_returns(setup, *_on(setup, params, ids), episodes, CONFIRM_EPISODES_TAG, round_, norm=norm)


def heldout_returns(
    setup: Setup, params: np.ndarray, n_clients: int, episodes: int, norm: NormStats | None = None
) -> np.ndarray:
    """Mean return per held-out client (physics never trained on), the same episodes for every
    policy: the simulator's final check and the deployed server's evaluation gate."""
    env_params = setup.heldout_params(n_clients)
    norm = None if norm is None else norm.pooled()  # personal statistics: a new client starts from all pooled
    return mean_returns(setup, params, env_params, episodes, HELDOUT_EPISODES_TAG, norm=norm)

"""Closing a round (``aggregate_round``): what is screened, when, and that screening late changes
nothing but the time it takes."""

import numpy as np
import pytest

from fedrl.core import aggregation as core_aggregation
from fedrl.core.aggregation import screen
from fedrl.core.update import Update, stack_deltas
from fedrl.experiment.aggregation import _aggregated, aggregate_round, carries_non_finite
from fedrl.experiment.loading import apply_override, parse_config
from fedrl.experiment.setup import Setup


def _setup(*overrides) -> Setup:
    data = {"learner": {"hidden": [8]}, "federation": {"n_clients": 6}}
    for assignment in overrides:
        data = apply_override(data, assignment)
    return Setup(parse_config(data))


def _round(setup: Setup, poison: dict[int, float], control_poison: dict[int, float] | None = None) -> list[Update]:
    """Six clients' updates, rows of one array as the server reads a round; ``poison`` sets one value
    of some clients' deltas (NaN, Inf), ``control_poison`` of their SCAFFOLD control deltas."""
    rng = np.random.default_rng(0)
    dim = setup.net.spec.dim
    deltas = rng.normal(0, 0.01, (6, dim)).astype(np.float32)
    controls = rng.normal(0, 0.01, (6, dim)).astype(np.float32) if setup.strategy.uses_control_variates else None
    for client, value in poison.items():
        deltas[client, 3] = value
    for client, value in (control_poison or {}).items():
        controls[client, 5] = value
    return [
        Update(c, 0, deltas[c], int(s), control_delta=None if controls is None else controls[c])
        for c, s in enumerate(rng.integers(100, 1000, 6))
    ]


@pytest.fixture
def reads(monkeypatch) -> list:
    """One entry for every vector the screen reads the values of (``all_finite``)."""
    read = []
    real = core_aggregation.all_finite
    monkeypatch.setattr(core_aggregation, "all_finite", lambda v: read.append(1) or real(v))
    return read


def _screen_first(setup: Setup, params, updates):
    """The round as every runtime closed it before: screen, then the strategy."""
    screened = screen(updates, setup.net.spec.dim)
    done = _aggregated(setup, setup.strategy.init(params), params, 0, 1, screened.accepted)
    return done.params, len(screened.rejected)


SPREADING = ["fedavg", "fedavgm", "reptile", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fedavg-clipped"]
SCREEN_FIRST = ["median", "regions", "central-dp"]
OVERRIDES = {
    "fedavg-clipped": ["strategy.robust.norm_bound=0.05"],
    "scaffold": ["strategy.name=scaffold", "strategy.n_clients=6"],
    "median": ["strategy.robust.rule=median"],
    "regions": ["federation.regions=2"],
    "central-dp": ["pipeline.dp.mode=central", "pipeline.clip_norm=1.0", "pipeline.dp.noise_multiplier=0.5"],
}


@pytest.mark.parametrize("strategy", SPREADING + SCREEN_FIRST)
@pytest.mark.parametrize("poison", [{}, {2: np.nan}, {1: np.inf, 4: -np.inf}], ids=["finite", "nan", "inf"])
def test_a_round_makes_the_screen_first_candidate_bit_for_bit_and_counts_what_it_refused(strategy, poison, reads):
    # Prepare: count the updates whose values the screen reads
    setup = _setup(*OVERRIDES.get(strategy, [f"strategy.name={strategy}"]))
    params = np.zeros(setup.net.spec.dim, dtype=np.float32)
    updates = _round(setup, poison)

    # Execute
    done = aggregate_round(setup, setup.strategy.init(params), params, 0, 1, updates)

    # Assert: the same candidate as screening first, with the poisoned updates refused and counted ...
    read = len(reads)  # before screening first below reads them
    expected, rejected = _screen_first(setup, params, updates)
    assert done.params.tobytes() == expected.tobytes() and np.isfinite(done.params).all()
    assert done.n_rejected == rejected == len(poison)
    # ... and a clean round of the weighted mean read no update for NaN: its candidate showed there was none
    assert carries_non_finite(setup) == (strategy in SPREADING)
    assert (read == 0) == (strategy in SPREADING and not poison)


def test_a_nan_in_scaffolds_control_delta_alone_is_refused_and_counted():
    setup = _setup("strategy.name=scaffold", "strategy.n_clients=6")
    params = np.zeros(setup.net.spec.dim, dtype=np.float32)
    updates = _round(setup, {}, {3: np.nan})

    done = aggregate_round(setup, setup.strategy.init(params), params, 0, 1, updates)

    expected, rejected = _screen_first(setup, params, updates)
    assert done.params.tobytes() == expected.tobytes() and done.n_rejected == rejected == 1
    assert np.isfinite(done.strategy_state.c).all()


def test_with_a_zero_weight_the_round_is_screened_first(reads):
    # Prepare: a client without steps has no weight, so a NaN of its could vanish in the mean
    setup = _setup()
    params = np.zeros(setup.net.spec.dim, dtype=np.float32)
    updates = _round(setup, {})
    updates[2] = Update(2, 0, updates[2].delta, 0)

    # Execute
    done = aggregate_round(setup, setup.strategy.init(params), params, 0, 1, updates)

    # Assert: every update's values were read before the mean
    assert len(reads) == len(updates) and done.n_rejected == 0


def test_the_screened_mark_is_the_screens_alone_and_lost_when_an_update_changes():
    from dataclasses import replace

    setup = _setup()
    (update, *_) = _round(setup, {})
    marked = screen([update], setup.net.spec.dim).accepted[0]

    assert marked.screened and not update.screened
    assert not replace(marked, delta=np.full_like(update.delta, np.nan)).screened
    with pytest.raises(TypeError):
        Update(0, 0, update.delta, 1, screened=True)


def test_a_rounds_deltas_in_one_buffer_are_stacked_without_a_copy():
    setup = _setup()
    updates = _round(setup, {})

    stack = stack_deltas(updates)
    picked = stack_deltas([updates[0], updates[2]])  # not consecutive: copied

    assert np.shares_memory(stack, updates[0].delta) and not stack.flags.writeable
    np.testing.assert_array_equal(stack[3], updates[3].delta)
    assert not np.shares_memory(picked, updates[0].delta)
    np.testing.assert_array_equal(picked[1], updates[2].delta)


def test_a_weight_capped_to_the_budget_keeps_the_round_from_being_read_again(reads):
    # Prepare: one client claims four times the step budget (it counts as the budget)
    setup = _setup("federation.local_steps=500")
    params = np.zeros(setup.net.spec.dim, dtype=np.float32)
    updates = _round(setup, {})
    updates[1] = Update(1, 0, updates[1].delta, 2000)

    # Execute
    done = aggregate_round(setup, setup.strategy.init(params), params, 0, 1, updates)

    # Assert: the candidate judged the round; the capped update's values were not read again
    read = len(reads)  # before screening first below reads them
    expected, _ = _screen_first(setup, params, updates)
    assert read == 0 and done.params.tobytes() == expected.tobytes()

"""Closing a round (``aggregate_round``): what is screened, when, and that screening late changes
nothing but the time it takes."""

import numpy as np
import pytest

from fedrl.core.aggregation import screen
from fedrl.core.update import Update, stack_deltas
from fedrl.experiment.aggregation import _aggregated, aggregate_round
from fedrl.experiment.loading import apply_override, parse_config
from fedrl.experiment.setup import Setup


def _setup(*overrides) -> Setup:
    data = {"learner": {"hidden": [8]}, "federation": {"n_clients": 6}}
    for assignment in overrides:
        data = apply_override(data, assignment)
    return Setup(parse_config(data))


def _round(setup: Setup, poison: dict[int, float]) -> list[Update]:
    """Six clients' updates, rows of one array as a simulated shard makes them; ``poison`` sets one
    value of some clients' deltas (NaN, Inf)."""
    rng = np.random.default_rng(0)
    dim = setup.net.spec.dim
    deltas = rng.normal(0, 0.01, (6, dim)).astype(np.float32)
    controls = rng.normal(0, 0.01, (6, dim)).astype(np.float32) if setup.strategy.uses_control_variates else None
    for client, value in poison.items():
        deltas[client, 3] = value
    return [
        Update(c, 0, deltas[c], int(s), control_delta=None if controls is None else controls[c])
        for c, s in enumerate(rng.integers(100, 1000, 6))
    ]


def _screen_first(setup: Setup, params, updates):
    """The round as every runtime closed it before: screen, then the strategy."""
    screened = screen(updates, setup.net.spec.dim)
    done = _aggregated(setup, setup.strategy.init(params), params, 0, 1, screened.accepted)
    return done.params, len(screened.rejected)


@pytest.mark.parametrize(
    "strategy",
    ["fedavg", "fedavgm", "fedadam", "scaffold", "strategy.robust.norm_bound=0.05", "strategy.robust.rule=median"],
)
@pytest.mark.parametrize("poison", [{}, {2: np.nan}, {1: np.inf, 4: -np.inf}], ids=["finite", "nan", "inf"])
def test_a_round_makes_the_screen_first_candidate_bit_for_bit_and_counts_what_it_refused(strategy, poison):
    # Prepare
    override = strategy if "=" in strategy else f"strategy.name={strategy}"
    setup = _setup(override, *(["strategy.n_clients=6"] if strategy == "scaffold" else []))
    params = np.zeros(setup.net.spec.dim, dtype=np.float32)
    updates = _round(setup, poison)

    # Execute
    done = aggregate_round(setup, setup.strategy.init(params), params, 0, 1, updates)

    # Assert: the same candidate as screening first, with the poisoned updates refused and counted
    expected, rejected = _screen_first(setup, params, updates)
    assert done.params.tobytes() == expected.tobytes() and np.isfinite(done.params).all()
    assert done.n_rejected == rejected == len(poison)


def test_a_rounds_deltas_in_one_buffer_are_stacked_without_a_copy():
    setup = _setup()
    updates = _round(setup, {})

    stack = stack_deltas(updates)
    picked = stack_deltas([updates[0], updates[2]])  # not consecutive: copied

    assert np.shares_memory(stack, updates[0].delta) and not stack.flags.writeable
    np.testing.assert_array_equal(stack[3], updates[3].delta)
    assert not np.shares_memory(picked, updates[0].delta)
    np.testing.assert_array_equal(picked[1], updates[2].delta)

"""The numpy runtime acts as the experiment's torch network does, one observation or a batch at a time."""

import threading

import numpy as np
import pytest

from fedrl.policy.card import ObsNorm, PolicyCard, digest
from fedrl.policy.runtime import Policy


def assert_same_actions(case, actions, actor_out):
    """Discrete: the very same indices; continuous: the same clipped means, to float32 rounding."""
    np.testing.assert_allclose(actor_out, case.actor_out, rtol=1e-6, atol=1e-5)
    if case.card.action.kind == "discrete":
        np.testing.assert_array_equal(actions, case.action)
    else:
        np.testing.assert_allclose(actions, case.action, rtol=1e-6, atol=1e-5)


def test_a_batch_matches_the_torch_network(case):
    policy = Policy(case.card, case.params)

    assert_same_actions(case, policy.predict(case.obs), policy.logits_or_mean(case.obs))


def test_one_observation_at_a_time_matches_the_torch_network(case):
    policy = Policy(case.card, case.params)

    actions = [policy.predict(obs) for obs in case.obs[:1000]]

    if case.card.action.kind == "discrete":
        assert all(type(a) is int for a in actions)
        np.testing.assert_array_equal(actions, case.action[:1000])
    else:
        assert {(a.shape, a.dtype) for a in actions} == {((1,), np.dtype(np.float32))}
        np.testing.assert_allclose(np.stack(actions), case.action[:1000], rtol=1e-6, atol=1e-5)


def test_the_pendulum_case_exercises_clipping(cases):
    means = cases["pendulum"].actor_out
    assert 0.2 < (np.abs(means) > 2.0).mean() < 0.8


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 1e300 is too large for float32
def test_observations_of_another_shape_or_not_finite_are_refused(cases):
    policy = Policy(cases["cartpole"].card, cases["cartpole"].params)

    for bad in (np.zeros(3), np.zeros((2, 5)), np.zeros((1, 2, 4)), 1.0):
        with pytest.raises(ValueError, match=r"expected an observation of shape \(4,\) or a batch of shape \(N, 4\)"):
            policy.predict(bad)
    for value in (np.nan, np.inf, -np.inf, 1e300):
        obs = np.array([0.0, value, 0.0, 0.0])
        with pytest.raises(ValueError, match="NaN or infinite"):
            policy.predict(obs)
        with pytest.raises(ValueError, match="NaN or infinite"):
            policy.predict(obs[None])


def test_a_returned_action_is_not_overwritten_by_the_next_call(cases):
    case = cases["pendulum"]
    policy = Policy(case.card, case.params)

    first = policy.predict(case.obs[0])
    policy.predict(case.obs[1])

    np.testing.assert_allclose(first, case.action[0], rtol=1e-6, atol=1e-5)


def test_threads_acting_at_once_each_get_their_own_answers(cases):
    case = cases["cartpole"]
    policy = Policy(case.card, case.params)
    results = {}

    def act(k):
        results[k] = [policy.predict(obs) for obs in case.obs[k::4]]

    threads = [threading.Thread(target=act, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for k in range(4):
        np.testing.assert_array_equal(results[k], case.action[k::4])


def test_sampling_follows_the_softmax_of_the_logits(cases):
    case = cases["cartpole"]
    policy = Policy(case.card, case.params)
    obs = case.obs[np.argmin(np.abs(case.actor_out[:, 0] - case.actor_out[:, 1] - 0.5))]  # p(0) = sigmoid(0.5)
    rng = np.random.default_rng(0)

    draws = [policy.predict(obs, deterministic=False, rng=rng) for _ in range(4000)]
    batch = policy.predict(np.repeat(obs[None], 4000, 0), deterministic=False, rng=rng)

    p0 = 1 / (1 + np.exp(-0.5))
    assert abs(draws.count(0) / 4000 - p0) < 0.03 and abs((batch == 0).mean() - p0) < 0.03
    assert {type(a) for a in draws} == {int} and set(draws) == {0, 1}


def test_sampling_a_gaussian_adds_its_noise_then_clips(cases):
    case = cases["pendulum"]
    params = case.params.copy()
    params[case.card.slices()["actor.log_std"][0]] = np.log(0.5)
    policy = Policy(case.card.with_params(params), params)
    inside = np.argmin(np.abs(case.actor_out[:, 0]))  # a mean near 0: 4 standard deviations from the bound

    batch = np.repeat(case.obs[inside][None], 4000, 0)
    draws = policy.predict(batch, deterministic=False, rng=np.random.default_rng(0))

    assert abs(draws.std() - 0.5) < 0.03 and abs(draws.mean() - case.actor_out[inside, 0]) < 0.03
    assert np.abs(policy.predict(case.obs, deterministic=False)).max() <= 2.0


def test_a_q_network_stays_greedy_when_asked_to_sample(cases):
    case = cases["dqn"]
    policy = Policy(case.card, case.params)

    np.testing.assert_array_equal(policy.predict(case.obs, deterministic=False), case.action)


def test_observations_are_normalised_and_clipped_before_the_network(cases):
    case = cases["cartpole"]
    mean, var = np.array([0.5, -1.0, 2.0, 0.0]), np.array([4.0, 0.25, 1.0, 9.0])
    card = PolicyCard(**{**vars(case.card), "obs_norm": ObsNorm(tuple(mean), tuple(var), clip=1.5)})
    obs = case.obs[:100].astype(np.float64)

    outputs = Policy(card, case.params).logits_or_mean(obs)

    normalised = np.clip((obs - mean) / np.sqrt(var + 1e-8), -1.5, 1.5).astype(np.float32)
    np.testing.assert_allclose(outputs, Policy(case.card, case.params).logits_or_mean(normalised), atol=1e-5)
    assert [Policy(card, case.params).predict(o) for o in obs] == list(outputs.argmax(1))


def test_parameters_that_do_not_fit_the_card_are_refused(cases):
    case = cases["pendulum"]

    with pytest.raises(ValueError, match="do not match the card's digest"):
        Policy(case.card, case.params + 1)
    with pytest.raises(ValueError, match=f"holds {case.card.dim} parameters, the vector has {case.card.dim - 1}"):
        Policy(case.card, case.params[:-1])
    layout = tuple((name, shape) for name, shape in case.card.layout if name != "actor.log_std")
    card = PolicyCard(**{**vars(case.card), "layout": (*layout, ("pad", (1,))), "digest": ""})
    with pytest.raises(ValueError, match=r"the layout has no actor.log_std \(shape \(1,\)\)"):
        Policy(card, case.params)


def test_the_policy_keeps_its_own_read_only_copy(cases):
    case = cases["cartpole"]
    params = case.params.copy()
    policy = Policy(case.card, params)

    params[:] = 0

    assert digest(policy.params) == case.card.digest and not policy.params.flags.writeable
    assert policy.version == 7 and policy.card is case.card
    assert repr(policy).startswith("Policy(env='cartpole', version=7, obs_dim=4, action=discrete(2), digest=sha256:")

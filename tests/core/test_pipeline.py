import math

import numpy as np
import pytest
from pydantic import ValidationError

from fedrl.core.aggregation import clip_to_norm
from fedrl.core.compress import decode, decompress
from fedrl.core.pipeline import (
    ClientMessage,
    PipelineConfig,
    PipelineState,
    after_sending,
    budget_problem,
    central_mean,
    client_message,
    decode_update,
    init_pipeline_state,
    spent_epsilon,
)
from fedrl.core.privacy import epsilon


def _config(**sections) -> PipelineConfig:
    return PipelineConfig.model_validate(sections)


def _central(z=1.0, clip=1.0, **dp) -> PipelineConfig:
    return _config(clip_norm=clip, dp={"mode": "central", "noise_multiplier": z, **dp})


def test_the_default_pipeline_sends_the_update_exactly():
    # Prepare
    delta = np.random.default_rng(0).normal(size=50).astype(np.float32)
    config = PipelineConfig()
    # Execute
    message = client_message(config, delta, None, np.random.default_rng(1))
    # Assert: 24-byte header + 50 float32s, decoded bit for bit
    assert config.applies_nothing and message.residual is None
    assert len(message.payload) == 24 + 200
    np.testing.assert_array_equal(decode_update(message.payload, 50), delta)


def test_updates_are_clipped_to_the_clip_norm():
    message = client_message(
        _config(clip_norm=1.0), np.array([3.0, 4.0], dtype=np.float32), None, np.random.default_rng(0)
    )
    np.testing.assert_allclose(decode_update(message.payload, 2), [0.6, 0.8], rtol=1e-6)


def test_local_dp_adds_noise_of_std_z_times_c_to_the_clipped_update():
    # Prepare: a zero update, C = 2, z = 0.25 -> std 0.5 on each of 200k coordinates
    config = _config(clip_norm=2.0, dp={"mode": "local", "noise_multiplier": 0.25})
    # Execute
    sent = decode_update(
        client_message(config, np.zeros(200_000, np.float32), None, np.random.default_rng(0)).payload, 200_000
    )
    # Assert
    assert config.noise_std == 0.5
    assert abs(sent.std() - 0.5) < 0.005


def test_central_dp_keeps_every_message_within_the_clip_norm_despite_feedback():
    # Prepare: 8-bit top-k with error feedback and a residual of norm 10, far past C = 1
    config = _config(
        clip_norm=1.0,
        compression={"sparsify": "topk", "ratio": 0.5, "bits": 8, "error_feedback": True},
        dp={"mode": "central", "noise_multiplier": 1.0},
    )
    rng, residual = np.random.default_rng(0), np.full(25, 2.0, dtype=np.float32)
    owed, sent = residual.copy(), np.zeros(25)
    for _ in range(10):
        # Execute
        delta = rng.normal(size=25).astype(np.float32)
        message = client_message(config, delta, residual, rng)
        residual = message.residual
        owed += clip_to_norm(delta, 1.0)
        sent += decompress(decode(message.payload))
        # Assert: every message holds the sensitivity the server's noise is calibrated to (it was scaled to it)
        assert np.linalg.norm(decompress(decode(message.payload))) == pytest.approx(1.0, rel=1e-6)
    # what the scaling took away still waits on the client
    np.testing.assert_allclose(sent + residual, owed, atol=1e-5)


def test_central_mean_is_the_noised_sum_over_the_expected_count():
    # Prepare: three clients send ones; 6 expected (q N), z C = 0.3
    stack = np.ones((3, 100_000), dtype=np.float32)
    # Execute
    mean = central_mean(_central(z=0.3), stack, 6.0, np.random.default_rng(0))
    # Assert: (3 + N(0, 0.3^2)) / 6 -> mean 0.5, std 0.05
    assert abs(mean.mean() - 0.5) < 0.001 and abs(mean.std() - 0.05) < 0.001


def test_central_mean_of_no_clients_is_still_noise():
    mean = central_mean(_central(z=1.0, clip=2.0), np.zeros((0, 100_000), np.float32), 4.0, np.random.default_rng(0))
    assert abs(mean.std() - 0.5) < 0.005  # 2 / 4


def test_decoding_refuses_an_update_of_the_wrong_size():
    payload = client_message(PipelineConfig(), np.zeros(3, np.float32), None, np.random.default_rng(0)).payload
    assert decode_update(payload, 3).shape == (3,)
    with pytest.raises(ValueError, match="it stands for 3 parameters, the model has 4"):
        decode_update(payload, 4)


def test_client_state_keeps_residuals_and_participation():
    # Prepare
    config = _config(
        clip_norm=1.0,
        compression={"sparsify": "topk", "ratio": 0.5, "error_feedback": True},
        dp={"mode": "local", "noise_multiplier": 1.0},
    )
    state = init_pipeline_state(config, n_clients=4, dim=2)
    messages = [
        ClientMessage(b"", np.array([1.0, 2.0], np.float32)),
        ClientMessage(b"", np.array([3.0, 4.0], np.float32)),
    ]
    # Execute
    after = after_sending(state, np.array([1, 3]), messages)
    # Assert: the senders' rows replaced, the input untouched
    np.testing.assert_array_equal(after.residual, [[0, 0], [1, 2], [0, 0], [3, 4]])
    np.testing.assert_array_equal(after.participation, [0, 1, 0, 1])
    assert not state.participation.any() and after.most_participation == 1
    assert init_pipeline_state(PipelineConfig(), 4, 2) == PipelineState()


def test_spent_epsilon_per_mode():
    local = _config(clip_norm=1.0, dp={"mode": "local", "noise_multiplier": 2.0})
    assert spent_epsilon(PipelineConfig(), 0.1, 10) == math.inf
    assert spent_epsilon(_central(), 0.1, 10) == epsilon(1.0, 0.1, 10, 1e-5)
    # local: the client that took part most (7 rounds), each a full Gaussian mechanism
    assert spent_epsilon(local, 0.1, 10, most_participation=7) == epsilon(2.0, 1.0, 7, 1e-5)


def test_budget_problem_names_the_rounds_that_fit():
    assert budget_problem(_central(target_epsilon=8.0), 0.1, 100) is None
    problem = budget_problem(_central(target_epsilon=8.0), 0.1, 200)
    assert "200 rounds" in problem and "at most 102 rounds fit" in problem
    assert budget_problem(_central(), 0.1, 10_000) is None  # no target


def test_dp_needs_a_clip_norm():
    with pytest.raises(ValidationError, match="needs clip_norm"):
        _config(dp={"mode": "central", "noise_multiplier": 1.0})

"""The simulator's records: an asynchronous buffer checkpointed by an older fedrl still resumes."""

import numpy as np

from fedrl.sim.state import InFlight, slotted_buffer


def test_a_buffer_checkpointed_one_row_per_client_moves_into_slots_in_arrival_order():
    delta = np.arange(8, dtype=np.float32).reshape(4, 2)
    old = {
        "inflight.busy_until": np.zeros(4),
        "inflight.buffered": np.array([0, 2, 1, 0]),  # client 2 arrived first, then client 1
        "inflight.buffer_delta": delta,
        "inflight.buffer_base": np.array([0, 5, 4, 0]),
        "inflight.buffer_steps": np.array([0, 64, 32, 0]),
        "inflight.buffer_stats.obs.count": np.array([0.0, 64.0, 32.0, 0.0]),
    }
    new = slotted_buffer(old, "inflight.")
    assert "inflight.buffered" not in new and new["inflight.busy_until"] is old["inflight.busy_until"]
    np.testing.assert_array_equal(new["inflight.buffer_client"], [2, 1])
    np.testing.assert_array_equal(new["inflight.buffer_delta"], [delta[2], delta[1]])
    np.testing.assert_array_equal(new["inflight.buffer_base"], [4, 5])
    np.testing.assert_array_equal(new["inflight.buffer_steps"], [32, 64])
    np.testing.assert_array_equal(new["inflight.buffer_stats.obs.count"], [32.0, 64.0])  # with its update


def test_a_checkpoint_with_slots_is_left_as_it_is():
    arrays = {"inflight.buffer_client": np.array([3, -1])}
    assert slotted_buffer(arrays, "inflight.") is arrays


def test_a_buffer_grows_to_the_slots_asked_for_and_never_below_what_it_holds():
    fl = InFlight.empty(3, 2, 2, 0.0)
    fl.buffer_client[:] = [1, 0]
    fl.buffer_delta[:] = [[1, 1], [2, 2]]
    grown = fl.with_slots(4)
    np.testing.assert_array_equal(grown.buffer_client, [1, 0, -1, -1])
    np.testing.assert_array_equal(grown.buffer_delta[:2], fl.buffer_delta)
    assert fl.with_slots(1) is fl and fl.with_slots(1).buffered == 2  # room for the two it holds
    assert InFlight.empty(3, 0, 2, 0.0).with_slots(3).buffered == 0  # an old checkpoint that buffered none

"""The server's store: a round's updates come back from their files in one round buffer."""

import numpy as np

from fedrl.core.update import stack_deltas
from fedrl.server.store import Store, update_file_name
from fedrl.wire.records import Submission

DIM = 6


def _stored_round(tmp_path, n: int, control: bool = False) -> tuple[Store, list[Submission]]:
    store = Store(tmp_path / "state")
    rng = np.random.default_rng(0)
    sent = []
    for i in range(n):
        store.add_client(f"c{i}", 0.0)
        delta = rng.normal(size=DIM).astype(np.float32)
        controls = rng.normal(size=DIM).astype(np.float32) if control else None
        submission = Submission(f"u{i}", f"c{i}", 1, 0, delta, 10 + i, control_delta=controls)
        store.write_update_file(submission)
        store.record_update(submission, 1, "digest", 1.0)
        sent.append(submission)
    return store, sent


def test_a_rounds_updates_are_read_into_one_buffer_in_arrival_order(tmp_path):
    store, sent = _stored_round(tmp_path, 4, control=True)

    stored = store.read_updates(store.round_records(1), DIM)

    assert [u.update_id for u in stored] == ["u0", "u1", "u2", "u3"]
    for u, s in zip(stored, sent):
        assert u.delta.tobytes() == s.delta.tobytes() and u.control_delta.tobytes() == s.control_delta.tobytes()
    stack = stack_deltas(stored)  # what aggregation reads: a view of the buffer, no copy
    assert np.shares_memory(stack, stored[0].delta) and np.shares_memory(stack, stored[3].delta)
    store.close()


def test_a_file_of_another_size_than_its_record_is_read_as_it_is_for_the_screen_to_refuse(tmp_path):
    store, sent = _stored_round(tmp_path, 3)
    path = store.path / "updates" / update_file_name("u1")
    path.write_bytes(path.read_bytes()[:-4])  # one float short

    stored = store.read_updates(store.round_records(1), DIM)

    assert stored[1].delta.shape == (DIM - 1,)
    np.testing.assert_array_equal(stored[1].delta, sent[1].delta[:-1])
    assert stored[0].delta.tobytes() == sent[0].delta.tobytes() and stored[2].delta.shape == (DIM,)
    store.close()

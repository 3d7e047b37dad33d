"""The server's store: a round's updates come back from their files in one round buffer."""

import threading
import time

import numpy as np
import pytest

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


def test_records_arriving_together_share_an_fsync_that_began_after_each_was_written(tmp_path):
    # Prepare: the log's fsync is slow, and notes how many records were written when it began
    store = Store(tmp_path / "state")
    group = store._records
    began_with: list[int] = []
    real_sync = group._sync

    def slow_sync() -> None:
        began_with.append(group._written)
        time.sleep(0.02)
        real_sync()

    group._sync = slow_sync
    tickets, done = [], []
    lock = threading.Lock()

    def upload(i: int) -> None:
        with lock:  # the coordinator's lock: records are committed one at a time
            store.add_client(f"c{i}", 0.0)
            submission = Submission(f"u{i}", f"c{i}", 1, 0, np.zeros(DIM, np.float32), 10)
            ticket = store.record_update(submission, 1, "digest", 1.0)
            tickets.append(ticket)
        store.sync_records(ticket)
        done.append((ticket, len(began_with)))

    # Execute: 24 uploads at once
    threads = [threading.Thread(target=upload, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Assert: every record waited for an fsync that began once it was written; far fewer fsyncs than records
    assert sorted(tickets) == list(range(1, 25))
    for ticket, syncs_seen in done:
        assert any(written >= ticket for written in began_with[:syncs_seen])
    assert len(began_with) < 12
    assert len(store.round_records(1)) == 24
    store.close()


def test_without_fsync_durability_records_need_no_sync(tmp_path):
    store = Store(tmp_path / "state", durability="process")
    store._records._sync = lambda: pytest.fail("durability process fsyncs nothing")
    store.add_client("c0", 0.0)

    ticket = store.record_update(Submission("u0", "c0", 1, 0, np.zeros(DIM, np.float32), 10), 1, "digest", 1.0)
    store.sync_records(ticket)

    assert [r["update_id"] for r in store.round_records(1)] == ["u0"]
    store.close()

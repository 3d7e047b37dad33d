"""The device's record of what it did: fresh experience of one version, taken for learning and
counted used only once the update made from it is on disk; bounded; saved and restored."""

import numpy as np

from fedrl.edge.recorder import Recorder


def _add(recorder, n, tag, start=0, done_every=0):
    for t in range(start, start + n):
        obs = np.full(2, t, np.float32)
        done = bool(done_every) and (t + 1) % done_every == 0
        recorder.add(obs, t % 2, 1.0, done, False, obs + 1, tag)


def test_fresh_experience_is_the_latest_run_of_one_version_and_stays_fresh_until_marked_used():
    recorder = Recorder(100, 2, (), np.int64)
    _add(recorder, 10, tag=0)
    _add(recorder, 6, tag=1, start=10, done_every=3)

    assert recorder.fresh(0) == (0, 0)  # another version acts now: version 0's experience is not fresh
    assert recorder.fresh(1) == (6, 2)
    experience, upto = recorder.take(1, steps=4)
    assert experience.obs[:, 0].tolist() == [12, 13, 14, 15] and recorder.fresh(1) == (6, 2)

    recorder.mark_used(upto)

    assert recorder.fresh(1) == (0, 0)
    _add(recorder, 3, tag=1, start=16)
    assert recorder.fresh(1) == (3, 0)


def test_a_personal_or_greedy_policys_steps_never_count_as_the_global_versions():
    recorder = Recorder(100, 2, (), np.int64)
    _add(recorder, 5, tag=3)
    _add(recorder, 5, tag=-4, start=5)  # the personal copy (or a greedy evaluation) of version 3
    _add(recorder, 2, tag=3, start=10)

    assert recorder.fresh(3) == (2, 0)  # only the run since the global version acts again


def test_the_ring_keeps_the_latest_transitions_and_a_restore_takes_them_up(tmp_path):
    recorder = Recorder(8, 2, (), np.int64)
    _add(recorder, 20, tag=0)
    assert recorder.fresh(0) == (8, 0)
    assert recorder.take(0)[0].obs[:, 0].tolist() == list(range(12, 20))
    recorder.save(tmp_path)

    again = Recorder(8, 2, (), np.int64)
    assert again.restore(tmp_path)
    assert again.total == 20 and again.take(0)[0].obs.tobytes() == recorder.take(0)[0].obs.tobytes()
    assert not Recorder(16, 2, (), np.int64).restore(tmp_path)  # another shape: not taken up

"""The pending update on disk: written whole, survives a crash and a new process, read back exactly."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from fedrl.wire.codec import describe
from fedrl.wire.pending import PendingStore, new_submission


def submission(seed=0, control=False):
    rng = np.random.default_rng(seed)
    delta = rng.normal(size=1000).astype(np.float32)
    control_delta = rng.normal(size=1000).astype(np.float32) if control else None
    return new_submission("dev-7", 3, 2, delta, 512, {"loss": 0.25, "episodes": 9.0}, control_delta)


def test_a_new_update_has_its_own_id_and_the_wire_digest_of_its_delta():
    a, b = submission(), submission()
    assert a.update_id != b.update_id
    assert a.digest == describe(a.delta).sha256 == a.sent_digest


@pytest.mark.parametrize("control", [False, True])
def test_load_returns_exactly_what_was_saved(tmp_path, control):
    saved = submission(control=control)
    PendingStore(tmp_path).save(saved)

    loaded = PendingStore(tmp_path).load()

    assert (loaded.update_id, loaded.client, loaded.round, loaded.base_version) == (saved.update_id, "dev-7", 3, 2)
    assert (loaded.env_steps, loaded.metrics, loaded.digest) == (512, saved.metrics, saved.digest)
    assert loaded.delta.tobytes() == saved.delta.tobytes()
    if control:
        assert loaded.control_delta.tobytes() == saved.control_delta.tobytes()
    else:
        assert loaded.control_delta is None


def test_nothing_pending_loads_as_none_and_clear_forgets(tmp_path):
    store = PendingStore(tmp_path)
    assert store.load() is None
    store.save(submission())
    store.clear()
    assert store.load() is None and not store.path.exists()
    store.clear()  # clearing twice is fine: an ack may repeat


def test_a_crash_mid_write_leaves_the_previous_update_and_its_tmp_file_is_ignored(tmp_path):
    store = PendingStore(tmp_path)
    first = submission(seed=1)
    store.save(first)
    # A write cut short by a power loss: only part of the temporary file reached the disk.
    store.path.with_name(store.path.name + ".tmp").write_bytes(store.path.read_bytes()[:100])

    assert store.load().update_id == first.update_id

    second = submission(seed=2)
    store.save(second)
    assert store.load().update_id == second.update_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pending.safetensors"]


def test_a_new_process_after_a_reboot_reads_the_same_update_id_and_bytes(tmp_path):
    saved = submission(control=True)
    PendingStore(tmp_path).save(saved)
    script = (
        "import json, sys; from fedrl.wire.pending import PendingStore; "
        "s = PendingStore(sys.argv[1]).load(); "
        "print(json.dumps([s.update_id, s.delta.tobytes().hex(), s.control_delta.tobytes().hex()]))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)

    update_id, delta_hex, control_hex = json.loads(out.stdout)
    assert update_id == saved.update_id
    assert bytes.fromhex(delta_hex) == saved.delta.tobytes()
    assert bytes.fromhex(control_hex) == saved.control_delta.tobytes()


def test_a_file_changed_on_disk_is_refused_rather_than_sent(tmp_path):
    store = PendingStore(tmp_path)
    store.save(submission())
    data = bytearray(store.path.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last float of the delta
    store.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its digest"):
        store.load()

    store.path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable record"):
        store.load()


def test_an_encoded_update_is_kept_as_its_payload_and_a_changed_payload_is_refused(tmp_path):
    payload = bytes(range(256)) * 3
    saved = new_submission("dev-7", 3, 2, np.ones(1000, np.float32), 512, {"loss": 0.25}, payload=payload)
    store = PendingStore(tmp_path)
    store.save(saved)

    loaded = store.load()

    assert saved.delta is None and saved.digest == hashlib.sha256(payload).hexdigest()
    assert (loaded.update_id, loaded.payload, loaded.delta, loaded.digest) == (
        saved.update_id,
        payload,
        None,
        saved.digest,
    )
    data = bytearray(store.path.read_bytes())
    data[data.index(payload) + 10] ^= 0xFF
    store.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="the payload does not match its digest"):
        store.load()


def test_the_statistics_sent_beside_a_pending_update_survive_a_restart(tmp_path):
    from fedrl.core.moments import Moments
    from fedrl.core.normstats import NormStats

    norm = NormStats(Moments.of(np.random.default_rng(0).normal(size=(20, 3))), None)
    submission = new_submission("dev", 2, 1, np.ones(5, dtype=np.float32), 64, {}, norm=norm)
    PendingStore(tmp_path).save(submission)

    loaded = PendingStore(tmp_path).load()

    assert loaded.norm.returns is None
    assert loaded.norm.obs.count == 20 and loaded.norm.obs.mean.tobytes() == norm.obs.mean.tobytes()

"""The update an edge agent has trained but the server has not yet acknowledged, kept on disk.

The agent writes the update here before its first upload attempt and deletes it only after
the server's ``Ack``, so a crash, a kill -9 or a device reboot mid-upload loses nothing: the
next start loads it and pushes it first. Its ``update_id`` is chosen once, when the update is
made, and travels with it, so the server recognises a resubmission and returns the original
acknowledgement instead of counting the update twice.

One file, ``STATE_DIR/pending.safetensors``: the delta (and SCAFFOLD's control delta) as
arrays, everything else as the JSON header (``fedrl.wire.disk``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrl.wire import disk
from fedrl.wire.codec import describe
from fedrl.wire.records import Submission

FILE = "pending.safetensors"


def delta_digest(delta: np.ndarray) -> str:
    """The sha256 hex of a delta's wire bytes, as the server checks it."""
    return describe(delta).sha256


def new_submission(
    client: str, round_: int, base_version: int, delta: np.ndarray, env_steps: int,
    metrics: dict[str, float], control_delta: np.ndarray | None = None,
) -> Submission:
    """A fresh update with its own random ``update_id`` and the digest of its delta."""
    delta = np.asarray(delta, dtype=np.float32)
    return Submission(
        str(uuid.uuid4()), client, round_, base_version, delta, int(env_steps),
        dict(metrics), control_delta, delta_digest(delta),
    )


@dataclass(frozen=True)
class PendingStore:
    """The pending update of the agent whose state lives in ``state_dir``."""

    state_dir: Path

    @property
    def path(self) -> Path:
        """The one file that holds the pending update, when there is one."""
        return Path(self.state_dir) / FILE

    def save(self, submission: Submission) -> None:
        """Write ``submission`` durably, replacing any earlier pending update."""
        arrays = {"delta": submission.delta}
        if submission.control_delta is not None:
            arrays["control_delta"] = submission.control_delta
        header = {
            "update_id": submission.update_id, "client": submission.client, "round": submission.round,
            "base_version": submission.base_version, "env_steps": submission.env_steps,
            "metrics": submission.metrics, "digest": submission.digest,
        }
        disk.save_record(self.path, arrays, header)

    def load(self) -> Submission | None:
        """The pending update, or None; ``ValueError`` when the file is unreadable or its delta
        no longer matches its digest (the bytes changed on disk)."""
        record = disk.load_record(self.path)
        if record is None:
            return None
        arrays, h = record
        try:
            submission = Submission(
                h["update_id"], h["client"], int(h["round"]), int(h["base_version"]), arrays["delta"],
                int(h["env_steps"]), dict(h["metrics"]), arrays.get("control_delta"), h["digest"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: not a pending update ({type(exc).__name__}: {exc})") from None
        if delta_digest(submission.delta) != submission.digest:
            raise ValueError(f"{self.path}: the delta does not match its digest {submission.digest}")
        return submission

    def clear(self) -> None:
        """Forget the pending update (after its ``Ack``, or when the server refused it)."""
        disk.remove(self.path)

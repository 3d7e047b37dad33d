"""An update made but not yet acknowledged by the server it goes to, kept on disk: an edge agent's
(``pending.safetensors``), or the one a regional aggregator forwards to its parent
(``fedrl.server.region``).

The agent writes the update here before its first upload attempt and deletes it only after
the server's ``Ack``, so a crash, a kill -9 or a device reboot mid-upload loses nothing: the
next start loads it and pushes it first. Its ``update_id`` is chosen once, when the update is
made, and travels with it, so the server recognises a resubmission and returns the original
acknowledgement instead of counting the update twice.

One file (``STATE_DIR/pending.safetensors`` on a device): the delta -- or, with an update pipeline, the
payload that stands for it, as uint8 --, SCAFFOLD's control delta and the normalisation
statistics sent beside it as arrays, everything else as the JSON header (``fedrl.wire.disk``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedrl.core.normstats import NormStats
from fedrl.core.rows import stored_record, to_arrays
from fedrl.wire import disk
from fedrl.wire.records import Submission

FILE = "pending.safetensors"
NORM_PREFIX = "norm."  # the statistics' arrays in the file


def new_submission(
    client: str,
    round_: int,
    base_version: int,
    delta: np.ndarray,
    env_steps: int,
    metrics: dict[str, float],
    control_delta: np.ndarray | None = None,
    payload: bytes | None = None,
    norm: NormStats | None = None,
) -> Submission:
    """A fresh update with its own random ``update_id`` and the digest of what is sent: the
    ``payload`` (the update pipeline's encoding of ``delta``) when given, else ``delta`` itself;
    ``norm``: the statistics of what the client observed, sent beside it."""
    submission = Submission(
        str(uuid.uuid4()),
        client,
        round_,
        base_version,
        None if payload is not None else np.asarray(delta, dtype=np.float32),
        int(env_steps),
        dict(metrics),
        control_delta,
        payload=payload,
        norm=norm,
    )
    return replace(submission, digest=submission.sent_digest)


@dataclass(frozen=True)
class PendingStore:
    """The pending update of the agent (or region) whose state lives in ``state_dir``, in ``name``."""

    state_dir: Path
    name: str = FILE

    @property
    def path(self) -> Path:
        """The one file that holds the pending update, when there is one."""
        return Path(self.state_dir) / self.name

    def save(self, submission: Submission) -> None:
        """Write ``submission`` durably, replacing any earlier pending update."""
        payload = submission.payload
        arrays = {"delta": submission.delta} if payload is None else {"payload": np.frombuffer(payload, np.uint8)}
        if submission.control_delta is not None:
            arrays["control_delta"] = submission.control_delta
        if submission.norm is not None:
            arrays |= to_arrays(submission.norm, NORM_PREFIX)
        header = {
            "update_id": submission.update_id,
            "client": submission.client,
            "round": submission.round,
            "base_version": submission.base_version,
            "env_steps": submission.env_steps,
            "metrics": submission.metrics,
            "digest": submission.digest,
            "clients": submission.clients,
        }
        disk.save_record(self.path, arrays, header)

    def load(self) -> Submission | None:
        """The pending update, or None; ``ValueError`` when the file is unreadable or its delta
        (or payload) no longer matches its digest (the bytes changed on disk)."""
        record = disk.load_record(self.path)
        if record is None:
            return None
        arrays, h = record
        payload = arrays["payload"].tobytes() if "payload" in arrays else None
        try:
            submission = Submission(
                h["update_id"],
                h["client"],
                int(h["round"]),
                int(h["base_version"]),
                None if payload else arrays["delta"],
                int(h["env_steps"]),
                dict(h["metrics"]),
                arrays.get("control_delta"),
                h["digest"],
                payload,
                stored_record(NormStats, arrays, NORM_PREFIX),
                int(h.get("clients", 1)),  # written before regions existed: one device's
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: not a pending update ({type(exc).__name__}: {exc})") from None
        if submission.sent_digest != submission.digest:
            what = "payload" if payload else "delta"
            raise ValueError(f"{self.path}: the {what} does not match its digest {submission.digest}")
        return submission

    def clear(self) -> None:
        """Forget the pending update (after its ``Ack``, or when the server refused it)."""
        disk.remove(self.path)

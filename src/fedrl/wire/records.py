"""The records server and edge agents exchange, whatever the transport, and the one error.

Transports (gRPC, MQTT, the in-process driver of the tests) translate their own messages into
these records and back: the coordinator never sees a socket, and the edge agent's loop never
sees a protocol. Both sides import them from here, so the edge never imports the server. A refused call raises
``Rejected`` with a ``Reason``; each transport maps the reason to its own status (a gRPC status
code, an MQTT error reply) and passes the message on unchanged, so a client always learns what
was wrong.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

import numpy as np

from fedrl.core.normstats import NormStats


class Reason(enum.Enum):
    """Why a call was refused; the value is the matching gRPC status code name."""

    UNAUTHENTICATED = "UNAUTHENTICATED"  # missing or unknown token
    PERMISSION_DENIED = "PERMISSION_DENIED"  # a client acting as another client
    INVALID_ARGUMENT = "INVALID_ARGUMENT"  # malformed update: shape, dtype, NaN/Inf, norm, bytes
    FAILED_PRECONDITION = "FAILED_PRECONDITION"  # stale or unknown base version, round closed
    ALREADY_EXISTS = "ALREADY_EXISTS"  # a second, different update for the same round
    NOT_FOUND = "NOT_FOUND"  # unknown model version or client
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"  # rate limit or size limit
    UNAVAILABLE = "UNAVAILABLE"  # the server cannot take it now (its buffers are full): the caller sends again later


def final_reason(name: str) -> Reason | None:
    """The ``Reason`` a refusal named, when the caller should take it as final; None for a name
    it does not know and for UNAVAILABLE, both of which mean "try again later"."""
    reason = Reason.__members__.get(name)
    return None if reason is Reason.UNAVAILABLE else reason


class Rejected(Exception):
    """A refused call: ``reason`` for the transport's status, ``message`` for the client."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Registration:
    """What a client learns when it registers: who it is and what to train."""

    client: str
    experiment_yaml: str  # the experiment config (env family, learner, budget) every client trains with
    deployed_version: int
    heartbeat_s: float


@dataclass(frozen=True)
class Task:
    """Train from ``base_version`` for ``round``; the update is due ``deadline_s`` from now."""

    round: int
    base_version: int
    deadline_s: float
    server_control: np.ndarray | None = None  # SCAFFOLD's c, else None
    norm: NormStats | None = None  # the base version's normalisation statistics; None when nothing is normalised


@dataclass(frozen=True)
class Wait:
    """Nothing to do now (not sampled, already submitted, round closing); ask again later.
    ``finished``: the run is over (rounds done or target reached); the agent may stop."""

    retry_after_s: float
    reason: str
    finished: bool = False


@dataclass(frozen=True)
class Submission:
    """One update as a transport received it, before validation: its delta travels either as a
    float32 vector or, when the experiment has an update pipeline, as the pipeline's encoding of
    it (``payload``, from ``fedrl.core.pipeline.client_message``), which the server decodes."""

    update_id: str  # chosen by the client, stable across retries: a resubmission is idempotent
    client: str
    round: int
    base_version: int
    delta: np.ndarray | None  # float32 (d,); None when payload carries it
    env_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    control_delta: np.ndarray | None = None
    digest: str = (
        ""  # sha256 hex of the bytes sent for the delta (the payload's, else the vector's), as the client computed it
    )
    payload: bytes | None = (
        None  # the update pipeline's encoded message (fedrl.core.compress's format), instead of delta
    )
    norm: NormStats | None = None  # the statistics of what the client observed this round (unbatched)
    clients: int = 1  # devices' updates it reduces: more than 1 only from a regional aggregator

    @property
    def sent_digest(self) -> str:
        """The sha256 hex of the bytes sent for the delta: the payload, else the float32 vector (little-endian)."""
        sent = self.payload if self.payload is not None else np.ascontiguousarray(self.delta, dtype="<f4").tobytes()
        return hashlib.sha256(sent).hexdigest()

    @property
    def sent_bytes(self) -> int:
        """Bytes the update's vectors take on the wire: the payload (else the float32 delta), the control
        delta and the normalisation statistics (float64 values)."""
        sent = len(self.payload) if self.payload is not None else self.delta.nbytes
        control = self.control_delta.nbytes if self.control_delta is not None else 0
        return sent + control + (self.norm.wire_bytes if self.norm is not None else 0)


@dataclass(frozen=True)
class Ack:
    """The durable acknowledgement of an accepted update (returned again for a resubmission)."""

    update_id: str
    round: int
    accepted_at: float  # server wall-clock seconds when it was stored
    duplicate: bool = False  # True when this repeats an earlier acknowledgement


class SecureStep(enum.IntEnum):
    """A client's steps in a secure-aggregation round, in order (the wire's ``SecAggStep`` values)."""

    ADVERTISE = 1  # its public keys
    SHARE = 2  # its sealed shares
    MASK = 3  # its masked input
    UNMASK = 4  # its shares of the others' secrets


@dataclass(frozen=True)
class SecureReply:
    """The server's answer to one step of a secure-aggregation round (``fedrl.server.secure_round``):
    "ask again after ``retry_after_s``" (> 0), or the next step's input in ``payload`` (``done``
    after the last step). ``client`` is the caller's id in the protocol, ``threshold`` its t."""

    client: int
    retry_after_s: float = 0.0
    payload: bytes = b""
    threshold: int = 0
    done: bool = False

    @property
    def pending(self) -> bool:
        """Whether the step is still collecting: poll again."""
        return self.retry_after_s > 0


@dataclass(frozen=True)
class Model:
    """A stored global version."""

    version: int
    params: np.ndarray  # float32 (d,)
    round: int  # the round that produced it (0 for the initial model)
    eval_return: float | None  # its gate evaluation, None when not evaluated
    norm: NormStats | None = None  # the statistics it normalises with; None when nothing is normalised


@dataclass(frozen=True)
class ClientStatus:
    """One row of ``fedrl fleet status``."""

    client: str
    registered_at: float
    last_seen: float | None
    acting_version: int | None
    updates_accepted: int
    revoked_at: float | None = None  # when its token was revoked; None while valid
    devices: int | None = None  # a regional aggregator: the most devices it stands for; None for a device


@dataclass(frozen=True)
class RoundStatus:
    """One round as the store records it."""

    round: int
    base_version: int
    opened_at: float
    closed_at: float | None
    n_updates: int
    candidate_return: float | None
    promoted: bool | None  # None while open
    new_version: int | None
    uplink_bytes: int = 0  # bytes of the round's accepted updates as sent (payloads, or float32 vectors)
    epsilon: float | None = (
        None  # DP epsilon spent once the round closed (at pipeline.dp.delta); None without DP or while open
    )

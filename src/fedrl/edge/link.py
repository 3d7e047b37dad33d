"""What the edge agent needs from a transport: six calls and three kinds of failure.

The agent's loop (``fedrl.edge.agent``) is written against ``Link`` only; ``GrpcLink`` and
``MqttLink`` implement it. A call either returns a record from ``fedrl.wire.records``, raises
``Unreachable`` (no answer: the server is down, restarting or the network is gone, or it asked
for the call again later, UNAVAILABLE -- the agent backs off and retries, forever) or raises
``Rejected`` (the server answered no, and said why -- retrying the same call will not help).
``Untrusted`` means the server could not prove who it is: the agent stops rather than retry,
since only a change of its settings can fix that.
"""

from __future__ import annotations

from typing import Protocol

from fedrl.wire.records import Ack, Model, Registration, SecureReply, SecureStep, Submission, Task, Wait


class Unreachable(Exception):
    """The server did not answer; the message says what the transport saw."""


class Untrusted(Exception):
    """The server's certificate failed verification (signed by another CA, or not issued for the
    address dialled); the message says what the transport saw and what to change."""


class Link(Protocol):
    """One client's authenticated connection to the federation server."""

    def register(self) -> Registration:
        """Announce this client (idempotent) and learn the experiment it trains."""
        ...

    def heartbeat(self, acting_version: int | None) -> int:
        """Report liveness and the version acting now; returns the deployed version."""
        ...

    def task(self) -> Task | Wait:
        """Ask what to do: train from a version for a round, or wait."""
        ...

    def pull(self, version: int) -> Model:
        """Download one stored global version."""
        ...

    def push(self, submission: Submission) -> Ack:
        """Upload one update; returns its durable acknowledgement (again, for a resubmission)."""
        ...

    def secure(self, round_: int, step: SecureStep, payload: bytes) -> SecureReply:
        """One step of a secure-aggregation round (or a poll, with an empty payload)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...

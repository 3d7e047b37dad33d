"""The server's side of one secure-aggregation round carried over a transport.

``fedrl.core.secagg`` holds the protocol as pure functions; the simulator runs all clients in one
process. Deployed, each client of the round runs its half on its device
(``fedrl.edge.secure``) and the transports carry four steps, each the client's message for that
step and, in reply, the next step's input once the server has collected the step from everyone
it waits for:

=========== ============================== ===================================================
step        the client sends               the reply, once the step closes
=========== ============================== ===================================================
ADVERTISE   its two public keys            the roster U1 and the threshold t
SHARE       its sealed shares, one per     the sealed shares addressed to it (U2's senders)
            roster member
MASK        its masked input y_u           the survivors U3
UNMASK      its shares of U2's secrets     done
=========== ============================== ===================================================

A step closes when every client it waits for has sent (for ADVERTISE, the round's takers once
as many as it wants have taken their tasks; then U1, U2, U3), or ``step_s`` after it opened
(ADVERTISE: at the round's deadline) if at least t have; with fewer it fails
(``BelowThreshold``) and the round keeps its model. Until a step closes, a client's call is
answered "ask again" (``SecureReply.pending``); asking again with an empty payload is a poll --
the first message a client sends for a step is the one kept. A client's part ends with its
UNMASK message (answered at once). Every record must name the caller's own id (a client cannot
send as another), and a masked input must have the model's length.

The round lives in memory: a server killed mid-round forgets it, and its clients are told to
start over (FAILED_PRECONDITION); their next task begins a fresh round with fresh keys.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedrl.core.secagg import (
    BelowThreshold,
    KeyAdvert,
    RevealedShare,
    SealedShare,
    SecAggConfig,
    Secret,
    announce_survivors,
    collect_keys,
    decode,
    decode_masked,
    encode,
    encode_ids,
    route_shares,
    unmask,
)
from fedrl.wire.records import Reason, Rejected, SecureReply
from fedrl.wire.records import SecureStep as Step


@dataclass
class _Collected:
    """What one step gathered (mutable, private to ``SecureRound``)."""

    messages: dict[int, object] = field(default_factory=dict)
    opened_at: float = 0.0
    closed: bool = False


class SecureRound:
    """One round's protocol on the server. ``takers`` are the ids of the round's clients, known
    as they take their tasks, ``expected`` how many the round wants, ``deadline`` when ADVERTISE
    may close with fewer than that."""

    def __init__(
        self, round_: int, config: SecAggConfig, dim: int, step_s: float, retry_s: float, clock: Callable[[], float]
    ) -> None:
        self.round, self.dim, self._config, self._step_s, self._retry_s = round_, dim, config, step_s, retry_s
        self._clock = clock
        self.takers: set[int] = set()
        self.expected = 2  # takers the round waits for before ADVERTISE may close early
        self.deadline = float("inf")
        self._steps = {step: _Collected() for step in Step}
        self._steps[Step.ADVERTISE].opened_at = clock()
        self.threshold = 0
        self.roster: tuple[KeyAdvert, ...] = ()
        self._inboxes: dict[int, tuple[SealedShare, ...]] = {}
        self.survivors: tuple[int, ...] = ()
        self.total: np.ndarray | None = None  # uint32 (d,): the sum, once unmasked
        self.failure: str | None = None

    # --- a client's call ---------------------------------------------------------------
    def offer(self, client: int, step: Step, payload: bytes) -> SecureReply:
        """Take ``client``'s message for ``step`` (or a poll) and answer with the next step's
        input, or "ask again"; ``Rejected`` for a malformed message, a message in another's name,
        a client the step does not wait for, or a failed round."""
        self._check_alive()
        collected = self._steps[step]
        if client not in collected.messages:
            if collected.closed or client not in self._waited_by(step):
                raise Rejected(
                    Reason.FAILED_PRECONDITION,
                    f"round {self.round}'s secure aggregation does not wait for client {client} at "
                    f"{step.name} (it joined late, or dropped out of an earlier step)",
                )
            if payload:
                collected.messages[client] = self._parse(client, step, payload)
        self.advance()
        self._check_alive()
        if step is Step.UNMASK and client in collected.messages:
            return self._answer(client, step)  # nothing follows: the client's part is done
        if not collected.closed or client not in collected.messages:
            return SecureReply(client, retry_after_s=self._retry_s)
        return self._answer(client, step)

    def _waited_by(self, step: Step) -> set[int]:
        if step is Step.ADVERTISE:
            return self.takers
        previous = self._steps[Step(step - 1)]
        return set(previous.messages) if previous.closed else set()

    def _parse(self, client: int, step: Step, payload: bytes) -> object:
        try:
            if step is Step.MASK:
                masked = decode_masked(payload)
                records: tuple = (masked,)
                if masked.masked.size != self.dim:
                    raise ValueError(
                        f"a masked input of {masked.masked.size} values; this round's inputs have {self.dim} "
                        "(the model's parameters, and the words of the statistics when they travel in the sum)"
                    )
            else:
                kind = {Step.ADVERTISE: KeyAdvert, Step.SHARE: SealedShare, Step.UNMASK: RevealedShare}[step]
                if len(payload) % kind.WIRE.size:
                    raise ValueError(f"{len(payload)} bytes are not whole {kind.__name__} records")
                records = decode(kind, payload)
        except (ValueError, IndexError, struct.error) as exc:
            raise Rejected(Reason.INVALID_ARGUMENT, f"{step.name}: {exc}") from None
        owners = {_author(r) for r in records}
        if owners != {client}:
            raise Rejected(
                Reason.PERMISSION_DENIED, f"{step.name}: records in the name of clients {sorted(owners - {client})}"
            )
        problem = self._incomplete(client, step, records)
        if problem:
            raise Rejected(Reason.INVALID_ARGUMENT, f"{step.name}: {problem}")
        return records[0] if step in (Step.ADVERTISE, Step.MASK) else records

    def _incomplete(self, client: int, step: Step, records: tuple) -> str:
        """What is missing from or extra in a client's records for ``step`` ("" when they are
        whole): one advert; one sealed share for every other member of the roster; one revealed
        share for every member of U2, of the secret the survivors decide. A round must never
        reach a step it cannot finish because one client sent part of what it owed."""
        if step is Step.ADVERTISE and len(records) != 1:
            return f"{len(records)} key adverts; send one"
        if step is Step.SHARE:
            owed = sorted(a.client for a in self.roster if a.client != client)
            sent = sorted(r.recipient for r in records)
            return "" if sent == owed else f"sealed shares for clients {sent}; the roster needs {owed}"
        if step is Step.UNMASK:
            alive = set(self.survivors)
            owed = {u: Secret.SELF_MASK if u in alive else Secret.MASK_KEY for u in self._steps[Step.SHARE].messages}
            sent = {r.owner: r.secret for r in records}
            if len(sent) != len(records) or sent != owed:
                return (
                    "revealed shares must be one per client that shared keys: "
                    "its self-mask's if it survived, else its key's"
                )
        return ""

    # --- closing steps -----------------------------------------------------------------
    def advance(self) -> None:
        """Close every step that is complete or past its time (the coordinator calls this on
        every call and tick); a step past its time with fewer than t fails the round."""
        if self.failure is not None:
            return
        now = self._clock()
        for step in Step:
            collected = self._steps[step]
            if collected.closed:
                continue
            waited = self._waited_by(step)
            if step is not Step.ADVERTISE and not self._steps[Step(step - 1)].closed:
                return
            enough = len(waited) >= self.expected if step is Step.ADVERTISE else bool(waited)
            everyone = enough and waited <= set(collected.messages)
            timed_out = now >= (self.deadline if step is Step.ADVERTISE else collected.opened_at + self._step_s)
            if not (everyone or timed_out):
                return
            try:
                self._close(step, collected)
            except Exception as exc:  # below the threshold, or records that do not add up: the round ends here
                self.failure = str(exc) if isinstance(exc, (BelowThreshold, ValueError)) else repr(exc)
                return
            collected.closed = True
            if step is not Step.UNMASK:
                self._steps[Step(step + 1)].opened_at = now

    def _close(self, step: Step, collected: _Collected) -> None:
        if step is Step.ADVERTISE:
            adverts = list(collected.messages.values())
            if len(adverts) < 2:
                raise BelowThreshold(len(adverts), 2, "advertised keys")
            self.threshold = self._config.threshold_for(len(adverts))
            self.roster = collect_keys(adverts, self.threshold)
        elif step is Step.SHARE:
            self._inboxes = route_shares(
                [s for records in collected.messages.values() for s in records], self.threshold
            )
        elif step is Step.MASK:
            self.survivors = announce_survivors(list(collected.messages.values()), self.threshold)
        else:
            revealed = [r for records in collected.messages.values() for r in records]
            shared = set(self._steps[Step.SHARE].messages)
            masked = list(self._steps[Step.MASK].messages.values())
            self.total = unmask(self.roster, shared, masked, revealed, self.threshold)

    def _answer(self, client: int, step: Step) -> SecureReply:
        if step is Step.ADVERTISE:
            payload = encode(self.roster)
        elif step is Step.SHARE:
            payload = encode(self._inboxes[client])
        elif step is Step.MASK:
            payload = encode_ids(self.survivors)
        else:
            payload = b""
        return SecureReply(client, payload=payload, threshold=self.threshold, done=step is Step.UNMASK)

    def _check_alive(self) -> None:
        if self.failure is not None:
            raise Rejected(
                Reason.FAILED_PRECONDITION, f"round {self.round}'s secure aggregation failed: {self.failure}"
            )

    # --- the outcome ---------------------------------------------------------------------
    @property
    def joined(self) -> set[int]:
        """The clients that advertised keys: their part in the round has begun."""
        return set(self._steps[Step.ADVERTISE].messages)

    @property
    def settled(self) -> bool:
        """Whether the round has its sum or has failed."""
        return self.total is not None or self.failure is not None


def _author(record: object) -> int:
    """The client a record speaks for: an advert's or masked input's client, a share's sender or holder."""
    for name in ("client", "sender", "holder"):
        if hasattr(record, name):
            return int(getattr(record, name))
    raise TypeError(f"{type(record).__name__} names no client")

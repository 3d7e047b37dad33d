"""The device's half of a deployed secure-aggregation round (``fedrl.core.secagg``), over a link.

After training for a round whose experiment aggregates securely, a device does not push its
update: it advertises fresh keys, shares its secrets among the roster, sends its update masked
(the server learns only the round's sum) and reveals its shares of the others' secrets
(``fedrl.server.secure_round`` has the server's side). Every key, seed and share comes from the
operating system's randomness (``os.urandom``), never from the run's seed. Each step's message
is sent until the server answers, then the device polls until the step closes for everyone.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from fedrl.core.secagg import (
    KeyAdvert,
    RandomBytes,
    SealedShare,
    SecAggConfig,
    advertise_keys,
    decode,
    decode_ids,
    encode,
    encode_masked,
    mask_input,
    reveal_shares,
    share_keys,
)
from fedrl.wire.records import SecureReply, SecureStep

Ask = Callable[[SecureStep, bytes], SecureReply]  # one call to the server: a step's message (or a poll)


def run_secure_round(
    ask: Ask,
    x: np.ndarray,
    config: SecAggConfig,
    wait: Callable[[float], None],
    on_step: Callable[[SecureStep, SecureReply], None] = lambda _step, _reply: None,
    random_bytes: RandomBytes = os.urandom,
    extra: np.ndarray | None = None,
) -> SecureReply:
    """Take part in one secure round with input ``x`` (float32, the device's update) and ``extra``
    words summed beside it (its statistics, ``fedrl.core.securestats``); returns the server's last
    answer (``done``). ``ask`` carries one call (the agent's retrying wrapper around ``Link.secure``),
    ``wait`` sleeps between polls, ``on_step`` hears each step that closed."""
    me = ask(SecureStep.ADVERTISE, b"").client  # a poll first: the server names this device's id
    keys, advert = advertise_keys(me, random_bytes)
    closed = _until_closed(ask, SecureStep.ADVERTISE, encode([advert]), wait, on_step)
    roster = decode(KeyAdvert, closed.payload)
    shared, sealed = share_keys(keys, roster, closed.threshold, random_bytes)
    closed = _until_closed(ask, SecureStep.SHARE, encode(sealed), wait, on_step)
    masked_state, masked = mask_input(shared, decode(SealedShare, closed.payload), x, config, extra)
    closed = _until_closed(ask, SecureStep.MASK, encode_masked(masked), wait, on_step)
    return _until_closed(
        ask, SecureStep.UNMASK, encode(reveal_shares(masked_state, decode_ids(closed.payload))), wait, on_step
    )


def _until_closed(
    ask: Ask,
    step: SecureStep,
    message: bytes,
    wait: Callable[[float], None],
    on_step: Callable[[SecureStep, SecureReply], None],
) -> SecureReply:
    """Send ``message`` for ``step``, then poll until the step closes; the reply that says so."""
    reply = ask(step, message)
    while reply.pending:
        wait(reply.retry_after_s)
        reply = ask(step, b"")
    on_step(step, reply)
    return reply

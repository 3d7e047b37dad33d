"""Secure aggregation: the server learns the sum of the clients' updates and nothing else.

The pairwise-mask protocol of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017 (Fig. 4, the honest-but-curious version: no
signatures, no consistency-check round), over vectors of integers mod 2^32:

0. ``advertise_keys``: client u makes two X25519 key pairs, c_u (to encrypt the shares it
   sends) and s_u (to agree pairwise masks), and sends both public keys. ``collect_keys``: the
   server broadcasts the roster U1.
1. ``share_keys``: u draws a self-mask seed b_u and Shamir-shares b_u and s_u's secret key
   (threshold t) among U1, sealing each pair of shares for its recipient v with AES-GCM under
   a key agreed from c_u and c_v, so the relaying server cannot read them. ``route_shares``:
   the server forwards them; the senders are U2.
2. ``mask_input``: u quantizes its clipped input to fixed point and sends
   ``y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} D_uv PRG(s_uv) mod 2^32`` with ``D_uv = +1``
   if u > v else -1, where s_uv is X25519(s_u, s_v) through HKDF-SHA256 and the PRG is a
   ChaCha20 keystream. ``announce_survivors``: the senders are U3.
3. ``reveal_shares``: every survivor reveals, for each client of U2, its share of b_v if v is
   in U3 and its share of s_v's key if v dropped -- never both for the same v, which is the
   double mask's protection against a server that claims a live client dropped. ``unmask``:
   from t survivors the server rebuilds those secrets, removes the self masks of U3 and the
   pairwise masks that dropped clients left in the survivors' inputs, and holds exactly
   ``sum_{u in U3} x_u mod 2^32``; with fewer than t it raises ``BelowThreshold``.

Every step is a pure function of explicit records, so the simulator runs all clients in one
process (``secure_sum``) and a transport can carry the same messages (``encode``/``decode``,
fixed little-endian layouts). Randomness comes from a ``random_bytes(n)`` callable: os.urandom
for real keys; a seeded numpy generator's ``bytes`` makes a simulation reproducible, and its
"secrets" then are not secret from anyone who knows the seed. Keys are fresh every round, so
each AES-GCM key and each PRG seed is used once. docs/secure_aggregation.md gives the costs,
the threshold and what colluding parties can learn.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import ClassVar, TypeVar

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import Field, field_validator, model_validator

from fedrl.core.frozen import FrozenConfig
from fedrl.core.securestats import MAX_CLIENTS

RandomBytes = Callable[[int], bytes]

PRIME = 2**256 + 297  # the smallest prime above 2^256: its field holds any 32-byte secret
KEY_BYTES = 32  # X25519 keys, self-mask seeds, PRG seeds
SHARE_BYTES = 33  # a Shamir share, an element of GF(PRIME)
MASK_INFO = b"fedrl secagg pairwise mask"  # HKDF labels: one agreed secret never serves two purposes
SHARE_INFO = b"fedrl secagg share encryption"
_INT32_MAX = 2**31 - 1


class SecAggConfig(FrozenConfig):
    """Secure aggregation of a round's updates: the threshold t and the fixed-point encoding."""

    enabled: bool = Field(False, description="mask the updates so the server sees only their sum")
    threshold: int | float = Field(
        2 / 3, description="t: a count (int >= 2), or a fraction (float in (0, 1]) of the round's clients, rounded up"
    )
    clip: float = Field(1.0, gt=0, description="each coordinate is clipped to [-clip, clip] before quantization")
    scale: float = Field(2.0**16, gt=0, description="fixed point: a value x is sent as round(x * scale) mod 2^32")

    @field_validator("threshold")
    @classmethod
    def _count_or_fraction(cls, value: int | float) -> int | float:
        """A count below 2 would let any one share reveal a secret; a fraction must lie in (0, 1]."""
        if isinstance(value, int) and value < 2:
            raise ValueError(f"a threshold count must be at least 2, got {value}")
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError(f"a threshold fraction must be in (0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _some_levels(self) -> SecAggConfig:
        """clip * scale below 0.5 would quantize every input to zero."""
        if self.max_level < 1:
            raise ValueError(f"clip * scale must reach 1 quantization level, got {self.clip} * {self.scale}")
        return self

    @property
    def max_level(self) -> int:
        """The largest |q| one client sends: round(clip * scale)."""
        return int(np.rint(self.clip * self.scale))

    @property
    def max_clients(self) -> int:
        """How many clients' values can be summed before the total could wrap around 2^32."""
        return _INT32_MAX // self.max_level

    def threshold_for(self, n_clients: int) -> int:
        """t for a round of ``n_clients``: the count, or ceil(fraction * n) but at least 2."""
        if n_clients < 2:
            raise ValueError(f"secure aggregation needs at least 2 clients, got {n_clients}")
        if isinstance(self.threshold, int):
            t = self.threshold
        else:  # the epsilon keeps 0.6 * 5 = 3.0000000000000004 at 3
            t = max(2, math.ceil(self.threshold * n_clients - 1e-9))
        if t > n_clients:
            raise ValueError(f"threshold {t} exceeds the {n_clients} clients of the round")
        return t


class BelowThreshold(RuntimeError):
    """Fewer than t clients took part in a step: the masks cannot be removed, so no sum exists."""

    def __init__(self, have: int, needed: int, step: str) -> None:
        super().__init__(
            f"secure aggregation cannot recover the sum: only {have} clients {step}, the threshold needs {needed}"
        )
        self.have, self.needed = have, needed


def _require(have: int, needed: int, step: str) -> None:
    """Raise ``BelowThreshold`` unless at least ``needed`` clients did ``step``."""
    if have < needed:
        raise BelowThreshold(have, needed, step)


# ---- fixed point ---------------------------------------------------------------------------


def check_headroom(config: SecAggConfig, n_clients: int) -> None:
    """Raise unless the sum of ``n_clients`` quantized values fits in a signed 32-bit integer."""
    if n_clients > config.max_clients:
        raise ValueError(
            f"secure aggregation of {n_clients} clients would wrap around 2^32: each sends up to "
            f"+-{config.max_level} (clip {config.clip} x scale {config.scale}), so at most "
            f"{config.max_clients} clients fit; lower the scale or the clip"
        )


def quantize(x: np.ndarray, config: SecAggConfig, n_clients: int) -> np.ndarray:
    """``round(clip(x) * scale)`` as uint32 two's complement, for a sum over ``n_clients``."""
    check_headroom(config, n_clients)
    if not np.isfinite(x).all():
        raise ValueError("secure aggregation input has NaN or Inf values")
    clipped = np.clip(x.astype(np.float64), -config.clip, config.clip)
    return np.rint(clipped * config.scale).astype(np.int64).astype(np.uint32)


def dequantize(total: np.ndarray, config: SecAggConfig) -> np.ndarray:
    """A uint32 sum read back as signed fixed point: float32 ``int32(total) / scale``."""
    return (total.view(np.int32).astype(np.float64) / config.scale).astype(np.float32)


# ---- primitives: key agreement, PRG, Shamir --------------------------------------------------


def agree(private: X25519PrivateKey, peer_public: bytes, purpose: bytes) -> bytes:
    """Bonawitz's KA.agree: X25519, then HKDF-SHA256 labelled with ``purpose``; 32 bytes."""
    secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(secret)


def public_key(private: bytes) -> bytes:
    """The raw X25519 public key of a raw 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def expand(seed: bytes, d: int) -> np.ndarray:
    """The PRG: ``d`` uint32 words of ChaCha20 keystream keyed by a 32-byte seed (read-only)."""
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * d)), dtype="<u4")


def shamir_split(secret: bytes, xs: Sequence[int], t: int, random_bytes: RandomBytes) -> list[int]:
    """Shamir's t-out-of-n shares of a 32-byte secret: f(x) for each x in ``xs`` (all >= 1).

    Shamir, "How to Share a Secret", CACM 1979: any t shares give the secret, fewer give
    nothing. f is a random polynomial of degree t - 1 over GF(PRIME) with f(0) = the secret; its
    coefficients come from 48 random bytes each, so their bias mod PRIME is below 2^-127.
    """
    if not 1 <= t <= len(xs):
        raise ValueError(f"a threshold of {t} needs between 1 and {len(xs)} shares")
    pool = random_bytes(48 * (t - 1))
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [int.from_bytes(pool[48 * i : 48 * i + 48], "big") % PRIME for i in range(t - 1)]
    shares = []
    for x in xs:  # Horner: x is a small client index, so each step is a cheap multiply
        acc = 0
        for c in reversed(coefficients):
            acc = (acc * x + c) % PRIME
        shares.append(acc)
    return shares


def lagrange_weights(xs: Sequence[int]) -> list[int]:
    """``w_i = prod_{j != i} x_j / (x_j - x_i) mod PRIME``: f(0) = sum_i w_i f(x_i) when deg f < len(xs)."""
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return weights


def shamir_combine(weights: Sequence[int], shares: Sequence[int]) -> bytes:
    """The 32-byte secret from t shares and their ``lagrange_weights``."""
    return (sum(w * y for w, y in zip(weights, shares, strict=True)) % PRIME).to_bytes(KEY_BYTES, "big")


def pairwise_mask(mask_private: bytes, client: int, peers: Sequence[KeyAdvert], d: int) -> np.ndarray:
    """``sum_v D_uv PRG(s_uv) mod 2^32`` over the peers v != u, ``D_uv = +1`` if u > v else -1."""
    key = X25519PrivateKey.from_private_bytes(mask_private)
    total = np.zeros(d, dtype=np.uint32)
    for peer in peers:
        if peer.client != client:
            stream = expand(agree(key, peer.mask_public, MASK_INFO), d)
            (np.add if client > peer.client else np.subtract)(total, stream, out=total)
    return total


# ---- messages ---------------------------------------------------------------------------------


class Secret(IntEnum):
    """Which of a client's two shared secrets a revealed share belongs to."""

    SELF_MASK = 0  # b_u, revealed for clients whose masked input arrived
    MASK_KEY = 1  # s_u's private key, revealed for clients that dropped after sharing


@dataclass(frozen=True)
class KeyAdvert:
    """Round 0, client to server (and the roster, server to every client): u's two public keys."""

    client: int
    cipher_public: bytes  # c_u^PK: the shares sent to u are encrypted under a key agreed with it
    mask_public: bytes  # s_u^PK: u's pairwise masks are agreed with it
    WIRE: ClassVar[struct.Struct] = struct.Struct(f"<I{KEY_BYTES}s{KEY_BYTES}s")


@dataclass(frozen=True)
class SealedShare:
    """Round 1, relayed by the server: sender's shares of (b_sender, s_sender) for recipient, AES-GCM sealed."""

    sender: int
    recipient: int
    ciphertext: bytes  # 2 shares of SHARE_BYTES + a 16-byte tag
    WIRE: ClassVar[struct.Struct] = struct.Struct(f"<II{2 * SHARE_BYTES + 16}s")


@dataclass(frozen=True)
class RevealedShare:
    """Round 3, survivor to server: holder's share of one secret of owner."""

    holder: int  # the share is f(holder + 1)
    owner: int
    secret: Secret
    value: bytes  # SHARE_BYTES, big-endian
    WIRE: ClassVar[struct.Struct] = struct.Struct(f"<IIB{SHARE_BYTES}s")


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client to server: y_u, the quantized input under its masks."""

    client: int
    masked: np.ndarray  # uint32 (d,)


Record = TypeVar("Record", KeyAdvert, SealedShare, RevealedShare)


def encode(records: Sequence[KeyAdvert | SealedShare | RevealedShare]) -> bytes:
    """Fixed-size records of one kind, back to back in their ``WIRE`` layout."""
    return b"".join(r.WIRE.pack(*(getattr(r, f.name) for f in fields(r))) for r in records)


def decode(kind: type[Record], data: bytes) -> tuple[Record, ...]:
    """The records that ``encode`` wrote."""
    return tuple(kind(*row) for row in kind.WIRE.iter_unpack(data))


def encode_masked(message: MaskedInput) -> bytes:
    """The client id, then d little-endian uint32 words."""
    return struct.pack("<I", message.client) + message.masked.astype("<u4").tobytes()


def decode_masked(data: bytes) -> MaskedInput:
    """The message that ``encode_masked`` wrote."""
    return MaskedInput(struct.unpack_from("<I", data)[0], np.frombuffer(data, dtype="<u4", offset=4))


def encode_ids(ids: Sequence[int]) -> bytes:
    """A list of client ids (the survivors U3), as little-endian uint32."""
    return np.asarray(ids, dtype="<u4").tobytes()


def decode_ids(data: bytes) -> tuple[int, ...]:
    """The ids that ``encode_ids`` wrote."""
    return tuple(np.frombuffer(data, dtype="<u4").tolist())


# ---- client state and steps -------------------------------------------------------------------


@dataclass(frozen=True)
class ClientKeys:
    """A client after round 0: its two private keys (raw 32 bytes each)."""

    client: int
    cipher_private: bytes
    mask_private: bytes


@dataclass(frozen=True)
class ClientShared:
    """A client after round 1: what it must keep to mask its input."""

    keys: ClientKeys
    roster: tuple[KeyAdvert, ...]  # U1
    threshold: int
    self_seed: bytes  # b_u
    own_shares: tuple[int, int]  # its own shares of (b_u, s_u), at x = u + 1


@dataclass(frozen=True)
class ClientMasked:
    """A client after round 2: the shares it holds, to reveal in round 3."""

    client: int
    threshold: int
    held: Mapping[int, tuple[int, int]]  # owner v in U2 -> this client's shares of (b_v, s_v)


def advertise_keys(client: int, random_bytes: RandomBytes) -> tuple[ClientKeys, KeyAdvert]:
    """Round 0: two fresh X25519 key pairs; the public halves go to the server."""
    keys = ClientKeys(client, random_bytes(KEY_BYTES), random_bytes(KEY_BYTES))
    return keys, KeyAdvert(client, public_key(keys.cipher_private), public_key(keys.mask_private))


def _nonce(sender: int, recipient: int) -> bytes:
    """The AES-GCM nonce of one direction: c_uv = c_vu, so the two directions need different ones."""
    return struct.pack("<II4x", sender, recipient)


def _seal(cipher: X25519PrivateKey, sender: int, recipient: KeyAdvert, shares: tuple[int, int]) -> SealedShare:
    """Encrypt sender's two shares for recipient under their agreed key."""
    key = agree(cipher, recipient.cipher_public, SHARE_INFO)
    plain = b"".join(s.to_bytes(SHARE_BYTES, "big") for s in shares)
    return SealedShare(sender, recipient.client, AESGCM(key).encrypt(_nonce(sender, recipient.client), plain, None))


def _open(cipher: X25519PrivateKey, sealed: SealedShare, sender_public: bytes) -> tuple[int, int]:
    """Decrypt and authenticate a sealed pair of shares (a relabelled or altered one fails)."""
    key = agree(cipher, sender_public, SHARE_INFO)
    plain = AESGCM(key).decrypt(_nonce(sealed.sender, sealed.recipient), sealed.ciphertext, None)
    return int.from_bytes(plain[:SHARE_BYTES], "big"), int.from_bytes(plain[SHARE_BYTES:], "big")


def share_keys(
    keys: ClientKeys, roster: Sequence[KeyAdvert], threshold: int, random_bytes: RandomBytes
) -> tuple[ClientShared, tuple[SealedShare, ...]]:
    """Round 1: draw b_u, Shamir-share b_u and s_u's key among the roster, seal each pair for its holder."""
    _require(len(roster), threshold, "advertised keys")
    self_seed = random_bytes(KEY_BYTES)
    xs = [a.client + 1 for a in roster]
    b_shares = shamir_split(self_seed, xs, threshold, random_bytes)
    s_shares = shamir_split(keys.mask_private, xs, threshold, random_bytes)
    cipher = X25519PrivateKey.from_private_bytes(keys.cipher_private)
    sealed, own = [], None
    for advert, pair in zip(roster, zip(b_shares, s_shares)):
        if advert.client == keys.client:
            own = pair
        else:
            sealed.append(_seal(cipher, keys.client, advert, pair))
    if own is None:
        raise ValueError(f"client {keys.client} is not in the roster it was sent")
    return ClientShared(keys, tuple(roster), threshold, self_seed, own), tuple(sealed)


def mask_input(
    shared: ClientShared,
    inbox: Sequence[SealedShare],
    x: np.ndarray,
    config: SecAggConfig,
    extra: np.ndarray | None = None,
) -> tuple[ClientMasked, MaskedInput]:
    """Round 2: open the shares received from U2, then send y_u = x_u + PRG(b_u) + pairwise masks.
    ``extra``: uint32 words summed as they are after the quantized ``x`` (the client's normalisation
    statistics, ``fedrl.core.securestats``), masked alike."""
    me = shared.keys.client
    peers = {s.sender for s in inbox} | {me}
    _require(len(peers), shared.threshold, "shared keys")
    cipher = X25519PrivateKey.from_private_bytes(shared.keys.cipher_private)
    publics = {a.client: a.cipher_public for a in shared.roster}
    held = {s.sender: _open(cipher, s, publics[s.sender]) for s in inbox if s.recipient == me}
    held[me] = shared.own_shares
    y = quantize(x, config, len(shared.roster))
    if extra is not None:
        y = np.concatenate([y, extra.astype(np.uint32)])
    np.add(y, expand(shared.self_seed, y.size), out=y)
    peer_adverts = [a for a in shared.roster if a.client in peers]
    np.add(y, pairwise_mask(shared.keys.mask_private, me, peer_adverts, y.size), out=y)
    return ClientMasked(me, shared.threshold, held), MaskedInput(me, y)


def reveal_shares(state: ClientMasked, survivors: Sequence[int]) -> tuple[RevealedShare, ...]:
    """Round 3: for each v of U2, the share of b_v if v survived, else the share of s_v -- never both."""
    _require(len(survivors), state.threshold, "sent masked inputs")
    alive = set(survivors)
    if not alive <= state.held.keys():
        raise ValueError(f"client {state.client} holds no shares of survivors {sorted(alive - state.held.keys())}")
    return tuple(
        RevealedShare(state.client, owner, Secret.SELF_MASK, b.to_bytes(SHARE_BYTES, "big"))
        if owner in alive
        else RevealedShare(state.client, owner, Secret.MASK_KEY, s.to_bytes(SHARE_BYTES, "big"))
        for owner, (b, s) in sorted(state.held.items())
    )


# ---- server steps -----------------------------------------------------------------------------


def collect_keys(adverts: Sequence[KeyAdvert], threshold: int) -> tuple[KeyAdvert, ...]:
    """Round 0: the roster U1, sorted by client id, that every client is sent."""
    roster = tuple(sorted(adverts, key=lambda a: a.client))
    if len({a.client for a in roster}) != len(roster):
        raise ValueError("two key adverts came with the same client id")
    _require(len(roster), threshold, "advertised keys")
    return roster


def route_shares(sealed: Sequence[SealedShare], threshold: int) -> dict[int, tuple[SealedShare, ...]]:
    """Round 1: U2 is the senders; each member of U2 gets the sealed shares U2 addressed to it."""
    senders = sorted({s.sender for s in sealed})
    _require(len(senders), threshold, "shared keys")
    inboxes: dict[int, list[SealedShare]] = {u: [] for u in senders}
    for s in sealed:
        if s.recipient in inboxes:
            inboxes[s.recipient].append(s)
    return {u: tuple(box) for u, box in inboxes.items()}


def announce_survivors(masked: Sequence[MaskedInput], threshold: int) -> tuple[int, ...]:
    """Round 2: U3, the clients whose masked inputs arrived, sent back to each of them."""
    survivors = tuple(sorted(m.client for m in masked))
    _require(len(survivors), threshold, "sent masked inputs")
    return survivors


def _reconstruct(
    revealed: Sequence[RevealedShare], owners: Collection[int], survivors: Collection[int], threshold: int
) -> dict[int, bytes]:
    """Each owner's revealed secret (b_v for survivors, s_v for the dropped), from the first t holders."""
    by_holder: dict[int, dict[int, RevealedShare]] = {}
    for share in revealed:
        by_holder.setdefault(share.holder, {})[share.owner] = share
    _require(len(by_holder), threshold, "revealed their shares")
    chosen = [by_holder[h] for h in sorted(by_holder)[:threshold]]
    weights = lagrange_weights([h + 1 for h in sorted(by_holder)[:threshold]])
    secrets = {}
    for owner in owners:
        expected = Secret.SELF_MASK if owner in survivors else Secret.MASK_KEY
        picked = [held[owner] for held in chosen]
        if any(s.secret != expected for s in picked):
            raise ValueError(f"a client revealed the wrong secret of client {owner} (expected {expected.name})")
        secrets[owner] = shamir_combine(weights, [int.from_bytes(s.value, "big") for s in picked])
    return secrets


def unmask(
    roster: Sequence[KeyAdvert],
    shared: Collection[int],
    masked: Sequence[MaskedInput],
    revealed: Sequence[RevealedShare],
    threshold: int,
) -> np.ndarray:
    """Round 3: ``sum_{u in U3} x_u mod 2^32`` (uint32), from U2, the masked inputs and t survivors' shares."""
    survivors = {m.client for m in masked}
    secrets = _reconstruct(revealed, shared, survivors, threshold)
    total = np.zeros(masked[0].masked.size, dtype=np.uint32)
    for m in masked:
        np.add(total, m.masked, out=total)
        np.subtract(total, expand(secrets[m.client], total.size), out=total)
    alive = [a for a in roster if a.client in survivors]
    for u in set(shared) - survivors:  # the masks u's peers added against u, which u never cancelled
        np.add(total, pairwise_mask(secrets[u], u, alive, total.size), out=total)
    return total


# ---- the whole protocol in one process --------------------------------------------------------


@dataclass(frozen=True)
class SecureSumResult:
    """One secure sum, run in process, and what it cost on the wire."""

    sum: np.ndarray  # float32 (d,): the sum of the included clients' quantized inputs
    included: tuple[int, ...]  # U3: the clients whose inputs are in the sum
    threshold: int
    bytes_up: int  # every client-to-server message, as serialized
    bytes_down: int  # every server-to-client message, as serialized
    messages: int
    client_seconds: float  # all clients' compute, added up (on a fleet they run in parallel)
    server_seconds: float
    extra: np.ndarray | None = None  # uint32 (m,): the sum of the included clients' extra words

    @property
    def n_survivors(self) -> int:
        """How many clients' inputs are in the sum."""
        return len(self.included)


@dataclass
class _Tally:
    """Traffic and compute time of one in-process run, filled in as the rounds go."""

    bytes_up: int = 0
    bytes_down: int = 0
    messages: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"client": 0.0, "server": 0.0})

    def send(self, payloads: Sequence[bytes], up: bool) -> Sequence[bytes]:
        """Count messages as they cross the network; returns them unchanged."""
        size = sum(len(p) for p in payloads)
        if up:
            self.bytes_up += size
        else:
            self.bytes_down += size
        self.messages += len(payloads)
        return payloads

    @contextmanager
    def clock(self, party: str) -> Iterator[None]:
        """Add the wall time of the block to ``party``'s ("client" or "server") seconds."""
        start = time.perf_counter()
        yield
        self.seconds[party] += time.perf_counter() - start


@dataclass(frozen=True)
class _Run:
    """One in-process run: the threshold, who takes part in which round, its randomness and its tally."""

    threshold: int
    shares: np.ndarray  # bool (n,): shares keys in round 1 (in U2)
    masks: np.ndarray  # bool (n,): its masked input arrives in round 2 (in U3)
    reveals: np.ndarray  # bool (n,): answers round 3
    random_bytes: RandomBytes
    tally: _Tally


def _plan(n: int, before: np.ndarray | None, after: np.ndarray, silent: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Turn the three dropout masks into each later round's participants: (U2, U3, responders)."""
    none = np.zeros(n, dtype=bool)
    masks = [np.asarray(m if m is not None else none, dtype=bool) for m in (before, after, silent)]
    if any(m.shape != (n,) for m in masks):
        raise ValueError(f"dropout masks must have shape ({n},), got {[m.shape for m in masks]}")
    shares = ~masks[0]
    return shares, shares & ~masks[1], shares & ~masks[1] & ~masks[2]


def _round_keys(n: int, run: _Run) -> tuple[list[ClientKeys], tuple[KeyAdvert, ...]]:
    """Round 0 for clients 0..n-1: advertise, collect, broadcast the roster."""
    with run.tally.clock("client"):
        keys, adverts = zip(*(advertise_keys(u, run.random_bytes) for u in range(n)))
        uploads = [encode([a]) for a in adverts]
    with run.tally.clock("server"):
        received = [decode(KeyAdvert, b)[0] for b in run.tally.send(uploads, up=True)]
        broadcast = encode(collect_keys(received, run.threshold))
    run.tally.send([broadcast] * n, up=False)
    with run.tally.clock("client"):  # every client decodes the same bytes: decoded once here
        return list(keys), decode(KeyAdvert, broadcast)


def _round_share(
    keys: list[ClientKeys], roster: tuple[KeyAdvert, ...], run: _Run
) -> tuple[dict[int, ClientShared], dict[int, bytes]]:
    """Round 1: the clients of U2 share and seal; the server routes each one's inbox."""
    states, uploads = {}, []
    with run.tally.clock("client"):
        for u in np.flatnonzero(run.shares).tolist():
            states[u], sealed = share_keys(keys[u], roster, run.threshold, run.random_bytes)
            uploads.append(encode(sealed))
    with run.tally.clock("server"):
        sealed = [s for b in run.tally.send(uploads, up=True) for s in decode(SealedShare, b)]
        inboxes = {u: encode(box) for u, box in route_shares(sealed, run.threshold).items()}
    run.tally.send(list(inboxes.values()), up=False)
    return states, inboxes


def _round_mask(
    states: dict[int, ClientShared],
    inboxes: dict[int, bytes],
    inputs: np.ndarray,
    config: SecAggConfig,
    run: _Run,
    extra: np.ndarray | None,
) -> tuple[dict[int, ClientMasked], list[MaskedInput], tuple[int, ...]]:
    """Round 2: the clients of U3 mask and send; the server announces U3 to them."""
    masked_states, uploads = {}, []
    with run.tally.clock("client"):
        for u in np.flatnonzero(run.masks).tolist():
            words = None if extra is None else extra[u]
            masked_states[u], message = mask_input(states[u], decode(SealedShare, inboxes[u]), inputs[u], config, words)
            uploads.append(encode_masked(message))
    with run.tally.clock("server"):
        masked = [decode_masked(b) for b in run.tally.send(uploads, up=True)]
        announcement = encode_ids(announce_survivors(masked, run.threshold))
    run.tally.send([announcement] * len(masked), up=False)
    with run.tally.clock("client"):  # as with the roster, decoded once for all
        return masked_states, masked, decode_ids(announcement)


def _round_unmask(
    masked_states: dict[int, ClientMasked],
    survivors: tuple[int, ...],
    roster: tuple[KeyAdvert, ...],
    shared: Collection[int],
    masked: list[MaskedInput],
    run: _Run,
) -> np.ndarray:
    """Round 3: the responding survivors reveal; the server rebuilds the secrets and unmasks."""
    with run.tally.clock("client"):
        uploads = [encode(reveal_shares(masked_states[u], survivors)) for u in survivors if run.reveals[u]]
    with run.tally.clock("server"):
        revealed = [r for b in run.tally.send(uploads, up=True) for r in decode(RevealedShare, b)]
        return unmask(roster, shared, masked, revealed, run.threshold)


def secure_sum(
    inputs: np.ndarray,
    dropped_after_masking: np.ndarray,
    config: SecAggConfig,
    rng: np.random.Generator | None = None,
    *,
    dropped_before_masking: np.ndarray | None = None,
    silent_at_unmasking: np.ndarray | None = None,
    extra: np.ndarray | None = None,
) -> SecureSumResult:
    """Run the whole protocol for the n rows of ``inputs`` (float32 (n, d)), client u being row u,
    and with ``extra`` (uint32 (n, m)) row u's words summed beside them (``mask_input``).

    Dropouts, each a bool (n,) mask: ``dropped_before_masking`` clients leave after round 0 and
    are simply excluded; ``dropped_after_masking`` clients share their keys, so the others'
    masks involve them, but their masked input never arrives -- the server rebuilds their
    pairwise keys from t shares; ``silent_at_unmasking`` clients' inputs arrive (and count) but
    they reveal no shares. Every message is serialized, counted and decoded by its receiver.
    ``rng=None`` draws keys from os.urandom; a generator makes the run reproducible.
    Raises ``BelowThreshold`` when fewer than t clients remain at any step.
    """
    if inputs.ndim != 2 or inputs.dtype != np.float32:
        raise ValueError(f"inputs must be a float32 (n, d) array, got {inputs.dtype} {inputs.shape}")
    n = inputs.shape[0]
    t = config.threshold_for(n)
    check_headroom(config, n)
    if extra is not None and n > MAX_CLIENTS:
        raise ValueError(f"{n} clients' extra words would wrap in their sum: at most {MAX_CLIENTS} may add some")
    run = _Run(
        t,
        *_plan(n, dropped_before_masking, dropped_after_masking, silent_at_unmasking),
        os.urandom if rng is None else rng.bytes,
        _Tally(),
    )
    keys, roster = _round_keys(n, run)
    states, inboxes = _round_share(keys, roster, run)
    masked_states, masked, survivors = _round_mask(states, inboxes, inputs, config, run, extra)
    total = _round_unmask(masked_states, survivors, roster, states.keys(), masked, run)
    d = inputs.shape[1]
    return SecureSumResult(
        dequantize(total[:d], config),
        survivors,
        t,
        run.tally.bytes_up,
        run.tally.bytes_down,
        run.tally.messages,
        run.tally.seconds["client"],
        run.tally.seconds["server"],
        None if extra is None else total[d:],
    )

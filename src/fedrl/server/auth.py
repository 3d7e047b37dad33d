"""Per-client credentials: bearer tokens the server hands out once and stores only as hashes.

A client receives its token when it is enrolled and sends it with every call; the server keeps
``hash_token(token)``, so a copy of the server's store does not let anyone act as a client.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 32  # 256 bits of randomness
MIN_TOKEN_CHARS = 32  # a token brought from another server of the hierarchy must be at least this long


def new_token() -> str:
    """A fresh client token: 256 random bits from the OS's CSPRNG, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The SHA-256 of ``token``, in hex: what the server stores in place of the token.

    An unsalted, fast hash is enough here, and a password KDF (bcrypt, scrypt, Argon2) would
    only cost CPU on every call: those exist to slow the guessing of low-entropy human
    passwords. A token from ``new_token`` is 256 uniformly random bits, so no dictionary or
    precomputed table covers it and brute force over 2**256 candidates is out of reach at any
    hash speed; salting would add nothing.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()

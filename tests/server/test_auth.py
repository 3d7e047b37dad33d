"""Client tokens: random, stored only as hashes, found by their hash."""

from fedrl.server.auth import hash_token, new_token
from fedrl.server.store import Store


def test_tokens_are_256_bit_and_never_repeat():
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(len(token) == 43 for token in tokens)  # 32 bytes, URL-safe base64 without padding
    assert all(token.isascii() and " " not in token for token in tokens)


def test_the_stored_hash_does_not_contain_the_token_and_is_stable():
    token = new_token()
    stored = hash_token(token)
    assert token not in stored and len(stored) == 64
    assert hash_token(token) == stored  # the same token always finds its client


def test_only_the_issued_token_finds_its_client(tmp_path):
    store = Store(tmp_path)
    token = store.add_client("dev0", 0.0)
    assert store.client_for_token(token)[0] == "dev0"
    assert store.client_for_token(new_token()) is None
    assert store.client_for_token(token[:-1]) is None
    assert store.client_for_token("") is None
    assert store.client_for_token(hash_token(token)) is None  # a leaked hash is not a credential

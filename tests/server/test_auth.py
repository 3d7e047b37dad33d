"""Client tokens: random, stored only as hashes, checked against the hash."""

from fedrl.server.auth import hash_token, new_token, token_matches


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


def test_only_the_issued_token_matches_its_hash():
    token = new_token()
    stored = hash_token(token)
    assert token_matches(token, stored)
    assert not token_matches(new_token(), stored)
    assert not token_matches(token[:-1], stored)
    assert not token_matches("", stored)
    assert not token_matches(stored, stored)  # a leaked hash is not a credential

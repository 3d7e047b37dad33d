import dataclasses

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedrl.core.secagg import (
    MASK_INFO,
    PRIME,
    SHARE_INFO,
    BelowThreshold,
    KeyAdvert,
    MaskedInput,
    RevealedShare,
    SealedShare,
    SecAggConfig,
    Secret,
    advertise_keys,
    agree,
    collect_keys,
    decode,
    decode_ids,
    decode_masked,
    dequantize,
    encode,
    encode_ids,
    encode_masked,
    lagrange_weights,
    mask_input,
    public_key,
    quantize,
    route_shares,
    secure_sum,
    shamir_combine,
    shamir_split,
    share_keys,
)

CHI2_255_AT_0_999 = 330.52  # the 99.9% quantile of a chi-square with 255 degrees of freedom


def _inputs(n, d, seed=0):
    return np.random.default_rng(seed).normal(0.0, 0.2, (n, d)).astype(np.float32)


def _flags(n, *clients):
    flags = np.zeros(n, dtype=bool)
    flags[list(clients)] = True
    return flags


def _quantized_sum(inputs, config):
    """The reference: each row quantized, summed mod 2^32, read back as fixed point."""
    total = np.zeros(inputs.shape[1], dtype=np.uint32)
    for row in inputs:
        total += quantize(row, config, len(inputs))
    return dequantize(total, config)


def _masked_inputs(inputs, config, seed):
    """Rounds 0-2 through the step functions: each client's y_u as the server receives it."""
    rng, t = np.random.default_rng(seed), 2
    keys, adverts = zip(*(advertise_keys(u, rng.bytes) for u in range(len(inputs))))
    roster = collect_keys(adverts, t)
    shared, outboxes = zip(*(share_keys(k, roster, t, rng.bytes) for k in keys))
    inboxes = route_shares([s for box in outboxes for s in box], t)
    return [mask_input(shared[u], inboxes[u], inputs[u], config)[1].masked for u in range(len(inputs))]


def _chi_square_of_top_byte(words):
    counts = np.bincount(words >> 24, minlength=256)
    expected = words.size / 256
    return float(((counts - expected) ** 2 / expected).sum())


def test_unmasked_sum_equals_plain_sum_within_quantization_error():
    # Prepare
    config = SecAggConfig(threshold=0.6, scale=2.0**12)
    inputs = _inputs(8, 500)
    # Execute
    result = secure_sum(inputs, _flags(8), config, np.random.default_rng(1))
    # Assert: within half a level per client of the float sum, and exactly the sum of the quantized inputs
    assert result.included == tuple(range(8)) and result.threshold == 5
    assert np.abs(result.sum - inputs.sum(axis=0)).max() <= 8 * 0.5 / config.scale + 1e-6
    np.testing.assert_array_equal(result.sum, _quantized_sum(inputs, config))


def test_a_masked_input_is_indistinguishable_from_uniform_noise():
    # Prepare: small updates, whose quantized words sit near 0 and 2^32 (their top byte is 0x00 or 0xff)
    config = SecAggConfig()
    inputs = _inputs(3, 1 << 14)
    # Execute
    masked = _masked_inputs(inputs, config, seed=5)[0]
    plain = quantize(inputs[0], config, 3)
    # Assert: the masked top bytes pass a chi-square test against uniform at 0.1%; the plain ones fail it
    assert masked.dtype == np.uint32
    assert _chi_square_of_top_byte(masked) < CHI2_255_AT_0_999
    assert _chi_square_of_top_byte(plain) > 100 * CHI2_255_AT_0_999


@pytest.mark.parametrize(
    ("before", "after", "silent"), [((), (1, 4, 6, 9), ()), ((2, 3), (0, 7), ()), ((), (5,), (1, 2, 3))]
)
def test_dropouts_of_up_to_n_minus_threshold_clients_still_give_the_exact_sum(before, after, silent):
    # Prepare: n = 10, t = 6, so 4 may leave at any step
    config = SecAggConfig(threshold=6)
    inputs = _inputs(10, 300)
    # Execute
    result = secure_sum(
        inputs,
        _flags(10, *after),
        config,
        np.random.default_rng(2),
        dropped_before_masking=_flags(10, *before),
        silent_at_unmasking=_flags(10, *silent),
    )
    # Assert: silent clients' inputs count; the others who left do not
    kept = sorted(set(range(10)) - set(before) - set(after))
    assert result.included == tuple(kept)
    np.testing.assert_array_equal(result.sum, _quantized_sum(inputs[kept], config))


def test_extra_words_are_summed_beside_the_update_over_the_same_survivors():
    # Prepare: 6 clients, 2 of them dropping after sharing keys; words near the top of a uint32 too
    config = SecAggConfig(threshold=3)
    inputs = _inputs(6, 200)
    words = np.random.default_rng(3).integers(0, 2**32, size=(6, 40), dtype=np.uint64).astype(np.uint32)
    plain = secure_sum(inputs, _flags(6, 1, 4), config, np.random.default_rng(4))

    # Execute
    result = secure_sum(inputs, _flags(6, 1, 4), config, np.random.default_rng(4), extra=words)

    # Assert: the survivors' words summed mod 2^32, the update's sum as without them
    kept = [0, 2, 3, 5]
    assert result.included == tuple(kept)
    np.testing.assert_array_equal(result.extra, words[kept].sum(axis=0, dtype=np.uint64).astype(np.uint32))
    np.testing.assert_array_equal(result.sum, plain.sum)


def test_below_threshold_the_server_cannot_recover_and_says_so():
    # Prepare
    config = SecAggConfig(threshold=6)
    inputs = _inputs(10, 50)
    # Execute / Assert: 5 masked inputs arrive, or 7 arrive but only 5 of them reveal shares
    with pytest.raises(BelowThreshold, match="only 5 clients sent masked inputs, the threshold needs 6") as caught:
        secure_sum(inputs, _flags(10, 0, 1, 2, 3, 4), config, np.random.default_rng(3))
    assert (caught.value.have, caught.value.needed) == (5, 6)
    with pytest.raises(BelowThreshold, match="only 5 clients revealed their shares, the threshold needs 6"):
        secure_sum(inputs, _flags(10, 0, 1, 2), config, np.random.default_rng(3), silent_at_unmasking=_flags(10, 3, 4))


def test_shamir_any_t_shares_recover_the_secret_and_fewer_do_not():
    # Prepare
    rng = np.random.default_rng(4)
    secret, xs = rng.bytes(32), [1, 2, 3, 4, 5, 6, 7]
    # Execute
    shares = shamir_split(secret, xs, 4, rng.bytes)
    # Assert
    for chosen in ([0, 1, 2, 3], [6, 4, 2, 0], [1, 3, 5, 6]):
        assert shamir_combine(lagrange_weights([xs[i] for i in chosen]), [shares[i] for i in chosen]) == secret
    assert shamir_combine(lagrange_weights(xs[:3]), shares[:3]) != secret
    assert all(0 <= s < PRIME for s in shares)


def test_the_field_is_prime():
    # Miller-Rabin with the first 12 prime bases: a composite passes all of them with probability < 4^-12
    d, r = PRIME - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, PRIME)
        assert x in (1, PRIME - 1) or any(pow(x, 2**k, PRIME) == PRIME - 1 for k in range(1, r))
    assert PRIME > 2**256


def test_key_agreement_is_symmetric_and_labelled():
    # Prepare
    rng = np.random.default_rng(6)
    a, b = rng.bytes(32), rng.bytes(32)
    # Execute
    ab = agree(X25519PrivateKey.from_private_bytes(a), public_key(b), MASK_INFO)
    ba = agree(X25519PrivateKey.from_private_bytes(b), public_key(a), MASK_INFO)
    # Assert: both ends get the same 32 bytes; another purpose gets another key
    assert ab == ba and len(ab) == 32
    assert agree(X25519PrivateKey.from_private_bytes(a), public_key(b), SHARE_INFO) != ab


def test_wrap_around_is_refused_with_a_clear_error():
    # Prepare: each client sends up to 2^24, so at most 127 clients fit in a signed 32-bit sum
    config = SecAggConfig(clip=1.0, scale=2.0**24)
    # Execute / Assert
    assert config.max_clients == 127
    with pytest.raises(ValueError, match="128 clients would wrap around 2\\^32.*at most 127 clients fit"):
        secure_sum(np.zeros((128, 4), dtype=np.float32), _flags(128), config)
    with pytest.raises(ValueError, match="wrap around"):
        quantize(np.zeros(4, dtype=np.float32), config, 200)


def test_a_client_that_drops_before_masking_is_simply_excluded():
    # Prepare
    config = SecAggConfig(threshold=3)
    inputs = _inputs(5, 40)
    # Execute
    full = secure_sum(inputs, _flags(5), config, np.random.default_rng(7))
    result = secure_sum(inputs, _flags(5), config, np.random.default_rng(7), dropped_before_masking=_flags(5, 3))
    # Assert: no share of client 3 was sent or rebuilt, and its input is not in the sum
    assert result.included == (0, 1, 2, 4)
    np.testing.assert_array_equal(result.sum, _quantized_sum(inputs[[0, 1, 2, 4]], config))
    assert result.bytes_up < full.bytes_up


def test_the_same_seed_gives_the_same_run():
    # Prepare
    config = SecAggConfig(threshold=3)
    inputs, dropped = _inputs(6, 64), _flags(6, 2)
    # Execute
    first, second = (secure_sum(inputs, dropped, config, np.random.default_rng(8)) for _ in range(2))
    fresh_keys = secure_sum(inputs, dropped, config)
    # Assert: equal in everything but the clock; keys from os.urandom give the same sum
    timing = {"client_seconds": 0.0, "server_seconds": 0.0}
    assert dataclasses.replace(first, sum=None, **timing) == dataclasses.replace(second, sum=None, **timing)
    np.testing.assert_array_equal(first.sum, second.sum)
    np.testing.assert_array_equal(first.sum, fresh_keys.sum)


def test_bytes_counted_are_those_of_the_serialized_messages():
    # Prepare: n = 4, d = 8, nobody drops
    n, d = 4, 8
    # Execute
    result = secure_sum(_inputs(n, d), _flags(n), SecAggConfig(threshold=2), np.random.default_rng(9))
    # Assert: adverts 68 B, sealed shares 90 B, masked inputs 4 + 4d B, revealed shares 42 B, ids 4 B
    assert result.bytes_up == n * 68 + n * (n - 1) * 90 + n * (4 + 4 * d) + n * n * 42
    assert result.bytes_down == n * n * 68 + n * (n - 1) * 90 + n * n * 4
    assert result.messages == 7 * n


def test_messages_round_trip_and_a_relabelled_share_does_not_open():
    # Prepare
    rng = np.random.default_rng(10)
    keys, adverts = zip(*(advertise_keys(u, rng.bytes) for u in range(3)))
    roster = collect_keys(adverts, 2)
    _shared, sealed = share_keys(keys[0], roster, 2, rng.bytes)
    revealed = (RevealedShare(1, 0, Secret.MASK_KEY, bytes(range(33))),)
    masked = MaskedInput(2, np.arange(5, dtype=np.uint32))
    # Execute / Assert: each layout reads back what was written
    assert decode(KeyAdvert, encode(roster)) == roster
    assert decode(SealedShare, encode(sealed)) == sealed
    assert decode(RevealedShare, encode(revealed)) == revealed
    assert decode_ids(encode_ids((0, 7, 9))) == (0, 7, 9)
    back = decode_masked(encode_masked(masked))
    assert back.client == 2 and np.array_equal(back.masked, masked.masked)
    # a server that claims client 0's share for client 1 came from client 2 is caught
    shared_1, _ = share_keys(keys[1], roster, 2, rng.bytes)
    forged = SealedShare(2, 1, sealed[0].ciphertext)
    with pytest.raises(InvalidTag):
        mask_input(shared_1, (forged,), np.zeros(5, dtype=np.float32), SecAggConfig())


def test_config_threshold_counts_and_fractions():
    assert SecAggConfig(threshold=0.6).threshold_for(5) == 3
    assert SecAggConfig().threshold_for(10) == 7  # ceil(2/3 * 10)
    assert SecAggConfig(threshold=0.1).threshold_for(5) == 2  # never below 2
    assert SecAggConfig(threshold=4).threshold_for(9) == 4
    with pytest.raises(ValueError, match="threshold 4 exceeds the 3 clients"):
        SecAggConfig(threshold=4).threshold_for(3)
    for bad in ({"threshold": 1}, {"threshold": 1.5}, {"clip": 1e-3, "scale": 10.0}):
        with pytest.raises(ValueError):
            SecAggConfig(**bad)

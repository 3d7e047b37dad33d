import numpy as np
import pytest
from pydantic import ValidationError

from fedrl.core.compress import (
    Compressed,
    CompressionConfig,
    compress,
    compress_with_feedback,
    decode,
    decompress,
    dense,
    dequantize,
    encode,
    kept_count,
    quantize,
    scale,
    top_k,
)


def _vector(values):
    return np.asarray(values, dtype=np.float32)


def test_top_k_keeps_the_k_largest_magnitudes():
    # Prepare
    x = _vector([0.1, -5.0, 3.0, 0.2, -4.0])
    # Execute
    kept = compress(x, CompressionConfig(sparsify="topk", ratio=0.4), np.random.default_rng(0))
    # Assert: k = 0.4 * 5 = 2, the magnitudes 5 and 4
    np.testing.assert_array_equal(top_k(x, 0.4, (5,)), [1, 4])
    np.testing.assert_array_equal(decompress(kept), [0.0, -5.0, 0.0, 0.0, -4.0])


def test_per_tensor_top_k_keeps_the_fraction_of_every_tensor():
    # Prepare: a "critic" of large changes and an "actor" of small ones, 4 coordinates each
    x = _vector([5.0, -6.0, 7.0, 8.0, 0.1, -0.4, 0.3, 0.2])
    per_tensor = CompressionConfig(sparsify="topk", ratio=0.25)
    whole = CompressionConfig(sparsify="topk", ratio=0.25, per_tensor=False)
    # Execute
    kept = compress(x, per_tensor, np.random.default_rng(0), sizes=(4, 4))
    # Assert: one of each tensor, against the critic's two over the whole vector
    np.testing.assert_array_equal(kept.indices, [3, 5])
    np.testing.assert_array_equal(compress(x, whole, np.random.default_rng(0), sizes=(4, 4)).indices, [2, 3])


def test_kept_count_rounds_and_keeps_at_least_one():
    assert kept_count(100_000, 0.01) == 1000
    assert kept_count(10, 0.001) == 1
    assert kept_count(10, 1.0) == 10


@pytest.mark.parametrize("bits", [8, 4])
def test_stochastic_quantization_is_unbiased(bits):
    # Prepare: 16 values, one scale; each draw has variance at most step^2 / 4 per value
    x = np.random.default_rng(1).normal(size=16).astype(np.float32)
    rng, draws = np.random.default_rng(2), 4000
    step = (x.max() - x.min()) / (2**bits - 1)
    # Execute
    mean = np.mean([dequantize(quantize(x, bits, None, rng)) for _ in range(draws)], axis=0)
    # Assert: within 5 standard deviations of the mean of the draws
    assert np.all(np.abs(mean - x) <= 5 * step / (2 * np.sqrt(draws)) + 1e-6)


def test_quantized_values_sit_on_the_two_neighbouring_levels_and_keep_the_ends_exact():
    x = _vector([-1.0, 0.3, 0.31, 2.0])
    q = quantize(x, 4, None, np.random.default_rng(0))
    values = dequantize(q)
    assert np.all(np.abs(values - x) < q.step[0] + 1e-7)
    assert values[0] == -1.0 and values[3] == 2.0
    assert q.codes.max() <= 15


def test_quantization_scales_per_block_by_hand():
    # Prepare: blocks of 4 -> [0, 1, 2, 3], [10, 20, 30, 40], [-1, 1]
    x = _vector([0, 1, 2, 3, 10, 20, 30, 40, -1, 1])
    # Execute
    q = quantize(x, 8, 4, np.random.default_rng(0))
    # Assert: lo is each block's minimum, step its range over 255 levels
    np.testing.assert_array_equal(q.lo, [0.0, 10.0, -1.0])
    np.testing.assert_allclose(q.step, [3 / 255, 30 / 255, 2 / 255], rtol=1e-6)
    assert q.lo.dtype == q.step.dtype == np.float32


def test_a_constant_block_quantizes_exactly():
    x = np.full(7, 0.25, dtype=np.float32)
    np.testing.assert_array_equal(dequantize(quantize(x, 4, None, np.random.default_rng(0))), x)


def test_random_k_without_feedback_is_unbiased_and_with_feedback_unscaled():
    x = _vector(np.arange(1, 21))
    rng = np.random.default_rng(3)
    unbiased = CompressionConfig(sparsify="randomk", ratio=0.25)
    draws = [decompress(compress(x, unbiased, rng)) for _ in range(4000)]
    # each draw keeps 5 of 20, scaled by 4; the mean over draws approaches x
    assert all(np.count_nonzero(d) == 5 for d in draws[:10])
    np.testing.assert_allclose(np.mean(draws, axis=0), x, rtol=0.15)
    kept = compress(x, CompressionConfig(sparsify="randomk", ratio=0.25, error_feedback=True), rng)
    np.testing.assert_array_equal(kept.values, x[kept.indices])


def test_error_feedback_sent_plus_residual_equals_inputs_exactly():
    # Prepare: multiples of 1/8, so every float32 sum below is exact
    rng = np.random.default_rng(4)
    config = CompressionConfig(sparsify="topk", ratio=0.25, error_feedback=True)
    inputs = rng.integers(-40, 40, size=(50, 8)).astype(np.float32) / 8
    residual, sent = np.zeros(8, dtype=np.float32), np.zeros(8, dtype=np.float32)
    # Execute
    for x in inputs:
        message, residual = compress_with_feedback(x, residual, config, rng)
        sent += decompress(message)
        assert np.count_nonzero(decompress(message)) <= 2
    # Assert
    np.testing.assert_array_equal(sent + residual, inputs.sum(axis=0))


def test_error_feedback_with_quantization_loses_nothing_but_rounding():
    rng = np.random.default_rng(5)
    config = CompressionConfig(sparsify="topk", ratio=0.1, bits=4, error_feedback=True)
    inputs = rng.normal(size=(30, 100)).astype(np.float32)
    residual, sent = np.zeros(100, dtype=np.float32), np.zeros(100, dtype=np.float32)
    for x in inputs:
        message, residual = compress_with_feedback(x, residual, config, rng)
        sent += decompress(message)
    np.testing.assert_allclose(sent + residual, inputs.sum(axis=0), atol=1e-4)


def test_without_feedback_the_residual_is_returned_untouched():
    message, residual = compress_with_feedback(_vector([3.0, 4.0]), None, CompressionConfig(), np.random.default_rng(0))
    assert residual is None
    np.testing.assert_array_equal(decompress(message), [3.0, 4.0])


def test_a_message_over_max_norm_is_scaled_down_and_the_excess_kept():
    # Prepare: residual [0, 3] plus update [4, 0] -> [4, 3], norm 5, bound 1
    config = CompressionConfig(bits=8, error_feedback=True)
    residual = _vector([0.0, 3.0])
    # Execute
    message, residual = compress_with_feedback(
        _vector([4.0, 0.0]), residual, config, np.random.default_rng(0), max_norm=1.0
    )
    # Assert: sent [0.8, 0.6] (the ends of one block are exact), the rest stays on the client
    sent = decompress(message)
    np.testing.assert_allclose(sent, [0.8, 0.6], rtol=1e-6)
    np.testing.assert_allclose(residual, [3.2, 2.4], rtol=1e-6)


def test_scale_moves_quantized_scales_not_codes():
    c = compress(_vector([1.0, -2.0, 0.5]), CompressionConfig(bits=8), np.random.default_rng(0))
    half = scale(c, 0.5)
    np.testing.assert_array_equal(half.values.codes, c.values.codes)
    np.testing.assert_allclose(decompress(half), 0.5 * decompress(c), rtol=1e-6)


CODECS = {
    "dense": CompressionConfig(),
    "topk": CompressionConfig(sparsify="topk", ratio=0.1),
    "randomk": CompressionConfig(sparsify="randomk", ratio=0.1),
    "8bit": CompressionConfig(bits=8),
    "4bit-blocks": CompressionConfig(bits=4, block=7),
    "topk-8bit": CompressionConfig(sparsify="topk", ratio=0.1, bits=8),
    "randomk-4bit": CompressionConfig(sparsify="randomk", ratio=0.1, bits=4, error_feedback=True),
}


@pytest.mark.parametrize("name", CODECS)
def test_codec_round_trips(name):
    # Prepare: an odd length, so 4-bit codes do not fill their last byte
    x = np.random.default_rng(6).normal(size=301).astype(np.float32)
    c = compress(x, CODECS[name], np.random.default_rng(7))
    # Execute
    back = decode(encode(c))
    # Assert
    np.testing.assert_array_equal(decompress(back), decompress(c))
    assert back.dim == 301


def test_codec_sizes_are_header_plus_payload():
    # Prepare: 100k float32 parameters; indices need uint32 above 65,536
    x = np.random.default_rng(8).normal(size=100_000).astype(np.float32)
    rng = np.random.default_rng(9)

    def size(**options):
        return len(encode(compress(x, CompressionConfig(**options), rng)))

    # Assert: 24-byte header; top-1% = 1,000 indices + 1,000 values; 8-bit adds one block's lo and step
    assert size() == 24 + 400_000
    assert size(sparsify="topk", ratio=0.01) == 24 + 1000 * 4 + 1000 * 4
    assert size(sparsify="topk", ratio=0.01, bits=8) == 24 + 1000 * 4 + 8 + 1000
    assert size(sparsify="randomk", ratio=0.01, bits=8) == 24 + 8 + 1000  # the seed travels, not the indices
    assert size(bits=4) == 24 + 8 + 50_000
    assert size(bits=8, block=1000) == 24 + 100 * 8 + 100_000
    # top-1% is 2 % of the dense size (indices cost as much as values): a 50x ratio
    assert 49 < (24 + 400_000) / size(sparsify="topk", ratio=0.01) < 50


def test_small_models_use_narrow_indices():
    x = np.arange(1, 1001, dtype=np.float32)  # 1,000 parameters: uint16 indices
    c = compress(x, CompressionConfig(sparsify="topk", ratio=0.01), np.random.default_rng(0))
    assert len(encode(c)) == 24 + 10 * 2 + 10 * 4


def test_decode_rejects_bytes_it_did_not_write():
    payload = encode(dense(_vector([1.0, 2.0, 3.0])))
    with pytest.raises(ValueError, match="header"):
        decode(b"\x01\x00")
    with pytest.raises(ValueError, match="does not match its header"):
        decode(payload[:-1])
    with pytest.raises(ValueError, match="does not match its header"):
        decode(payload + b"\x00")
    with pytest.raises(ValueError, match="not a compressed update"):
        decode(b"\x07" + payload[1:])


def test_options_the_scheme_would_ignore_are_rejected():
    with pytest.raises(ValidationError, match="ratio"):
        CompressionConfig(ratio=0.5)
    with pytest.raises(ValidationError, match="block"):
        CompressionConfig(block=64)
    with pytest.raises(ValidationError, match="per_tensor"):
        CompressionConfig(sparsify="randomk", ratio=0.1, per_tensor=False)
    assert CompressionConfig().lossless and not CompressionConfig(bits=8).lossless
    assert isinstance(dense(_vector([1.0])), Compressed)


def test_a_forged_header_is_refused_before_anything_is_allocated():
    # Prepare: a random-k header claiming a billion kept values of a 2-billion vector, and no body

    from fedrl.core.compress import CompressionConfig, compress, decode, encode

    genuine = encode(
        compress(
            np.ones(100, np.float32), CompressionConfig(sparsify="randomk", ratio=0.1, bits=4), np.random.default_rng(0)
        )
    )
    header_size = 24
    forged = bytearray(genuine[:header_size])

    # Execute / Assert: a truncated body, then an update for another model length
    with pytest.raises(ValueError, match="does not match its header"):
        decode(bytes(forged))
    with pytest.raises(ValueError, match="the model has 50"):
        decode(genuine, 50)
    assert decode(genuine, 100).dim == 100

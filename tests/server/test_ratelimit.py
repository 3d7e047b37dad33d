"""The per-key token bucket, with time given explicitly."""

import threading

import pytest

from fedrl.server.ratelimit import RateLimiter


def test_a_burst_is_allowed_then_the_rate_refills_it():
    limiter = RateLimiter(rate_per_s=2.0, burst=3)
    assert [limiter.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert not limiter.allow("a", now=0.4)  # 0.8 tokens so far
    assert limiter.allow("a", now=0.5)  # the 1 token came at 0.5 s
    assert not limiter.allow("a", now=0.5)
    assert [limiter.allow("a", now=100.0) for _ in range(4)] == [True, True, True, False]  # refills to burst, no more


def test_keys_have_separate_buckets():
    limiter = RateLimiter(rate_per_s=1.0, burst=1)
    assert limiter.allow("noisy", now=0.0)
    assert not limiter.allow("noisy", now=0.1)
    assert limiter.allow("quiet", now=0.1)


def test_a_clock_stepping_back_grants_nothing():
    limiter = RateLimiter(rate_per_s=1.0, burst=1)
    assert limiter.allow("a", now=10.0)
    assert not limiter.allow("a", now=5.0)
    assert not limiter.allow("a", now=10.5)
    assert limiter.allow("a", now=11.0)


def test_memory_is_bounded_by_forgetting_the_key_seen_longest_ago():
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_keys=2)
    assert limiter.allow("a", now=0.0) and limiter.allow("b", now=0.0)
    assert not limiter.allow("a", now=0.0)  # a is now the most recently seen
    assert limiter.allow("c", now=0.0)  # forgets b, the key seen longest ago
    assert not limiter.allow("a", now=0.0)  # a's empty bucket was kept
    assert limiter.allow("b", now=0.0)  # b starts again with a full bucket


def test_concurrent_callers_never_spend_more_than_the_burst():
    limiter = RateLimiter(rate_per_s=1e-9, burst=100)
    allowed = []

    def hammer():
        allowed.extend(limiter.allow("a", now=0.0) for _ in range(200))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 100


@pytest.mark.parametrize("rate, burst, max_keys", [(0, 1, 1), (1, 0.5, 1), (1, 1, 0)])
def test_a_limiter_that_would_refuse_everything_is_a_config_error(rate, burst, max_keys):
    with pytest.raises(ValueError, match="rate limiter"):
        RateLimiter(rate, burst, max_keys)

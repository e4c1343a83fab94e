"""The per-source token buckets and the once-a-minute refusal log every front-end shares."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.ratelimit import REFUSAL_LOG_INTERVAL, RateLimiter, RefusalLog


def test_a_full_bucket_grants_the_burst_then_refills_at_the_rate() -> None:
    limiter = RateLimiter(burst=5, per_second=2.0)
    assert [limiter.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.allow("a", 0.4)  # 0.8 of a token
    assert limiter.allow("a", 0.5)
    assert limiter.take("a", 10, 100.0) == 5  # capped at the burst


def test_sources_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(burst=1, per_second=1.0)
    assert limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)


def test_wait_and_retry_after_say_when_a_token_is_back() -> None:
    limiter = RateLimiter(burst=2, per_second=4.0)
    assert limiter.wait("a", 0.0) == 0.0  # unknown: full
    limiter.take("a", 2, 0.0)
    assert limiter.wait("a", 0.0) == pytest.approx(0.25)
    assert limiter.retry_after("a", 0.0) == 1  # whole seconds, at least one
    assert limiter.wait("a", 0.25) == 0.0
    slow = RateLimiter(burst=1, per_second=0.1)
    slow.take("a", 1, 0.0)
    assert slow.retry_after("a", 0.0) == 10


def test_time_going_backwards_adds_no_tokens() -> None:
    limiter = RateLimiter(burst=1, per_second=1.0)
    assert limiter.allow("a", 10.0)
    assert not limiter.allow("a", 5.0)


def test_the_table_forgets_the_least_recently_seen_source_first() -> None:
    limiter = RateLimiter(burst=2, per_second=1.0, max_keys=3)
    for key in ("a", "b", "c"):
        limiter.take(key, 2, 0.0)
    limiter.take("a", 1, 0.0)  # "a" is now the most recent
    limiter.take("d", 1, 0.0)  # "b" goes
    assert len(limiter) == 3
    assert limiter.take("a", 1, 0.0) == 0  # still remembered, still empty
    assert limiter.take("b", 2, 0.0) == 2  # forgotten: back full


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 1000)), max_size=300))
def test_the_table_never_holds_more_than_its_bound(calls: list[tuple[int, float]]) -> None:
    limiter = RateLimiter(burst=3, per_second=1.0, max_keys=8)
    for key, now in calls:
        limiter.allow(key, now)
        assert len(limiter) <= 8


def test_configure_keeps_the_tokens_within_the_new_burst() -> None:
    limiter = RateLimiter(burst=10, per_second=1.0)
    limiter.take("a", 4, 0.0)  # six left
    limiter.configure(burst=3, per_second=100.0)
    assert (limiter.burst, limiter.per_second) == (3.0, 100.0)
    assert limiter.take("a", 10, 0.0) == 3
    assert limiter.take("a", 10, 0.01) == 1  # the new rate


@pytest.mark.parametrize(
    ("burst", "rate", "keys"), [(0, 1.0, 1), (1, 0.0, 1), (1, -1.0, 1), (1, 1.0, 0)]
)
def test_nonsense_limits_are_refused(burst: int, rate: float, keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(burst, rate, keys)


def test_a_refusal_is_due_once_per_key_per_interval() -> None:
    refusals = RefusalLog()
    assert refusals.due("a", 0.0)
    assert not refusals.due("a", 1.0)
    assert refusals.due("b", 1.0)
    assert not refusals.due("a", REFUSAL_LOG_INTERVAL - 0.1)
    assert refusals.due("a", REFUSAL_LOG_INTERVAL)
    assert not refusals.due("a", REFUSAL_LOG_INTERVAL + 1)


def test_the_refusal_log_remembers_a_bounded_number_of_keys() -> None:
    refusals = RefusalLog(interval=60.0, max_keys=2)
    assert refusals.due("a", 0.0) and refusals.due("b", 0.0) and refusals.due("c", 0.0)
    assert len(refusals) == 2
    assert refusals.due("a", 1.0)  # forgotten first, so due again
    assert not refusals.due("c", 1.0)

"""Per-client token buckets (core/ratelimit.py) on a clock the test moves."""

import pytest

from core.ratelimit import BURST_SECONDS, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    lim = RateLimiter(60, clock=clock)  # one a second, a burst of BURST_SECONDS
    burst = int(BURST_SECONDS)
    assert [lim.take("a") for _ in range(burst)] == [0.0] * burst
    wait = lim.take("a")
    assert wait == pytest.approx(1.0)
    assert lim.take("a") == pytest.approx(1.0)  # a refused request spends nothing
    clock.t += 0.5
    assert lim.take("a") == pytest.approx(0.5)
    clock.t += 0.5
    assert lim.take("a") == 0.0 and lim.take("a") > 0
    clock.t += 3600  # a long pause refills to the burst, not beyond
    assert sum(lim.take("a") == 0.0 for _ in range(burst + 5)) == burst


def test_clients_have_their_own_buckets_and_old_ones_are_forgotten() -> None:
    clock = Clock()
    lim = RateLimiter(6, max_clients=2, clock=clock)  # a burst of one
    assert lim.take("a") == 0.0 and lim.take("a") == pytest.approx(10.0)
    assert lim.take("b") == 0.0
    assert lim.take("c") == 0.0 and len(lim) == 2  # "a", the least recently seen, is dropped
    assert lim.take("a") == 0.0  # and starts again with a full bucket


def test_the_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)

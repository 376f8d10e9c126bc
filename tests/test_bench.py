"""``fastbp.bench``'s timing rule: the median over at least ``repeats`` calls and at least
``min_seconds`` of them."""
import time

from fastbp.bench import median_time


def test_median_time_calls_at_least_repeats_times_and_for_at_least_min_seconds():
    calls = []

    def nap():
        calls.append(None)
        time.sleep(0.005)

    t, times = median_time(nap, 3)
    assert len(calls) == len(times) == 3 and t >= 0.005
    calls.clear()
    t, times = median_time(nap, 3, min_seconds=0.1)
    assert len(calls) == len(times) >= 10 and sum(times) >= 0.1
    assert sum(times[:-1]) < 0.1  # and no call more than it takes


def test_a_tie_is_a_blas_bound_point_within_three_percent():
    from fastbp.bench import is_tie
    bound = {"fastbp": 96.0, "numpy": 99.0, "jax": 101.0}
    assert is_tie(bound, 0.975) and is_tie(bound, 0.97)
    assert not is_tie(bound, 0.96)  # more than 3% behind
    assert not is_tie(bound, 1.02)  # ahead: no tie needed
    assert not is_tie({**bound, "sklearn": 80.0}, 0.99)  # a peer below 95%: not BLAS-bound

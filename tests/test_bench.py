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

"""``fastbp.bench``'s timing rule: the median over at least ``repeats`` calls and at least
``min_seconds`` of them, implementations called in turn."""
import time

from fastbp.bench import interleaved_times, median_time


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


class FakeClock:
    """``time`` for fastbp.bench: calls and pauses advance it exactly, so the test times nothing."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_implementations_are_timed_in_turn_with_a_gap_between_different_ones(monkeypatch):
    from fastbp import bench
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    takes = {"a": 0.002, "b": 0.004, "c": 0.03}
    calls = []  # (name, start, end) of every call, timed or not

    def fn(name):
        def call():
            start = clock.now
            clock.now += takes[name]
            calls.append((name, start, clock.now))
        return call

    timed = interleaved_times({n: fn(n) for n in takes}, repeats=3, min_seconds=0.05, gap=0.02)
    names = [n for n, _, _ in calls]
    switches = [i for i in range(1, len(names)) if names[i] != names[i - 1]]
    # rounds in turn, the order reversed each round (a b c, c b a, a b c); "c" has its 3 calls
    # and 0.05 s then, and "a" and "b" go on in turn until their calls add up to 0.05 s
    turns = [names[0]] + [names[i] for i in switches]
    assert turns[:7] == ["a", "b", "c", "b", "a", "b", "c"] and set(turns[7:]) == {"a", "b"}
    for i in switches:  # a switch waited for the gap after the previous call ended
        assert abs(calls[i][1] - calls[i - 1][2] - 0.02) < 1e-12
    for i in range(1, len(names)):  # and no pause without a switch
        if i not in switches:
            assert calls[i][1] == calls[i - 1][2]
    # after a switch, a fn whose calls are shorter than the gap ("a", "b") is called once
    # untimed first; "c" never
    untimed = {n: 0 for n in takes}
    for i in switches:
        if names[i] in names[:i] and names[i] != "c":
            assert names[i + 1] == names[i]
            untimed[names[i]] += 1
    for n, (median, times) in timed.items():
        assert len(times) == names.count(n) - untimed[n] >= 3
        assert max(abs(t - takes[n]) for t in times) < 1e-12 and abs(median - takes[n]) < 1e-12
        assert sum(times) >= 0.05 and sum(times[:-1]) < 0.05 or len(times) == 3
    assert untimed["c"] == 0 and untimed["a"] > 0 and untimed["b"] > 0


def test_a_tie_is_a_blas_bound_point_within_three_percent():
    from fastbp.bench import is_tie
    bound = {"fastbp": 96.0, "numpy": 99.0, "jax": 101.0}
    assert is_tie(bound, 0.975) and is_tie(bound, 0.97)
    assert not is_tie(bound, 0.96)  # more than 3% behind
    assert not is_tie(bound, 1.02)  # ahead: no tie needed
    assert not is_tie({**bound, "sklearn": 80.0}, 0.99)  # a peer below 95%: not BLAS-bound


def test_the_grid_report_holds_each_points_fastest_peer_ratio_and_share_of_the_matmul_rate():
    """``run_grid`` on two small points, in turn with lean NumPy: the report's ratios, shares of
    the matmul rate and geometric mean follow from its own times (asv's Grid tracks that mean; CI
    runs the grid here, on two points, not in the asv run: the whole grid took 3.5 of CI's 15
    minutes)."""
    import numpy as np

    from fastbp import bench
    from fastbp import workloads as wl
    names = ["G03", "G07"]
    report = bench.run_grid(["fastbp", "numpy"], quick=True, progress=False, names=names)
    assert [r["point"] for r in report["grid"]] == names
    for r in report["grid"]:
        t = r["seconds_per_epoch"]
        assert sorted(t) == ["fastbp", "numpy"]
        assert all(np.isfinite(s) and s > 0 for s in t.values())
        assert r["fastest_peer"] == "numpy" and r["ratio"] == t["numpy"] / t["fastbp"]
        assert r["samples"] == wl.GRID[r["point"]][0].samples
        rate = report["matmul_gflops"][r["dtype"]]  # quick: the run's start rate
        assert r["matmul_gflops"] == rate > 0
        flops = wl.training_flops(r["point"], r["samples"])
        for impl, s in t.items():
            assert np.isclose(r["pct_matmul"][impl], 100 * flops / s / 1e9 / rate, rtol=1e-12)
    ratios = [r["ratio"] for r in report["grid"]]
    assert np.isclose(report["geomean"], np.prod(ratios) ** (1 / len(ratios)), rtol=1e-12)


def test_the_grid_times_each_implementation_as_often_as_asked(monkeypatch, capsys):
    """--repeats sets the timed calls whose median the grid reports; fewer than one is refused
    before anything runs."""
    import pytest

    from fastbp import bench
    seen, real = [], bench.interleaved_times

    def spy(calls, repeats, *args, **kwargs):
        seen.append((sorted(calls), repeats))
        return real(calls, repeats, *args, **kwargs)
    monkeypatch.setattr(bench, "interleaved_times", spy)
    bench.run_grid(["fastbp", "numpy"], quick=True, progress=False, names=["G03"], repeats=4)
    assert seen[-1] == (["fastbp", "numpy"], 4)
    for bad in ("0", "-2"):
        with pytest.raises(SystemExit):
            bench.main(["--grid", "--repeats", bad])
        assert "--repeats must be at least 1" in capsys.readouterr().err


def test_a_json_file_that_cannot_be_written_is_refused_before_the_run(tmp_path, monkeypatch,
                                                                     capsys):
    """``--json`` is tried before anything runs (a grid run takes minutes); an existing file is
    left as it was, and a writable new name leaves no file behind when the run is refused."""
    import pytest

    from fastbp import bench
    monkeypatch.setattr(bench, "run_grid", lambda *a, **k: pytest.fail("the run started"))
    kept = tmp_path / "kept.json"
    kept.write_text("earlier results")
    cases = [(tmp_path, "it is a folder"),
             (tmp_path / "missing" / "r.json", "does not exist")]
    for path, words in cases:
        with pytest.raises(SystemExit):
            bench.main(["--grid", "--json", str(path)])
        err = capsys.readouterr().err
        assert f"--json {path}: cannot write the results there" in err and words in err
    assert bench._json_problem(str(kept)) is None
    assert kept.read_text() == "earlier results"
    assert bench._json_problem(str(tmp_path / "new.json")) is None
    assert not (tmp_path / "new.json").exists()


def test_asvs_grid_benchmark_tracks_the_grid_geometric_mean(monkeypatch):
    """The asv benchmark behind the tracked geometric mean runs (on one point here: see above)."""
    import importlib
    from pathlib import Path

    import numpy as np

    from fastbp import workloads as wl
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    tracking = importlib.import_module("benchmarks.bench_tracking")
    monkeypatch.setattr(wl, "GRID", {"G07": wl.GRID["G07"]})
    value = tracking.Grid().track_grid_geomean()
    assert isinstance(value, float) and np.isfinite(value) and value > 0

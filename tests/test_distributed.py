"""Data-parallel fit over MPI: each test launches ``mpiexec -n 2`` on a small script (bounded by a
timeout, so a hang fails instead of blocking CI)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fastbp.distributed import share

pytest.importorskip("mpi4py")
MPIEXEC = next((str(p) for p in (Path(sys.executable).parent / "mpiexec", shutil.which("mpiexec"))
                if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'fastbp[mpi]')")

TIMEOUT = 120


def mpirun(tmp_path, ranks, body, timeout=TIMEOUT):
    """Run body under ``mpiexec -n ranks``; returns the CompletedProcess (TimeoutExpired, a
    failure, if it outlasts timeout)."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        import fastbp
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        out = sys.argv[1]
    """) + textwrap.dedent(body))
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_share_splits_rows_evenly():
    for n in (0, 1, 7, 16, 103):
        for size in (1, 2, 3, 5):
            parts = [share(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


FIT_BODY = """
    rng = np.random.default_rng(0)
    X = rng.standard_normal((103, 6))
    y = {y}
    kw = dict(epochs=4, batch_size={batch}, shuffle=True, {opt})
    net = fastbp.Network([6, 9, 7, {out}], activation="tanh", loss="{loss}", seed=1,
                         dtype=np.float64)
    hist = net.fit(X, y, comm=comm, **kw)
    np.save(f"{{out}}/params_{{comm.rank}}.npy", net._params)
    np.save(f"{{out}}/loss_{{comm.rank}}.npy", np.array(hist.loss))
    if comm.rank == 0:
        single = fastbp.Network([6, 9, 7, {out}], activation="tanh", loss="{loss}", seed=1,
                                dtype=np.float64)
        single_hist = single.fit(X, y, **kw)
        np.save(f"{{out}}/single.npy", single._params)
        np.save(f"{{out}}/single_loss.npy", np.array(single_hist.loss))
"""


SGD = "lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01"
ADAMW = "optimizer='adamw', lr=0.01, schedule='cosine'"


@pytest.mark.parametrize("loss,batch,opt", [("cross_entropy", 16, SGD), ("mse", 25, SGD),
                                            ("bce", None, SGD), ("cross_entropy", 16, ADAMW)])
def test_two_ranks_match_one_process_and_each_other(tmp_path, loss, batch, opt):
    y, out = {"cross_entropy": ("rng.integers(0, 3, 103)", 3),
              "mse": ("rng.standard_normal((103, 2))", 2),
              "bce": ("rng.integers(0, 2, 103)", 1)}[loss]
    run = mpirun(tmp_path, 2, FIT_BODY.format(y=y, batch=batch, out=out, loss=loss, opt=opt))
    assert run.returncode == 0, run.stderr
    single = np.load(tmp_path / "single.npy")
    ranks = [np.load(tmp_path / f"params_{r}.npy") for r in range(2)]
    assert np.array_equal(ranks[0], ranks[1])  # identical on every rank
    assert np.abs(ranks[0] - single).max() / np.abs(single).max() < 1e-10
    losses = np.load(tmp_path / "loss_0.npy")
    single_loss = np.load(tmp_path / "single_loss.npy")
    assert np.allclose(losses, single_loss, rtol=1e-10, atol=0)


def test_sharded_data_matches_the_replicated_run(tmp_path):
    run = mpirun(tmp_path, 2, """
        rng = np.random.default_rng(0)
        X = rng.standard_normal((40, 5))
        y = rng.standard_normal((40, 2))
        kw = dict(epochs=3, lr=0.05, batch_size=20, shuffle=False)
        whole = fastbp.Network([5, 6, 2], loss="mse", seed=3, dtype=np.float64)
        whole.fit(X, y, comm=comm, **kw)
        # rank r holds rows 10r..10r+9 and 20+10r..20+10r+9: its share of each global batch
        rows = np.r_[10 * comm.rank:10 * comm.rank + 10, 20 + 10 * comm.rank:30 + 10 * comm.rank]
        shard = fastbp.Network([5, 6, 2], loss="mse", seed=3, dtype=np.float64)
        shard.fit(X[rows], y[rows], comm=comm, sharded=True, **kw)
        err = np.abs(shard._params - whole._params).max() / np.abs(whole._params).max()
        assert err < 1e-12, err
        print("ok", comm.rank)
    """)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("ok") == 2


def test_bad_input_on_one_rank_raises_on_every_rank(tmp_path):
    run = mpirun(tmp_path, 2, """
        rng = np.random.default_rng(0)
        X = rng.standard_normal((20, 4))
        if comm.rank == 1:
            X[3, 2] = np.nan
        net = fastbp.Network([4, 5, 3], seed=0)
        before = net._params.copy()
        try:
            net.fit(X, rng.integers(0, 3, 20), comm=comm, epochs=2)
        except ValueError as exc:
            assert np.array_equal(net._params, before)
            print(f"rank {comm.rank}: {exc}")
    """)
    assert run.returncode == 0, run.stderr
    assert "rank 1: X contains NaN" in run.stdout
    assert "rank 0: rank 1 of 2 refused its input" in run.stdout


def test_a_rank_failing_mid_fit_ends_the_job_with_a_clear_error(tmp_path):
    run = mpirun(tmp_path, 2, """
        from fastbp import distributed
        if comm.rank == 1:
            calls = [0]
            original = distributed.Reducer.sum
            def failing(self, buf):
                calls[0] += 1
                if calls[0] == 3:
                    raise RuntimeError("injected failure")
                return original(self, buf)
            distributed.Reducer.sum = failing
        rng = np.random.default_rng(0)
        X = rng.standard_normal((64, 6))
        net = fastbp.Network([6, 8, 3], seed=1)
        net.fit(X, rng.integers(0, 3, 64), comm=comm, epochs=50, batch_size=8)
        print("finished", comm.rank)
    """)  # a hang would raise subprocess.TimeoutExpired here
    assert run.returncode != 0
    assert "rank 1 of 2 failed in fit: RuntimeError: injected failure" in run.stderr
    assert "finished" not in run.stdout


def test_divergence_is_raised_on_every_rank(tmp_path):
    run = mpirun(tmp_path, 2, """
        rng = np.random.default_rng(0)
        X = rng.standard_normal((32, 4))
        y = rng.standard_normal((32, 2)) * 1e3
        net = fastbp.Network([4, 8, 2], activation="identity", loss="mse", seed=0,
                             dtype=np.float64)
        try:
            net.fit(X, y, comm=comm, epochs=200, lr=50.0, batch_size=8)
        except fastbp.DivergenceError as exc:
            assert np.isfinite(net._params).all()
            print(f"rank {comm.rank} diverged")
    """)
    assert run.returncode == 0, run.stderr
    assert "rank 0 diverged" in run.stdout and "rank 1 diverged" in run.stdout


def test_ranks_on_one_node_share_its_cores(tmp_path):
    run = mpirun(tmp_path, 2, """
        import os
        X = np.random.default_rng(0).standard_normal((16, 3))
        h = fastbp.Network([3, 4, 2], seed=0).fit(X, np.zeros(16, int), comm=comm, epochs=1)
        np.save(f"{out}/threads_{comm.rank}.npy", [h.comm["threads_per_rank"], os.cpu_count()])
    """)
    assert run.returncode == 0, run.stderr
    for rank in range(2):
        threads, cores = np.load(tmp_path / f"threads_{rank}.npy")
        assert threads == max(1, cores // 2)

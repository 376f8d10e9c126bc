"""The one driver: fit's options come from one table, every path shares the engine, and the
fixes that fell out of it (best_epoch after a resume, the explicit start of Numba's pool)."""
import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastbp
from fastbp import config

from conftest import make_data


def test_fit_signature_and_docs_come_from_the_option_table():
    params = list(inspect.signature(fastbp.Network.fit).parameters)
    assert params == ["self", "X", "y", *config.OPTIONS]
    for name in config.OPTIONS:
        assert f"{name} (default" in fastbp.Network.fit.__doc__


def test_an_unknown_option_is_refused_by_name():
    X, y = make_data("mse", 8, 3, 2)
    net = fastbp.Network([3, 4, 2], loss="mse")
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        net.fit(X, y, epoch=3)


def test_best_epoch_after_a_resume_is_the_runs_epoch_with_the_kept_weights():
    X, y = make_data("cross_entropy", 60, 5, 3, seed=2)
    Xv, yv = make_data("cross_entropy", 30, 5, 3, seed=9)
    net = fastbp.Network([5, 32, 3], seed=0, dtype=np.float64)
    seen = {}
    keep = lambda epoch, loss, val_loss, n: seen.__setitem__(epoch, n._params.copy())  # noqa: E731
    kw = dict(batch_size=10, lr=0.5, validation_data=(Xv, yv), early_stopping=True, patience=3,
              callbacks=[keep])
    for call in (dict(epochs=30), dict(epochs=3, resume=True)):
        hist = net.fit(X, y, **call, **kw)
        assert 1 <= hist.best_epoch <= net.epoch
        assert np.array_equal(seen[hist.best_epoch], net._params)


def test_the_estimators_report_divergence_as_fit_does():
    pytest.importorskip("sklearn")
    from fastbp.sklearn import MLPRegressor
    X, y = make_data("mse", 40, 4, 1, seed=1)
    est = MLPRegressor(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=1e3,
                       max_iter=50, random_state=0)
    with pytest.raises(fastbp.DivergenceError, match="Solver produced non-finite") as info:
        est.fit(X * 1e3, y[:, 0] * 1e6)
    assert isinstance(info.value, ValueError)  # scikit-learn's type for the same failure
    assert np.isfinite(est._net._params).all()


KERNEL_CALLER = textwrap.dedent("""
    import numpy as np
    from fastbp import _kernels as K
    # the non-parallel cached caller of parallel=True kernels (Numba issue #8578), directly
    rng = np.random.default_rng(0)
    layout = np.array([[3, 5, 0, 15], [5, 2, 20, 30]], dtype=np.int64)
    params = rng.standard_normal(32)
    X, Y = rng.standard_normal((11, 3)), rng.standard_normal((11, 2))
    grads = np.empty(32)
    ws = (np.empty(33), np.empty(22), np.empty(77), np.empty(110), np.empty(11), np.zeros(1))
    v = K.BATCH_GRADIENTS[False][K.LOSS_MSE](grads, params, X, None, Y, np.empty(0),
                                             np.arange(11), 0, 11, layout, np.array([3]),
                                             np.array([True, True]), np.zeros(2), *ws)
    assert np.isfinite(v)
    print("ok")
""")


def test_kernel_level_callers_run_from_a_warm_cache_in_fresh_processes(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    fit = ("import numpy as np, fastbp; X = np.random.default_rng(0).standard_normal((8, 3)); "
           "fastbp.Network([3, 4, 2], loss='mse', dtype=np.float64).fit(X, X[:, :2], epochs=1)")
    subprocess.run([sys.executable, "-c", fit], env=env, check=True, timeout=600)
    for _ in range(2):  # the first may compile the caller; the second loads it from the cache
        run = subprocess.run([sys.executable, "-c", KERNEL_CALLER], env=env, timeout=600,
                             capture_output=True, text=True)
        assert run.returncode == 0 and "ok" in run.stdout, (run.returncode, run.stderr[-2000:])


@pytest.mark.parametrize("sizes,batch", [([6, 9, 3], 4), ([64, 96, 80, 10], 32)])
def test_how_a_run_is_cut_into_compiled_calls_never_changes_a_bit(monkeypatch, sizes, batch):
    from fastbp import engine, training
    X, y = make_data("cross_entropy", 200, sizes[0], sizes[-1], seed=3)
    kw = dict(epochs=5, batch_size=batch, optimizer="adam", lr=0.01, schedule="cosine")
    whole = fastbp.Network(sizes, seed=2, dtype=np.float64)
    h_whole = whole.fit(X, y, **kw)
    # every epoch in pieces of one batch, each a compiled call of its own
    monkeypatch.setattr(engine, "WORK_PER_CALL", 1)
    monkeypatch.setattr(engine, "CALL_SECONDS", 0.0)
    monkeypatch.setattr(training, "CALL_SECONDS", 0.0)  # and pieces never turn back to epochs
    cut = fastbp.Network(sizes, seed=2, dtype=np.float64)
    h_cut = cut.fit(X, y, **kw)
    assert np.array_equal(whole._params, cut._params)
    assert h_whole.loss == h_cut.loss

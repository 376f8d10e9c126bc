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

from conftest import make_data, rel_err


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
    ws = (np.empty(33), np.empty(22), np.empty(77), np.empty(110), np.empty(11),
          np.zeros(2 + K.CHUNKS))
    v = K.BATCH_LAYERS[K.LOSS_MSE](grads, params, X, None, Y, np.empty(0), np.arange(11), 0, 11,
                                   layout, np.array([3]), *ws, params[:0])
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


# One-batch epochs of plain SGD skip the epoch's backup when _kernels.bounded_step proves the
# step keeps every parameter finite. The same run through pieces (a callback makes every epoch a
# separate engine.epoch, backed up in Python, no bound) must give the same bits, also when it
# diverges; and whatever the bound claims must hold.

def _one_batch_net(loss, act, dtype, scale=1.0):
    """(net, X, y): 64 rows through BLAS-sized layers (the per-layer kernels), the weights
    scaled."""
    sizes = [64, 96, 80, 1 if loss == "bce" else 10]
    X, y = make_data(loss, 64, sizes[0], sizes[-1], seed=5, dtype=dtype)
    net = fastbp.Network(sizes, activation=act, loss=loss, seed=1, dtype=dtype)
    net._params *= dtype(scale)
    return net, X, y


def _one_batch_fit(loss, act, dtype, scale, lr, pieces, weights=None):
    net, X, y = _one_batch_net(loss, act, dtype, scale)
    kw = dict(callbacks=[lambda *args: None]) if pieces else {}
    if weights is not None:
        kw["sample_weight"] = weights
    try:
        net.fit(X, y, epochs=4, batch_size=64, lr=lr, **kw)
        error = None
    except fastbp.DivergenceError as e:
        error = str(e)
    return net, error


def _claims_bounded(net, X, y, lr, bound=None, carried=False):
    from fastbp import _kernels as K
    xmax, ymax, scale = K.data_bounds(X, net._XY(X, y)[1], np.empty(0, net.dtype))
    bound = np.empty((3, net._layout.shape[0])) if bound is None else bound
    return K.bounded_step(net._params, net._layout, net._acts, xmax, ymax, scale, X.shape[0],
                          net._loss.code, net.dtype.type(lr), bound, carried)


@pytest.mark.parametrize("loss", ["cross_entropy", "bce", "mse", "poisson"])
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_batch_epochs_without_a_backup_give_the_backed_up_bits(loss, act, dtype):
    # the run below takes the path without backups; except poisson after relu layers, whose
    # logits' bound is in the thousands and its exp overflows: those epochs keep their backup
    fresh, X, y = _one_batch_net(loss, act, dtype)
    assert _claims_bounded(fresh, X, y, 0.01) == (loss != "poisson" or act != "relu")
    a, err_a = _one_batch_fit(loss, act, dtype, 1.0, 0.01, pieces=False)
    b, err_b = _one_batch_fit(loss, act, dtype, 1.0, 0.01, pieces=True)
    assert err_a is None and err_b is None
    assert np.array_equal(a._params, b._params)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_one_batch_epochs_with_sample_weights_give_the_backed_up_bits(loss):
    """The weights' largest factor on a row's delta enters the bound (and the bits match)."""
    w = np.random.default_rng(8).uniform(0.0, 5.0, 64)
    w[:3] = 0.0
    a, err_a = _one_batch_fit(loss, "relu", np.float32, 1.0, 0.01, False, w)
    b, err_b = _one_batch_fit(loss, "relu", np.float32, 1.0, 0.01, True, w)
    assert err_a is None and err_b is None
    assert np.array_equal(a._params, b._params)


@pytest.mark.parametrize("scale,lr", [(1.0, 1e36), (1e18, 0.1), (1e15, 10.0), (1e30, 1e-3)])
@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_a_diverging_one_batch_epoch_is_undone_as_with_a_backup(scale, lr, act):
    """Huge steps (the bound fails: the epoch is backed up) and huge weights (the bound may hold,
    and the loss overflows before any step): the same epoch count, error and parameters as the
    backed-up path, every parameter finite."""
    a, err_a = _one_batch_fit("cross_entropy", act, np.float32, scale, lr, pieces=False)
    b, err_b = _one_batch_fit("cross_entropy", act, np.float32, scale, lr, pieces=True)
    assert err_a == err_b
    assert a.epoch == b.epoch
    assert np.array_equal(a._params, b._params)
    assert np.isfinite(a._params).all()


@pytest.mark.parametrize("loss", ["cross_entropy", "bce", "mse", "poisson"])
@pytest.mark.parametrize("scale", [1e-2, 1e6, 1e15, 1e18])
@pytest.mark.parametrize("lr", [1e-3, 1e3, 1e12, 1e30])
def test_what_the_bound_claims_holds(loss, scale, lr):
    """Where bounded_step says a step keeps every parameter finite, one epoch's step leaves them
    finite and below a quarter of float32's largest value (or, the loss having overflowed, no
    step was taken at all)."""
    net, X, y = _one_batch_net(loss, "relu", np.float32, scale)
    before = net._params.copy()
    claims = _claims_bounded(net, X, y, lr)
    try:
        net.fit(X, y, epochs=1, batch_size=64, lr=lr)
        stepped = True
    except fastbp.DivergenceError:
        stepped = False
    assert np.isfinite(net._params).all()
    if not stepped:
        assert np.array_equal(net._params, before)
    elif claims:
        assert np.abs(net._params).max() <= np.finfo(np.float32).max / 4


@pytest.mark.parametrize("loss", ["cross_entropy", "bce", "mse", "poisson"])
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("scale,lr", [(1.0, 0.01), (1.0, 10.0), (1e6, 1e3), (1e15, 1e-3)])
def test_the_bounds_carried_to_the_next_epoch_bound_its_parameters(loss, act, scale, lr):
    """Where bounded_step says a step is safe, the bounds it leaves (what the next epoch's check
    starts from instead of reading the parameters, as the compiled loop does) are at least each
    layer's largest |W| and |b| after the step; and a check from carried bounds never claims
    what the check from the parameters themselves refuses (larger bounds only refuse more)."""
    from fastbp import _kernels as K
    net, X, y = _one_batch_net(loss, act, np.float32, scale)
    layers = net._layout.shape[0]
    bound = np.empty((3, layers))
    carried = False
    checked = 0
    for epoch in range(3):
        claims = carried and _claims_bounded(net, X, y, lr, bound, carried=True)
        if claims:
            assert _claims_bounded(net, X, y, lr)
        else:  # too loose (or nothing carried): the parameters' own bounds
            claims = _claims_bounded(net, X, y, lr, bound)
        if not claims:
            break
        try:
            net.fit(X, y, epochs=1, batch_size=64, lr=lr)
        except fastbp.DivergenceError:
            break
        for l in range(layers):
            W, b = K.layer_views(net._params, net._layout, l)
            assert np.abs(W.astype(np.float64)).max() <= bound[0, l]
            assert np.abs(b.astype(np.float64)).max() <= bound[1, l]
        carried = True
        checked += 1
    if scale == 1.0 and lr == 0.01 and not (loss == "poisson" and act == "relu"):
        assert checked == 3  # every step safe: all three checked


def test_a_forward_pass_that_overflows_is_never_taken_as_bounded():
    """float32: the first layer's z overflows to inf, the second layer's negative weights and its
    sigmoid turn that into 0, so the loss stays finite, the step runs, and the second layer's
    weight gradient is inf * 0 = NaN. The bounds on the steps alone pass (checked: the epoch then
    ended with NaN weights and no error); the bound on z refuses, so the epoch is backed up and
    undone, as on the backed-up path."""
    from fastbp import _kernels as K
    X = np.full((64, 64), 10.0, np.float32)
    y = np.arange(64) % 10
    for pieces in (False, True):
        net = fastbp.Network([64, 96, 80, 10], activation=["relu", "sigmoid"], seed=0,
                             dtype=np.float32)
        for l, value in ((0, 1e37), (1, -1.0)):
            W, b = K.layer_views(net._params, net._layout, l)
            W[...] = value
            b[...] = 0
        before = net._params.copy()
        if not pieces:
            assert not _claims_bounded(net, X, y, 1e-3)
        with pytest.raises(fastbp.DivergenceError):
            net.fit(X, y, epochs=1, batch_size=64, lr=1e-3,
                    **(dict(callbacks=[lambda *a: None]) if pieces else {}))
        assert np.array_equal(net._params, before)


def test_every_plan_of_a_network_calls_one_batch_kernel_compiled_apart(monkeypatch):
    """A network run by the per-layer kernels compiles its training loop once per plan (plain
    SGD, an optimiser, an L2 penalty, bounded one-batch epochs), and each calls the batch kernel
    through the address it is handed (``_batch``): one address for the same arrays' types,
    another for batches in row chunks (whose runner argument is a number), none for the fused
    loop. The kernel's maths is tested against the reference elsewhere; here, that the plans
    share it and give the bits of a run cut into single epochs."""
    from fastbp import _batch
    handed = []
    real = _batch.address
    monkeypatch.setattr(_batch, "address", lambda *a: handed.append(real(*a)) or handed[-1])
    X, y = make_data("cross_entropy", 256, 64, 3, seed=5)
    # batches of 64 rows and fewer run whole at these sizes, of 128 and more in row chunks
    plans = [dict(), dict(optimizer="adam"), dict(optimizer="adam", l2=(1e-3, 1e-3)),
             dict(momentum=0.9), dict(batch_size=32), dict(batch_size=32, optimizer="adam")]
    for kw in plans:
        kw.setdefault("batch_size", 64)  # one batch an epoch unless given
        net = fastbp.Network([64, 64, 3], seed=0, dtype=np.float64)
        net.fit(X[:64], y[:64], epochs=3, lr=0.05, **kw)
        one = fastbp.Network([64, 64, 3], seed=0, dtype=np.float64)
        for _ in range(3):
            one.fit(X[:64], y[:64], epochs=1, lr=0.05, resume=one.epoch > 0, **kw)
        assert np.array_equal(net._params, one._params), kw
    whole = set(handed)
    assert len(whole) == 1 and 0 not in whole
    handed.clear()
    fastbp.Network([64, 64, 3], seed=0, dtype=np.float64).fit(X, y, epochs=1, batch_size=128)
    assert len(set(handed)) == 1 and not set(handed) & whole and 0 not in handed  # row chunks
    handed.clear()
    fastbp.Network([4, 5, 3], seed=0).fit(X[:, :4], y, epochs=1, batch_size=32)
    assert handed == []  # the fused loop: no batch kernel to hand


def test_the_full_batch_gradients_call_the_batch_kernel_that_training_compiled(monkeypatch):
    """scikit-learn's L-BFGS (and Network.gradients on sparse input, and MPI's steps) take their
    gradients through the batch kernel's address, the one the training loop on arrays of the
    same types is handed: one compile of the pass serves both. The gradient is the mean loss's,
    as Network.gradients computes it with the per-layer kernels called one by one."""
    from fastbp import _batch, engine
    handed = []
    real = _batch.address
    monkeypatch.setattr(_batch, "address",
                        lambda *a, **k: handed.append(real(*a, **k)) or handed[-1])
    X, y = make_data("cross_entropy", 64, 64, 3, seed=5)
    net = fastbp.Network([64, 64, 3], seed=0, dtype=np.float64)
    net.fit(X, y, epochs=1, batch_size=64)  # whole batches (not row chunks) at these sizes
    Xc, Y, _ = net._XY(X, y)
    full = engine.FullBatch(net, Xc, Y, np.empty(0))
    with full.threads():
        value, grads = full()
    assert len(handed) == 2 and handed[0] == handed[1] != 0
    dW, db = net.gradients(X, y)
    expected = np.empty_like(grads)
    for (W, b), w, bias in zip(net._views(expected), dW, db):
        W[...], b[...] = w, bias
    assert np.isfinite(value) and rel_err(grads, expected) < 1e-12


def test_the_batch_kernel_refuses_arguments_of_other_types_than_its_own():
    """Called through its address with arguments of other types than it was compiled for, the
    batch kernel raises instead of reading them as its own (the fingerprint, see
    _kernels.call_at)."""
    from numba import njit

    from fastbp import _batch
    from fastbp import _kernels as K
    from fastbp.engine import workspaces
    X, y = make_data("mse", 64, 64, 3, seed=6)
    net = fastbp.Network([64, 64, 3], loss="mse", seed=0, dtype=np.float64)
    net.fit(X, y, epochs=1, batch_size=64)
    ws, grads = workspaces(net, 64, 3), np.empty_like(net._params)
    order, lrs = np.arange(64)[None, :], np.full(1, 0.1)
    at = _batch.address(net, grads, X, None, y, np.empty(0), order, lrs, ws, False)

    @njit
    def through(at, *args):
        return K._batch_through(at, K.LOSS_MSE, *args)

    args = [grads, net._params, X, None, y, np.empty(0), order[0], 0, 64, net._layout, net._acts,
            *ws, lrs[:1], None]
    before = net._params.copy()
    assert np.isfinite(through(at, *args))  # its own types: runs, the step taken
    assert not np.array_equal(net._params, before)
    args[2] = X.astype(np.float32)
    with pytest.raises(TypeError, match="arguments of other types than it was compiled for"):
        through(at, *args)


def _compiles():
    """How many compiled versions every Numba dispatcher of fastbp holds."""
    import numba

    from fastbp import _kernels, _pcg
    seen, count = set(), 0

    def walk(obj):
        nonlocal count
        if isinstance(obj, numba.core.dispatcher.Dispatcher) and id(obj) not in seen:
            seen.add(id(obj))
            count += len(obj.overloads)
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                walk(item)

    for module in (_kernels, _pcg):
        for value in vars(module).values():
            walk(value)
    return count


def test_read_only_data_runs_on_the_kernels_writable_data_compiled(tmp_path):
    """Numba compiles a read-only array apart from a writable one; the data reach the kernels
    read-only either way, so a fit, prediction, score or gradient on a read-only X and y (here a
    memmap opened 'r', as joblib shares arrays, held in memory) compiles nothing that the
    writable fit did not."""
    import scipy.sparse as sp
    X, y = make_data("cross_entropy", 96, 6, 3, seed=2)
    path = tmp_path / "X.npy"
    np.save(path, X)
    frozen_y = y.copy()
    frozen_y.flags.writeable = False

    def every_call(X, y):
        out = []
        for sizes, kw in (([6, 5, 3], {}),  # the fused loop
                          ([6, 300, 3], dict(optimizer="adam", validation_data=(X, y))),
                          ([6, 300, 3], dict(validation_split=0.25, sample_weight=np.ones(96)))):
            net = fastbp.Network(sizes, seed=0, dtype=np.float64)  # X's: no copy
            net.fit(X, y, epochs=2, batch_size=32, stream=False, **kw)
            out += [net._params.copy(), net.predict_proba(X), net.score(X, y),
                    *net.gradients(X, y)[0]]
        net = fastbp.Network([6, 4, 3], seed=0, dtype=np.float64)
        net.fit(sp.csr_matrix(X), y, epochs=2, batch_size=32)
        return out + [net._params.copy(), net.predict_proba(sp.csr_matrix(X))]

    writable = every_call(X, y)
    compiled = _compiles()
    read_only = every_call(np.load(path, mmap_mode="r"), frozen_y)
    assert _compiles() == compiled
    for a, b in zip(writable, read_only):
        assert np.array_equal(a, b)

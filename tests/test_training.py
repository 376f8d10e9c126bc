"""Training: the seed exercise, SGD against torch.optim.SGD and the reference, reproducibility."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastbp
from fastbp import reference as ref

from conftest import XOR_X, XOR_Y, make_data, out_width, rel_err


def test_xor_learns_for_at_least_19_of_20_seeds():
    """The lab exercise (2-4-1 sigmoid, bce, lr 1.0) that printed 'Loss: 0.6931' for ever."""
    solved = []
    for seed in range(20):
        net = fastbp.Network([2, 4, 1], activation="sigmoid", loss="bce", seed=seed,
                             dtype=np.float64)
        hist = net.fit(XOR_X, XOR_Y, epochs=1000, lr=1.0, shuffle=False)
        if min(hist.loss) < 0.05 and net.loss(XOR_X, XOR_Y) < 0.05 and \
                list(net.predict(XOR_X)) == [0, 1, 1, 0]:
            solved.append(seed)
    assert len(solved) >= 19, f"solved only seeds {solved}"


def test_history_has_one_loss_per_epoch_and_falls():
    net = fastbp.Network([2, 4, 1], activation="sigmoid", loss="bce", seed=0, dtype=np.float64)
    hist = net.fit(XOR_X, XOR_Y, epochs=300, lr=1.0, shuffle=False)
    assert len(hist.loss) == 300 and all(isinstance(v, float) for v in hist.loss)
    assert hist.loss[-1] < hist.loss[0]


def test_log_every_prints_the_epoch_loss(capsys):
    net = fastbp.Network([2, 4, 1], activation="sigmoid", loss="bce", seed=0, dtype=np.float64)
    hist = net.fit(XOR_X, XOR_Y, epochs=30, lr=1.0, shuffle=False, log_every=10)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for k, line in zip((10, 20, 30), lines):
        assert line.startswith(f"epoch {k}  loss {hist.loss[k - 1]:.4f}  accuracy "
                               f"{hist.accuracy[k - 1]:.4f}  ")
        assert line.endswith(" samples/s")


def test_fit_without_log_every_prints_nothing(capsys):
    net = fastbp.Network([2, 4, 1], activation="sigmoid", loss="bce", seed=0)
    net.fit(XOR_X, XOR_Y, epochs=5, lr=1.0)
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------- against the reference


@pytest.mark.parametrize("loss,act", [("cross_entropy", "relu"), ("mse", "tanh"),
                                      ("bce", "leaky_relu")])
@pytest.mark.parametrize("shuffle", [False, True])
def test_minibatch_fit_matches_reference_trajectory(loss, act, shuffle):
    """Shuffled minibatches (last one short), momentum, weight decay: same weights and same
    per-epoch losses as the plain NumPy reference with the same seed."""
    sizes = [6, 9, 8, out_width(loss)]
    X, y = make_data(loss, 23, sizes[0], sizes[-1], seed=5)
    kw = dict(epochs=4, lr=0.1, batch_size=5, momentum=0.8, nesterov=True, weight_decay=0.01,
              shuffle=shuffle)
    net = fastbp.Network(sizes, activation=act, loss=loss, seed=2, dtype=np.float64)
    mlp = ref.MLP(sizes, activation=act, loss=loss, seed=2, dtype=np.float64)
    hist = net.fit(X, y, **kw)
    ref_hist = mlp.fit(X, y, **kw)
    assert rel_err(hist.loss, ref_hist) < 1e-12
    for got, want in zip(net.weights + net.biases, mlp.weights + mlp.biases):
        assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("sizes,blas", [([40, 64, 48, 5], True), ([3, 5, 4, 2], False)])
def test_plain_sgd_matches_reference_trajectory(sizes, blas, shuffle):
    """Plain SGD takes its step inside the backward pass (layers large enough for BLAS: each
    weight in one gemm, no gradient written out; XOR-sized networks: at the end of the fused
    loop): the same weights and losses as the reference, which computes the gradient and then
    subtracts lr times it."""
    X, y = make_data("cross_entropy", 150, sizes[0], sizes[-1], seed=6)
    kw = dict(epochs=4, lr=0.1, batch_size=32, shuffle=shuffle)
    net = fastbp.Network(sizes, activation="tanh", seed=3, dtype=np.float64)
    assert net._blas_sized(32) == blas
    mlp = ref.MLP(sizes, activation="tanh", loss="cross_entropy", seed=3, dtype=np.float64)
    hist = net.fit(X, y, **kw)
    ref_hist = mlp.fit(X, y, **kw)
    assert rel_err(hist.loss, ref_hist) < 1e-12
    for got, want in zip(net.weights + net.biases, mlp.weights + mlp.biases):
        assert rel_err(got, want) < 1e-12


def test_initial_weights_follow_the_reference_rule():
    """He uniform before relu/leaky_relu, Glorot elsewhere and at the output, biases zero."""
    sizes, acts = [7, 9, 8, 6, 3], ["relu", "tanh", "leaky_relu"]
    net = fastbp.Network(sizes, activation=acts, loss="cross_entropy", seed=11, dtype=np.float64)
    Ws, bs = ref.init_params(sizes, acts, 11)
    for got, want in zip(net.weights + net.biases, Ws + bs):
        assert np.array_equal(got, want)


def test_float32_and_float64_start_from_the_same_draws():
    a = fastbp.Network([4, 5, 2], seed=7, dtype=np.float32)
    b = fastbp.Network([4, 5, 2], seed=7, dtype=np.float64)
    for w32, w64 in zip(a.weights, b.weights):
        assert w32.dtype == np.float32
        assert np.array_equal(w32, w64.astype(np.float32))


def test_float32_fit_tracks_float64_fit():
    X, y = make_data("cross_entropy", 40, 6, 3, seed=1)
    nets = [fastbp.Network([6, 8, 3], seed=0, dtype=dt) for dt in (np.float32, np.float64)]
    h32, h64 = (n.fit(X, y, epochs=5, lr=0.1, batch_size=8) for n in nets)
    assert rel_err(h32.loss, h64.loss) < 1e-4
    assert rel_err(nets[0].weights[0], nets[1].weights[0]) < 1e-4


# ----------------------------------------------------------------- against torch.optim.SGD


def torch_steps(net, X, y, make_optimizer, steps, torch, lrs=None):
    """The parameters of ``net`` after ``steps`` full-batch steps of a torch optimiser
    (make_optimizer(params)), the same network written in torch; lrs: a rate per step."""
    F = torch.nn.functional
    params = [torch.tensor(p.copy(), requires_grad=True) for p in net.weights + net.biases]
    L = len(net.weights)
    opt = make_optimizer(params)
    act_fn = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[net.activations[0]]
    Xt = torch.tensor(X)
    for k in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[k]
        opt.zero_grad()
        a = Xt
        for i in range(L):
            a = a @ params[i] + params[L + i]
            if i < L - 1:
                a = act_fn(a)
        if net.loss_name == "bce":
            value = F.binary_cross_entropy_with_logits(a[:, 0], torch.tensor(y, dtype=a.dtype))
        elif net.loss_name == "cross_entropy":
            value = F.cross_entropy(a, torch.tensor(y))
        else:
            value = F.mse_loss(a, torch.tensor(y))
        value.backward()
        opt.step()
    return [t.detach().numpy() for t in params]


TORCH_CASES = [("cross_entropy", "relu"), ("mse", "tanh"), ("bce", "sigmoid")]


def assert_fit_follows_torch(loss, act, make_optimizer, steps, torch, **fit_kwargs):
    """A 5-7-6-K float64 network: ``steps`` full-batch epochs of fit(**fit_kwargs) end on the
    parameters of ``steps`` torch optimiser steps, to 1e-9."""
    sizes = [5, 7, 6, out_width(loss)]
    X, y = make_data(loss, 13, sizes[0], sizes[-1], seed=9)
    net = fastbp.Network(sizes, activation=act, loss=loss, seed=4, dtype=np.float64)
    expected = torch_steps(net, X, y, make_optimizer, steps, torch)
    net.fit(X, y, epochs=steps, shuffle=False, **fit_kwargs)
    for got, want in zip(net.weights + net.biases, expected):
        assert rel_err(got, want) < 1e-9


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("loss,act", TORCH_CASES)
def test_five_sgd_steps_match_torch(loss, act, momentum, nesterov, torch):
    assert_fit_follows_torch(
        loss, act, lambda p: torch.optim.SGD(p, lr=0.2, momentum=momentum, nesterov=nesterov,
                                             weight_decay=0.01), 5, torch,
        lr=0.2, momentum=momentum, nesterov=nesterov, weight_decay=0.01)


# ----------------------------------------------------------------- reproducibility

_FIT_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, fastbp, numba
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 64))
    y = rng.integers(0, 10, 300)
    out = {}
    # At batch 64, [64, 96, 80, 10] sends every layer through BLAS (with the per-layer kernels);
    # [2, 4, 10] is small enough for the fused loop (_batch_gradients_fused).
    for name, sizes in (("blas", [64, 96, 80, 10]), ("small", [2, 4, 10])):
        for dt in (np.float32, np.float64):
            for momentum in (0.9, 0.0):  # 0: plain SGD, its step inside the backward pass
                net = fastbp.Network(sizes, activation="relu", loss="cross_entropy", seed=1,
                                     dtype=dt)
                h = net.fit(X[:, :sizes[0]], y, epochs=3, lr=0.05, batch_size=64,
                            momentum=momentum)
                out[f"{name}_{np.dtype(dt).name}_{momentum}"] = np.concatenate(
                    [net._params.astype(np.float64), h.loss])
    out["threads"] = np.array([numba.get_num_threads()])
    np.savez(sys.argv[1], **out)
""")


def _fit_in_subprocess(tmp_path, threads):
    path = tmp_path / f"fit_{threads}.npz"
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-c", _FIT_SCRIPT, str(path)], check=True, env=env,
                   timeout=600)
    return np.load(path)


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    one, two = _fit_in_subprocess(tmp_path, 1), _fit_in_subprocess(tmp_path, 2)
    assert one["threads"][0] == 1 and two["threads"][0] == 2
    for key in one.files:
        if key != "threads":
            assert np.array_equal(one[key], two[key]), key


def test_same_seed_gives_identical_bits():
    X, y = make_data("cross_entropy", 200, 64, 10, seed=3)
    runs = []
    for _ in range(2):
        net = fastbp.Network([64, 96, 80, 10], seed=5)
        h = net.fit(X, y, epochs=3, lr=0.05, batch_size=64, momentum=0.9)
        runs.append((net._params.copy(), h.loss))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_different_seeds_give_different_weights():
    a, b = fastbp.Network([4, 5, 2], seed=0), fastbp.Network([4, 5, 2], seed=1)
    assert not np.array_equal(a.weights[0], b.weights[0])


def test_shuffle_changes_the_order_each_epoch_but_not_the_data():
    X, y = make_data("mse", 20, 3, 2, seed=0)
    X_before, y_before = X.copy(), y.copy()
    shuffled = fastbp.Network([3, 4, 2], loss="mse", seed=0, dtype=np.float64)
    ordered = fastbp.Network([3, 4, 2], loss="mse", seed=0, dtype=np.float64)
    shuffled.fit(X, y, epochs=2, lr=0.1, batch_size=4, shuffle=True)
    ordered.fit(X, y, epochs=2, lr=0.1, batch_size=4, shuffle=False)
    assert not np.array_equal(shuffled.weights[0], ordered.weights[0])
    assert np.array_equal(X, X_before) and np.array_equal(y, y_before)


def test_full_batch_is_independent_of_shuffling():
    X, y = make_data("mse", 20, 3, 2, seed=0)
    a = fastbp.Network([3, 4, 2], loss="mse", seed=0, dtype=np.float64)
    b = fastbp.Network([3, 4, 2], loss="mse", seed=0, dtype=np.float64)
    a.fit(X, y, epochs=3, lr=0.1, shuffle=True)
    b.fit(X, y, epochs=3, lr=0.1, shuffle=False)
    # the same samples in another order: the batch sums differ only in rounding
    assert rel_err(a.weights[0], b.weights[0]) < 1e-12


# ----------------------------------------------------------------- predictions


def test_predict_shapes_follow_the_loss():
    X = np.random.default_rng(0).standard_normal((7, 3))
    bce = fastbp.Network([3, 4, 1], loss="bce")
    ce = fastbp.Network([3, 4, 5], loss="cross_entropy")
    assert bce.predict(X).shape == (7,) and set(bce.predict(X)) <= {0, 1}
    assert bce.predict_proba(X).shape == (7,)
    assert ce.predict(X).shape == (7,) and ce.predict(X).max() < 5
    p = ce.predict_proba(X)
    assert p.shape == (7, 5) and np.allclose(p.sum(axis=1), 1, atol=1e-6)
    assert np.array_equal(ce.predict(X), p.argmax(axis=1))


def test_mse_predict_is_shaped_like_the_training_targets():
    X = np.random.default_rng(0).standard_normal((7, 3))
    net = fastbp.Network([3, 4, 1], loss="mse", dtype=np.float64)
    net.fit(X, np.zeros(7), epochs=1)
    assert net.predict(X).shape == (7,)
    net.fit(X, np.zeros((7, 1)), epochs=1)
    assert net.predict(X).shape == (7, 1)
    wide = fastbp.Network([3, 4, 2], loss="mse")
    assert wide.predict(X).shape == (7, 2)


def test_predict_in_chunks_matches_one_pass(monkeypatch):
    import fastbp.network as network_module
    X = np.random.default_rng(0).standard_normal((50, 3))
    net = fastbp.Network([3, 6, 4], dtype=np.float64)
    whole = net.predict_proba(X)
    monkeypatch.setattr(network_module, "EVAL_CHUNK", 7)
    assert np.array_equal(net.predict_proba(X), whole)
    assert rel_err(net.predict_proba(X), ref.MLP([3, 6, 4], dtype=np.float64).predict_proba(X)) < 1e-12


def test_any_array_like_input_is_accepted():
    net = fastbp.Network([2, 3, 2], seed=0, dtype=np.float64)
    X = np.array([[0.5, 1.0], [2.0, -1.0], [0.0, 3.0]])
    expected = net.predict_proba(X)
    for variant in (X.tolist(), np.asfortranarray(X), np.repeat(X, 2, axis=0)[::2]):
        assert np.array_equal(net.predict_proba(variant), expected)
    assert rel_err(net.predict_proba(X.astype(np.float32)), expected) < 1e-7
    ints = np.array([[1, 2], [3, 4]])
    assert np.array_equal(net.predict_proba(ints), net.predict_proba(ints.astype(np.float64)))
    assert len(net.fit([[0, 1], [1, 0]], [0, 1], epochs=1).loss) == 1


# ----------------------------------------------------------------- real data


@pytest.mark.parametrize("seed", range(5))
def test_digits_reach_95_percent(seed):
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    data = datasets.load_digits()
    Xtr, Xte, ytr, yte = model_selection.train_test_split(
        data.data / 16.0, data.target, train_size=1344, stratify=data.target, random_state=0)
    net = fastbp.Network([64, 64, 10], activation="relu", loss="cross_entropy", seed=seed,
                         dtype=np.float32)
    net.fit(Xtr, ytr, epochs=40, lr=0.1, batch_size=32, shuffle=True)
    assert np.mean(net.predict(Xte) == yte) >= 0.95


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss,act", [("cross_entropy", "relu"), ("mse", "tanh"),
                                      ("bce", "sigmoid"), ("mse", "leaky_relu"),
                                      ("poisson", "tanh")])
def test_fused_small_loop_matches_the_per_layer_kernels(loss, act, dtype, weighted):
    """Networks too small for BLAS take the fused loop, larger ones the per-layer kernels: two
    routes through the same maths, same loss and gradients for the same shuffled batch, with and
    without sample weights."""
    from fastbp import _kernels as K
    from fastbp.config import Config
    from fastbp.data import TrainData
    from fastbp.engine import workspaces
    sizes = [3, 5, 4, out_width(loss)]
    X, y = make_data(loss, 11, sizes[0], sizes[-1], seed=4)
    net = fastbp.Network(sizes, activation=act, loss=loss, seed=6, dtype=dtype)
    sw = np.random.default_rng(3).uniform(0.1, 3.0, 11) if weighted else None
    data = TrainData(net, X, y, Config(dict(batch_size=4, sample_weight=sw)))
    assert K.fused_loop(net._blas_sized(data.batch), data.Xs)
    ws = workspaces(net, data.batch, data.Y.shape[1])
    index = np.random.default_rng(1).permutation(11)
    fused, layers = np.empty_like(net._params), np.empty_like(net._params)
    for start, stop in ((0, 4), (4, 8), (8, 11)):
        v_fused = K.BATCH_GRADIENTS[True][net._loss.code](
            fused, net._params, data.X, data.Xs, data.Y, data.SW, index, start, stop, net._layout,
            net._acts, None, *ws, 0, None)
        v_layers = K.BATCH_LAYERS[net._loss.code](
            layers, net._params, data.X, data.Xs, data.Y, data.SW, index, start, stop,
            net._layout, net._acts, *ws, net._params[:0])
        tol = 1e-12 if dtype == np.float64 else 1e-5
        assert rel_err(v_fused, v_layers) < tol
        assert rel_err(fused, layers) < tol


# --------------------------------------------------------------------------- repeated calls
# A small fit call's validated arguments are kept on the network for the next equal call
# (training._Prepared). Each test compares against the same calls made with lists, which are never
# kept, so every one of them is validated and prepared afresh.


def _twins(**kw):
    return [fastbp.Network([2, 5, 1], activation="tanh", loss="bce", seed=4, **kw)
            for _ in range(2)]


@pytest.mark.parametrize("options", [
    dict(epochs=3, lr=0.3),
    dict(epochs=2, optimizer="adam", lr=0.01, batch_size=2),
    dict(epochs=4, schedule="adaptive", lr=0.5, shuffle=False),
    dict(epochs=2, optimizer="sgd", momentum=0.9, lr=0.1, batch_size=3),
])
def test_repeated_equal_calls_train_as_fresh_calls(options):
    kept, fresh = _twins()
    for _ in range(4):
        h1 = kept.fit(XOR_X, XOR_Y, **options)
        h2 = fresh.fit(XOR_X.tolist(), XOR_Y.tolist(), **options)
        assert list(h1.loss) == list(h2.loss) and list(h1.lr) == list(h2.lr)
        np.testing.assert_array_equal(kept._params, fresh._params)
    assert kept._prepared is not None and fresh._prepared is None


def test_a_changed_array_or_option_is_validated_again():
    kept, fresh = _twins()
    X = XOR_X.copy()
    kept.fit(X, XOR_Y, epochs=2)
    fresh.fit(X.tolist(), XOR_Y.tolist(), epochs=2)
    X[0, 0] = 3.0  # changed in place: the same object, other bytes
    kept.fit(X, XOR_Y, epochs=2)
    fresh.fit(X.tolist(), XOR_Y.tolist(), epochs=2)
    np.testing.assert_array_equal(kept._params, fresh._params)
    X[1, 1] = np.nan
    with pytest.raises(ValueError, match="X"):
        kept.fit(X, XOR_Y, epochs=2)
    with pytest.raises(ValueError, match="epochs"):
        kept.fit(XOR_X, XOR_Y, epochs=0)
    with pytest.raises(TypeError, match="shuffle"):  # 1 == True, but not a bool
        kept.fit(XOR_X, XOR_Y, epochs=2, shuffle=1)
    np.testing.assert_array_equal(kept._params, fresh._params)


def test_large_data_or_networks_are_not_kept():
    """What is kept holds copies of the data and the network's buffers: small ones only."""
    from fastbp.training import _Prepared
    big_X = np.zeros((_Prepared.SMALL_DATA // 16 + 1, 2))
    net, _ = _twins()
    net.fit(big_X, np.arange(len(big_X)) % 2, epochs=1)
    assert net._prepared is None
    wide = fastbp.Network([2, _Prepared.SMALL_NET // 8, 1], activation="tanh", loss="bce")
    wide.fit(XOR_X, XOR_Y, epochs=1)
    assert wide._params.nbytes > _Prepared.SMALL_NET and wide._prepared is None
    net.fit(XOR_X, XOR_Y, epochs=1)
    assert net._prepared is not None


def test_kept_arguments_are_not_pickled():
    import pickle
    net, _ = _twins()
    net.fit(XOR_X, XOR_Y, epochs=1)
    assert net._prepared is not None
    back = pickle.loads(pickle.dumps(net))
    assert back._prepared is None
    np.testing.assert_array_equal(back.predict_proba(XOR_X), net.predict_proba(XOR_X))


@pytest.mark.parametrize("momentum", [0.0, 0.9])  # SGD stepped in the backward pass; the optimiser
def test_training_buffers_are_kept_between_fits_and_not_pickled(momentum):
    """A network keeps its training buffers, whatever their size (here 4 MB), for its next fit of
    the same shape: the same arrays, and the same bits as a network whose buffers are allocated
    afresh for every call; a fit of another batch size replaces them; pickles and copies leave
    them behind."""
    import copy
    import pickle
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((1024, 20)), rng.integers(0, 3, 1024)
    nets = [fastbp.Network([20, 512, 3], activation="tanh", loss="cross_entropy", seed=0,
                           dtype=np.float64) for _ in range(2)]
    opts = dict(epochs=2, lr=0.05, batch_size=512, shuffle=True, momentum=momentum)
    kept, fresh = nets
    kept.fit(X, y, **opts)
    buffers = kept._scratch
    assert sum(a.nbytes for a in buffers["ws"]) > 4e6 and "backup" in buffers
    fresh.fit(X, y, **opts)
    for _ in range(2):
        kept.fit(X, y, **opts)
        fresh._scratch = None
        fresh.fit(X, y, **opts)
    assert kept._scratch is buffers
    np.testing.assert_array_equal(kept._params, fresh._params)
    for back in (pickle.loads(pickle.dumps(kept)), copy.deepcopy(kept), copy.copy(kept)):
        assert back._scratch is None
        np.testing.assert_array_equal(back.predict_proba(X), kept.predict_proba(X))
    kept.fit(X, y, **dict(opts, batch_size=256))
    assert kept._scratch is not buffers and kept._scratch["ws"][2].size == 256 * (512 + 3)


def test_a_network_pickled_with_kept_buffers_of_the_old_layout_trains(monkeypatch):
    """Pickles made before the buffers were left out carry small ones as a (key, workspaces,
    gradient) tuple: they load without them and train as the network they were pickled from."""
    import pickle
    net, _ = _twins()
    net.fit(XOR_X, XOR_Y, epochs=3)
    old = (((4, 1, np.dtype(np.float64)), (np.empty(8), np.empty(4)), np.empty(17)))

    def old_getstate(self):
        return dict(self.__dict__, _prepared=None, _scratch=old)
    monkeypatch.setattr(fastbp.Network, "__getstate__", old_getstate)
    data = pickle.dumps(net)
    monkeypatch.undo()
    back = pickle.loads(data)
    assert back._scratch is None and back._prepared is None
    back.fit(XOR_X, XOR_Y, epochs=3)
    net.fit(XOR_X, XOR_Y, epochs=3)
    np.testing.assert_array_equal(back._params, net._params)

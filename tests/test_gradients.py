"""Whole-network loss and gradients against the NumPy reference, finite differences and PyTorch
autograd, for every hidden activation x loss."""
import numpy as np
import pytest

import fastbp
from fastbp import reference as ref

from conftest import ACTIVATIONS, LOSSES, make_data, out_width, rel_err

# Two shapes: a small one whose layers all run the explicit loops, and one whose hidden layers
# are large enough to go through BLAS (fastbp.network.BLAS_MIN_WORK), so both paths are checked.
SHAPES = {"loops": ([5, 7, 6], 11), "blas": ([64, 80, 72], 64)}


def network(act, loss, shape="loops", dtype=np.float64, seed=3):
    hidden, n = SHAPES[shape]
    sizes = hidden + [out_width(loss)]
    net = fastbp.Network(sizes, activation=act, loss=loss, seed=seed, dtype=dtype)
    X, y = make_data(loss, n, sizes[0], sizes[-1], seed=seed + 1, dtype=dtype)
    return net, X, y


def test_blas_shape_uses_blas_and_small_shape_does_not():
    small, _, _ = network("relu", "mse", "loops")
    large, _, _ = network("relu", "mse", "blas")
    assert not small._blas_sized(SHAPES["loops"][1])
    assert large._blas_sized(SHAPES["blas"][1])


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradients_match_reference(act, loss, shape):
    net, X, y = network(act, loss, shape)
    dW, db = net.gradients(X, y)
    rW, rb = ref.gradients(net.weights, net.biases, net.activations, loss, X, y)
    for got, want in zip(dW + db, rW + rb):
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradients_match_finite_differences(act, loss):
    net, X, y = network(act, loss)
    dW, db = net.gradients(X, y)
    eps = 1e-6
    for analytic, params in zip(dW + db, net.weights + net.biases):
        flat, fd = params.reshape(-1), np.empty(params.size)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = net.loss(X, y)
            flat[i] = old - eps
            down = net.loss(X, y)
            flat[i] = old
            fd[i] = (up - down) / (2 * eps)
        assert rel_err(analytic.reshape(-1), fd) < 1e-6


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_float32_gradients_match_float64_reference(act, loss):
    net, X, y = network(act, loss, "blas", dtype=np.float32)
    dW, db = net.gradients(X, y)
    W64 = [w.astype(np.float64) for w in net.weights]
    b64 = [b.astype(np.float64) for b in net.biases]
    rW, rb = ref.gradients(W64, b64, net.activations, loss, X.astype(np.float64), y)
    for got, want in zip(dW + db, rW + rb):
        assert got.dtype == np.float32
        assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_loss_matches_reference(act, loss):
    net, X, y = network(act, loss)
    zs, _ = ref.forward(net.weights, net.biases, net.activations, X)
    assert rel_err(net.loss(X, y), ref.loss_value(loss, zs[-1], y)) < 1e-12


# ----------------------------------------------------------------- PyTorch


def torch_loss(torch, net, X, y):
    """The same network in PyTorch, from fastbp's weights; returns (loss, [W tensors], [b tensors])."""
    F = torch.nn.functional
    Ws = [torch.tensor(w, requires_grad=True) for w in net.weights]
    bs = [torch.tensor(b, requires_grad=True) for b in net.biases]
    acts = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh,
            "leaky_relu": F.leaky_relu, "identity": lambda z: z}
    a = torch.tensor(X)
    for i, (W, b) in enumerate(zip(Ws, bs)):
        a = a @ W + b
        if i < len(Ws) - 1:
            a = acts[net.activations[i]](a)
    if net.loss_name == "bce":
        value = F.binary_cross_entropy_with_logits(a[:, 0], torch.tensor(y, dtype=a.dtype))
    elif net.loss_name == "cross_entropy":
        value = F.cross_entropy(a, torch.tensor(y))
    elif net.loss_name == "poisson":  # torch drops the constant y log y - y of the deviance
        t = torch.tensor(y)
        value = F.poisson_nll_loss(a, t, log_input=True, full=False) + torch.mean(
            torch.xlogy(t, t) - t)
    else:
        value = F.mse_loss(a, torch.tensor(y))
    return value, Ws, bs


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_loss_and_gradients_match_torch_autograd(act, loss, torch):
    net, X, y = network(act, loss)
    value, Ws, bs = torch_loss(torch, net, X, y)
    value.backward()
    assert rel_err(net.loss(X, y), value.item()) < 1e-10
    dW, db = net.gradients(X, y)
    for got, tensor in zip(dW + db, Ws + bs):
        assert rel_err(got, tensor.grad.numpy()) < 1e-8


# ----------------------------------------------------------------- a batch in row chunks
# [64, 96, 80, K] at batch 128: every layer small (_kernels.row_chunks), so each step runs in
# _kernels.CHUNKS chunks of rows, each into its own gradient buffer, added in order afterwards.
CHUNKED = ([64, 96, 80], 128)


def test_chunked_shape_runs_in_row_chunks_and_the_others_do_not():
    from fastbp import _kernels as K
    from fastbp.engine import _row_chunks
    hidden, n = CHUNKED
    net = fastbp.Network(hidden + [10], seed=0)
    assert _row_chunks(n, net._layout) == K.CHUNKS > 1
    assert _row_chunks(n // 2, net._layout) == 1  # under CHUNK_MIN_BATCH rows
    wider = fastbp.Network([300, 300, 10], seed=0)  # 300 x 300 weights: chunked from 1024 rows
    assert _row_chunks(n, wider._layout) == 1
    assert _row_chunks(1024, wider._layout) == K.CHUNKS
    wide = fastbp.Network([64, 1024, 10], seed=0)  # over CHUNK_MAX_WIDTH: never
    assert _row_chunks(4096, wide._layout) == 1


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])  # 0: plain SGD's step; 0.9: the optimiser's
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_a_step_in_row_chunks_matches_the_reference(act, loss, momentum, weighted):
    """Two steps of a batch run in row chunks end on the reference's parameters (the weighted
    mean: each row's gradient scaled by w_b B / sum w)."""
    hidden, n = CHUNKED
    sizes = hidden + [out_width(loss)]
    net = fastbp.Network(sizes, activation=act, loss=loss, seed=5, dtype=np.float64)
    X, y = make_data(loss, n, sizes[0], sizes[-1], seed=6)
    w = np.random.default_rng(7).uniform(0.5, 2.0, n) if weighted else None
    params = [p.copy() for p in net.weights + net.biases]
    velocities = [np.zeros_like(p) for p in params]
    L = len(net.weights)
    for _ in range(2):
        Ws, bs = params[:L], params[L:]
        if weighted:  # the gradient of the weighted mean, row by row
            grads = [np.zeros_like(p) for p in params]
            for b in range(n):
                gW, gb = ref.gradients(Ws, bs, net.activations, loss, X[b:b + 1], y[b:b + 1])
                for g, r in zip(grads, gW + gb):
                    g += r * w[b] / w.sum()
        else:
            gW, gb = ref.gradients(Ws, bs, net.activations, loss, X, y)
            grads = gW + gb
        ref.sgd_step(params, grads, velocities, 0.1, momentum=momentum)
    net.fit(X, y, epochs=2, batch_size=n, lr=0.1, momentum=momentum, shuffle=False,
            sample_weight=w)
    for got, want in zip(net.weights + net.biases, params):
        assert rel_err(got, want) < 1e-12


def _chunked_fit(dtype, threads=None, runner=True, seed=0):
    """A network of CHUNKED trained 3 shuffled epochs of 3 batches with Adam; its parameters and
    the count of batches its runner ran (see fastbp._chunks)."""
    import numba
    from fastbp import _chunks
    hidden, n = CHUNKED
    X, y = make_data("cross_entropy", 3 * n, hidden[0], 10, seed=8)
    net = fastbp.Network(hidden + [10], seed=seed, dtype=dtype)
    net.fit(X[:n], y[:n], epochs=1, batch_size=n)
    _chunks.ready()  # the runner asked for and compiled
    before = numba.get_num_threads()
    address = _chunks.address
    try:
        if threads is not None:
            numba.set_num_threads(threads)
        if runner is not True:  # False: none; else the runner's address to give
            _chunks.address = lambda key: int(runner)
        net._scratch["ws"][-1][1] = 0  # the warm-up fit's buffers are kept: its count reset
        net.fit(X, y, epochs=3, batch_size=n, optimizer="adam", lr=0.01)
    finally:
        _chunks.address = address
        numba.set_num_threads(before)
    ran = net._scratch["ws"][-1][1]
    return net._params.copy(), ran


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_chunks_give_the_same_bits_across_threads_or_in_turn(dtype):
    """The runner (the chunks across Numba's threads) compiles in the background and then runs
    the batches; its results are the bits of the chunks run in turn, at any thread count."""
    import numba
    p_in_turn, ran_in_turn = _chunked_fit(dtype, runner=False)
    p_runner, ran = _chunked_fit(dtype)
    assert ran_in_turn == 0 and ran == 9  # 3 epochs x 3 batches through the runner
    assert np.array_equal(p_runner, p_in_turn)
    p_one, _ = _chunked_fit(dtype, threads=1)
    assert np.array_equal(p_one, p_in_turn)
    if numba.config.NUMBA_NUM_THREADS > 1:
        p_all, _ = _chunked_fit(dtype, threads=numba.config.NUMBA_NUM_THREADS)
        assert np.array_equal(p_all, p_in_turn)


def test_a_runner_for_other_types_is_refused_and_the_chunks_run_in_turn():
    """A runner compiled for other argument types (here float64's, given to a float32 network)
    reads only the fingerprint of the types it gets, returns False, and the driver runs the
    chunks itself: the same bits, no batch through the runner."""
    from fastbp import _chunks
    p_in_turn, _ = _chunked_fit(np.float32, runner=False)
    _chunked_fit(np.float64)  # compiles float64's runner
    other = next(a for types, a in _chunks._runner_at.items()
                 if a and str(types[1].dtype) == "float64")  # the type of grads
    p_other, ran = _chunked_fit(np.float32, runner=other)
    assert ran == 0
    assert np.array_equal(p_other, p_in_turn)


def test_the_runners_key_is_numbas_type_of_the_arguments():
    """_chunks.key types each description of the arguments once: the key it returns is Numba's
    type of the arguments themselves, for arrays of every layout, dtype and flag."""
    from numba import typeof
    from fastbp import _chunks
    from fastbp.engine import workspaces
    net = fastbp.Network([6, 5, 3], seed=0, dtype=np.float64)
    ws = workspaces(net, 8, 1)
    base = np.arange(60.0).reshape(10, 6)
    readonly = base.copy()
    readonly.flags.writeable = False
    for X in (base, np.asfortranarray(base), base[:, ::2], readonly, base.astype(np.float32),
              base[::2]):
        for index in (np.arange(10), np.arange(20)[::2]):
            args = _chunks.arguments(net._params, net._params, X, base[:, :1], np.empty(0),
                                     index, net._layout, net._acts, ws)
            assert _chunks.key(2, args) == (2, typeof(args))

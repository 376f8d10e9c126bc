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

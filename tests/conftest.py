import numpy as np
import pytest

ACTIVATIONS = ["sigmoid", "relu", "tanh", "leaky_relu", "identity"]
LOSSES = ["bce", "cross_entropy", "mse", "poisson"]
DTYPES = [np.float64, np.float32]

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([0, 1, 1, 0])


def rel_err(actual, expected):
    """max |actual - expected| / max |expected|: one relative error for a whole array."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(), np.finfo(np.float64).tiny)
    return np.abs(actual - expected).max() / scale


def make_data(loss, n, n_in, n_out, seed=0, dtype=np.float64):
    """Standard-normal X and targets of the loss's kind (labels 0/1, labels 0..K-1, reals, or
    Poisson counts)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(dtype)
    if loss == "bce":
        y = rng.integers(0, 2, n)
    elif loss == "cross_entropy":
        y = rng.integers(0, n_out, n)
    elif loss == "poisson":
        y = rng.poisson(1.5, (n, n_out)).astype(dtype)
    else:
        y = rng.standard_normal((n, n_out)).astype(dtype)
    return X, y


def out_width(loss):
    return 1 if loss == "bce" else 3


@pytest.fixture
def torch():
    return pytest.importorskip("torch")

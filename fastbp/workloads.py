"""The benchmark workloads W1, W2, W3 (see WORKLOADS.md in the project's shared notes).

One definition serves the asv suite (benchmarks/benchmarks/common.py) and ``python -m fastbp.bench``.
Data comes from ``numpy.random.default_rng(0)``: inputs standard normal, class labels uniform
integers, regression targets standard normal; XOR is its truth table.
"""
from collections import namedtuple

import numpy as np

Workload = namedtuple("Workload", "name what sizes activation loss samples batch lr")

WORKLOADS = {
    "W1": Workload("W1", "the lab exercise: XOR", (2, 4, 1), "sigmoid", "bce", 4, 4, 1.0),
    "W2": Workload("W2", "MNIST-shaped minibatch SGD", (784, 256, 128, 10), "relu",
                   "cross_entropy", 60000, 128, 0.05),
    "W3": Workload("W3", "large-batch training", (1024, 2048, 2048, 1024), "relu", "mse",
                   16384, 4096, 0.01),
}


def data(name, dtype=np.float32, samples=None):
    """(X, y) for workload ``name``; ``samples`` takes only the first rows (quick runs)."""
    w = WORKLOADS[name]
    n = w.samples if samples is None else min(samples, w.samples)
    if name == "W1":
        X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
        return X, np.array([0, 1, 1, 0])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((w.samples, w.sizes[0]), dtype=np.float32)[:n].astype(dtype)
    if w.loss == "cross_entropy":
        y = rng.integers(0, w.sizes[-1], w.samples)[:n]
    else:
        y = rng.standard_normal((w.samples, w.sizes[-1]), dtype=np.float32)[:n].astype(dtype)
    return X, y


def n_weights(name):
    sizes = WORKLOADS[name].sizes
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def training_flops(name, samples):
    """6 x weights x samples: 2 for the forward matmuls, 4 for the two backward ones."""
    return 6 * n_weights(name) * samples

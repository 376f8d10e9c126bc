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


def _grid():
    """About 30 points beyond W1-W3 (WORKLOADS.md, "Beyond W1-W3"): activations sigmoid, tanh and
    relu; widths 32 to 4096; depths (hidden layers) 1 to 8; batches 32 to 4096; float32 and
    float64. Each is width -> depth hidden layers of that width -> 10 classes, cross-entropy,
    lr 0.01, and enough rows for a few batches (``_grid_samples``). The two held-out networks of
    issue 12 are G01 (one wide sigmoid layer, float32, large batch) and G02 (a deep narrow tanh
    stack, float64, small batch)."""
    points = [  # (activation, width, depth, batch, dtype)
        ("sigmoid", 1024, 1, 2048, "float32"), ("tanh", 64, 8, 32, "float64"),
        ("sigmoid", 32, 1, 32, "float32"), ("tanh", 32, 2, 64, "float64"),
        ("relu", 32, 4, 256, "float32"), ("sigmoid", 64, 2, 128, "float64"),
        ("relu", 64, 1, 64, "float32"), ("tanh", 64, 4, 1024, "float32"),
        ("relu", 128, 2, 32, "float64"), ("sigmoid", 128, 1, 512, "float32"),
        ("tanh", 128, 8, 128, "float32"), ("relu", 128, 4, 4096, "float64"),
        ("sigmoid", 256, 2, 64, "float32"), ("tanh", 256, 1, 256, "float64"),
        ("relu", 256, 8, 1024, "float32"), ("sigmoid", 256, 4, 4096, "float32"),
        ("tanh", 512, 2, 32, "float32"), ("relu", 512, 1, 128, "float64"),
        ("sigmoid", 512, 4, 512, "float64"), ("tanh", 512, 2, 2048, "float32"),
        ("relu", 1024, 1, 64, "float32"), ("tanh", 1024, 2, 256, "float32"),
        ("sigmoid", 1024, 4, 1024, "float64"), ("relu", 2048, 1, 32, "float32"),
        ("sigmoid", 2048, 2, 512, "float32"), ("tanh", 2048, 1, 2048, "float64"),
        ("relu", 4096, 1, 128, "float32"), ("tanh", 4096, 1, 1024, "float32"),
        ("sigmoid", 4096, 1, 4096, "float32"), ("relu", 64, 8, 4096, "float32"),
    ]
    grid = {}
    for k, (act, width, depth, batch, dtype) in enumerate(points, 1):
        name = f"G{k:02d}"
        sizes = (width,) * (depth + 1) + (10,)
        grid[name] = (Workload(name, f"grid: {act} {width}x{depth}, batch {batch}, {dtype}",
                               sizes, act, "cross_entropy", _grid_samples(sizes, batch), batch,
                               0.01), dtype)
    return grid


def _grid_samples(sizes, batch, flops_per_epoch=2e9):
    """Rows for a grid point: whole batches, about ``flops_per_epoch`` training FLOPs (so every
    point takes milliseconds, not minutes, per epoch), between 1 and 64 batches."""
    per_batch = _flops(sizes, batch)
    return batch * int(min(64, max(1, flops_per_epoch // per_batch)))


def get(name):
    """The workload called ``name``: W1-W3 or a grid point G01..."""
    return WORKLOADS[name] if name in WORKLOADS else GRID[name][0]


def data(name, dtype=np.float32, samples=None):
    """(X, y) for workload ``name``; ``samples`` takes only the first rows (quick runs)."""
    w = get(name)
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


def _weights(sizes):
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _flops(sizes, samples):
    """6 x weights x samples: 2 for the forward matmuls, 4 for the two backward ones."""
    return 6 * _weights(sizes) * samples


def training_flops(name, samples):
    """Training FLOPs of workload ``name`` over ``samples`` rows (``_flops``)."""
    return _flops(get(name).sizes, samples)


GRID = _grid()  # name -> (Workload, dtype): the grid points G01..G30

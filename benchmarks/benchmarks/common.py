"""Workload builders shared by the benchmarks: W1, W2, W3 exactly as WORKLOADS.md defines them
(the definitions live in fastbp.workloads, which python -m fastbp.bench uses too).

``impl`` is "numpy" (fastbp.baseline.LeanMLP: the lean NumPy loop a competent user writes,
preallocated buffers and ufuncs with out=; fastbp.reference stays the tests' oracle) or "fastbp".
"""
import numpy as np

import fastbp
from fastbp.baseline import LeanMLP
from fastbp.workloads import WORKLOADS, data

IMPLS = ["numpy", "fastbp"]
INFER_ROWS = 8192


def network(impl, name, dtype="float32"):
    w = WORKLOADS[name]
    cls = fastbp.Network if impl == "fastbp" else LeanMLP
    return cls(w.sizes, activation=w.activation, loss=w.loss, seed=0, dtype=np.dtype(dtype))


class Trainer:
    """One implementation on one workload: data, network and the calls the benchmarks time."""

    def __init__(self, impl, name, dtype="float32", samples=None):
        self.w = WORKLOADS[name]
        self.net = network(impl, name, dtype)
        self.X, self.y = data(name, np.dtype(dtype), samples)
        self.Xb, self.yb = self.X[:self.w.batch], self.y[:self.w.batch]

    def fit(self, epochs=1):
        """Epochs over all of X, batches of the workload's size, no shuffling (as WORKLOADS.md)."""
        return self.net.fit(self.X, self.y, epochs=epochs, lr=self.w.lr,
                            batch_size=self.w.batch, shuffle=False)

    def step(self):
        """One optimiser step: forward, backward and update on one batch."""
        return self.net.fit(self.Xb, self.yb, epochs=1, lr=self.w.lr, batch_size=self.w.batch,
                            shuffle=False)

    def forward(self):
        """Inference on INFER_ROWS rows: the output activation (the identity output for mse)."""
        Xi = self.X[:INFER_ROWS]
        if isinstance(self.net, fastbp.Network) and self.w.loss == "mse":
            return self.net.predict(Xi)
        return self.net.predict_proba(Xi)


def final_loss(history):
    """The last epoch's loss from either implementation's fit."""
    return float((history.loss if hasattr(history, "loss") else history)[-1])

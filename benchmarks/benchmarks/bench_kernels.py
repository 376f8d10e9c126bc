"""Per-kernel times at the shapes of W2 and W3: the first dense layer's forward and backward,
the fused loss + output delta, and the SGD update over all the network's parameters.

numpy runs the reference's expressions; fastbp runs its compiled kernels under the thread split
its training loop uses (entered in setup, left in teardown)."""
import contextlib

import numpy as np

import fastbp
from fastbp import _kernels as K
from fastbp import _threads
from fastbp import reference as ref
from fastbp.losses import LOSSES
from fastbp.workloads import WORKLOADS

from .common import IMPLS


class Kernels:
    params = (IMPLS, ["W2", "W3"])
    param_names = ["impl", "workload"]
    timeout = 300

    def setup(self, impl, workload):
        w = WORKLOADS[workload]
        rng = np.random.default_rng(0)
        dt = np.float32
        B, C, OC, K_out = w.batch, w.sizes[0], w.sizes[1], w.sizes[-1]
        self.impl, self.loss = impl, w.loss
        self.inp = rng.standard_normal((B, C)).astype(dt)
        self.W = (rng.standard_normal((C, OC)) / np.sqrt(C)).astype(dt)
        self.b = np.zeros(OC, dt)
        self.out = np.empty((B, OC), dt)
        self.dout = rng.standard_normal((B, OC)).astype(dt)
        self.dinp, self.dW, self.db = np.empty((B, C), dt), np.empty((C, OC), dt), np.empty(OC, dt)
        self.logits = rng.standard_normal((B, K_out)).astype(dt)
        self.dlogits = np.empty_like(self.logits)
        if w.loss == "cross_entropy":
            self.y = rng.integers(0, K_out, B)
        else:
            self.y = rng.standard_normal((B, K_out)).astype(dt)
        self.Y = np.ascontiguousarray(self.y.reshape(B, -1), dtype=dt)
        self.row_loss = np.empty(B)
        P = fastbp.Network(w.sizes, dtype=dt).n_params
        self.params, self.grads = np.zeros(P, dt), rng.standard_normal(P).astype(dt)
        self.velocity = np.zeros(P, dt)
        self.use_blas = B * C * OC >= fastbp.network.BLAS_MIN_WORK
        self._threads = contextlib.ExitStack()
        if impl == "fastbp":
            self._threads.enter_context(_threads.compute(self.use_blas))
        for name in ("time_dense_forward", "time_dense_backward", "time_loss_output_delta",
                     "time_sgd_update"):
            getattr(self, name)(impl, workload)  # compile outside the timing

    def teardown(self, impl, workload):
        self._threads.close()

    def time_dense_forward(self, impl, workload):
        if impl == "numpy":
            self.inp @ self.W + self.b
        else:
            K.dense_forward(self.out, self.inp, self.W, self.b, K.ACT_IDENTITY, self.use_blas)

    def time_dense_backward(self, impl, workload):
        if impl == "numpy":
            self.inp.T @ self.dout, self.dout.sum(axis=0), self.dout @ self.W.T
        else:
            K.dense_backward(self.dinp, self.dW, self.db, self.dout, self.inp, self.W, self.b,
                             self.dout, K.ACT_IDENTITY, self.use_blas, True, self.b[:0])

    def time_loss_output_delta(self, impl, workload):
        if impl == "numpy":
            ref.loss_value(self.loss, self.logits, self.y)
            ref.loss_grad(self.loss, self.logits, self.y)
        else:
            code = LOSSES[self.loss].code
            K.loss_forward(self.row_loss, self.logits, self.Y, code)
            K.loss_backward(self.dlogits, self.logits, self.Y, code)

    def time_sgd_update(self, impl, workload):
        if impl == "numpy":
            ref.sgd_step([self.params], [self.grads], [self.velocity], np.float32(1e-9),
                         np.float32(0.9))
        else:
            K.sgd_update(self.params, self.velocity, self.grads, np.float32(1e-9),
                         np.float32(0.9), False, np.float32(0.0))

"""Per-kernel times at the shapes of W2 and W3: the first dense layer's forward and backward,
the fused loss + output delta, and the SGD update over all the network's parameters; and the
elementwise activation passes over 4M elements (``Elementwise``).

numpy runs the reference's expressions; fastbp runs its compiled kernels under the thread split
its training loop uses (entered in setup, left in teardown)."""
import contextlib

import numba
import numpy as np

import fastbp
from fastbp import _kernels as K
from fastbp import _threads
from fastbp import reference as ref
from fastbp.activations import ACTIVATIONS
from fastbp.baseline import _sigmoid
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
        self._threads = contextlib.ExitStack()
        if impl == "fastbp":
            self._threads.enter_context(_threads.compute(True))  # both layers are BLAS-sized
        for name in ("time_dense_forward", "time_dense_backward", "time_loss_output_delta",
                     "time_sgd_update"):
            getattr(self, name)(impl, workload)  # compile outside the timing

    def teardown(self, impl, workload):
        self._threads.close()

    def time_dense_forward(self, impl, workload):
        if impl == "numpy":
            self.inp @ self.W + self.b
        else:
            K.dense_forward(self.out, self.inp, self.W, self.b, K.ACT_IDENTITY)

    def time_dense_backward(self, impl, workload):
        if impl == "numpy":
            self.inp.T @ self.dout, self.dout.sum(axis=0), self.dout @ self.W.T
        else:
            K.dense_backward(self.dinp, self.dW, self.db, self.dout, self.inp, self.W, self.b,
                             self.dout, K.ACT_IDENTITY, True, self.b[:0])

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


_ELEMENTS = []  # the 4M inputs, drawn once per process


class Elementwise:
    """The sigmoid and tanh forward passes over 4M float32 elements (1024 x 4096, standard normal
    times 3), in place, on 1 and 2 Numba threads: fastbp's compiled pass
    (``_kernels.activation_forward``) against NumPy's, the lean baseline's ufuncs (``np.tanh``,
    and for sigmoid ``fastbp.baseline._sigmoid``'s four in-place ufuncs). NumPy's ufuncs run on
    one thread, so only its 1-thread rows are timed; the yardstick for both of fastbp's passes is
    NumPy's tanh row. Each sample is one pass over a fresh copy of the input (number = 1: setup
    runs before every sample)."""
    params = (IMPLS, ["sigmoid", "tanh"], [1, 2])
    param_names = ["impl", "activation", "threads"]
    number = 1
    repeat = (1, 21, 20.0)

    def setup(self, impl, activation, threads):
        self.saved = numba.get_num_threads()  # (teardown runs after a skip too)
        if impl == "numpy" and threads > 1:
            raise NotImplementedError("NumPy's ufuncs run on one thread")
        if threads > numba.config.NUMBA_NUM_THREADS:
            raise NotImplementedError(f"{threads} threads: this machine has fewer")
        if not _ELEMENTS:
            rng = np.random.default_rng(0)
            _ELEMENTS.append((rng.standard_normal((1024, 4096)) * 3).astype(np.float32))
        self.a = _ELEMENTS[0].copy()
        self.code = ACTIVATIONS[activation].code
        numba.set_num_threads(threads)
        if impl == "fastbp":
            K.activation_forward(self.a[:1], self.code)  # compile outside the timing

    def teardown(self, impl, activation, threads):
        numba.set_num_threads(self.saved)

    def time_forward(self, impl, activation, threads):
        if impl == "fastbp":
            K.activation_forward(self.a, self.code)
        elif activation == "tanh":
            np.tanh(self.a, out=self.a)
        else:
            _sigmoid(self.a)

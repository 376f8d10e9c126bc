"""``Network``: validate once at the boundary, own the flat parameter buffer, call the compiled loop."""
import numpy as np

from . import _kernels as K
from . import _threads
from . import _validate as check
from . import config as _config
from . import state as _state
from .activations import ACTIVATIONS
from .engine import FullBatch, kept_nbytes, workspaces
from .losses import LOSSES

# A network with a dense layer of B * C * OC at least this, for batches of B rows, is trained
# through the per-layer kernels, every dense layer one BLAS gemm (and the threads go to BLAS, see
# _threads); smaller networks (XOR-sized) through the fused loop. Measured here (float32, forward
# + backward): loops 1.2 us vs gemm 1.4 us at 4 x 2 x 4 (XOR), but gemm 5x faster from
# 32 x 64 x 10 up. Chosen from the shapes alone, never from the thread count, so the choice cannot
# change results between thread settings.
BLAS_MIN_WORK = 1 << 12

# Rows per chunk for predict/loss.
EVAL_CHUNK = 4096


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def _training():
    # training imports network's neighbours; imported on the first fit, then a global lookup
    global _training_module
    if _training_module is None:
        from . import training
        _training_module = training
    return _training_module


_training_module = None


def _seed_sequence(seed):
    return np.random.SeedSequence(seed)


class Network:
    """A dense feed-forward network trained by backpropagation and SGD in compiled kernels.

    sizes: layer widths, input and output included, e.g. [2, 4, 1].
    activation: one name for every hidden layer, or a list with one per hidden layer:
        'sigmoid', 'relu', 'tanh', 'leaky_relu' (slope 0.01), 'identity'.
    loss: 'bce' (sigmoid outputs, one per binary target: targets 0/1 or in [0, 1], shape (n,)
        for one output, (n, sizes[-1]) for several, e.g. multilabel), 'cross_entropy' (softmax over
        sizes[-1] >= 2 outputs, integer labels 0..K-1), 'mse' (identity output, real targets) or
        'poisson' (exp output, counts >= 0; half the Poisson deviance, as scikit-learn's).
    seed: integer seed of the initial weights and of the shuffling; None draws fresh entropy
        (kept in ``seed`` so the run can be repeated).
    dtype: np.float32 or np.float64.

    Semantics follow PyTorch: z = a @ W + b with W of shape (n_in, n_out); losses as
    binary_cross_entropy_with_logits, cross_entropy and mse_loss with 'mean' reduction; SGD as
    torch.optim.SGD.
    """

    def __init__(self, sizes, activation="relu", loss="cross_entropy", seed=0, dtype=np.float32):
        sizes = self._check_sizes(sizes)
        n_hidden = len(sizes) - 2
        if isinstance(activation, str):
            acts = [activation] * n_hidden
        else:
            try:
                acts = list(activation)
            except TypeError:
                raise TypeError(f"activation must be a name or a list of names; got {activation!r}") from None
            if len(acts) != n_hidden:
                raise ValueError(f"activation must be one name or a list of {n_hidden} names, one "
                                 f"per hidden layer of sizes={sizes}; got {len(acts)}")
        for a in acts:
            check.choice(a, "activation", ACTIVATIONS)
        if isinstance(activation, str):  # a name is checked even when there is no hidden layer
            check.choice(activation, "activation", ACTIVATIONS)
        check.choice(loss, "loss", LOSSES)
        if loss == "cross_entropy" and sizes[-1] < 2:
            raise ValueError("loss 'cross_entropy' needs at least 2 output units (one per class); "
                             f"got sizes[-1] = {sizes[-1]}")
        dt = check.float_dtype(dtype)
        if seed is None:
            seed = _seed_sequence(None).entropy
        seed = check.integer(seed, "seed", 0)

        self.sizes = tuple(sizes)
        self.activations = tuple(acts)
        self.loss_name = loss
        self.dtype = dt
        self.seed = seed
        self._loss = LOSSES[loss]
        self._acts = np.array([ACTIVATIONS[a].code for a in acts] or [0], dtype=np.int64)
        self._layout, n_params = self._make_layout(self.sizes)
        try:
            self._params = np.empty(n_params, dtype=dt)
            self._init_params()
        except MemoryError:  # NumPy's message names a flat shape the caller never gave
            raise MemoryError(f"sizes={list(self.sizes)} has {n_params:,} parameters "
                              f"({_bytes(n_params * dt.itemsize)} in {dt.name}), more than this "
                              "machine can allocate") from None
        # The shuffling stream: a child of the same seed, independent of the initialisation draws.
        self._shuffle_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
        self._targets_1d = self.sizes[-1] == 1
        self._train = None  # state.TrainState of the last fit, for resume=True and checkpoints
        self._scratch = None  # training buffers kept between fits (engine._scratch)
        self._prepared = None  # the last small fit call's validated arguments (training._Prepared)

    # ------------------------------------------------------------------ construction helpers

    @staticmethod
    def _check_sizes(sizes):
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError(f"sizes must be a list of layer widths; got {sizes!r}") from None
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least the input and output widths; got {sizes}")
        for i, s in enumerate(sizes):
            check.integer(s, f"sizes[{i}]", 1)
        return [int(s) for s in sizes]

    @staticmethod
    def _make_layout(sizes):
        """One row per layer: C, OC, offset of W, offset of b in the flat buffer [W0, b0, W1, ...]."""
        rows, off = [], 0
        for c, oc in zip(sizes[:-1], sizes[1:]):
            rows.append((c, oc, off, off + c * oc))
            off += c * oc + oc
        return np.array(rows, dtype=np.int64), off

    def _init_params(self):
        rng = np.random.default_rng(self.seed)
        n_layers = len(self.sizes) - 1
        for l, (W, b) in enumerate(zip(self.weights, self.biases)):
            n_in, n_out = W.shape
            follows = ACTIVATIONS[self.activations[l]].init if l < n_layers - 1 else "glorot"
            limit = np.sqrt(6.0 / n_in) if follows == "he" else np.sqrt(6.0 / (n_in + n_out))
            # Drawn in float64 and cast, so both dtypes start from the same numbers.
            W[...] = rng.uniform(-limit, limit, size=(n_in, n_out))
            b[...] = 0

    # ------------------------------------------------------------------ parameters

    def _views(self, buf):
        return [(buf[w0:w0 + c * oc].reshape(c, oc), buf[b0:b0 + oc]) for c, oc, w0, b0 in self._layout]

    @property
    def weights(self):
        """List of W[i], shape (sizes[i], sizes[i+1]): views into the parameter buffer."""
        return [W for W, _ in self._views(self._params)]

    @property
    def biases(self):
        """List of b[i], shape (sizes[i+1],): views into the parameter buffer."""
        return [b for _, b in self._views(self._params)]

    @property
    def n_params(self):
        return self._params.size

    _prepared = _scratch = None  # (a network pickled without them)
    # the kept fit arguments are a copy of the training data, the kept buffers scratch (hundreds
    # of MB for a large batch): neither is part of the network
    _NOT_PICKLED = ("_prepared", "_scratch")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._NOT_PICKLED}

    def __setstate__(self, state):
        # pickles of fastbp before 27 November 2026 carry small kept buffers, in another layout
        self.__dict__.update({k: v for k, v in state.items() if k not in self._NOT_PICKLED})

    def __repr__(self):
        return (f"Network(sizes={list(self.sizes)}, activation={list(self.activations)}, "
                f"loss={self.loss_name!r}, dtype=np.{self.dtype.name})")

    # ------------------------------------------------------------------ boundary

    def _X(self, X):
        """X checked once: a C-contiguous array of the network's dtype, or a check.Sparse."""
        if check.is_sparse(X):
            return check.sparse_features(X, self.sizes[0], self.dtype)
        return check.features(X, self.sizes[0], self.dtype)

    def _XY(self, X, y):
        X = self._X(X)
        Y, one_d = check.targets(y, X.shape[0], self._loss.targets, self.sizes[-1], self.dtype)
        return X, Y, one_d

    def _blas_sized(self, rows):
        """Whether some dense layer is large enough for BLAS at batches of ``rows`` rows."""
        return bool(any(rows * c * oc >= BLAS_MIN_WORK for c, oc, _, _ in self._layout))

    # ------------------------------------------------------------------ training

    def fit(self, X, y, **options):
        """Train by minibatch gradient descent; returns a ``History`` of this call's epochs.

        X: (n_samples, sizes[0]) array-like, or a ``numpy.memmap`` (streamed from disk in chunks,
        never loaded whole; ``stream=True`` streams any array-like that supports X[a:b]).
        y: labels (n_samples,) for 'cross_entropy'; 0/1 targets (n_samples,) or (n_samples,
        sizes[-1]) for 'bce'; real targets (n_samples,) or (n_samples, sizes[-1]) for 'mse'.

        Options (keywords; one table, ``fastbp.config.OPTIONS``):
        {options}

        Optimisers as torch.optim; schedules set the rate per epoch. A batch whose sample weights
        sum to 0 is skipped (no update). resume=True needs the same optimiser, schedule,
        batch_size and shuffle as the run it continues; fit(epochs=a) then fit(epochs=b,
        resume=True) gives the same bits as fit(epochs=a+b). With comm (``fastbp.distributed``)
        every option works; every rank passes the same full data, or with sharded=True its own.

        Raises ValueError/TypeError on bad input, leaving the network untouched, and
        ``DivergenceError`` if the loss or a parameter becomes non-finite; the parameters are then
        those from before the failing epoch. Ctrl-C stops within a fraction of a second at a
        consistent point: the network is that of ``epoch`` completed epochs.
        """
        return _training().fit(self, X, y, options)

    fit.__signature__ = _config.signature(["self", "X", "y"])
    fit.__doc__ = fit.__doc__.replace("{options}", _config.docs().strip())

    @property
    def epoch(self):
        """Epochs trained in the current run (what resume=True continues from); 0 before fit."""
        return 0 if self._train is None else self._train.epoch

    # ------------------------------------------------------------------ inference

    def _evaluate(self, X, Y=None, check_finite=True):
        n = X.shape[0]
        rows = min(n, EVAL_CHUNK)
        _, _, act_buf, _, row_loss, _ = workspaces(self, rows, 0)
        out = np.empty((n, self.sizes[-1]), self.dtype)
        Xd, Xs = check.kernel_input(X, self.dtype)  # what the kernel only reads (see there)
        index = np.empty(0, np.int64) if Xs is None else np.arange(n, dtype=np.int64)
        with _threads.compute(self._blas_sized(rows)):
            value = K.EVALUATE[self._loss.code](out, row_loss, self._params, Xd, Xs, index,
                                                check.read_only(out if Y is None else Y),
                                                self._layout, self._acts, act_buf, Y is not None)
        if check_finite and not (np.isfinite(value) and check.all_finite(out)):
            big = float(np.abs(X.data if isinstance(X, check.Sparse) else X).max())
            raise ValueError(
                f"the network's output is not finite (NaN or infinity) for this input: the "
                f"likely cause is the input's scale (largest |X| = {big:.3g}) overflowing "
                f"{self.dtype.name} in the layers; scale X (or use float64)")
        return out, value

    def predict_proba(self, X):
        """P(y = 1), shape (n,) (or (n, sizes[-1]) when trained on 2-D targets), for 'bce'; the
        softmax, shape (n, K), for 'cross_entropy'."""
        if self._loss.targets in ("real", "counts"):
            raise ValueError("predict_proba needs a classification loss ('bce' or "
                             f"'cross_entropy'); this network's loss is {self.loss_name!r}: use "
                             "predict")
        out, _ = self._evaluate(self._X(X))
        return out[:, 0] if self.loss_name == "bce" and self._targets_1d else out

    def predict(self, X):
        """Labels (n,) for 'bce' (0/1) and 'cross_entropy' (0..K-1); for 'mse' the outputs,
        shaped like the training targets ((n,) or (n, n_out))."""
        out, _ = self._evaluate(self._X(X))
        if self.loss_name == "bce":
            labels = (out > 0.5).astype(np.int64)
            return labels[:, 0] if self._targets_1d else labels
        if self.loss_name == "cross_entropy":
            return out.argmax(axis=1)
        return out[:, 0] if self._targets_1d else out

    def score(self, X, y):
        """Accuracy for the classification losses ('bce': every output right; 'cross_entropy'),
        the coefficient of determination R^2 for the regression losses ('mse', 'poisson'), as
        scikit-learn's score; averaged over outputs for several."""
        X, Y, _ = self._XY(X, y)
        out, _ = self._evaluate(X)
        right = self._classified_right(out, Y)
        if right is not None:
            return float(right.mean())
        Y64, out64 = Y.astype(np.float64), out.astype(np.float64)
        residual = ((Y64 - out64) ** 2).sum(axis=0)
        total = ((Y64 - Y64.mean(axis=0)) ** 2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(total > 0, 1 - residual / total, np.where(residual > 0, 0.0, 1.0))
        return float(r2.mean())

    def _classified_right(self, out, Y):
        """Which rows of the outputs out (n, OC) are classified right against Y (n, T), as
        predict decides (the NumPy twin of _kernels.count_correct); None for regression."""
        if self.loss_name == "cross_entropy":
            return out.argmax(axis=1) == Y[:, 0]
        if self.loss_name == "bce":
            return ((out > 0.5) == (Y > 0.5)).all(axis=1)
        return None

    def summary(self):
        """A table of the layers (shapes, activations, parameter counts), the parameter total,
        the dtype and the memory the parameters take (and, after a fit, the optimiser's buffers
        and the training buffers kept for the next fit), as a string: ``print(net.summary())``."""
        rows = [("layer", "shape (in -> out)", "activation", "parameters")]
        for i, (c, oc, _, _) in enumerate(self._layout):
            act = self.activations[i] if i < len(self.activations) else (
                f"{self._loss.output} ({self.loss_name})")
            rows.append((f"dense {i}", f"{c} -> {oc}", act, f"{c * oc + oc:,}"))
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        lines = ["  ".join(r[k].ljust(widths[k]) if k < 3 else r[k].rjust(widths[k])
                           for k in range(4)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        size = self._params.nbytes
        opt = 0 if self._train is None or self._train.optimizer.state is None else \
            self._train.optimizer.state.nbytes
        lines += ["-" * len(lines[0]),
                  f"parameters: {self.n_params:,} ({self.dtype.name}, {_bytes(size)})",
                  f"optimiser buffers: {_bytes(opt)}" if opt else "optimiser buffers: none yet",
                  f"epochs trained: {self.epoch}"]
        if self._scratch is not None:
            lines.append(f"training buffers kept for the next fit: "
                         f"{_bytes(kept_nbytes(self._scratch))}")
        return "\n".join(lines)

    def loss(self, X, y):
        """The mean loss of the network on (X, y), as a float."""
        X, Y, _ = self._XY(X, y)
        return float(self._evaluate(X, Y)[1])

    def gradients(self, X, y):
        """Full-batch gradients of ``loss(X, y)``: (dW, db), lists shaped like weights and biases."""
        X, Y, _ = self._XY(X, y)
        if isinstance(X, check.Sparse):  # through the sparse first layer
            full = FullBatch(self, X, Y, np.empty(0, self.dtype))
            with full.threads():
                full()
            views = self._views(full.grads)
            return [W for W, _ in views], [b for _, b in views]
        X, Y = check.read_only(X), check.read_only(Y)  # as fit hands them to the kernels
        n = X.shape[0]
        _, _, act_buf, delta_buf, _, _ = workspaces(self, n, 0)
        grads = np.empty_like(self._params)
        with _threads.compute(self._blas_sized(n)):
            K.network_forward(act_buf, self._params, X, self._layout, self._acts, 0, 0, n)
            logits = K.activation_view(act_buf, self._layout, n, len(self._layout) - 1)
            K.loss_backward(logits, logits, Y, self._loss.code)
            K.network_backward(grads, delta_buf, delta_buf.size // 2, self._params, X, act_buf,
                               self._layout, self._acts, self._params[:0], 0, 0, n)
        views = self._views(grads)
        return [W for W, _ in views], [b for _, b in views]

    # ------------------------------------------------------------------ files

    def save(self, path):
        """Write the network to ``path`` (a self-describing .npz, the name used as given), with
        the training state of the last fit (optimiser buffers and step, schedule, epochs), so
        ``load`` then ``fit(..., resume=True)`` continues the run. Atomic: a failure or a kill at
        any moment leaves the old file or the new one. Only a missing path or a regular file is
        replaced (an existing file keeps its permissions); see ``fastbp.state``."""
        _state.save(self, path)

    @classmethod
    def load(cls, path):
        """Read a network written by ``save``; ValueError if the file is truncated, corrupt or
        not ours (everything is checked before the network is built)."""
        return _state.load(path, cls)

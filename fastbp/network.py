"""``Network``: validate once at the boundary, own the flat parameter buffer, call the compiled loop."""
import io
import json
import os
import tempfile
from types import SimpleNamespace

import numpy as np

from . import _kernels as K
from . import _threads
from . import _validate as check
from .activations import ACTIVATIONS
from .losses import LOSSES
from .optim import SGD

FORMAT = "fastbp-network"
FORMAT_VERSION = 1

# A dense layer with B * C * OC at least this goes through BLAS gemm; smaller ones run the
# explicit loops. Measured here (float32, forward + backward): loops 1.2 us vs gemm 1.4 us at
# 4 x 2 x 4 (XOR), but gemm 5x faster from 32 x 64 x 10 up. Chosen from the shapes alone, never
# from the thread count, so the choice cannot change results between thread settings.
BLAS_MIN_WORK = 1 << 12

# Rows per chunk for predict/loss, and the most sample indices drawn ahead for shuffled epochs.
EVAL_CHUNK = 4096
ORDER_BUDGET = 1 << 20


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameter. ``history`` holds the epochs that completed;
    the network keeps the finite parameters from before the failing epoch."""

    def __init__(self, message, history):
        super().__init__(message)
        self.history = history


class History:
    """What ``fit`` returns. ``loss``: one float per epoch, the sample-weighted mean of the batch
    losses computed during that epoch (before each batch's update)."""

    def __init__(self):
        self.loss = []

    def __len__(self):
        return len(self.loss)

    def __repr__(self):
        last = f", last loss {self.loss[-1]:.6g}" if self.loss else ""
        return f"History({len(self.loss)} epochs{last})"


def _seed_sequence(seed):
    return np.random.SeedSequence(seed)


class Network:
    """A dense feed-forward network trained by backpropagation and SGD in compiled kernels.

    sizes: layer widths, input and output included, e.g. [2, 4, 1].
    activation: one name for every hidden layer, or a list with one per hidden layer:
        'sigmoid', 'relu', 'tanh', 'leaky_relu' (slope 0.01), 'identity'.
    loss: 'bce' (one sigmoid output, targets 0/1 or in [0, 1]), 'cross_entropy' (softmax over
        sizes[-1] >= 2 outputs, integer labels 0..K-1) or 'mse' (identity output, real targets).
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
        if loss == "bce" and sizes[-1] != 1:
            raise ValueError(f"loss 'bce' needs one output unit (sizes[-1] == 1); got {sizes[-1]}")
        if loss == "cross_entropy" and sizes[-1] < 2:
            raise ValueError("loss 'cross_entropy' needs at least 2 output units (one per class); "
                             f"got sizes[-1] = {sizes[-1]}")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be np.float32 or np.float64; got {dtype!r}") from None
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype must be np.float32 or np.float64; got {dt}")
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
        self._params = np.empty(n_params, dtype=dt)
        self._init_params()
        # The shuffling stream: a child of the same seed, independent of the initialisation draws.
        self._shuffle_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
        self._targets_1d = self.sizes[-1] == 1

    # ------------------------------------------------------------------ construction helpers

    @staticmethod
    def _check_sizes(sizes):
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError(f"sizes must be a list of layer widths; got {sizes!r}") from None
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least the input and output widths; got {sizes}")
        for s in sizes:
            check.integer(s, "sizes[i]", 1)
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

    def __repr__(self):
        return (f"Network(sizes={list(self.sizes)}, activation={list(self.activations)}, "
                f"loss={self.loss_name!r}, dtype=np.{self.dtype.name})")

    # ------------------------------------------------------------------ boundary

    def _X(self, X):
        return check.features(X, self.sizes[0], self.dtype)

    def _XY(self, X, y):
        X = self._X(X)
        Y, one_d = check.targets(y, X.shape[0], self._loss.targets, self.sizes[-1], self.dtype)
        return X, Y, one_d

    def _use_blas(self, rows):
        return np.array([rows * c * oc >= BLAS_MIN_WORK for c, oc, _, _ in self._layout])

    def _workspaces(self, rows):
        widths = self.sizes[1:]
        widest = max(self.sizes[1:])  # a delta slot holds any layer's output (_batch_gradients_fused)
        return dict(
            inp_buf=np.empty(rows * self.sizes[0], self.dtype),
            act_buf=np.empty(rows * sum(widths), self.dtype),
            delta_buf=np.empty(2 * rows * widest, self.dtype),
            row_loss=np.empty(rows, np.float64),
        )

    # ------------------------------------------------------------------ training

    def fit(self, X, y, epochs=10, lr=0.05, batch_size=None, momentum=0.0, nesterov=False,
            weight_decay=0.0, shuffle=True, log_every=0, comm=None, sharded=False):
        """Train with minibatch SGD; returns a ``History``.

        X: (n_samples, sizes[0]) array-like. y: labels (n_samples,) for 'bce' and
        'cross_entropy', targets (n_samples,) or (n_samples, sizes[-1]) for 'mse'.
        batch_size None is full batch. shuffle draws a new order of the samples each epoch from
        the network's seeded generator. log_every=N prints the epoch's loss every N epochs.

        comm: an mpi4py communicator for data-parallel training over MPI (see
        ``fastbp.distributed``); every rank passes the same full data, or, with sharded=True, its
        own shard. batch_size is then the global batch.

        Raises ValueError/TypeError on bad input, leaving the network untouched, and
        ``DivergenceError`` if the loss or a parameter becomes non-finite; the parameters are then
        those from before the failing epoch.
        """
        kwargs = dict(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                      nesterov=nesterov, weight_decay=weight_decay, shuffle=shuffle,
                      log_every=log_every)
        if comm is not None:
            from .distributed import fit_distributed
            return fit_distributed(self, comm, check.boolean(sharded, "sharded"), X, y, **kwargs)
        if sharded:
            raise ValueError("sharded=True needs comm (an MPI communicator)")
        plan = self._plan_fit(X, y, **kwargs)
        n = plan.X.shape[0]
        per_call = max(1, min(plan.epochs, ORDER_BUDGET // n)) if plan.shuffle else plan.epochs
        history = History()
        done = 0
        with _threads.compute(plan.use_blas.any()):
            while done < plan.epochs:
                count = min(per_call, plan.epochs - done)
                if plan.log_every:  # stop each call on a logging epoch
                    count = min(count, plan.log_every - done % plan.log_every)
                order = self._orders(n, count) if plan.shuffle else np.arange(n)[None, :]
                losses = np.empty(count)
                completed = K.train_epochs(
                    self._params, plan.opt.velocity, plan.grads, losses, plan.X, plan.Y, order,
                    self._layout, self._acts, plan.use_blas, self._loss.code, plan.batch,
                    *plan.opt.hyper(self.dtype), *plan.workspaces, plan.backup)
                self._record(history, losses[:completed], plan.log_every)
                done += completed
                if completed < count:
                    self._diverged(history, plan)
        return history

    def _plan_fit(self, X, y, epochs, lr, batch_size, momentum, nesterov, weight_decay, shuffle,
                  log_every, allocate=True):
        """Validate the arguments and (when ``allocate``) the workspaces for one batch. Only once every check has passed does it touch the network
        (it remembers whether the targets were 1-D, for ``predict``)."""
        plan = SimpleNamespace()
        plan.X, plan.Y, one_d = self._XY(X, y)
        plan.epochs = check.integer(epochs, "epochs", 1)
        batch_size = check.integer(batch_size, "batch_size", 1, allow_none=True)
        plan.opt = SGD(lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        plan.shuffle = check.boolean(shuffle, "shuffle")
        plan.log_every = check.integer(log_every, "log_every", 0)
        n = plan.X.shape[0]
        plan.batch_size = batch_size
        plan.batch = n if batch_size is None else min(batch_size, n)
        plan.opt.init_state(self.n_params, self.dtype)
        plan.grads = np.empty_like(self._params)
        plan.backup = np.empty(self.n_params + plan.opt.velocity.size, self.dtype)
        if allocate:
            self._allocate(plan, plan.batch)
        self._targets_1d = one_d
        return plan

    def _allocate(self, plan, rows):
        """The per-batch workspaces of ``plan`` for batches of up to ``rows`` rows."""
        ws = self._workspaces(rows)
        plan.workspaces = (ws["inp_buf"], np.empty(rows * plan.Y.shape[1], self.dtype),
                           ws["act_buf"], ws["delta_buf"], ws["row_loss"])
        plan.use_blas = self._use_blas(rows)

    def _orders(self, n, count):
        """count fresh permutations of range(n) from the network's shuffling stream, (count, n)."""
        return np.stack([self._shuffle_rng.permutation(n) for _ in range(count)])

    @staticmethod
    def _record(history, losses, log_every):
        """Append the epochs' losses to history, printing every log_every-th epoch."""
        for value in losses:
            history.loss.append(float(value))
            k = len(history.loss)
            if log_every and k % log_every == 0:
                print(f"epoch {k}  loss {value:.4f}")

    @staticmethod
    def _diverged(history, plan):
        epoch = len(history.loss) + 1
        raise DivergenceError(
            f"training diverged in epoch {epoch} of {plan.epochs}: the loss or a parameter "
            f"became NaN or infinite. The parameters are restored to their values before that "
            f"epoch; try a smaller lr (now {plan.opt.lr:g}).", history)

    # ------------------------------------------------------------------ inference

    def _evaluate(self, X, Y=None):
        n = X.shape[0]
        rows = min(n, EVAL_CHUNK)
        ws = self._workspaces(rows)
        out = np.empty((n, self.sizes[-1]), self.dtype)
        use_blas = self._use_blas(rows)
        with _threads.compute(use_blas.any()):
            value = K.evaluate(out, ws["row_loss"], self._params, X, X if Y is None else Y,
                               self._layout, self._acts, use_blas, self._loss.code,
                               ws["inp_buf"], ws["act_buf"], Y is not None)
        return out, value

    def predict_proba(self, X):
        """P(y = 1), shape (n,), for 'bce'; the softmax, shape (n, K), for 'cross_entropy'."""
        if self._loss.targets == "real":
            raise ValueError("predict_proba needs a classification loss ('bce' or "
                             "'cross_entropy'); this network's loss is 'mse': use predict")
        out, _ = self._evaluate(self._X(X))
        return out[:, 0] if self.loss_name == "bce" else out

    def predict(self, X):
        """Labels (n,) for 'bce' (0/1) and 'cross_entropy' (0..K-1); for 'mse' the outputs,
        shaped like the training targets ((n,) or (n, n_out))."""
        out, _ = self._evaluate(self._X(X))
        if self.loss_name == "bce":
            return (out[:, 0] > 0.5).astype(np.int64)
        if self.loss_name == "cross_entropy":
            return out.argmax(axis=1)
        return out[:, 0] if self._targets_1d else out

    def loss(self, X, y):
        """The mean loss of the network on (X, y), as a float."""
        X, Y, _ = self._XY(X, y)
        return float(self._evaluate(X, Y)[1])

    def gradients(self, X, y):
        """Full-batch gradients of ``loss(X, y)``: (dW, db), lists shaped like weights and biases."""
        X, Y, _ = self._XY(X, y)
        n = X.shape[0]
        ws = self._workspaces(n)
        grads = np.empty_like(self._params)
        use_blas = self._use_blas(n)
        with _threads.compute(use_blas.any()):
            K.network_forward(ws["act_buf"], self._params, X, self._layout, self._acts, use_blas)
            logits = K.activation_view(ws["act_buf"], self._layout, n, len(self._layout) - 1)
            K.loss_backward(logits, logits, Y, self._loss.code)
            K.network_backward(grads, ws["delta_buf"], self._params, X, ws["act_buf"],
                               self._layout, self._acts, use_blas)
        views = self._views(grads)
        return [W for W, _ in views], [b for _, b in views]

    # ------------------------------------------------------------------ files

    def save(self, path):
        """Write the network to ``path`` (a self-describing .npz, the name used as given).

        The file is written to a temporary name in the same folder and renamed over ``path``, so a
        failure or a kill part-way never leaves a truncated file or loses an existing one.
        """
        path = os.fspath(path)
        meta = dict(format=FORMAT, version=FORMAT_VERSION, sizes=list(self.sizes),
                    activations=list(self.activations), loss=self.loss_name,
                    dtype=self.dtype.name, seed=str(self.seed), targets_1d=self._targets_1d,
                    shuffle_state=self._shuffle_rng.bit_generator.state)
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), params=self._params)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path):
        """Read a network written by ``save``; ValueError if the file is truncated or not ours."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"][()]))
                params = f["params"]
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"{path!r} is not a readable fastbp model file (truncated, corrupt or "
                             f"of another format): {type(exc).__name__}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a fastbp model file (no '{FORMAT}' marker)")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path!r} has fastbp format version {meta.get('version')}; this "
                             f"fastbp reads version {FORMAT_VERSION}")
        acts = meta["activations"] if meta["activations"] else "relu"
        net = cls(meta["sizes"], activation=acts, loss=meta["loss"], seed=int(meta["seed"]),
                  dtype=np.dtype(meta["dtype"]))
        if params.shape != net._params.shape or params.dtype != net.dtype:
            raise ValueError(f"{path!r} is corrupt: parameters of shape {params.shape} and dtype "
                             f"{params.dtype}, expected {net._params.shape} and {net.dtype}")
        net._params[:] = params
        net._targets_1d = bool(meta["targets_1d"])
        net._shuffle_rng.bit_generator.state = meta["shuffle_state"]
        return net

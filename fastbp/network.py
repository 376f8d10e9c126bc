"""``Network``: validate once at the boundary, own the flat parameter buffer, call the compiled loop."""
import io
import json
import os
import tempfile

import numpy as np

from . import _kernels as K
from . import _threads
from . import _validate as check
from .activations import ACTIVATIONS
from .losses import LOSSES
from . import training

FORMAT = "fastbp-network"
FORMAT_VERSION = 2  # 2 adds the training state (optimiser, schedule, epochs); 1 is still read

# A dense layer with B * C * OC at least this goes through BLAS gemm; smaller ones run the
# explicit loops. Measured here (float32, forward + backward): loops 1.2 us vs gemm 1.4 us at
# 4 x 2 x 4 (XOR), but gemm 5x faster from 32 x 64 x 10 up. Chosen from the shapes alone, never
# from the thread count, so the choice cannot change results between thread settings.
BLAS_MIN_WORK = 1 << 12

# Rows per chunk for predict/loss.
EVAL_CHUNK = 4096


def _seed_sequence(seed):
    return np.random.SeedSequence(seed)


class Network:
    """A dense feed-forward network trained by backpropagation and SGD in compiled kernels.

    sizes: layer widths, input and output included, e.g. [2, 4, 1].
    activation: one name for every hidden layer, or a list with one per hidden layer:
        'sigmoid', 'relu', 'tanh', 'leaky_relu' (slope 0.01), 'identity'.
    loss: 'bce' (sigmoid outputs, one per binary target: targets 0/1 or in [0, 1], shape (n,)
        for one output, (n, sizes[-1]) for several, e.g. multilabel), 'cross_entropy' (softmax over
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
        self._train = None  # training.TrainState of the last fit, for resume=True and checkpoints

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

    def fit(self, X, y, epochs=10, lr=None, batch_size=None, optimizer="sgd", momentum=0.0,
            nesterov=False, weight_decay=None, betas=None, eps=None, schedule=None, shuffle=True,
            sample_weight=None, validation_data=None, validation_split=0.0, early_stopping=False,
            patience=10, min_delta=0.0, callbacks=(), progress=False, log_every=0,
            checkpoint=None, checkpoint_every=1, resume=False, stream=None, comm=None,
            sharded=False):
        """Train by minibatch gradient descent; returns a ``History`` of this call's epochs.

        X: (n_samples, sizes[0]) array-like, or a ``numpy.memmap`` (streamed from disk in chunks,
        never loaded whole; ``stream=True`` streams any array-like that supports X[a:b]).
        y: labels (n_samples,) for 'cross_entropy'; 0/1 targets (n_samples,) or (n_samples,
        sizes[-1]) for 'bce'; real targets (n_samples,) or (n_samples, sizes[-1]) for 'mse'.
        batch_size None is full batch. shuffle draws a new order each epoch from the network's
        seeded generator. sample_weight (n_samples,): each sample's weight in the batch mean.

        Optimiser: optimizer 'sgd' (lr default 0.05; momentum, nesterov), 'adam' or 'adamw' (lr
        default 0.001; betas (0.9, 0.999), eps 1e-8), all as torch.optim; weight_decay defaults
        to 0 (0.01 for 'adamw', as torch). Or an ``fastbp.optim`` object, used as is.
        schedule: a name ('constant', 'step', 'exponential', 'cosine', 'invscaling', 'adaptive')
        or a ``fastbp.schedules`` object; the rate is set per epoch.

        validation_data (X_val, y_val) or validation_split (a fraction held out at random): the
        validation loss (and accuracy, for classification) is recorded each epoch.
        early_stopping: stop after ``patience`` epochs without the validation loss falling by more
        than min_delta, and restore the weights of the best epoch.
        callbacks: callables f(epoch, loss, val_loss, network) called after every epoch; one that
        returns False stops training. progress: a tqdm bar (needs tqdm). log_every=N prints the
        loss every N epochs.

        checkpoint: a path written (atomically) every checkpoint_every epochs and at the end,
        with the training state. resume=True continues the last run of this network (or the one
        loaded from a checkpoint): optimiser state, schedule, epoch count and shuffling carry on,
        so fit(epochs=a) then fit(epochs=b, resume=True) gives the same bits as fit(epochs=a+b).
        The other arguments must describe the same run; epochs counts the epochs to add.

        comm: an mpi4py communicator for data-parallel training over MPI (see
        ``fastbp.distributed``); every rank passes the same full data, or, with sharded=True, its
        own shard. batch_size is then the global batch.

        Raises ValueError/TypeError on bad input, leaving the network untouched, and
        ``DivergenceError`` if the loss or a parameter becomes non-finite; the parameters are then
        those from before the failing epoch.
        """
        kwargs = dict(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                      momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                      betas=betas, eps=eps, schedule=schedule, shuffle=shuffle,
                      sample_weight=sample_weight, validation_data=validation_data,
                      validation_split=validation_split, early_stopping=early_stopping,
                      patience=patience, min_delta=min_delta, callbacks=callbacks,
                      progress=progress, log_every=log_every, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, stream=stream)
        if comm is not None:
            from .distributed import fit_distributed
            return fit_distributed(self, comm, check.boolean(sharded, "sharded"), X, y, **kwargs)
        if sharded:
            raise ValueError("sharded=True needs comm (an MPI communicator)")
        return training.fit(self, X, y, **kwargs)

    @property
    def epoch(self):
        """Epochs trained in the current run (what resume=True continues from); 0 before fit."""
        return 0 if self._train is None else self._train.epoch

    def _orders(self, n, count):
        """count fresh permutations of range(n) from the network's shuffling stream, (count, n)."""
        return np.stack([self._shuffle_rng.permutation(n) for _ in range(count)])

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
        """P(y = 1), shape (n,) (or (n, sizes[-1]) when trained on 2-D targets), for 'bce'; the
        softmax, shape (n, K), for 'cross_entropy'."""
        if self._loss.targets == "real":
            raise ValueError("predict_proba needs a classification loss ('bce' or "
                             "'cross_entropy'); this network's loss is 'mse': use predict")
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

        With the training state of the last fit (optimiser buffers and step, schedule, epochs),
        so ``load`` then ``fit(..., resume=True)`` continues the run. The file is written to a
        temporary name in the same folder, synced, and renamed over ``path``: a failure or a kill
        at any moment leaves either the old file or the new one, never a truncated one.
        """
        path = os.fspath(path)
        meta = dict(format=FORMAT, version=FORMAT_VERSION, sizes=list(self.sizes),
                    activations=list(self.activations), loss=self.loss_name,
                    dtype=self.dtype.name, seed=str(self.seed), targets_1d=self._targets_1d,
                    shuffle_state=self._shuffle_rng.bit_generator.state,
                    train=None if self._train is None else self._train.meta())
        arrays = dict(params=self._params)
        if self._train is not None:
            arrays["opt_state"] = self._train.optimizer.state
            if self._train.best is not None:
                arrays["best_params"] = self._train.best[2]
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
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
        # The rename itself is made durable by syncing the folder (a crash could otherwise lose it).
        dirfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    @classmethod
    def load(cls, path):
        """Read a network written by ``save``; ValueError if the file is truncated or not ours."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"][()]))
                arrays = {k: f[k] for k in f.files if k != "meta"}
                params = arrays["params"]
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"{path!r} is not a readable fastbp model file (truncated, corrupt or "
                             f"of another format): {type(exc).__name__}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a fastbp model file (no '{FORMAT}' marker)")
        if meta.get("version") not in (1, FORMAT_VERSION):
            raise ValueError(f"{path!r} has fastbp format version {meta.get('version')}; this "
                             f"fastbp reads versions 1 to {FORMAT_VERSION}")
        acts = meta["activations"] if meta["activations"] else "relu"
        net = cls(meta["sizes"], activation=acts, loss=meta["loss"], seed=int(meta["seed"]),
                  dtype=np.dtype(meta["dtype"]))
        if params.shape != net._params.shape or params.dtype != net.dtype:
            raise ValueError(f"{path!r} is corrupt: parameters of shape {params.shape} and dtype "
                             f"{params.dtype}, expected {net._params.shape} and {net.dtype}")
        net._params[:] = params
        net._targets_1d = bool(meta["targets_1d"])
        net._shuffle_rng.bit_generator.state = meta["shuffle_state"]
        if meta.get("train"):
            try:
                net._train = training.TrainState.from_meta(meta["train"], arrays["opt_state"],
                                                           arrays.get("best_params"), net.n_params)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path!r} has an unreadable training state: {exc}") from None
        return net

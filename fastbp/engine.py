"""The engine of a training run: workspaces, the thread split, backup/restore/divergence, and the
two ways of stepping through an epoch.

- ``run_epochs``: the compiled fast path, many whole epochs in one call (``_kernels.TRAIN_EPOCHS``).
- ``epoch``: one epoch as blocks of rows (the whole data in memory, or one streamed chunk at a
  time). On one process each block goes through the compiled loop. With a ``reducer`` (MPI) each
  step is ``gradient`` (this rank's rows), then ``reducer.sum`` (the weighted sums of all ranks),
  then ``apply`` (the same update everywhere): the paths that must act between gradient and update
  use these two steps, so a gradient transform such as clipping goes into ``apply`` and into
  ``_kernels.optimizer_update`` (which the compiled loop calls), nowhere else; the compiled loop's
  plain SGD step inside the backward pass (``_kernels.plan``), which never forms the gradient,
  must then be turned off for it.
"""
import time

import numpy as np
from numba.core import config

from . import _kernels as K
from . import _ahead
from . import _batch
from . import _chunks
from . import _pcg
from . import _threads
from . import _validate as check

# _kernels.small_layers and row_chunks on a layout, from Python (their plain functions: no
# compile for a check)
_small_layers = getattr(K.small_layers, "py_func", K.small_layers)
_row_chunks = getattr(K.row_chunks, "py_func", K.row_chunks)

# Compiled calls are bounded in time, so that Ctrl-C is seen within a fraction of a second: the
# first call of a run takes on WORK_PER_CALL work, in (rows + 4 x optimiser steps) x parameters
# (under 0.1 s of the slowest, XOR-sized, work measured), or BLAS_WORK_FACTOR times as much for a
# network that calls BLAS (measured: 5 ns a unit for XOR, 0.016-0.02 ns for W2, W3 and the grid's
# BLAS networks, so 64x leaves a margin of 4x and more); later ones are sized from the measured
# time to about CALL_SECONDS. How a run is cut into calls never changes a result.
WORK_PER_CALL = 1 << 22
BLAS_WORK_FACTOR = 64
CALL_SECONDS = 0.08


def resize(count, seconds):
    """The count of units (epochs or batches) for the next call, from the last call's count and
    seconds: about CALL_SECONDS, growing at most 4x a call."""
    grown = min(count * 4, 1 << 40)
    if seconds * grown <= count * CALL_SECONDS:  # also when the clock saw no time pass
        return grown
    return max(1, int(count * CALL_SECONDS / seconds))


def epoch_work(n, batch, n_params):
    """One epoch's work in WORK_PER_CALL's units."""
    return max(1, (n + 4 * -(-n // batch)) * n_params)


def workspaces(net, rows, targets):
    """The scratch buffers of the compiled kernels for batches of up to ``rows`` rows with
    ``targets`` target columns: the one definition of their layout."""
    widths = net.sizes[1:]
    return (np.empty(rows * net.sizes[0], net.dtype),      # inp_buf: the gathered batch
            np.empty(rows * targets, net.dtype),           # tgt_buf: its targets
            np.empty(rows * sum(widths), net.dtype),       # act_buf: every layer's output
            # delta_buf: two slots of deltas (batches of rows at the widest layer), then for a
            # network of small layers a gradient buffer for each row chunk but the first (see
            # _kernels.row_chunks)
            np.empty(2 * rows * max(widths)
                     + (K.CHUNKS - 1) * net.n_params * _small_layers(net._layout), net.dtype),
            np.empty(rows, np.float64),                    # row_loss
            # correct: rows classified right, batches run by the row chunks' runner (see
            # _chunks), each chunk's rows classified right
            np.zeros(2 + K.CHUNKS))


def _scratch(net, rows, targets):
    """The network's kept buffers for a fit (a dict: "key"; "ws", the workspaces; "grads", the
    gradient buffer; the epoch backup and the MPI reduction's buffer once needed, see
    ``kept_buffer``), reused by its next fit of the same shape and replaced by a fit of another.
    Allocated afresh for each call, their page faults cost a one-epoch W3 fit 8% (2.02 against
    1.85 s: 200 MB of buffers), the grid's one-batch points 1.6-6.5%, and a 1-epoch fit of a
    small network a tenth of its time (measured). Like PyTorch's .grad they stay with the network
    between calls; they are not pickled or copied (Network.__getstate__)."""
    key = (rows, targets, net.dtype, net.n_params)
    kept = net._scratch
    if kept is None or kept["key"] != key:
        net._scratch = kept = None  # the old buffers freed before the new ones are made
        kept = net._scratch = dict(key=key, ws=workspaces(net, rows, targets),
                                   grads=np.empty_like(net._params))
    return kept


def kept_buffer(kept, name, size, dtype):
    """The buffer ``name`` of (size,) in the kept dict ``kept`` (``_scratch``), allocated when first
    needed."""
    buf = kept.get(name)
    if buf is None or buf.size != size or buf.dtype != dtype:
        buf = kept[name] = np.empty(size, dtype)
    return buf


def kept_nbytes(kept):
    """The bytes of the buffers in the kept dict ``kept`` (``_scratch``)."""
    return sum(a.nbytes for a in (*kept["ws"], *(v for k, v in kept.items()
                                                 if k not in ("key", "ws"))))


def _chunked(net, rows, Xs):
    """Whether training batches of ``rows`` rows run in row chunks (_kernels.row_chunks): dense
    input through the per-layer kernels (``_kernels.fused_loop`` False). Not with Numba's JIT
    off (NUMBA_DISABLE_JIT, for debugging): the chunks' code is called through its compiled
    address."""
    return (Xs is None and not config.DISABLE_JIT and net._blas_sized(rows)
            and _row_chunks(rows, net._layout) > 1)


def _runner_key(net, grads, X, Y, SW, index, ws):
    """The row chunks' runner's key (see _chunks) for a call of ``net``'s drivers on these arrays
    (index: the batch rows' order) with the workspaces ws."""
    return _chunks.key(net._loss.code, _chunks.arguments(grads, net._params, X, Y, SW, index,
                                                         net._layout, net._acts, ws))


def _call(driver, key, *args):
    """driver(*args, runner): runner the address of the row chunks' runner that key names, or 0
    (none yet: the chunks run in turn, and the call's seconds count towards asking for the
    runner, see _chunks.ran_in_turn), or None for key None (a network that does not run in
    chunks: the chunks' code is pruned from the driver it compiles)."""
    if key is None:
        return driver(*args, None)
    runner = _chunks.address(key)
    if runner:
        return driver(*args, runner)
    compiled = len(driver.overloads)
    t0 = time.perf_counter()
    result = driver(*args, 0)
    _chunks.ran_in_turn(key, time.perf_counter() - t0, len(driver.overloads) != compiled)
    return result


def _gradients_at(net, fused, key, args):
    """The address of the per-layer batch kernel for a call of ``batch_gradients`` with args
    (less its last two, the kernel's address and the runner's) and the runner's key (see
    _batch): its batch's index a row of index[None, :], its sgd params[:0]; 0 for the fused
    loop. No helper process (_ahead) compiles the caller beside it: for an L-BFGS first fit one
    did not save time (8.2-12.0 s against 7.8-10.7 s without, measured)."""
    if fused:
        return 0
    X, Xs, Y, SW, index = args[2:7]
    return _batch.address(net, args[0], X, Xs, Y, SW, index[None, :], net._params, args[-6:],
                          key is not None)


class Engine:
    """Compiled training of ``net`` on ``data`` (data.TrainData) with ``state`` (state.TrainState).
    Allocates everything once; ``reducer`` (distributed.Reducer) for data-parallel steps."""

    def __init__(self, net, data, state, l2, reducer=None):
        self.net, self.data, self.state, self.reducer = net, data, state, reducer
        rows = data.rows_per_step
        self.blas = net._blas_sized(rows)
        self.work_per_call = WORK_PER_CALL * (BLAS_WORK_FACTOR if self.blas else 1)
        work = epoch_work(data.n, data.batch, net.n_params)
        # whole epochs a first compiled call takes on, and whether an epoch is long enough to be
        # cut into calls of batches (a one-batch epoch cannot be cut)
        self.epochs_per_call = max(1, self.work_per_call // work)
        self.long_epochs = work > 4 * self.work_per_call and data.steps > 1
        self._kept = _scratch(net, rows, data.Y.shape[1])
        self.ws, self.grads = self._kept["ws"], self._kept["grads"]
        self._backup_size = net.n_params + state.optimizer.state.size
        self._fixed = None  # run_epochs' arguments that stay the same from call to call
        self.no_backup = np.empty(0, net.dtype)
        self.no_rng = np.empty(0, np.uint64)
        self._drawn = None  # (rows, words) for orders drawn in compiled code, when first needed
        self._step = np.zeros(1, np.int64)  # the step count, in and out of the compiled loop
        self.l2 = np.array(l2, dtype=np.float64)
        self.hyper = state.optimizer.hyper(net.dtype)
        # the compiled functions and None-or-array arguments that pick this run's paths
        fused, self._hyper, self._l2 = K.plan(self.blas, data.Xs, state.optimizer.code,
                                              self.hyper, self.l2)
        # _kernels.bounded_step's workspace, for epochs of one batch with plain SGD through the
        # per-layer kernels; None elsewhere, so other runs never compile the bounds (0.5 s of a
        # first digits fit, measured)
        one_batch = data.steps == 1 and data.X is not None and data.X.shape[0] == data.n
        self.bound = (np.empty((3, net._layout.shape[0]))
                      if not fused and self._hyper is None and one_batch else None)
        loss = net._loss.code
        # batches in row chunks (see _chunks): the runner's key for run_epochs' arrays, once known
        self.chunked = _chunked(net, rows, data.Xs)
        self._run_key = None
        self._run_at = None  # run_epochs' batch kernel's address (see _batch_at), once known
        self._grads_at = None  # and gradient's
        self.fused = fused
        self._train = K.TRAIN_EPOCHS[fused][loss]
        self._gradients = K.BATCH_GRADIENTS[fused][loss]
        if reducer is not None:
            # the gradient's weighted sum, then the loss's, the weight sum, the row count and the
            # rows classified right
            self.buf = kept_buffer(self._kept, "reduce", net.n_params + 4, np.float64)

    def threads(self):
        """The thread split for this network (see _threads.compute): Numba's threads when its
        batches run in row chunks."""
        return _threads.compute(self.blas, self.chunked)

    def _batch_at(self, key, args):
        """The address of the per-layer batch kernel for the call of the training loop with
        args (less its last two, the kernel's address and the runner's) and the runner's key
        (see _batch), or 0 for the fused loop, which has none. Should the kernel compile, a
        helper process compiles the loop beside it when the loop is to compile too (_ahead)."""
        if self.fused:
            return 0
        X, Xs, Y, SW, order, _, lrs = args[5:12]

        def loop():
            where = ("TRAIN_EPOCHS", self.fused, self.net._loss.code)
            runner = None if key is None else 0  # as _call passes it
            return where, self._train, _ahead.signature(args + (0, runner))
        return _batch.address(self.net, self.grads, X, Xs, Y, SW, order, lrs, self.ws,
                              self.chunked, loop)

    def _key(self, X, Y, SW, index):
        """The row chunks' runner's key for a call on these arrays (index one row of the
        orders), or None for a network that does not run in chunks (see _chunks)."""
        if not self.chunked:
            return None
        return _runner_key(self.net, self.grads, X, Y, SW, index, self.ws)

    # ---------------------------------------------------------------- backup, restore, check

    def _backup(self):
        """The epoch-start copy of params and optimiser state (P + S,), kept with the network's
        buffers and allocated when first needed (a copy of W3's weights is 42 MB). Made where the
        epoch is run: in the compiled loop (run_epochs), or by save for an epoch cut into calls,
        whose compiled calls get no backup (no_backup); so one buffer serves both."""
        return kept_buffer(self._kept, "backup", self._backup_size, self.net.dtype)

    def save(self):
        """Remember params, optimiser state and step count (an epoch's start)."""
        # NumPy's copies, not the compiled loop's (K.save_state), which only a first fit
        # through here would compile (0.12 s per dtype, measured)
        backup, P = self._backup(), self.net.n_params
        backup[:P] = self.net._params
        backup[P:] = self.state.optimizer.state
        self._saved_step = self.state.optimizer.step

    def restore(self, rng=None):
        """Go back to what ``save`` remembered (and rng to the epoch's start, when given)."""
        backup, P = self._backup(), self.net.n_params
        self.net._params[:] = backup[:P]
        self.state.optimizer.state[:] = backup[P:]
        self.state.optimizer.step = self._saved_step
        if rng is not None:
            rng.bit_generator.state = self.rng_state

    def finite(self):
        return check.all_finite(self.net._params)

    # ---------------------------------------------------------------- the fast path

    def drawn_orders(self):
        """(rows (K, n), words ((1 + K) * _pcg.N_WORDS,)): the rows the compiled loop draws the
        shuffled epochs' orders into, K epochs at a time, and the generator's state words then
        each of those epochs' start. Up to 64 epochs of a small data set: back to back, the draws
        cost a shuffled XOR epoch 3-6% where drawn one an epoch they cost 11-12% (measured); one row
        at 1024 rows and more, where an order's draw is a small part of its epoch."""
        if self._drawn is None:
            n = self.data.n
            k = min(64, max(1, 1024 // n))
            self._drawn = (np.empty((k, n), np.int64),
                           np.empty((1 + k) * _pcg.N_WORDS, np.uint64))
        return self._drawn

    def run_epochs(self, lrs, order, rng=None):
        """Train len(lrs) epochs in one compiled call over the data in memory; order (E or 1, N)
        the epochs' sample orders, or None with rng (the network's shuffling Generator): the
        orders are drawn in compiled code (``drawn_orders``, ``_pcg``; rng ends where drawing them
        in Python would leave it). Returns the losses and training accuracies (before each
        batch's update) of the epochs completed (fewer than asked: the next one diverged and was
        undone, rng included), as sequences: lists for a short call."""
        d, opt, net = self.data, self.state.optimizer, self.net
        if self._fixed is None:  # made once: a 1-epoch fit is short
            self._fixed = (net._layout, net._acts, d.batch,
                           opt.code, self._hyper, self._l2, *self.ws, self._backup(), self.bound)
        losses = np.zeros((len(lrs), 2))
        step = self._step
        step[0] = opt.step
        words = self.no_rng
        if rng is not None:
            order, words = self.drawn_orders()
            _pcg.load(rng, words)
        if self.chunked and self._run_key is None:
            self._run_key = self._key(d.X, d.Y, d.SW, order[0])
        args = (net._params, opt.state, step, self.grads, losses, d.X, d.Xs, d.Y, d.SW, order,
                words, lrs, *self._fixed)
        if self._run_at is None:
            self._run_at = self._batch_at(self._run_key, args)
        done = _call(self._train, self._run_key, *args, self._run_at)
        if rng is not None:
            _pcg.store(rng, words)
        opt.step = int(step[0])
        n = d.n
        if done <= 8:  # a short call: NumPy's calls on small arrays cost more than floats
            rows = losses[:done].tolist()
            return [r[0] / n for r in rows], [r[1] / n for r in rows]
        sums = losses[:done]
        sums /= n
        return sums[:, 0], sums[:, 1]

    # ---------------------------------------------------------------- one epoch in blocks

    def epoch(self, lr, rng, interrupted=lambda: False):
        """One epoch at rate lr, the sample order drawn from rng; returns its mean loss and
        training accuracy, or None
        if it diverged (then params, optimiser state and step are back at the epoch's start).
        interrupted() is asked between compiled calls: if true, the epoch is undone (the shuffling
        stream included) and KeyboardInterrupt raised."""
        self.save()
        self.rng_state = rng.bit_generator.state  # the epoch's start, with save()
        lrs = np.array([lr], dtype=self.net.dtype)
        total = np.zeros((1, 2))  # the running sums (loss, correct) the calls add to, in order
        for block in self.data.blocks(rng, self.state.shuffle, self.reducer):
            for piece in (self._pieces(block) if self.reducer is None else (block,)):
                ok = (self._block_compiled(piece, lrs, total) if self.reducer is None
                      else self._block_reduced(piece, lr, total))
                if not ok:
                    self.restore()
                    return None
                if interrupted():
                    self.restore(rng)
                    raise KeyboardInterrupt
        if not self.finite():
            self.restore()
            return None
        return total[0, 0] / self.data.n_total, total[0, 1] / self.data.n_total

    _batches_per_call = None

    def _pieces(self, block):
        """A block cut into runs of whole batches, each a compiled call of about CALL_SECONDS."""
        X, Xs, Y, SW, index, bounds = block
        batch = self.data.batch
        if self._batches_per_call is None:
            self._batches_per_call = max(
                1, self.work_per_call // epoch_work(batch, batch, self.net.n_params))
        a = 0
        while a < len(index):
            k = min(self._batches_per_call, -(-(len(index) - a) // batch))
            t0 = time.perf_counter()
            yield X, Xs, Y, SW, index[a:a + k * batch], bounds
            self._batches_per_call = resize(k, time.perf_counter() - t0)
            a += k * batch

    def _block_compiled(self, block, lrs, total):
        """Rows index of a block through the compiled loop, their losses added to total (1,);
        False if it diverged (the caller restores the epoch's start: no copy here)."""
        X, Xs, Y, SW, index, _ = block
        d, opt = self.data, self.state.optimizer
        step = np.array([opt.step], dtype=np.int64)
        order = np.ascontiguousarray(index)[None, :]
        key = self._key(X, Y, SW, order[0])
        args = (self.net._params, opt.state, step, self.grads, total, X, Xs, Y, SW, order,
                self.no_rng, lrs, self.net._layout, self.net._acts, d.batch, opt.code,
                self._hyper, self._l2, *self.ws, self.no_backup, self.bound)
        done = _call(self._train, key, *args, self._batch_at(key, args))
        opt.step = int(step[0])
        return bool(done)

    def _block_reduced(self, block, lr, total):
        """A block step by step: this rank's rows of each global batch, the sums of all ranks,
        one update; the losses added to total (1,). False if it diverged."""
        X, Xs, Y, SW, index, bounds = block
        buf = self.buf
        for start, stop in bounds:
            self.gradient(X, Xs, Y, SW, index, start, stop, buf)
            self.reducer.sum(buf)
            value = self.apply(buf, lr)
            if value is None:
                return False
            total[0, 0] += value
            total[0, 1] += buf[-1]
        return True

    def gradient(self, X, Xs, Y, SW, index, start, stop, buf):
        """buf = [sum of gradient weights (P), sum of loss weights, weight sum, rows, rows
        classified right] over the rows index[start:stop] of X: sums, not means, so that they add
        up across ranks."""
        P = self.net.n_params
        b = stop - start
        if b == 0:
            buf[:] = 0
            return
        weight = float(K.weight_sum(SW, index, start, stop)) if SW.size else float(b)
        if weight == 0:  # a batch of zero weights adds nothing (see batch_gradients)
            buf[:] = 0
            buf[P + 2] = b
            return
        correct = self.ws[-1]
        correct[0] = 0
        key = self._key(X, Y, SW, index)
        args = (self.grads, self.net._params, X, Xs, Y, SW, index, start, stop, self.net._layout,
                self.net._acts, None, *self.ws)
        if self._grads_at is None:  # the arrays' types are the run's throughout
            self._grads_at = _gradients_at(self.net, self.fused, key, args)
        value = _call(self._gradients, key, *args, self._grads_at)
        np.multiply(self.grads, weight, out=buf[:P])
        buf[P], buf[P + 1], buf[P + 2], buf[P + 3] = value * weight, weight, b, correct[0]

    def apply(self, buf, lr):
        """The update from summed gradients (see ``gradient``): the batch's mean gradient (plus
        the L2 penalty of the whole batch), one optimiser step. Returns the batch's loss times its
        rows, or None if it is not finite."""
        P = self.net.n_params
        weight, rows = buf[P + 1], buf[P + 2]
        if weight == 0:
            return 0.0
        grads = self.grads
        np.divide(buf[:P], weight, out=buf[:P])
        grads[:] = buf[:P]
        value = buf[P] / weight
        if self.l2[0] != 0:
            value += K.l2_penalty(grads, self.net._params, self.net._layout,
                                  self.l2[0] / weight) * (self.l2[1] / self.l2[0])
        if not np.isfinite(value):
            return None
        opt = self.state.optimizer
        opt.step += 1
        K.optimizer_update(self.net._params, opt.state, grads, opt.code,
                           self.net.dtype.type(lr), self.hyper, opt.step)
        return value * rows


class FullBatch:
    """The mean loss and its gradient over every row of X (N, C_0), Y (N, T) with sample weights
    SW (N,) or (0,), for full-batch optimisers (scikit-learn's L-BFGS): one compiled
    ``batch_gradients`` call over the flat parameter buffer, workspaces allocated once. Call it
    inside ``threads()``."""

    def __init__(self, net, X, Y, SW):
        """X (N, C_0) an array or a _validate.Sparse."""
        Y, SW = check.read_only(Y), check.read_only(SW)
        self.net, self.input = net, X
        n = X.shape[0]
        Xd, Xs = check.kernel_input(X, net.dtype)  # see _kernels.batch_gradients
        self.index = np.arange(n, dtype=np.int64)
        self.blas = net._blas_sized(n)
        self.fused = K.fused_loop(self.blas, Xs)
        self.gradients = K.BATCH_GRADIENTS[self.fused][net._loss.code]
        ws = workspaces(net, n, Y.shape[1])
        self.grads = np.empty_like(net._params)
        self.key = None  # the row chunks' runner's (see _chunks)
        if _chunked(net, n, Xs):
            self.key = _runner_key(net, self.grads, Xd, Y, SW, self.index, ws)
        self.args = (self.grads, net._params, Xd, Xs, Y, SW, self.index, 0, n, net._layout,
                     net._acts, None, *ws)  # every call's
        self.at = None  # the batch kernel's address (see _gradients_at), at the first call

    def threads(self):
        return _threads.compute(self.blas, self.key is not None)

    def __call__(self):
        """(mean loss, gradient (P,)) at the network's parameters now; the gradient is not
        computed when the loss is not finite."""
        if self.at is None:
            self.at = _gradients_at(self.net, self.fused, self.key, self.args)
        value = _call(self.gradients, self.key, *self.args, self.at)
        return value, self.grads


def precompile(dtypes=check.FLOAT_DTYPES, losses=None):
    """Compile (or load from Numba's disk cache) every kernel fastbp calls, for each dtype, so
    that the first real fit starts at once: ``fastbp.precompile()``, or ``python -m fastbp
    --precompile`` after installing. Every path and loss: 2-3 minutes a dtype on 2 cores (each
    fit compiles only its own, see _kernels.TRAIN_EPOCHS). dtypes: one dtype, or several
    (float32, float64; names, types or dtypes); losses: None for every loss, or the names of
    those to compile (a quarter of the time each: a classifier needs "bce" and "cross_entropy"
    only); all checked before anything compiles. Returns the seconds each dtype took, by name."""
    from .losses import LOSSES
    from .network import Network  # network imports this module
    one_dtype = "a dtype (np.float32 or np.float64)"
    dtypes = list(dict.fromkeys(
        check.float_dtype(d, "each of dtypes")
        for d in check.one_or_many(dtypes, "dtypes", one_dtype, (str, type, np.dtype))))
    losses = LOSSES if losses is None else {
        name: LOSSES[check.choice(name, "each of losses", LOSSES)]
        for name in check.one_or_many(losses, "losses", "None, a loss name", (str,))}
    if not losses:
        raise ValueError("losses is empty: name at least one loss, or None for every loss")
    seconds = {}
    for dtype in dtypes:
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        # the fused loop; the per-layer kernels on whole batches; and in row chunks (batches of
        # 128 rows or more, see _kernels.row_chunks): rows, and the batch of several an epoch
        for sizes, n, several in (([3, 4, 2], 64, 32), ([64, 64, 2], 64, 32),
                                  ([64, 64, 2], 256, 128)):
            X = rng.standard_normal((n, sizes[0])).astype(dtype)
            for loss, kind in losses.items():  # TRAIN_EPOCHS has one function per loss
                y = (rng.integers(0, 2, n) if kind.targets == "labels"
                     else rng.integers(0, 2, (n, 2)).astype(dtype))  # 0/1: binary, real, counts
                net = Network(sizes, loss=loss, seed=0, dtype=dtype)
                # and per plan: plain SGD, an optimiser, an optimiser with the estimators' L2
                # penalty (see _kernels.plan)
                net.fit(X, y, epochs=1, batch_size=n, validation_data=(X, y), optimizer="adam")
                net.fit(X, y, epochs=1, batch_size=n, optimizer="adam", l2=(1e-4, 1e-4))
                net.fit(X, y, epochs=1, batch_size=n)  # one batch an epoch (bounded_step)
                net.fit(X, y, epochs=1, batch_size=several)  # and several
                net.predict(X)
                net.gradients(X, y)
                full = FullBatch(net, X, net._XY(X, y)[1], np.empty(0, dtype))
                with full.threads():
                    full()
        _chunks.ready()  # the row chunks' runners: asked for, compiled in the background
        seconds[dtype.name] = time.perf_counter() - t0
    return seconds

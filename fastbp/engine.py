"""The engine of a training run: workspaces, the thread split, backup/restore/divergence, and the
two ways of stepping through an epoch.

- ``run_epochs``: the compiled fast path, many whole epochs in one call (``_kernels.train_epochs``).
- ``epoch``: one epoch as blocks of rows (the whole data in memory, or one streamed chunk at a
  time). On one process each block goes through the compiled loop. With a ``reducer`` (MPI) each
  step is ``gradient`` (this rank's rows), then ``reducer.sum`` (the weighted sums of all ranks),
  then ``apply`` (the same update everywhere): the paths that must act between gradient and update
  use these two steps, so a gradient transform such as clipping goes into ``apply`` and into
  ``_kernels.optimizer_update`` (which the compiled loop calls), nowhere else.
"""
import numpy as np

from . import _kernels as K
from . import _threads

# Rows x parameters one compiled call may take on: about 0.1 s of the slowest (XOR-sized) work,
# so that an interrupt is seen soon and bookkeeping stays a small share of the time.
WORK_PER_CALL = 1 << 24


def workspaces(net, rows, targets):
    """The scratch buffers of the compiled kernels for batches of up to ``rows`` rows with
    ``targets`` target columns: the one definition of their layout."""
    widths = net.sizes[1:]
    return (np.empty(rows * net.sizes[0], net.dtype),      # inp_buf: the gathered batch
            np.empty(rows * targets, net.dtype),           # tgt_buf: its targets
            np.empty(rows * sum(widths), net.dtype),       # act_buf: every layer's output
            np.empty(2 * rows * max(widths), net.dtype),   # delta_buf: two slots of deltas
            np.empty(rows, np.float64))                    # row_loss


class Engine:
    """Compiled training of ``net`` on ``data`` (data.TrainData) with ``state`` (state.TrainState).
    Allocates everything once; ``reducer`` (distributed.Reducer) for data-parallel steps."""

    def __init__(self, net, data, state, l2, reducer=None):
        self.net, self.data, self.state, self.reducer = net, data, state, reducer
        rows = data.rows_per_step
        self.use_blas = net._use_blas(rows)
        self.ws = workspaces(net, rows, data.Y.shape[1])
        self.grads = np.empty_like(net._params)
        opt_state = state.optimizer.state
        # backup: the compiled loop's own (one epoch); epoch_backup: an epoch made of blocks
        self.backup = np.empty(net.n_params + opt_state.size, net.dtype)
        self.epoch_backup = np.empty_like(self.backup)
        self.l2 = np.array(l2, dtype=np.float64)
        self.hyper = state.optimizer.hyper(net.dtype)
        if reducer is not None:
            # the gradient's weighted sum, then the loss's, the weight sum and the row count
            self.buf = np.empty(net.n_params + 3, np.float64)

    def threads(self):
        """The thread split for this network (see _threads.compute)."""
        return _threads.compute(self.use_blas.any())

    # ---------------------------------------------------------------- backup, restore, check

    def save(self):
        """Remember params, optimiser state and step count (an epoch's start)."""
        K.save_state(self.epoch_backup, self.net._params, self.state.optimizer.state)
        self._saved_step = self.state.optimizer.step

    def restore(self):
        """Go back to what ``save`` remembered."""
        K.restore_state(self.net._params, self.state.optimizer.state, self.epoch_backup)
        self.state.optimizer.step = self._saved_step

    def finite(self):
        return K.all_finite(self.net._params)

    # ---------------------------------------------------------------- the fast path

    def run_epochs(self, lrs, order):
        """Train len(lrs) epochs in one compiled call over the data in memory; order (E or 1, N)
        the epochs' sample orders. Returns the losses of the epochs completed (fewer than asked:
        the next one diverged and was undone)."""
        d, opt = self.data, self.state.optimizer
        losses = np.empty(len(lrs))
        step = np.array([opt.step], dtype=np.int64)
        done = K.train_epochs(self.net._params, opt.state, step, self.grads, losses, d.X, d.Y,
                              d.SW, order, lrs, self.net._layout, self.net._acts, self.use_blas,
                              self.net._loss.code, d.batch, opt.code, self.hyper, self.l2,
                              *self.ws, self.backup)
        opt.step = int(step[0])
        return losses[:done]

    # ---------------------------------------------------------------- one epoch in blocks

    def epoch(self, lr, rng, interrupted=lambda: False):
        """One epoch at rate lr, the sample order drawn from rng; returns its mean loss, or None
        if it diverged (then params, optimiser state and step are back at the epoch's start).
        interrupted() is asked between compiled calls: if true, the epoch is undone (the shuffling
        stream included) and KeyboardInterrupt raised."""
        self.save()
        rng_state = rng.bit_generator.state
        lrs = np.array([lr], dtype=self.net.dtype)
        total = 0.0
        for block in self.data.blocks(rng, self.state.shuffle, self.reducer):
            for piece in (self._pieces(block) if self.reducer is None else (block,)):
                value = (self._block_compiled(piece, lrs) if self.reducer is None
                         else self._block_reduced(piece, lr))
                if value is None:
                    self.restore()
                    return None
                total += value
                if interrupted():
                    self.restore()
                    rng.bit_generator.state = rng_state
                    raise KeyboardInterrupt
        if not self.finite():
            self.restore()
            return None
        return total / self.data.n_total

    def _pieces(self, block):
        """A block cut into runs of whole batches of about WORK_PER_CALL work each."""
        X, Y, SW, index, bounds = block
        batch = self.data.batch
        step = max(1, WORK_PER_CALL // max(1, batch * self.net.n_params)) * batch
        for a in range(0, len(index), step):
            yield X, Y, SW, index[a:a + step], bounds

    def _block_compiled(self, block, lrs):
        """Rows index of a block through the compiled loop: their loss summed, or None."""
        X, Y, SW, index, _ = block
        d, opt = self.data, self.state.optimizer
        loss = np.empty(1)
        step = np.array([opt.step], dtype=np.int64)
        done = K.train_epochs(self.net._params, opt.state, step, self.grads, loss, X, Y, SW,
                              np.ascontiguousarray(index)[None, :], lrs, self.net._layout,
                              self.net._acts, self.use_blas, self.net._loss.code, d.batch,
                              opt.code, self.hyper, self.l2, *self.ws, self.backup)
        opt.step = int(step[0])
        return loss[0] * len(index) if done else None

    def _block_reduced(self, block, lr):
        """A block step by step: this rank's rows of each global batch, the sums of all ranks,
        one update. Returns the block's loss summed over rows, or None."""
        X, Y, SW, index, bounds = block
        P = self.net.n_params
        buf = self.buf
        total = 0.0
        for start, stop in bounds:
            self.gradient(X, Y, SW, index, start, stop, buf)
            self.reducer.sum(buf)
            value = self.apply(buf, lr)
            if value is None:
                return None
            total += value
        return total

    def gradient(self, X, Y, SW, index, start, stop, buf):
        """buf = [sum of gradient weights (P), sum of loss weights, weight sum, rows] over the
        rows index[start:stop] of X: sums, not means, so that they add up across ranks."""
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
        value = K.batch_gradients(self.grads, self.net._params, X, Y, SW, index, start, stop,
                                  self.net._layout, self.net._acts, self.use_blas,
                                  self.net._loss.code, np.zeros(2), *self.ws)
        np.multiply(self.grads, weight, out=buf[:P])
        buf[P], buf[P + 1], buf[P + 2] = value * weight, weight, b

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

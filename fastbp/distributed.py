"""Data-parallel training over MPI (mpi4py): ``Network.fit(X, y, ..., comm=MPI.COMM_WORLD)``.

Every rank holds the same network. Each optimiser step, each rank computes the gradient of its
rows of the global batch with the compiled kernels; one in-place ``Allreduce`` over the flat
gradient buffer (with the batch's loss and row count in two extra slots) sums them, and every rank
applies the same SGD update, so the weights stay identical on all ranks.

- Replicated data (default): every rank passes the same full X, y (cheap with a ``numpy.memmap``);
  all ranks draw the same shuffled order (rank 0's generator state is broadcast at the start) and
  rank r takes its share of the rows of every global batch. Same seed, same global batch: the same
  training as on one process, up to the order of the floating-point sums.
- Sharded data (``sharded=True``): each rank passes only its own rows; each rank takes its share of
  the global batch from its shard, and all shards must give the same number of steps per epoch.

Bad input is checked on every rank, and the verdicts exchanged, before any other communication, so
all ranks raise together. Any other exception on one rank mid-fit would leave the others waiting in
``Allreduce`` for ever: fastbp prints it with the rank and calls ``MPI_Abort``, which ends the job.
Numba and BLAS threads per rank default to cores / ranks on the node. Rank 0 alone logs.
"""
import os
import sys
import time
from contextlib import contextmanager

import numba
import numpy as np

from . import _kernels as K
from . import _threads


def share(n, rank, size):
    """Rows [lo, hi) of n that rank takes: consecutive blocks, sizes differing by at most one."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class Distributed:
    """One communicator's view: agreement on errors, the gradient all-reduce and its statistics."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()  # local queries, no messages
        self.allreduce_seconds = 0.0
        self.allreduce_bytes = 0
        self.allreduce_calls = 0

    def agree(self, fn):
        """Run fn() on every rank; if it raised a ValueError or TypeError anywhere, raise on every
        rank (the failing rank its own error, the others one naming it). No other communication
        happens before this exchange."""
        try:
            result, error = fn(), None
        except (ValueError, TypeError) as exc:
            result, error = None, exc
        verdicts = self.comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        for rank, verdict in enumerate(verdicts):
            if verdict is not None:
                raise ValueError(f"rank {rank} of {self.size} refused its input, so no rank "
                                 f"trains: {verdict}")
        return result

    def allreduce_sum(self, buf):
        """buf summed over all ranks, in place."""
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_bytes += buf.nbytes
        self.allreduce_calls += 1

    def threads(self):
        """Threads for this rank: the node's cores shared among its ranks (a collective call)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        ranks_on_node = node.Get_size()
        node.Free()
        return max(1, min(numba.config.NUMBA_NUM_THREADS, (os.cpu_count() or 1) // ranks_on_node))

    @contextmanager
    def abort_on_error(self):
        """An exception that only this rank sees would hang the others: report it and abort."""
        try:
            yield
        except Exception as exc:
            from .training import DivergenceError
            if isinstance(exc, DivergenceError):  # every rank sees the same reduced loss
                raise
            print(f"fastbp: rank {self.rank} of {self.size} failed in fit: "
                  f"{type(exc).__name__}: {exc}; aborting all ranks", file=sys.stderr, flush=True)
            self.comm.Abort(1)
            raise


def _plan(net, X, y, kwargs):
    """fit's checks, plus those of what the MPI path does not do yet."""
    from .training import Plan
    plan = Plan(net, X, y, **kwargs)
    unsupported = [name for name, used in (
        ("sample_weight", plan.SW.size), ("validation_data/validation_split", plan.val is not None),
        ("callbacks", plan.callbacks), ("progress", plan.progress),
        ("checkpoint", plan.checkpoint), ("streamed X", plan.streamed),
        (f"schedule {plan.state.schedule.name!r}", plan.state.schedule.needs_loss)) if used]
    if unsupported:
        raise ValueError(f"fit with comm does not support {', '.join(unsupported)} yet")
    return plan


def fit_distributed(net, comm, sharded, X, y, **kwargs):
    """``Network.fit`` over MPI; see the module docstring."""
    from .training import History, _diverged

    dist = Distributed(comm)
    # Validation first, on every rank, before any other communication.
    plan = dist.agree(lambda: _plan(net, X, y, kwargs))
    st = plan.state
    opt = st.optimizer
    n_local = plan.X.shape[0]
    counts = comm.allgather(n_local)
    if sharded:
        n_total = sum(counts)
        batch = n_total if st.batch_size is None else min(st.batch_size, n_total)
        shares = [hi - lo for lo, hi in (share(batch, r, dist.size) for r in range(dist.size))]
        steps = {-(-c // s) if s else 0 for c, s in zip(counts, shares)}
        if len(steps) != 1 or 0 in shares:
            raise ValueError(f"sharded=True: the shards ({counts} rows) and the ranks' shares "
                             f"{shares} of the global batch {batch} give different numbers of "
                             "steps per epoch; make each shard proportional to its share")
        local_batch = shares[dist.rank]
        n_steps = steps.pop()
        rows = local_batch
    else:
        if len(set(counts)) != 1:
            raise ValueError(f"every rank must pass the same X when sharded=False; the ranks "
                             f"hold {counts} rows (pass sharded=True for per-rank shards)")
        n_total = n_local
        batch = plan.batch
        n_steps = -(-n_total // batch)
        rows = -(-batch // dist.size)  # this rank's share of a batch, not the whole batch
    plan.start(rows)

    # Every rank starts from rank 0's weights and shuffling state, as DDP does.
    comm.Bcast(net._params, root=0)
    net._shuffle_rng.bit_generator.state = comm.bcast(net._shuffle_rng.bit_generator.state, root=0)

    P = net.n_params
    # The flat gradients, then the batch's loss and row count: one message per step.
    buf = np.empty(P + 2, dtype=net.dtype)
    grads = plan.grads
    history = History()
    hyper = opt.hyper(net.dtype)
    budget = dist.threads()
    user_threads = numba.get_num_threads()
    numba.set_num_threads(budget)
    try:
        with dist.abort_on_error(), _threads.compute(plan.use_blas.any()):
            for _ in range(plan.epochs):
                index = net._orders(n_local, 1)[0] if st.shuffle else np.arange(n_local)
                plan.backup[:P] = net._params
                plan.backup[P:] = opt.state
                step0 = opt.step
                lr = net.dtype.type(st.schedule.rate(opt.lr, np.array([st.epoch]),
                                                      np.array([st.samples]))[0])
                total = 0.0
                ok = True
                for step in range(n_steps):
                    if sharded:
                        start = step * local_batch
                        stop = min(n_local, start + local_batch)
                    else:
                        g0 = step * batch
                        lo, hi = share(min(batch, n_total - g0), dist.rank, dist.size)
                        start, stop = g0 + lo, g0 + hi
                    b = stop - start
                    if b > 0:
                        value = K.batch_gradients(grads, net._params, plan.X, plan.Y, plan.SW,
                                                  index, start, stop, net._layout, net._acts,
                                                  plan.use_blas, net._loss.code, plan.l2,
                                                  *plan.workspaces)
                        # Sums, not means, travel: the global mean is the total over all rows.
                        np.multiply(grads, b, out=buf[:P])
                        buf[P] = value * b
                    else:
                        buf[:P + 1] = 0
                    buf[P + 1] = b
                    dist.allreduce_sum(buf)
                    rows_total = buf[P + 1]
                    value = buf[P] / rows_total
                    if not np.isfinite(value):
                        ok = False
                        break
                    np.divide(buf[:P], rows_total, out=grads)
                    total += value * rows_total
                    opt.step += 1
                    K.optimizer_update(net._params, opt.state, grads, opt.code, lr, hyper,
                                       opt.step)
                if ok:
                    ok = K.all_finite(net._params)
                if not ok:
                    net._params[:] = plan.backup[:P]
                    opt.state[:] = plan.backup[P:]
                    opt.step = step0
                    _diverged(history, plan)
                plan.advance(1, n_total)
                plan.record(history, [total / n_total], [lr], log=dist.rank == 0)
    finally:
        numba.set_num_threads(user_threads)
    history.comm = dict(ranks=dist.size, threads_per_rank=budget, steps=dist.allreduce_calls,
                        allreduce_seconds=dist.allreduce_seconds,
                        bytes_per_step=buf.nbytes)
    return history

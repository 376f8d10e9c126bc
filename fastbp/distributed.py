"""Data-parallel training over MPI (mpi4py): ``Network.fit(X, y, ..., comm=MPI.COMM_WORLD)``.

MPI is a variant of the training step, inside the one driver (training.fit): each step, each rank
computes the weighted sums of the gradient and loss over its rows of the global batch, one
in-place ``Allreduce`` adds them up (``Reducer.sum``), and every rank applies the same update
(engine.Engine.gradient / apply). Every fit option works: sample weights (the weighted sums are
reduced), validation and early stopping (the same decision everywhere: replicated data gives every
rank the same validation loss, sharded data reduces it), callbacks (every rank, same arguments),
progress and log_every (rank 0), checkpoints (written by rank 0), resume, streamed X (each rank
reads only its own rows), every schedule.

- Replicated data (default): every rank passes the same full X, y (cheap with a ``numpy.memmap``);
  all ranks draw the same shuffled order (rank 0's generator state is broadcast at the start) and
  rank r takes its share of the rows of every global batch. Same seed, same global batch: the same
  training as on one process, up to the order of the floating-point sums.
- Sharded data (``sharded=True``): each rank passes only its own rows and takes its share of the
  global batch from them; all shards must give the same number of steps per epoch.

Ranks agree before they communicate: the first collective exchanges every rank's verdict on its
own input (a ValueError or TypeError, or any other exception, KeyboardInterrupt included) and its
full run description (network, every fit option, optimiser and schedule settings, the data's
shape, the training state being resumed). Any failure or difference raises, on every rank, an
error that names the argument and the ranks. After that, an exception on one rank (any
BaseException: KeyboardInterrupt and SystemExit too) is printed with the rank and ends the job
with ``MPI_Abort``, so no rank waits for ever; a divergence is seen by all ranks at the same step
(it is read from reduced values) and raised everywhere. Rank 0's weights and shuffling state are
broadcast after the agreement, so no rank returns weights that differ from another's.
Numba and BLAS threads per rank default to cores / ranks on the node.
"""
import os
import sys
import time
from contextlib import contextmanager

import numba

from .data import share  # noqa: F401 (public: which rows a rank takes)


class Reducer:
    """One communicator's view: the agreement, the sums, the abort guard and their statistics."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()  # local queries, no messages
        self.allreduce_seconds = 0.0
        self.allreduce_calls = 0

    # ---------------------------------------------------------------- before training

    def agree(self, net, prepare):
        """Run prepare() -> (cfg, data, state) on every rank, then exchange the verdicts and run
        descriptions in one allgather (the first collective): any failure or difference raises on
        every rank. Returns prepare()'s result."""
        try:
            result = prepare()
            cfg, data, st = result
            info = dict(describe(net, cfg, data, st), rows_here=data.n), None
        except BaseException as exc:  # even Ctrl-C: the others must hear of it before raising
            result, info = None, (None, f"{type(exc).__name__}: {exc}")
            error = exc
        infos = self.comm.allgather(info)
        failed = [(r, why) for r, (_, why) in enumerate(infos) if why is not None]
        descs = [d for d, _ in infos]
        mismatch = None if failed else _first_difference(descs, skip={"rows_here"})
        if failed or mismatch:
            # every rank raises: one after another in rank order, so that the tracebacks of an
            # uncaught error do not interleave in the job's output
            time.sleep(min(2.0, 0.15 * self.rank))
        if result is None:
            if isinstance(error, (ValueError, TypeError)):  # the same type, naming the rank
                raise type(error)(f"{error} (on rank {self.rank} of {self.size})") from None
            raise error
        if failed:
            text = "; ".join(f"rank {r}: {why}" for r, why in failed)
            raise ValueError(f"rank{'s' if len(failed) > 1 else ''} "
                             f"{', '.join(str(r) for r, _ in failed)} of {self.size} refused "
                             f"{'their' if len(failed) > 1 else 'its'} input, so no rank trains "
                             f"({text})")
        if mismatch:
            raise ValueError(mismatch)
        if cfg.sharded:
            data.set_global([d["rows_here"] for d in descs], cfg.batch_size)
        return result

    def start(self, net, st):
        """Every rank starts from rank 0's weights, optimiser state and shuffling state (as DDP),
        with the node's cores shared among its ranks."""
        self.comm.Bcast(net._params, root=0)
        if st.optimizer.state.size:
            self.comm.Bcast(st.optimizer.state, root=0)
        rng = net._shuffle_rng
        rng.bit_generator.state = self.comm.bcast(rng.bit_generator.state, root=0)
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        ranks_on_node = node.Get_size()
        node.Free()
        self.threads = max(1, min(numba.config.NUMBA_NUM_THREADS,
                                  (os.cpu_count() or 1) // ranks_on_node))
        numba.set_num_threads(self.threads)  # restored by abort_on_error's exit

    def stats(self):
        """What the run's communication cost, for History.comm."""
        return dict(ranks=self.size, threads_per_rank=self.threads, steps=self.allreduce_calls,
                    allreduce_seconds=self.allreduce_seconds)

    # ---------------------------------------------------------------- while training

    def sum(self, buf):
        """buf summed over all ranks, in place."""
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1

    @contextmanager
    def abort_on_error(self):
        """An exception that only this rank sees would hang the others: report it and abort. A
        divergence is every rank's (it is read from reduced values) and is raised as usual."""
        from .training import DivergenceError
        user_threads = numba.get_num_threads()
        try:
            yield
        except DivergenceError:
            raise
        except BaseException as exc:
            print(f"fastbp: rank {self.rank} of {self.size} failed in fit: "
                  f"{type(exc).__name__}: {exc}; aborting all ranks", file=sys.stderr, flush=True)
            # MPI_Abort kills the job at once; mpiexec's output forwarding was seen to lose the
            # line above under load without a moment to pass it on
            time.sleep(0.5)
            self.comm.Abort(1)
            raise
        finally:
            numba.set_num_threads(user_threads)


def describe(net, cfg, data, st):
    """A rank's run: what every rank must agree on, as plain comparable values."""
    out = dict(sizes=list(net.sizes), activations=list(net.activations), loss=net.loss_name,
               dtype=net.dtype.name)
    out.update(cfg.describe())
    out.update(data.describe())
    out.update(resumed_epoch=st.epoch if cfg.resume else None,
               resumed_step=st.optimizer.step if cfg.resume else None)
    return out


def _first_difference(descs, skip):
    """A message naming the first setting in which the ranks' descriptions differ, or None."""
    for key in descs[0]:
        if key in skip:
            continue
        values = [d.get(key) for d in descs]
        if any(v != values[0] for v in values):
            groups = {}
            for r, v in enumerate(values):
                groups.setdefault(repr(v), []).append(r)
            said = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: {v}"
                             for v, rs in groups.items())
            return (f"the ranks disagree on {key} ({said}); every rank must pass the same "
                    f"{key} to fit with comm, so no rank trains")
    return None

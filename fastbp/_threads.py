"""Who runs threads, and when: the package owns the split between Numba's pool and BLAS's.

Measured on the 2-core development machines: Numba's OpenMP workers spin for a while after each
parallel region, and OpenBLAS's workers spin too; with both pools at 2 threads, minibatch training
(W2) ran 30-60x slower than with either pool alone. So only one pool runs more than one thread at a
time:

- a network whose batches run in row chunks (``_kernels.row_chunks``) gives Numba the threads and
  BLAS one: each chunk, one per Numba thread, calls BLAS on its own rows
  (``_kernels.CHUNK_RUNNER``). Validation inside such a fit keeps its split (the outermost
  context sets BLAS's threads): OpenBLAS's workers, once woken, spin for about 2^28 cycles, and
  Numba's chunks ran at one core's speed while they did (measured);
- another network that calls BLAS gives BLAS the threads (gemm is where its time goes) and runs
  Numba's elementwise loops on one thread;
- a network too small for BLAS gives Numba the threads.

OpenBLAS 0.3.27 and later can run a threaded gemm's jobs on a pool the caller gives
(``openblas_set_threads_callback_function``): on Numba's threads, one pool for both, a sigmoid
pass right after a gemm ran at two threads' speed with the gemm's speed and bits unchanged
(measured, README). Not used: in a network that calls BLAS the activation passes are 2-3.5% of an
epoch on one thread, and compiling the drivers' passes parallel costs a first fit.

The budget is ``numba.get_num_threads()``, the user's own setting. Both settings are restored on
exit. The results do not depend on the split: every kernel writes each element from one thread in
a fixed order, gemm partitions its output, not its sums, and the chunks are fixed by the shapes.
"""
import threading
from contextlib import nullcontext

import numba

_controller = None


def start_pool():
    """Start Numba's thread pool now (idempotent). A cached non-parallel kernel that calls
    ``parallel=True`` kernels, loaded from the cache in a process whose pool has not started,
    segfaults (Numba issue #8578); ``_kernels`` calls this when it is imported, so every caller,
    the kernel-level ones included, finds the pool running. ``get_num_threads`` is the public call
    that launches it; it chooses the threading layer from Numba's own configuration."""
    return numba.get_num_threads()


def _blas():
    # Created once: listing the loaded libraries costs milliseconds, too much for every predict.
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller


# BLAS's thread count is one per process, Numba's one per Python thread. Fits running at once in
# several Python threads share the BLAS setting: the first to enter records the user's and limits
# it, the last to leave puts it back, whatever the order in which they leave.
_lock = threading.Lock()
_inside = 0
_user_blas = None


class _Split:
    """compute()'s context for a network that calls BLAS (a class: a 1-epoch fit notices a
    generator's cost): BLAS at one thread and Numba at the budget (``numba_owns``), or the other
    way round."""

    __slots__ = ("budget", "numba_owns")

    def __init__(self, numba_owns):
        self.numba_owns = numba_owns

    def __enter__(self):
        global _inside, _user_blas
        self.budget = numba.get_num_threads()
        with _lock:
            if _inside == 0:
                _user_blas = _blas().limit(limits=1 if self.numba_owns else self.budget,
                                           user_api="blas")
            _inside += 1
        if not self.numba_owns:
            numba.set_num_threads(1)

    def __exit__(self, *exc):
        global _inside, _user_blas
        numba.set_num_threads(self.budget)
        with _lock:
            _inside -= 1
            if _inside == 0:
                _user_blas.restore_original_limits()
                _user_blas = None
        return False


def compute(uses_blas, chunked=False):
    """The context to run in for a network that does (or does not) call BLAS, its batches run in
    row chunks (the engine's decision, ``Engine.chunked``) or not: the threads split between
    Numba and BLAS; the user's settings come back afterwards, also on error and under concurrent
    fits."""
    return _Split(chunked) if uses_blas else _NO_SPLIT


_NO_SPLIT = nullcontext()  # stateless, so one serves every call

"""Who runs threads, and when: the package owns the split between Numba's pool and BLAS's.

Measured on the 2-core development machines: Numba's OpenMP workers spin for a while after each
parallel region, and OpenBLAS's workers spin too; with both pools at 2 threads, minibatch training
(W2) ran 30-60x slower than with either pool alone. So only one pool runs more than one thread at a
time. A network whose dense layers go through BLAS gives BLAS the threads (gemm is where its time
goes) and runs Numba's elementwise loops on one thread; a network of small layers, which never calls
BLAS, gives Numba the threads. The budget is ``numba.get_num_threads()``, the user's own setting.
Both settings are restored on exit. The results do not depend on the split: every kernel writes
each element from one thread in a fixed order, and gemm partitions its output, not its sums.
"""
from contextlib import contextmanager

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


@contextmanager
def compute(uses_blas):
    """Run the block with Numba and BLAS threads split for a network that does (or does not) call
    BLAS; the user's settings come back afterwards, also on error."""
    budget = numba.get_num_threads()
    if not uses_blas:
        yield
        return
    with _blas().limit(limits=budget, user_api="blas"):
        numba.set_num_threads(1)
        try:
            yield
        finally:
            numba.set_num_threads(budget)

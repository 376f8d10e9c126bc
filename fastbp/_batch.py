"""The address of the per-layer batch kernel (``_kernels.BATCH_STEP``) for the training loop.

The training loop (``_kernels.TRAIN_EPOCHS``) is compiled once per loss, path and plan: plain SGD
or an optimiser, an L2 penalty or none, bounded one-batch epochs, row chunks or whole batches, and
the arrays' types. Each such compile carried the network's whole forward and backward pass, which
LLVM optimised and turned into machine code afresh every time. The loop of a network run by the
per-layer kernels now calls that pass through its address instead: BATCH_STEP[loss] is compiled
(or loaded from Numba's disk cache) once per loss and argument types, and its address is an
argument of the loop, as the row chunks' runner's is (``_chunks``). The full-batch and
data-parallel gradients (``_kernels.BATCH_GRADIENTS``: scikit-learn's L-BFGS,
``Network.gradients`` on sparse input, MPI) call it the same way, so a fit and an L-BFGS fit on
the same arrays share one compile of it.
"""
import operator

from numba import types
from numba.core import config
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import cpu_target

from . import _ahead
from . import _chunks
from . import _kernels as K

_found = {}  # (the arguments' key (_chunks.key), chunked) -> the address


def _indexed(array_type, index_type):
    """Numba's type of array[index] inside compiled code: a row of a 2-D order, a slice of the
    learning rates (a view keeps or loses its layout as Numba, not NumPy, decides). Under Numba's
    compiler lock: its typing context is not for two threads at once, and the row chunks' runner
    may be compiling on another (see _chunks)."""
    with global_compiler_lock:
        ctx = cpu_target.typing_context
        ctx.refresh()
        return ctx.resolve_function_type(operator.getitem, (array_type, index_type),
                                         {}).return_type


def address(net, grads, X, Xs, Y, SW, order, lrs, ws, chunked, driver=None):
    """The address of BATCH_STEP for ``net``'s loss compiled for the batches that a call of
    TRAIN_EPOCHS or BATCH_GRADIENTS with these arguments hands it (order (E, N): its rows are
    the batches' index; lrs: a slice of it is sgd; ws the workspaces; chunked: the runner
    argument an int, else None); 0 with Numba's JIT off, where the driver calls the kernel
    itself. driver: None, or a function giving (where, dispatcher, argument types) of the
    driver's call, compiled by a helper process while the kernel compiles here, if both are to
    compile (``_ahead``)."""
    if config.DISABLE_JIT:
        return 0
    key = _chunks.key(net._loss.code, (grads, net._params, X, Xs, Y, SW, order, net._layout,
                                       net._acts, *ws, lrs))
    found = _found.get((key, chunked))
    if found is None:
        found = _found[key, chunked] = _compile(key, chunked, driver)
    return found


def _compile(key, chunked, driver):
    loss, argtypes = key
    (grads, params, X, Xs, Y, SW, order, layout, acts, inp_buf, tgt_buf, act_buf, delta_buf,
     row_loss, correct, lrs) = argtypes.types
    i = types.int64
    argtypes = (grads, params, X, Xs, Y, SW, _indexed(order, types.intp), i, i, layout, acts,
                inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct,
                _indexed(lrs, types.slice2_type), i if chunked else types.none)
    signature = (types.int64, types.StarArgTuple(argtypes))
    kernel = K.BATCH_STEP[loss]
    if driver is None or _ahead.compiled(kernel, signature):
        kernel.compile(signature)  # or loaded from the cache
    else:
        with _ahead.beside(*driver()):
            kernel.compile(signature)
    return _chunks.pointer(kernel, signature)

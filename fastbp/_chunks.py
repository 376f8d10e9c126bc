"""The runner that takes a batch's row chunks across Numba's threads, compiled off the fit's path.

A network of small layers runs each batch in chunks of rows (``_kernels.row_chunks``). A chunk's
code (``_kernels.CHUNK``, one per loss: the network's forward and backward pass over its rows)
is compiled once, inside the drivers, which call it through its address and hand that address to
the runner (``_kernels.CHUNK_RUNNER``), so the runner holds no copy of it. The drivers run the
chunks one after the other, or, given the runner's address, through it, one chunk per Numba
thread. Either way each chunk writes only its own rows and
gradient buffer and the buffers are added in order afterwards, so the bits are the same.

The runner is a ``prange`` loop, and a prange loop costs about half a second of compiling however
small (0.4-0.8 s, measured): a first fit would wait for it. So a chunked network starts with the
chunks in turn, and the runner is asked for once calls with the chunks in turn have taken
RUNNER_AFTER_S (``ran_in_turn``), about what its compile costs: a short first fit (scikit-learn's
digits, 20 epochs: 0.1 s) never waits for it, nor does whatever compiles next (Numba's compiler
lock is one for the process), and a long one loses at most about that much. It compiles on a
thread of its own (the drivers run without the GIL meanwhile, so the two go on side by side; the
thread is not a daemon, so a program that ends sooner waits for the compile, which Numba then
keeps in its disk cache). Later calls get its address as soon as it is ready; a later process
loads it from the cache in milliseconds, on that thread too. ``ready()`` asks for every runner
that calls have needed and waits for them (``fastbp.precompile`` and the benchmarks do).
"""
import os
import threading
import warnings

import numpy as np
from numba import typeof, types
from numba.core import config

from . import _kernels as K

# Seconds of calls with the chunks in turn after which the runner is asked for: about its compile
RUNNER_AFTER_S = 0.5

_lock = threading.Lock()
_runner_at = {}  # the arguments' Numba types -> the runner's address for them; 0 until ready
_compiling = []  # the runner's compiling threads started
_in_turn = {}  # the arguments' Numba types -> [key, seconds of calls with the chunks in turn]


def arguments(grads, params, X, Y, SW, index, layout, acts, ws):
    """A tuple of the types ``_kernels._in_chunks`` passes a chunk after its number
    (CHUNK_ARGS), for a batch of X (N, C_0), Y, SW, the rows index, with the workspaces ws
    (``workspaces``), the scalars (and sgd, a slice of the learning rates) as the drivers make
    them."""
    inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct = ws
    i = np.int64(0)
    return (correct, grads, params, X, Y, SW, index, i, i, layout, acts, inp_buf, tgt_buf,
            act_buf, delta_buf, i, row_loss, 0.0, params[:0], i, i)


def key(loss, args):
    """What names the chunks' code for the loss code ``loss`` and the types of args
    (``arguments``): a key for ``address`` and ``request`` (and, of its own arguments, for
    ``_batch.address``). Numba's typing of the arguments took 166 us (measured), so each
    distinct description of them (``_describe``: what Numba's type of an array is made of) is
    typed once."""
    description = (loss,) + tuple(map(_describe, args))
    found = _keys.get(description)
    if found is None:
        found = _keys[description] = (loss, typeof(args))
    return found


_keys = {}  # descriptions of arguments (see key) -> keys


def _describe(a):
    """What Numba's type of a is made of (an array's, a tuple's items', or a scalar's type)."""
    if isinstance(a, tuple):
        return tuple(map(_describe, a))
    if not isinstance(a, np.ndarray):
        return type(a)
    flags = a.flags  # Numba's array type: dtype, dimensions, layout, read-only, aligned
    return (type(a), a.dtype, a.ndim, flags.c_contiguous, flags.f_contiguous, flags.writeable,
            flags.aligned)


def _signature(argtypes):
    # (fingerprint, *args) with args (k or the chunk's address, *CHUNK_ARGS): see K.call_at
    return (types.int64, types.StarArgTuple((types.int64,) + tuple(argtypes.types)))


def pointer(dispatcher, signature):
    """The address of the machine code of ``dispatcher`` compiled for ``signature``."""
    compiled = dispatcher.overloads[signature]
    return compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)


def address(key):
    """The address of the runner for the arguments that ``key`` names, or 0 (not compiled yet,
    failed, or Numba's JIT off; see ``request``)."""
    return _runner_at.get(key[1], 0)


def ran_in_turn(key, seconds, compiled):
    """A call with the arguments that ``key`` names ran its chunks in turn for ``seconds``;
    compiled: the call compiled its driver (or loaded it from the cache), so its seconds are not
    the chunks'. Asks for the runner once such calls have taken RUNNER_AFTER_S."""
    seen = _in_turn.setdefault(key[1], [key, 0.0])
    if not compiled:
        seen[1] += seconds
    if seen[1] >= RUNNER_AFTER_S:
        request(key)


def request(key):
    """Compile the runner for the arguments that ``key`` names on a thread of its own, unless it
    is compiled or compiling. Never before a driver's call: a compile holds Numba's compiler
    lock, and the driver's own first compile would wait for this one."""
    argtypes = key[1]
    if argtypes in _runner_at or config.DISABLE_JIT:
        return
    with _lock:
        if argtypes not in _runner_at:
            _runner_at[argtypes] = 0
            thread = threading.Thread(target=_compile, args=(argtypes,), name="fastbp-row-chunks")
            _compiling.append(thread)
            thread.start()


def _compile(argtypes):
    signature = _signature(argtypes)
    try:
        K.CHUNK_RUNNER.compile(signature)
        found = pointer(K.CHUNK_RUNNER, signature)
    except Exception as exc:  # the chunks keep running in turn: slower, the same bits
        warnings.warn(f"fastbp: the row chunks' parallel runner did not compile ({exc!r}); the "
                      "chunks run on one thread", RuntimeWarning, stacklevel=1)
        return
    _runner_at[argtypes] = found


def wait():
    """Wait until every runner whose compile has started is compiled."""
    while _compiling:
        _compiling.pop().join()


def request_seen():
    """Ask for the runner of every call that has run its chunks in turn so far, however short."""
    for key, _ in list(_in_turn.values()):
        request(key)


def ready():
    """``request_seen``, then wait until each runner is compiled (or loaded from the cache)."""
    request_seen()
    wait()


# A process forked while the runner compiles would inherit Numba's compiler lock held by a thread
# that does not exist in it, and its first compile (or load from the cache) would wait for ever:
# a fork waits for the compile first (at most about a second). (No fork on Windows.)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=wait)

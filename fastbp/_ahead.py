"""A driver compiled in a helper process while this one compiles the batch kernel beside it.

A first fit through the per-layer kernels compiles two functions that never call each other's
code: the batch kernel (``_kernels.BATCH_STEP``, the network's forward and backward pass) and the
training loop (``_kernels.TRAIN_EPOCHS``), which calls it through its address (``_batch``).
Numba compiles one function at a time in a process (its compiler lock), and a compile is mostly
Python, so on one core: 5.3 s and then 2.0 s of a cold digits fit (measured). So while this
process compiles the kernel, a helper process (a fresh interpreter, on another core) compiles the
loop for the same argument types into Numba's disk cache, and this one then loads it from there,
as a later process would. The same code, compiled for the same machine, so the same bits.

The helper is used only where it saves time: Numba's JIT on, a CPU free for it (two or more for
this process, fewer tasks running than that at the moment), and neither function compiled or in the
cache for these types (the helper's start, an interpreter and fastbp's import, costs about half a
second; a loop to compile alone is compiled here). Whatever becomes of the helper (it cannot
start, it fails, it is killed), this process loads what it left in the cache or compiles the
rest itself: the same result, later.
"""
import contextlib
import os
import pickle
import subprocess
import sys
import time

from numba import typeof
from numba.core import config

HELPER_TIMEOUT_S = 600  # beyond which a helper is given up, and the loop compiled here

_PACKAGE = __name__.rpartition(".")[0]


def signature(args):
    """The argument types Numba compiles a driver for when it is called with args."""
    return tuple(typeof(a) for a in args)


def compiled(dispatcher, sig):
    """Whether dispatcher has sig compiled in this process or in Numba's disk cache (True when
    that cannot be told: then nothing is compiled ahead)."""
    if sig in dispatcher.overloads:
        return True
    try:
        cache = dispatcher._cache
        index = cache._cache_file._load_index()
        return cache._index_key(sig, dispatcher.targetctx.codegen()) in index
    except Exception:  # no disk cache, or a Numba that keeps it otherwise
        return True


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _running():
    """The tasks (threads) running or ready to run at this moment, this one among them: the
    median of a few reads of /proc/loadavg's fourth field, 2 ms apart; None where it cannot be
    read (not Linux)."""
    counts = []
    for k in range(5):
        if k:
            time.sleep(0.002)
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):
            return None
    return sorted(counts)[len(counts) // 2]


def _spare():
    """Whether a CPU is free for a helper now: two or more for this process, and the tasks
    running at this moment (this one among them) fewer than their count. The last minute's load
    average, which answered before, stays high for a minute or more after work on every CPU
    ends: a cold first fit soon after it compiled alone (7.2-7.6 s instead of 5.6-6.0 with the
    helper, measured). Where the running tasks cannot be counted, that load average, one below
    the CPUs' count. On a busy machine a helper only takes CPU time from the rest (the suite's
    scikit-learn files on two busy cores: 7.5 CPU minutes instead of 6.5, measured)."""
    cpus = _cpus()
    if cpus < 2:
        return False
    running = _running()
    if running is not None:
        return running < cpus
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Unix
        return True
    return load <= cpus - 1


@contextlib.contextmanager
def beside(where, dispatcher, sig):
    """A with block whose work (a compile) runs while a helper process compiles
    ``dispatcher`` (``_kernels.<where[0]>[where[1]]...``) for the argument types sig, when that
    saves time (see the module's docstring). The block's end waits for the helper; an exception
    in it stops the helper."""
    helper = None
    if not config.DISABLE_JIT and not compiled(dispatcher, sig) and _spare():
        helper = _start(where, sig)
    if helper is None:
        yield
        return
    try:
        yield
    except BaseException:
        _stop(helper)
        raise
    try:
        helper.wait(HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass  # this process compiles what is missing
    finally:
        _stop(helper)  # also on Ctrl-C while waiting


def _stop(helper):
    if helper.poll() is None:
        helper.kill()
    helper.wait()


def _start(where, sig):
    """The helper process compiling where for sig (see ``main``), or None if it cannot start."""
    # sys.path first and apart, so that the helper imports this package from where this
    # process did before it reads the rest
    request = pickle.dumps((list(sys.path), pickle.dumps((where, sig))))
    code = (f"import pickle, sys; path, rest = pickle.load(sys.stdin.buffer); sys.path[:] = path; "
            f"import {_PACKAGE}._ahead as a; a.main(rest)")
    try:
        helper = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, ValueError):  # no interpreter to start (embedded, frozen), no processes
        return None
    try:
        helper.stdin.write(request)
        helper.stdin.close()
    except OSError:  # it ended at once
        pass
    return helper


def main(request):
    """The helper: compile the driver that request names (see ``_start``) into Numba's disk
    cache."""
    where, sig = pickle.loads(request)
    from . import _kernels
    dispatcher = getattr(_kernels, where[0])
    for i in where[1:]:
        dispatcher = dispatcher[i]
    dispatcher.compile(sig)

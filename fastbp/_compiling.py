"""While fastbp's kernels compile: a one-line notice, and Python's cyclic garbage collector paused.

Numba announces each real compilation (not a load from its cache) as a "numba:compile" event,
nested for the functions a compilation compiles in turn. From the start of the outermost one
for a fastbp kernel to its end (also when it raises):

- the first, once per process, prints one line to stderr. A newcomer's first fit compiles the
  kernels (5-10 s on a small machine; cached on disk afterwards): without a word that looks like
  a hang.
- the collector is off, and back on at the end if it was on before. A compilation allocates
  millions of small objects (Numba's IR and types, llvmlite's instructions) that live until it
  ends, so the collector's full passes, triggered by that growth, found little garbage and
  walked the whole heap each time: five of them, and 700 young ones, took 0.9-1.2 s of a cold
  digits fit (gc.callbacks, float32 and float64). Paused, the garbage of one compilation is
  collected in one young pass after it (0.3-0.4 s) and the heap peaks about 45 MB higher.

Events come under Numba's compiler lock, so one thread at a time runs these listeners. A
program that switches the collector on or off from another thread during a compilation has
its switch undone at the end.
"""
import gc
import sys

from numba.core import event


def _function(ev):
    """The plain function a compile event is for (None if it names none)."""
    return getattr((ev.data or {}).get("dispatcher"), "py_func", None)


def _ours(ev):
    module = getattr(_function(ev), "__module__", None)
    # None for a function that exec() made from globals without a __name__: a user's own
    return isinstance(module, str) and module.startswith("fastbp.")


class _Compiling(event.Listener):
    shown = False  # the notice, once per process
    compiling = []  # the functions of the nested compilations inside the outermost one of a
    # fastbp kernel, that one first
    collector_was_on = False

    def on_start(self, ev):
        cls = _Compiling
        if not cls.compiling:
            if not _ours(ev):
                return
            if not cls.shown:
                cls.shown = True
                print("fastbp: compiling the kernels for this machine (first use only: they are "
                      "cached on disk, and later runs start in about a second)...",
                      file=sys.stderr, flush=True)
            cls.collector_was_on = gc.isenabled()
            gc.disable()
        cls.compiling.append(_function(ev))

    def on_end(self, ev):
        cls = _Compiling
        if not cls.compiling:
            return
        cls.compiling.pop()
        if not cls.compiling and cls.collector_was_on:
            gc.enable()


def compiling():
    """The plain function being compiled inside a compilation of a fastbp kernel (the window
    above): the innermost, whose code is being lowered; None outside the window."""
    stack = _Compiling.compiling
    return stack[-1] if stack else None


_installed = False


def install():
    """Listen for compilations (idempotent)."""
    global _installed
    if not _installed:
        event.register("numba:compile", _Compiling())
        _installed = True

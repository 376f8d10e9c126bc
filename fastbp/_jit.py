"""``inner``: how the kernels that only compiled code calls are compiled.

Numba compiles every function with two wrappers, one that Python calls (it unboxes each argument
from its Python object and boxes the result) and one that C calls, and emits each function's
machine code with its wrappers. A kernel called only from other compiled functions never uses
them: the drivers (``_kernels.TRAIN_EPOCHS`` and the like) link the kernels' code into their own.
Compiled without wrappers (Numba's ``no_cpython_wrapper``, ``no_cfunc_wrapper``), a first fit of a
64-64-10 network on digits compiled in 6.5-7.7 s instead of 7.9-9.6 s (float32, an empty cache,
three rounds alternating with the code before).

Such a function must never be entered from Python: Numba would jump to a wrapper that is not
there (a segmentation fault). So ``inner`` hands out a dispatcher whose call from Python goes to a
twin compiled with the wrappers: the same function under its own name (so the two never share
Numba's cache files), compiled on the first call from Python only (the tests, the benchmarks,
``Network.gradients``). Same code, same bits.
"""
import types

from numba import njit
from numba.core.registry import CPUDispatcher


class _Inner(CPUDispatcher):
    """A dispatcher compiled without wrappers, for compiled callers; Python calls its twin."""

    def __call__(self, *args, **kwargs):
        twin = self.__dict__.get("_twin")
        if twin is None:
            twin = self._twin = _twin(self)
        return twin(*args, **kwargs)


_NOT_FOR_TWIN = frozenset(("no_cpython_wrapper", "no_cfunc_wrapper", "nopython"))


def _twin(disp):
    options = {k: v for k, v in disp.targetoptions.items() if k not in _NOT_FOR_TWIN}
    return njit(cache=True, **options)(renamed(disp.py_func, "__python"))


def renamed(f, suffix):
    """A copy of the plain function f named f's qualified name + suffix, for compiling f a second
    way: Numba names its cache files after the qualified name and does not key them on the
    compile options, so two dispatchers of one function would read each other's."""
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + suffix
    g.__module__, g.__doc__, g.__kwdefaults__ = f.__module__, f.__doc__, f.__kwdefaults__
    return g


def inner(**options):
    """``@inner(**options)``: ``@njit(cache=True, **options)`` for a function that compiled code
    calls, compiled without Numba's wrappers (see the module's docstring). With Numba's JIT off
    (``NUMBA_DISABLE_JIT=1``) the plain function."""
    def decorate(f):
        disp = njit(cache=True, no_cpython_wrapper=True, no_cfunc_wrapper=True, **options)(f)
        if not isinstance(disp, CPUDispatcher):  # the JIT is off
            return disp
        disp.__class__ = _Inner
        return disp
    return decorate

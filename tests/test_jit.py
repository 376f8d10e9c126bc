"""``_jit.inner``: kernels that only compiled code calls are linked into their callers, never
optimised or emitted on their own, and Python calls reach a twin compiled the ordinary way."""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit, prange

from fastbp import _jit

JIT = isinstance(njit(lambda: 0), _jit.CPUDispatcher)
pytestmark = pytest.mark.skipif(not JIT, reason="checks compiled code")


@_jit.inner()
def _axpy(y, a, x):
    for i in range(x.shape[0]):
        y[i] += a * x[i]


@_jit.inner()
def _checked(n):
    if n < 0:
        raise ValueError("n must be >= 0")
    return n * 2


@_jit.inner(parallel=True)
def _scaled(out, x, a):
    for i in prange(x.shape[0]):
        out[i] = a * x[i]


@_jit.inner(optimised_alone=True)
def _summed(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i]
    return s


@njit
def _driver(y, a, x, n):
    _axpy(y, a, x)
    out = np.empty_like(x)
    _scaled(out, x, a)
    return _checked(n) + _summed(out)


def test_callers_run_the_linked_kernels_and_python_runs_their_twins():
    x = np.arange(5.0)
    y = np.ones(5)
    assert _driver(y, 2.0, x, 3) == 6 + 2 * x.sum()
    np.testing.assert_array_equal(y, 1 + 2 * x)
    # the kernels themselves: linked only, no machine code of their own
    for kernel in (_axpy, _checked, _scaled):
        (cres,) = kernel.overloads.values()
        assert isinstance(cres.library, _jit._LinkedLibrary)
        assert cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name) == 0
    (cres,) = _summed.overloads.values()
    assert not isinstance(cres.library, _jit._LinkedLibrary)  # its own O3 and machine code
    # the prange loop's body and its two wrappers: linked only too (the outer wrapper links the
    # inner one, which links the body)
    (cres,) = _scaled.overloads.values()
    names = {}
    todo = list(cres.library._linking_libraries)
    while todo:
        lib = todo.pop()
        names[lib.name.split(" ")[0].split("_0x")[0]] = type(lib)
        todo += lib._linking_libraries
    assert names == {"parallelgufuncwrapper": _jit._LinkedWrapperLibrary,
                     "<numba.np.ufunc.wrappers._GufuncWrapper": _jit._LinkedWrapperLibrary,
                     "__numba_parfor_gufunc": _jit._LinkedLibrary,
                     "nrt": _jit.JITCodeLibrary}
    # from Python: the twins, same results
    z = np.ones(5)
    _axpy(z, 2.0, x)
    np.testing.assert_array_equal(z, y)
    assert _checked(3) == 6 and _summed(x) == x.sum()


@njit(parallel=True)
def _ordinary_scaled(out, x, a):
    for i in prange(x.shape[0]):
        out[i] = a * x[i]


def test_prange_loops_outside_inner_kernels_get_ordinary_libraries():
    x = np.arange(6.0)
    out = np.empty(6)
    _ordinary_scaled(out, x, 3.0)
    np.testing.assert_array_equal(out, 3 * x)
    (cres,) = _ordinary_scaled.overloads.values()
    assert not any(isinstance(lib, _jit._LinkedLibrary)
                   for lib in cres.library._linking_libraries)


def test_an_exception_raised_in_a_linked_kernel_reaches_python():
    with pytest.raises(ValueError, match="n must be >= 0"):
        _driver(np.ones(3), 1.0, np.ones(3), -1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        _checked(-1)  # the twin


_OTHER_NAMES = """
from numba import njit
from fastbp import _jit
_jit._ENV_PREFIX = "no such prefix"

@_jit.inner()
def triple(x):
    return 3 * x

@njit
def caller(x):
    return triple(x) + 1

value = caller(2)  # compiles triple for its caller
(cres,) = triple.overloads.values()
print(value, triple(2), cres.library._linked_only,
      cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name) != 0)
"""


def test_a_numba_that_names_the_environment_otherwise_gets_ordinary_libraries(tmp_path):
    """If the environment pointer's name is not found, the library is finalised as Numba does
    (optimised, with machine code) instead of leaving set_env an address it cannot write (a
    segmentation fault: hence a process of its own; a file, so that the twin can be cached)."""
    script = tmp_path / "other_names.py"
    script.write_text(_OTHER_NAMES)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "nc")))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["7", "6", "False", "True"]


def test_every_compiled_function_of_the_kernels_has_a_name_of_its_own():
    """Numba names a function's machine code after its qualified name and a counter of the
    compiling process; closures of one factory (one per loss or path) compiled in two processes
    and cached could share a symbol, and loaded into one process the calls of both went to one of
    them (see _jit.distinct). So no two of the kernels' dispatchers, the per-loss tuples included,
    share a qualified name."""
    from numba.core.registry import CPUDispatcher

    from fastbp import _kernels as K

    def dispatchers(value):
        if isinstance(value, CPUDispatcher):
            yield value
        elif isinstance(value, tuple):
            for v in value:
                yield from dispatchers(v)

    found = {id(d): d for v in vars(K).values() for d in dispatchers(v)}
    names = [d.py_func.__qualname__ for d in found.values()]
    assert len(found) > 40 and len(set(names)) == len(names)
    per_loss = [d.py_func.__qualname__
                for d in K.CHUNK + K.BATCH_LAYERS + K.EVALUATE + K.BATCH_STEP]
    assert len(set(per_loss)) == 4 * len(K.LOSS_CODES)


def test_the_activation_passes_ask_for_512_bit_vectors_and_no_other_code_does():
    # On Intel's AVX-512 server cores LLVM vectorises 256 bits wide unless a function asks for
    # more (_jit._add_ir_module_wide): the activation passes do; the fused XOR-sized loop's copy
    # of them and a user's own functions, compiled in the same process, do not
    from numba import types
    from fastbp import _kernels as K
    wide = '"prefer-vector-width"="512"'
    sig = (types.float32[::1], types.int64)

    def module_of(kernel):
        kernel.compile(sig)
        return str(kernel.overloads[sig].library._final_module)

    assert wide in module_of(K._act_row)
    assert wide not in module_of(K._act_row_small)

    @njit
    def users(x):
        for i in range(x.shape[0]):
            x[i] *= 2
    users(np.ones(3, np.float32))
    assert wide not in users.inspect_llvm(users.signatures[0])

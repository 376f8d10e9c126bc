"""Which BLAS the compiled gemm calls: NumPy's own, where it can be found, else SciPy's.

NumPy's wheels bundle one OpenBLAS and SciPy's another, of different versions. The kernels' gemm
called SciPy's (Numba's own entry, ``numba_xxgemm``) until it was measured against NumPy's with
the same arguments (Cascade Lake, NumPy's OpenBLAS 0.3.31 and SciPy's 0.3.30, float32): NumPy's
ran a forward gemm of 32 rows 1.4x faster at 512 wide and 1.5x at 2048, of 64 rows at 1024 wide
1.6-1.9x, of 128 at 4096 1.3x; at large square shapes the two were within 5%, and whole epochs
with NumPy's ran 0.96-1.03x as fast at float64 points and up to 1.2x faster at float32 ones
(README, Performance). One library for the package's gemms and the user's NumPy also means one
pool of BLAS threads where there were two, each spinning after its calls while the other's
threads wanted the cores.

The library is the BLAS that NumPy's wheel bundles; a NumPy built against a system BLAS has none
there, and SciPy's is called, as before. The gemm is registered with LLVM under a fixed name
(``SYMBOLS``), which compiled and cached code calls by name, as Numba's own helpers are, so a
cache written with one library loads with the other. Both are called through the Fortran
interface with every integer passed as a pointer to an int64: an ILP64 build (NumPy's,
``scipy_sgemm_64_``) reads the 8 bytes, an LP64 one (SciPy's ``cython_blas``) the first 4, which
on a little-endian machine hold the same value below 2^31 (the compiled gemm checks the sizes).
"""
import ctypes
import os
import sys

import numpy as np
from llvmlite import binding as ll
from numba.extending import get_cython_function_address

SYMBOLS = {"s": "fastbp_sgemm", "d": "fastbp_dgemm"}  # what compiled code calls
# Fortran-interface names, ILP64 first: NumPy's PyPI wheels (scipy-openblas64), OpenBLAS built
# with a symbol suffix, then plain names (MKL, a system OpenBLAS)
_NAMES = ("scipy_{}gemm_64_", "{}gemm_64_", "scipy_{}gemm_", "{}gemm_")
SCIPY = "scipy.linalg.cython_blas"  # the fallback's module

library = None  # where the gemms were found: the path of NumPy's BLAS, or SCIPY


def _numpy_blas():
    """(path, {kind: address}) of gemm in the BLAS bundled with NumPy's wheel, or None."""
    home = os.path.dirname(os.path.realpath(np.__file__))
    # where NumPy's wheels keep their libraries: numpy.libs beside the package (Linux, Windows),
    # numpy/.dylibs (macOS)
    for folder in (home + ".libs", os.path.join(home, ".dylibs")):
        try:
            files = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in files:
            if "blas" not in name.lower():
                continue
            path = os.path.join(folder, name)
            try:
                handle = ctypes.CDLL(path)  # already loaded by NumPy: the same library
            except OSError:
                continue
            for symbol in _NAMES:
                found = {k: getattr(handle, symbol.format(k), None) for k in SYMBOLS}
                if all(found.values()):
                    return path, {k: ctypes.cast(f, ctypes.c_void_p).value
                                  for k, f in found.items()}
    return None


def _scipy_blas():
    """{kind: address} of gemm in SciPy's ``cython_blas`` (LP64)."""
    return {k: get_cython_function_address(SCIPY, k + "gemm") for k in SYMBOLS}


def register():
    """Register the gemms under ``SYMBOLS`` (idempotent); before any compiled kernel is loaded."""
    global library
    if library is not None:
        return
    if sys.byteorder != "little":  # see the module's docstring
        raise ImportError("fastbp's compiled gemm needs a little-endian machine")
    found = _numpy_blas()
    if found is not None:
        path, addresses = found
    else:
        path, addresses = SCIPY, _scipy_blas()
    for k, name in SYMBOLS.items():
        ll.add_symbol(name, addresses[k])
    library = path

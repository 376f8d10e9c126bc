"""The BLAS the compiled gemm calls (``fastbp._blas``): NumPy's own where it is found, SciPy's
otherwise, and code cached with either runs with the other."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from fastbp import _blas  # the package's import registers the gemms

pytestmark = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="compiled code only")


def test_the_compiled_gemm_calls_the_blas_numpy_loaded():
    home = os.path.dirname(os.path.realpath(np.__file__))
    numpys = [os.path.realpath(i["filepath"]) for i in threadpool_info()
              if i["user_api"] == "blas" and os.path.realpath(i["filepath"]).startswith(
                  (home + os.sep, home + ".libs" + os.sep))]
    if not numpys:
        pytest.skip("this NumPy's BLAS is not one threadpoolctl lists")
    assert _blas.library in numpys


# A kernel cached in one process, loaded in another: the gemm by name, whichever library is
# registered under it. FALLBACK=1 makes this process register SciPy's, as when NumPy's BLAS is
# not found (the module loaded and patched before the package imports it).
SCRIPT = r'''
import importlib.util, os, sys
import numpy as np
if os.environ["FALLBACK"] == "1":
    home = importlib.util.find_spec("fastbp").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("fastbp._blas", os.path.join(home, "_blas.py"))
    blas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blas)
    blas._numpy_blas = lambda: None
    sys.modules["fastbp._blas"] = blas
import numba
from fastbp import _blas, _kernels as K


@numba.njit(cache=True)
def run(c, a, b, alpha, beta, form):
    # the four layouts of the operands, each its own gemm call
    if form == 0:
        K.gemm(c, a, b, alpha, beta)
    elif form == 1:
        K.gemm(c, a.T, b, alpha, beta)
    elif form == 2:
        K.gemm(c, a, b.T, alpha, beta)
    else:
        K.gemm(c, a.T, b.T, alpha, beta)


rng = np.random.default_rng(0)
worst = 0.0
for dtype in (np.float32, np.float64):
    for form in range(4):
        M, K_, N = 37, 130, 21  # unequal sizes: any argument read wrong shows
        a = rng.standard_normal((K_, M) if form in (1, 3) else (M, K_)).astype(dtype)
        b = rng.standard_normal((N, K_) if form in (2, 3) else (K_, N)).astype(dtype)
        c0 = rng.standard_normal((M, N)).astype(dtype)
        c = c0.copy()
        run(c, a, b, -0.5, 0.25, form)
        want = -0.5 * ((a.T if form in (1, 3) else a).astype(np.float64)
                       @ (b.T if form in (2, 3) else b).astype(np.float64)) + 0.25 * c0
        tol = 1e-5 if dtype == np.float32 else 1e-13
        worst = max(worst, float(np.max(np.abs(c - want) / (np.abs(want) + 1))) / tol)
print(_blas.library == _blas.SCIPY, len(run.stats.cache_hits), len(run.stats.cache_misses), worst)
'''


@pytest.mark.parametrize("first", ["numpy", "scipy"])
def test_a_kernel_cached_with_one_blas_runs_with_the_other(tmp_path, first):
    if _blas.library == _blas.SCIPY:
        pytest.skip("NumPy's BLAS is not found here: only SciPy's can be registered")
    script = tmp_path / "gemm_cached.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for fallback in ((False, True) if first == "numpy" else (True, False)):
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=600, env=dict(env, FALLBACK=str(int(fallback))))
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.split())
    (scipy1, hits1, misses1, worst1), (scipy2, hits2, misses2, worst2) = runs
    assert (scipy1, scipy2) == (str(first == "scipy"), str(first == "numpy"))
    assert (hits1, misses1) == ("0", "2")  # compiled: one kernel per dtype
    assert (hits2, misses2) == ("2", "0")  # loaded from the other process's cache
    assert float(worst1) < 1 and float(worst2) < 1  # errors within the tolerance, both runs

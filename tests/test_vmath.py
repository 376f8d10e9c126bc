"""fastbp's vectorisable exp, expm1, log, log1p, tanh and sigmoid (_vmath) against NumPy.

Dense sweeps over the whole range of each type (subnormals, overflow, infinities, NaN and signed
zeros included), in ulp: the distance between the two floats counted in representable values.
The bound is 3 ulp from NumPy's result for every function and type (NumPy's own functions are
within about 1 ulp of the true value). The table of maxima is printed with -s.
"""
import re

import numba
import numpy as np
import pytest
from numba import njit

from fastbp import _kernels as K
from fastbp import _vmath as vm

MAX_ULP = 3
JIT = not numba.config.DISABLE_JIT


def _loop(f):
    @njit(error_model="numpy")
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = f(x[i])
    return apply


APPLY = {name: _loop(getattr(vm, name)) for name in ("exp", "expm1", "log", "log1p", "tanh",
                                                     "sigmoid")}


def sigmoid_ref(x):
    x = x.astype(np.float64) if x.dtype == np.float32 else x.astype(np.longdouble)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


REFERENCE = {"exp": np.exp, "expm1": np.expm1, "log": np.log, "log1p": np.log1p,
             "tanh": np.tanh, "sigmoid": sigmoid_ref}


def ulp_distance(a, b):
    """|a - b| in ulps of a's type; two NaNs are 0 apart, NaN and a number are far apart."""
    dt = a.dtype
    it = np.int32 if dt == np.float32 else np.int64
    b = b.astype(dt)
    ia, ib = a.view(it).astype(np.int64), b.view(it).astype(np.int64)
    lo = np.int64(np.iinfo(it).min)
    ia = np.where(ia < 0, lo - ia, ia)  # the sign-magnitude bits made one ordered line
    ib = np.where(ib < 0, lo - ib, ib)
    d = np.abs(ia - ib).astype(np.float64)
    d[np.isnan(a) & np.isnan(b)] = 0
    d[np.isnan(a) != np.isnan(b)] = np.inf
    return d


def sweep(name, dt):
    fi = np.finfo(dt)
    rng = np.random.default_rng(0)
    with np.errstate(all="ignore"):  # geomspace to float64's max overflows on its way
        return _sweep(name, dt, fi, rng)


def _sweep(name, dt, fi, rng):
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, fi.tiny, -fi.tiny,
                         fi.smallest_subnormal, -fi.smallest_subnormal, fi.max, -fi.max, 1.0,
                         -1.0, 0.5, -0.5])
    parts = [specials, np.linspace(-800, 800, 1_000_001), rng.standard_normal(500_000) * 4,
             np.geomspace(fi.smallest_subnormal, fi.max, 500_000),
             -np.geomspace(fi.smallest_subnormal, fi.max, 500_000)]
    if name == "log1p":  # the interesting side of -1
        parts.append(-np.geomspace(fi.smallest_subnormal, 1.0, 200_000))
    return np.concatenate(parts).astype(dt)


@pytest.mark.skipif(not JIT, reason="without the JIT these names are NumPy's own functions")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(APPLY))
def test_within_a_few_ulp_of_numpy(name, dtype):
    x = sweep(name, dtype)
    out = np.empty_like(x)
    APPLY[name](x, out)
    with np.errstate(all="ignore"):
        d = ulp_distance(out, REFERENCE[name](x))
    worst = int(np.argmax(d))
    print(f"\n{name:8s} {np.dtype(dtype).name}: max {d.max():.0f} ulp at x = {x[worst]!r}, "
          f"mean {d.mean():.3f} ulp over {x.size} points")
    assert out.dtype == dtype
    assert d.max() <= MAX_ULP, (x[worst], out[worst])


@pytest.mark.skipif(not JIT, reason="checks compiled code")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_agree_with_the_scalar_functions(dtype):
    """The activation kernel (parallel rows, vectorised loops) gives the same bits as the
    functions one element at a time."""
    z = (np.random.default_rng(1).standard_normal((600, 700)) * 6).astype(dtype)
    for code, name in ((K.ACT_SIGMOID, "sigmoid"), (K.ACT_TANH, "tanh")):
        a = z.copy()
        K.activation_forward(a, code)
        flat = np.empty(z.size, dtype)
        APPLY[name](z.ravel(), flat)
        np.testing.assert_array_equal(a.ravel(), flat)


@pytest.mark.skipif(not JIT, reason="checks compiled code")
def test_activation_loops_are_vectorised():
    """LLVM turned the activation loop into packed (SIMD) arithmetic: at least one packed
    multiply (mulps/mulpd, any vector width) in the row function's machine code."""
    # a fresh, uncached compile of the same function: Numba cannot show cached machine code
    act_row = njit(error_model="numpy")(K._act_row.py_func)
    for dtype, code, packed in ((np.float32, K.ACT_SIGMOID, "mulps"),
                                (np.float32, K.ACT_TANH, "mulps"),
                                (np.float64, K.ACT_SIGMOID, "mulpd"),
                                (np.float64, K.ACT_TANH, "mulpd")):
        act_row(np.zeros(8, dtype), code)
    for sig, packed in zip(act_row.signatures, ("mulps", "mulpd")):
        assert re.search(rf"\bv?{packed}\b", act_row.inspect_asm(sig)), sig

"""``_inline``: the kernels' views, min and max, compiled into the caller, against NumPy's reshape and
Python's (and Numba's own) min and max."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError
from numba.core.registry import CPUDispatcher

from fastbp._inline import flat, matrix, max2, min2

JIT = isinstance(njit(lambda: 0), CPUDispatcher)  # with NUMBA_DISABLE_JIT=1, the plain function


@njit
def _views(a, v, rows, cols):
    return flat(a), matrix(v, rows, cols)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("rows,cols", [(3, 4), (1, 7), (5, 1), (0, 3), (4, 0)])
def test_views_equal_numpys_reshape_and_share_the_memory(dtype, rows, cols):
    a = np.arange(rows * cols * 2, dtype=dtype).reshape(rows * 2, cols)
    buf = np.arange(rows * cols + 5, dtype=dtype)
    fa, m = _views(a[rows:], buf[2:2 + rows * cols], rows, cols)
    np.testing.assert_array_equal(fa, a[rows:].reshape(-1))
    np.testing.assert_array_equal(m, buf[2:2 + rows * cols].reshape((rows, cols)))
    assert fa.shape == (rows * cols,) and m.shape == (rows, cols)
    assert m.flags.c_contiguous and fa.flags.c_contiguous
    if rows * cols:
        m[-1, -1] = 99
        fa[0] = -1
        assert buf[1 + rows * cols] == 99 and a[rows, 0] == -1


def test_a_matrix_view_of_the_wrong_size_raises():
    with pytest.raises(ValueError):
        _views(np.zeros((2, 2)), np.zeros(5), 2, 3)


@pytest.mark.skipif(not JIT, reason="typing")
def test_views_of_strided_arrays_are_refused_at_typing():
    with pytest.raises(TypingError):
        _views(np.zeros((4, 4))[:, ::2], np.zeros(4), 2, 2)
    with pytest.raises(TypingError):
        _views(np.zeros((2, 2)), np.zeros(8)[::2], 2, 2)


@njit
def _ours(a, b):
    return min2(a, b), max2(a, b)


@njit
def _builtin(a, b):
    return min(a, b), max(a, b)


NAN = float("nan")
PAIRS = [(1, 2), (2, 1), (-3, -3), (np.int64(5), 4), (1.5, 2.5), (2.5, -1.0), (0.0, -0.0),
         (-0.0, 0.0), (NAN, 1.0), (1.0, NAN), (NAN, NAN), (np.float32(-1.5), 0),
         (np.float32(2.5), np.float32(NAN)), (np.float32(0.1), np.float64(0.1)), (3, 2.5),
         (np.inf, -np.inf)]


@pytest.mark.parametrize("a,b", PAIRS)
def test_min2_and_max2_are_pythons_min_and_max(a, b):
    ours, builtin, python = _ours(a, b), _builtin(a, b), (min(a, b), max(a, b))
    for x, y, z in zip(ours, builtin, python):
        assert type(x) is type(y)  # the type Numba's min and max unify to
        np.testing.assert_array_equal(np.array(x), np.array(z))
        assert np.signbit(x) == np.signbit(z)  # which of +0 and -0: the same operand chosen

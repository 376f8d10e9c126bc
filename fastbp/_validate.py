"""Checks at the public boundary. Each raises a ValueError or TypeError that names the argument and
says what was expected; the compiled code behind the boundary trusts what passed."""
import math
import numbers
from collections import namedtuple

import numpy as np

# A validated sparse X: CSR arrays in the network's dtype and int64, never densified.
Sparse = namedtuple("Sparse", "shape data indices indptr")


def read_only(a):
    """a (an array, a Sparse or None) as read-only views, for the compiled kernels that only read
    it. Numba compiles a read-only array apart from a writable one, so a fit on a read-only X
    (a memmap opened 'r', joblib's shared arrays, scikit-learn's read-only checks) compiled every
    kernel again, even after ``fastbp.precompile``; the data are handed to the kernels read-only
    always, and one compile serves both."""
    if type(a) is np.ndarray:  # first, and setflags, not .flags: a 1-epoch fit pays for each
        view = a.view()
    elif a is None:
        return None
    elif isinstance(a, Sparse):
        return Sparse(a.shape, *(read_only(x) for x in a[1:]))
    else:  # a subclass (a memmap): a plain array, as Numba types it
        view = a.view(np.ndarray)
    view.setflags(write=False)
    return view


def no_rows(n_features, dtype):
    """A read-only (0, n_features) array of dtype: the dense X the kernels take beside a sparse
    X's CSR arrays, and a rank's X for a step with none of its rows."""
    return read_only(np.empty((0, n_features), dtype))


def kernel_input(X, dtype):
    """(Xd, Xs), X as the kernels take it, read-only (``read_only``): a dense X (or None) as
    (X, None); a Sparse as (``no_rows``, its CSR arrays (data, indices, indptr))."""
    if isinstance(X, Sparse):
        return no_rows(X.shape[1], dtype), tuple(read_only(X)[1:])
    return read_only(X), None


def is_sparse(X):
    """A scipy.sparse matrix or array (without importing scipy.sparse for dense input)."""
    module = getattr(type(X), "__module__", None)  # anything a class says, None included
    return isinstance(module, str) and module.startswith("scipy.sparse") and hasattr(X, "tocsr")


def sparse_features(X, n_features, dtype, name="X"):
    """A scipy.sparse X as a Sparse of CSR arrays ((n, n_features), data in dtype, indices and
    indptr int64): converted row-major once (CSC and COO too), checked, never densified."""
    csr = X.tocsr()
    if len(csr.shape) != 2:
        raise ValueError(f"{name} must be 2-D, shape (n_samples, n_features); got shape "
                         f"{csr.shape}")
    n, c = csr.shape
    if n == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample")
    if c != n_features:
        raise ValueError(f"{name} has {c} features per sample; this network expects "
                         f"{n_features} (sizes[0])")
    if csr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers (bool, integer or float); got dtype {csr.dtype}")
    with np.errstate(over="ignore"):
        data = np.ascontiguousarray(csr.data, dtype=dtype)
    _finite(data, name, dtype)
    return Sparse((n, c), data, np.ascontiguousarray(csr.indices, dtype=np.int64),
                  np.ascontiguousarray(csr.indptr, dtype=np.int64))


def sparse_rows(X, rows):
    """The rows ``rows`` of a Sparse X, as a Sparse."""
    starts, stops = X.indptr[rows], X.indptr[rows + 1]
    lengths = stops - starts
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    pos = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
    return Sparse((len(rows), X.shape[1]), X.data[pos], X.indices[pos], indptr)


def _as_numeric_array(value, name):
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists, unconvertible objects
        raise TypeError(f"{name} must be a rectangular numeric array-like; numpy could not "
                        f"convert it: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers (bool, integer or float); got dtype {arr.dtype}")
    return arr


def _convert(arr, dtype):
    """arr as a C-contiguous array of dtype; values too large for it become inf (refused by the
    caller), silently: the errstate context is entered only where that can happen (a float
    narrowed), since a 1-epoch fit pays for each entry."""
    dtype = np.dtype(dtype)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > dtype.itemsize:
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(arr, dtype=dtype)
    return np.ascontiguousarray(arr, dtype=dtype)


def all_finite(arr):
    """Whether every value of the float array arr is finite: its max and min, which NaN and
    infinities reach, not np.isfinite(arr).all(), which makes a boolean copy (W2's 47M floats: 47
    MB; 14.2 against 15.4 ms, measured). Python's checks use this, not the compiled count
    (_kernels.all_finite: 6.3 ms there), which a first fit would compile, 0.13-0.18 s per dtype
    (measured), for a test that runs once an epoch or a call."""
    return not arr.size or bool(np.isfinite(arr.max()) and np.isfinite(arr.min()))


def _finite(arr, name, dtype):
    # Integers and booleans are always finite, and so is a sparse X with no stored values.
    if arr.dtype.kind == "f" and not all_finite(arr):
        raise ValueError(f"{name} contains NaN or infinity (or values too large for "
                         f"{np.dtype(dtype).name}); every value must be finite")


def features(X, n_features, dtype, name="X"):
    """X as a C-contiguous (n, n_features) array of dtype, converted once."""
    arr = _as_numeric_array(X, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, shape (n_samples, n_features); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features per sample; this network expects "
                         f"{n_features} (sizes[0])")
    out = _convert(arr, dtype)
    _finite(out, name, dtype)
    return out


def targets(y, n_samples, kind, n_out, dtype, name="y"):
    """y as a C-contiguous (n, T) array of dtype for a loss whose targets are ``kind``.

    kind 'binary': 0/1 or soft targets in [0, 1], 'real': any finite values, both of shape
    (n,) (one output) or (n, n_out), T = n_out; 'labels': integers 0..n_out-1, T = 1. Also returns whether y was 1-D.
    """
    arr = _as_numeric_array(y, name)
    if arr.ndim == 0 or arr.ndim > 2:
        raise ValueError(f"{name} must be 1-D (n_samples,) or 2-D; got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"{name} has {arr.shape[0]} samples but X has {n_samples}; "
                         "they must have the same length")
    one_d = arr.ndim == 1
    if kind == "labels" and arr.ndim == 2 and arr.shape[1] == n_out and n_out > 1:
        # one-hot rows (n, K): the labels they mark
        if not (np.isin(arr, (0, 1)).all() and (arr.sum(axis=1) == 1).all()):
            raise ValueError(f"{name} of shape {arr.shape} for loss 'cross_entropy' must be integer "
                             f"labels (n_samples,), one label per sample, or one-hot rows (one 1 "
                             f"and {n_out - 1} zeros each)")
        arr, one_d = arr.argmax(axis=1), True
    width = 1 if one_d else arr.shape[1]
    if kind in ("real", "binary", "counts"):
        if width != n_out:
            shapes = f"({n_samples}, {n_out})" + (f" or ({n_samples},)" if n_out == 1 else "")
            raise ValueError(f"{name} must have shape {shapes} to match the {n_out} network "
                             f"outputs; got shape {arr.shape}")
    elif width != 1:
        raise ValueError(f"{name} must be 1-D, shape (n_samples,), one label per sample, or "
                         f"one-hot rows ({n_samples}, {n_out}); got shape {arr.shape}")
    out = _convert(arr.reshape(n_samples, width), dtype)
    if kind == "binary" and out.min() >= 0 and out.max() <= 1:  # finite and in range (NaN fails)
        return out, one_d
    _finite(out, name, dtype)
    if kind == "binary" and ((out < 0).any() or (out > 1).any()):
        raise ValueError(f"{name} must hold 0/1 labels or probabilities in [0, 1] for loss 'bce'; "
                         f"got values in [{out.min()}, {out.max()}]")
    if kind == "counts" and (out < 0).any():
        raise ValueError(f"{name} must hold counts or means >= 0 for loss 'poisson'; got values "
                         f"down to {out.min()}")
    if kind == "labels":
        if (arr != np.round(arr)).any() or (arr < 0).any() or (arr >= n_out).any():
            raise ValueError(f"{name} must hold integer class labels 0..{n_out - 1} for loss "
                             f"'cross_entropy' with {n_out} outputs; got values in "
                             f"[{arr.min()}, {arr.max()}]")
    return out, one_d


def integer(value, name, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    # type() first: the ABC isinstance checks cost microseconds, which a 1-epoch fit notices
    if type(value) is not int and (isinstance(value, (bool, np.bool_))
                                   or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{name} must be an integer{' or None' if allow_none else ''}; "
                        f"got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def real(value, name, minimum, strict=False):
    if type(value) not in (float, int) and (isinstance(value, (bool, np.bool_))
                                            or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range, e.g. 10**400
        raise ValueError(f"{name} must be finite and >= {minimum}; got an integer of "
                         f"{len(str(abs(value)))} digits, beyond the range of a float") from None
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be finite and {'>' if strict else '>='} {minimum}; "
                         f"got {value}")
    return value


def boolean(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


FLOAT_DTYPES = ("float32", "float64")  # the dtypes fastbp computes in, by name


def float_dtype(value, name="dtype"):
    """value as np.dtype float32 or float64 (a name, a type or a dtype)."""
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"{name} must be np.float32 or np.float64; got {value!r}") from None
    if dt.name not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be np.float32 or np.float64; got {dt}")
    return dt


def one_or_many(value, name, one, single):
    """value as a list: [value] when it is one item (an instance of a type in single), else its
    items; a TypeError naming the argument when it is neither."""
    if isinstance(value, single):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{name} must be {one} or a sequence of them; got {value!r}") from None


def choice(value, name, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}; got {value!r}")
    return value

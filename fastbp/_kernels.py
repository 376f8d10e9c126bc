"""Compiled kernels: forward/backward pairs, fused loss + output deltas, the SGD update, and the
compiled training loop that strings them together.

Dimension legend (as in llm.c):
    B   rows in a batch
    C   input features of a dense layer
    OC  output features of a dense layer
    T   target columns (1 for cross-entropy labels, OC for bce and mse)
    P   parameters of the whole network, in one flat buffer
    L   dense layers
    N   samples in the training set, E epochs in one call

Conventions: outputs come first, then inputs; a gradient buffer is its array's name with a ``d`` in
front. A kernel reads only its arguments and allocates no buffers: workspaces come from the
caller (a few one-element arrays carry scalars in and out of the training loop: the step count,
the rows classified right).

Threads: only kernels that can run with more than one Numba thread are ``parallel=True``: the
row chunks' runner (``CHUNK_RUNNER``), which runs a batch of a network of small layers in chunks
of rows, one task per thread, with BLAS at one thread (``row_chunks``; compiled apart from the
drivers, which call it through its address, see ``_chunks.py``); the sparse first layer (a
network of small layers on sparse input stays out of the BLAS split, so Numba has the threads,
see ``_threads.py``: its dense layers' gemms, below 4096 multiply-adds, are far too small for
OpenBLAS to start its own); and the activation passes as standalone kernels. Other dense training
runs its per-layer kernels inside the BLAS split, with one Numba thread, so they are serial:
compiled parallel they ran no faster and cost 3.5 s of a first fit's 17 (measured).

Compiling: the kernels that only compiled code calls are ``@inner`` (``_jit.py``: no Numba
wrappers, and no optimisation or machine code of their own, which their callers make with them
inlined; a call from Python, as the tests and ``Network.gradients`` make, goes to a twin
compiled the ordinary way: the engine's own backup, restore and finiteness check on the epochs it
steps in Python use NumPy, so no fit compiles such twins); the drivers, and the kernels the Python
layer calls on every fit or predict, are plain ``@njit``. The training loop of a network run by
the per-layer kernels calls its batch kernel (``BATCH_STEP``) through an address it is handed
(``_batch.py``), so the network's pass is compiled once for all the loop's plans.

Reproducibility: every ``prange`` loop gives each iteration its own output elements (rows of
``out``, blocks of rows, blocks of ``dweight``, a chunk's own gradient buffer), and every sum runs
in a fixed order inside one iteration, or over the iterations' results in order afterwards. No two
threads write the same element and no reduction order depends on the thread count, so results are
bit-identical for any number of Numba threads. BLAS (``gemm``) is called inside ``prange`` only
with BLAS at one thread (the row chunks); the Python layer decides how many threads BLAS may use
(see ``_threads.py``).
"""
import zlib

import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import _blas
from . import _compiling
from . import _pcg
from . import _threads
from . import _vmath as vm
from ._jit import LINKED, distinct, inner, renamed
from ._inline import flat, matrix, max2, min2

_threads.start_pool()  # before any cached kernel runs: see _threads.start_pool
_compiling.install()  # a first compile says so, and pauses the collector (see _compiling)

# Activation codes (the name table lives in activations.py).
ACT_IDENTITY = 0
ACT_SIGMOID = 1
ACT_RELU = 2
ACT_TANH = 3
ACT_LEAKY_RELU = 4
LEAKY_SLOPE = 0.01  # PyTorch's default negative_slope

# Loss codes (the name table lives in losses.py); each is fused with its output activation.
LOSS_BCE = 0  # sigmoid output, binary_cross_entropy_with_logits
LOSS_CE = 1  # softmax output, cross_entropy over integer labels
LOSS_MSE = 2  # identity output, mse_loss
LOSS_POISSON = 3  # exp output, half Poisson deviance (scikit-learn's loss='poisson')
LOSS_CODES = (LOSS_BCE, LOSS_CE, LOSS_MSE, LOSS_POISSON)  # in code order (0, 1, 2, 3)

# Columns of the ``layout`` array: one row per dense layer.
LAY_C, LAY_OC, LAY_W, LAY_B = 0, 1, 2, 3

# Optimiser codes and the columns of the ``hyper`` array (optim.py builds both).
OPT_SGD = 0
OPT_ADAM = 1
OPT_ADAMW = 2
H_MOMENTUM = H_BETA1 = 0
H_BETA2 = 1
H_EPS = 2
H_WEIGHT_DECAY = 3
H_NESTEROV = 4
H_EPS_INSIDE = 5  # Adam: 1 adds eps before the bias correction of sqrt(v), as scikit-learn
H_UPDATE_VELOCITY = 6  # SGD: 1 keeps a velocity of updates (scikit-learn), 0 of gradients (torch)
N_HYPER = 7

BIAS_BLOCK = 64  # output features per dbias task: one writer per element, rows summed in order
ROW_BLOCK = 64  # rows per task of the elementwise passes
# Layers at least this wide run their passes after a gemm row by row, each row still in cache
# for its second loop: forward its bias, then its activation; backward its derivative, then its
# add to dbias. Measured (one thread, float32; two passes, then row by row): 4096 x 2048 relu
# 6.2 and 4.2 ms forward, 16.2 and 7.4 backward, sigmoid 9.6 and 8.0, 16.5 and 7.4; 64 x 1024
# relu 12.5 and 11.4 us, 21.6 and 16.5; 64 x 512 within 1 us either way. At 256 wide, batches of
# 64-128 rows ran up to 25% slower row by row (sigmoid backward 11.9 and 14.9 us).
ROWWISE_MIN_WIDTH = 512
UPDATE_CHUNK = 4096  # parameters per optimiser task

# C = alpha op(A) op(B) + beta C in column-major order: BLAS's Fortran gemm, every argument by
# address, NumPy's library where found (``_blas``: registered by name before any kernel is
# compiled or loaded from the cache); ``gemm``.
_blas.register()
# (the arrays' data as address-sized integers, ``a.ctypes.data``: C passes those as it passes
# pointers)
_SGEMM, _DGEMM = (types.ExternalFunction(_blas.SYMBOLS[kind], types.void(
    *(types.voidptr,) * 6, types.uintp, types.voidptr, types.uintp, types.voidptr, types.voidptr,
    types.uintp, types.voidptr)) for kind in "sd")
_BLAS_MAX = (1 << 31) - 1  # the largest size every library reads right (see _blas)
PARALLEL_MIN_WORK = 1 << 15  # element operations below which a loop stays on the calling thread

# An index made of offsets that are never negative (layout entries, row numbers, block starts),
# cast to unsigned: for a signed index Numba emits Python's wraparound (i < 0 ? i + n : i), which
# LLVM cannot remove where the offsets are read from arrays. In the fused XOR-sized loop, every
# access is such an index: an XOR epoch 0.506 -> 0.431 us float64, 0.491 -> 0.402 float32, without
# the wraparound (measured, as in the commit that made it).
_ix = np.uint64


# --------------------------------------------------------------------------- scalar helpers


@inner(error_model="numpy")
def _logsumexp_parts(logits, b):
    """(m, s) for row b of logits (B, OC): m its maximum, s = sum exp(logits - m) in float64,
    so every term is <= 1 and log-sum-exp = m + log(s) stays finite for huge logits."""
    OC = logits.shape[1]
    m = logits[b, 0]
    for o in range(1, OC):
        m = max2(m, logits[b, o])
    s = np.float64(0)
    for o in range(OC):
        s += vm.exp(logits[b, o] - m)
    return m, s


@inner()
def _shift_by_max(d, z):
    """d (OC,) = z - m for z (OC,), m its largest element, returned; d may alias z. Every exp of
    the softmax is taken of these, so each term is <= 1 and none overflows."""
    m = z[0]
    for o in range(1, z.shape[0]):
        m = max2(m, z[o])
    for o in range(z.shape[0]):
        d[o] = z[o] - m
    return m


@inner(error_model="numpy")
def _exp_block(z):
    """z (n,) = exp(z), in place, in one vectorised loop."""
    for i in range(z.shape[0]):
        z[i] = vm.exp(z[i])


@inner()
def _sum64(d):
    """The sum of d (n,) in float64, in order."""
    s = np.float64(0)
    for o in range(d.shape[0]):
        s += d[o]
    return s


@inner(error_model="numpy")
def _ce_delta(d, label, B):
    """d (OC,) holds exp(z - m) on entry and (softmax(z) - onehot(label)) / B on exit; returns
    s, the sum of the exps in float64."""
    s = _sum64(d)
    el = d[label]
    for o in range(d.shape[0]):
        d[o] = d[o] / s / B
    d[label] = (el / s - 1) / B
    return s


@njit(cache=True, inline="always")
def _poisson_row_term(z, y):
    """Half the Poisson deviance of log-mean z at count y: exp(z) - y z + y log y - y, in float64
    (0 at a perfect fit; y log y = 0 at y = 0). Its derivative in z is exp(z) - y."""
    z = np.float64(z)
    y = np.float64(y)
    return vm.exp(z) - y * z + (y * vm.log(y) - y if y > 0 else 0.0)


# --------------------------------------------------------------------------- when to go parallel


@inner()
def _parallel(work):
    """Whether a loop of ``work`` element operations is worth waking the thread pool.

    Waking Numba's pool costs microseconds, more than a small layer's whole forward pass, so
    small loops run on the calling thread. Either way each row is computed by the same code in
    the same order, so the choice never changes a result.
    """
    return work >= PARALLEL_MIN_WORK


# --------------------------------------------------------------------------- activations
# Each activation's formula is written once, in _vmath (forward) or _act_grad_row (derivative);
# the loops below run over one row's contiguous elements from index 0, with the activation chosen
# outside the loop, so each loop vectorises (error_model="numpy": no division checks in them).


@inner(wide=True, error_model="numpy")
def _act_row(row, act):
    """row (N,) = act(row), in place. Sigmoid and tanh run over the row's two halves in one
    loop: each value's polynomial and division are one long chain of dependent instructions,
    and LLVM's vectorised loop held one such chain a step (it interleaves none at this size), so
    the core waited on it; two independent chains a step keep it busier. Over 4M float32 values
    on one thread (a Cascade Lake, medians of 31 passes, five runs), sigmoid took 2.80-2.89 ms
    instead of 3.05-3.15 (np.tanh 2.87-2.94), tanh 3.19-3.24 instead of 3.04-3.43; four chains
    a step no faster (measured). Each value's result is the same either way."""
    N = row.shape[0]
    h = N // 2
    if act == ACT_SIGMOID:
        for j in range(h):
            row[j] = vm.sigmoid(row[j])
            row[h + j] = vm.sigmoid(row[h + j])
        if N > 2 * h:
            row[N - 1] = vm.sigmoid(row[N - 1])
    elif act == ACT_RELU:
        for j in range(N):
            row[j] = row[j] if not row[j] < 0 else 0  # NaN stays NaN, as in PyTorch
    elif act == ACT_TANH:
        for j in range(h):
            row[j] = vm.tanh(row[j])
            row[h + j] = vm.tanh(row[h + j])
        if N > 2 * h:
            row[N - 1] = vm.tanh(row[N - 1])
    elif act == ACT_LEAKY_RELU:
        for j in range(N):
            row[j] = row[j] if not row[j] < 0 else row[j] * LEAKY_SLOPE


@inner(wide=True, error_model="numpy")
def _act_grad_row(drow, arow, act):
    """drow (N,) = dL/da in, dL/dz out, in place; the derivative from the output arow (N,):
    sigmoid' = a (1 - a), tanh' = 1 - a^2, relu/leaky_relu test a > 0, which is z > 0."""
    N = drow.shape[0]
    if act == ACT_SIGMOID:
        for j in range(N):
            drow[j] *= arow[j] * (1 - arow[j])
    elif act == ACT_RELU:
        for j in range(N):
            drow[j] = drow[j] if arow[j] > 0 else 0
    elif act == ACT_TANH:
        for j in range(N):
            drow[j] *= 1 - arow[j] * arow[j]
    elif act == ACT_LEAKY_RELU:
        for j in range(N):
            drow[j] = drow[j] if arow[j] > 0 else drow[j] * LEAKY_SLOPE


@inner()
def _act_rows(a, act, b0, b1):
    """Rows b0..b1-1 of a (B, N) = act(those rows), in place, as one flat loop: a narrow layer's
    rows are too short to pay for a loop (and a call) each."""
    if act != ACT_IDENTITY:
        _act_row(flat(a[b0:b1]), act)


@inner()
def _act_grad_rows(dz, a, act, b0, b1):
    """Rows b0..b1-1 of dz (B, N): dL/da in, dL/dz out, from the output a (B, N), as one flat
    loop (see _act_rows)."""
    if act != ACT_IDENTITY:
        _act_grad_row(flat(dz[b0:b1]), flat(a[b0:b1]), act)


@inner(parallel=True)
def activation_forward(a, act):
    """a (B, N): pre-activation z in, act(z) out, in place; blocks of ROW_BLOCK rows in parallel
    for large arrays."""
    B, N = a.shape
    if _parallel(B * N):
        for k in prange((B + ROW_BLOCK - 1) // ROW_BLOCK):
            _act_rows(a, act, k * ROW_BLOCK, min2(B, (k + 1) * ROW_BLOCK))
    else:
        _act_rows(a, act, 0, B)


@inner(parallel=True)
def activation_backward(dz, a, act):
    """dz (B, N): dL/da in, dL/dz out, in place; the derivative is taken from the output a (B, N),
    so the backward pass needs no copy of z (see _act_grad_row). The training loop does this
    in dense_backward instead, just before the dbias sum."""
    B, N = a.shape
    if _parallel(B * N):
        for k in prange((B + ROW_BLOCK - 1) // ROW_BLOCK):
            _act_grad_rows(dz, a, act, k * ROW_BLOCK, min2(B, (k + 1) * ROW_BLOCK))
    else:
        _act_grad_rows(dz, a, act, 0, B)


# --------------------------------------------------------------------------- dense layer


@inner()
def _bias_act(out, bias, act):
    """out (B, OC) = act(out + bias): the pass after a gemm. Rows of ROWWISE_MIN_WIDTH or more one
    at a time, the bias added, then the activation while the row is in cache; narrower ones the
    bias added, then the activation as one flat loop (narrow rows are too short to pay for a
    vector loop each, and the layer is in cache). One call of ``_act_row``: its loops compiled
    once."""
    B, OC = out.shape
    rows = OC >= ROWWISE_MIN_WIDTH
    if not rows:
        for b in range(B):
            row = out[b]
            for o in range(OC):
                row[o] += bias[o]
    pieces = out if rows else matrix(flat(out), 1, B * OC)  # rows, or the whole as one
    for k in range(pieces.shape[0]):
        piece = pieces[k]
        if rows:
            for o in range(OC):
                piece[o] += bias[o]
        _act_row(piece, act)


@inner()
def dense_forward(out, inp, weight, bias, act):
    """out (B, OC) = act(inp (B, C) @ weight (C, OC) + bias (OC,)); act: an ACT_ code
    (ACT_IDENTITY for logits). One gemm call, then one pass adding the bias and activating."""
    gemm(out, inp, weight, 1.0, 0.0)
    _bias_act(out, bias, act)


@inner()
def _dbias_block(dbias, dout, k):
    """dbias[o] = the sum over rows of dout[:, o] for the k-th block of output features, rows in
    order."""
    B, OC = dout.shape
    o0 = k * BIAS_BLOCK
    o1 = min2(OC, o0 + BIAS_BLOCK)
    db = dbias[o0:o1]  # views indexed from 0: see _sgd_chunk
    first = dout[0, o0:o1]
    for j in range(o1 - o0):
        db[j] = first[j]
    for b in range(1, B):
        row = dout[b, o0:o1]
        for j in range(o1 - o0):
            db[j] += row[j]


@inner()
def delta_and_dbias(dbias, dout, out, act):
    """dout (B, OC) = dL/d(out) in, dL/dz out for out = act(z) (B, OC), in place (ACT_IDENTITY
    leaves it), and dbias (OC,) = its sum over rows, rows in order. Rows of ROWWISE_MIN_WIDTH or
    more in one pass, row by row (dbias stays in cache); narrower ones as one flat loop, then the
    sum in blocks of columns. The same sums in the same order either way."""
    B, OC = dout.shape
    rows = OC >= ROWWISE_MIN_WIDTH
    d = dout if rows else matrix(flat(dout), 1, B * OC)  # rows, or the whole as one
    a = out if rows else matrix(flat(out), 1, B * OC)
    for k in range(d.shape[0]):
        piece = d[k]
        _act_grad_row(piece, a[k], act)  # one call: its loops compiled once
        if rows:
            for o in range(OC):
                dbias[o] = piece[o] if k == 0 else dbias[o] + piece[o]
    if not rows:
        for k in range((OC + BIAS_BLOCK - 1) // BIAS_BLOCK):
            _dbias_block(dbias, dout, k)


def gemm(c, a, b, alpha, beta):
    """c (M, N) = alpha * a (M, K) @ b (K, N) + beta * c, in place; a and b C-contiguous or
    transposed views of C-contiguous arrays (``w.T``). In compiled code one call of BLAS gemm
    (see ``_blas``; not np.dot: it has no alpha and beta, which plain SGD's fused step needs, and
    its own checks and paths made every compiled level that links it longer to compile); here,
    for NUMBA_DISABLE_JIT=1, NumPy."""
    if beta == 0:
        c[...] = alpha * (a @ b)
    else:
        c *= beta
        c += alpha * (a @ b)


@intrinsic
def _address_of(typingctx, x):
    """A pointer to a copy of the scalar x in the caller's stack frame (BLAS's Fortran interface
    takes every argument by address)."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once_value(builder, args[0])
        return builder.bitcast(slot, cgutils.voidptr_t)
    return types.voidptr(x), codegen


# BLAS's "N" and "T" (no transpose, transpose) as the bytes it reads; module constants, not ord()
# in compiled code, where it is a compile of its own
_N, _T = np.uint8(ord("N")), np.uint8(ord("T"))


@inner()
def _xgemm(single, trans_b, trans_a, c_shape, a_shape, b_shape, alpha, beta, c, a, b):
    """``gemm``'s checks and BLAS call, for every layout and both dtypes of the operands: single,
    float32; c, a and b the data's addresses; trans_b and trans_a BLAS's "N" or "T" (see
    ``_gemm_compiled``), "N" for a C-contiguous array. Its arguments are scalars, so it is
    compiled once, not once for each layout: a first fit's compile of each gemm layout took
    0.04 s instead of 0.15-0.22 (measured)."""
    M, K = a_shape
    N = b_shape[1]
    if b_shape[0] != K or c_shape[0] != M or c_shape[1] != N:
        raise ValueError("gemm: the shapes of c, a and b do not match")
    if M == 0 or N == 0:
        return
    if max2(M, max2(N, K)) > _BLAS_MAX:
        raise ValueError("gemm: a size of 2^31 or more, past what 32-bit BLAS builds read")
    m, n, k = np.int64(M), np.int64(N), np.int64(K)
    ldb = max2(np.int64(1), n if trans_b == _N else k)
    lda = max2(np.int64(1), k if trans_a == _N else m)
    if single:
        _SGEMM(_address_of(trans_b), _address_of(trans_a), _address_of(n), _address_of(m),
               _address_of(k), _address_of(np.float32(alpha)), b, _address_of(ldb), a,
               _address_of(lda), _address_of(np.float32(beta)), c, _address_of(n))
    else:
        _DGEMM(_address_of(trans_b), _address_of(trans_a), _address_of(n), _address_of(m),
               _address_of(k), _address_of(alpha), b, _address_of(ldb), a, _address_of(lda),
               _address_of(beta), c, _address_of(n))


@overload(gemm, jit_options=LINKED)
def _gemm_compiled(c, a, b, alpha, beta):
    layouts = [getattr(x, "layout", "") for x in (c, a, b)]
    if layouts[0] != "C" or not all(lay in ("C", "F") for lay in layouts[1:]):
        return gemm  # not contiguous: the NumPy form above
    single = c.dtype == types.float32
    # row-major c = a @ b is column-major c^T = b^T @ a^T: a C-contiguous array's memory is its
    # transpose in column-major order ("N"), a transposed one's is the array itself ("T").
    trans_b, trans_a = [_N if lay == "C" else _T for lay in layouts[2:0:-1]]

    def impl(c, a, b, alpha, beta):
        _xgemm(single, trans_b, trans_a, c.shape, a.shape, b.shape, np.float64(alpha),
               np.float64(beta), c.ctypes.data, a.ctypes.data, b.ctypes.data)
    return impl


@inner()
def dense_backward(dinp, dweight, dbias, dout, inp, weight, bias, out, act, need_dinp, sgd):
    """Backward of ``dense_forward``, given dout (B, OC) = dL/d(out) for out = act(z) (B, OC).

    dout becomes dL/dz in place (act: the layer's ACT_ code; ACT_IDENTITY leaves it as it is) and
    dbias (OC,) its sum over rows (``delta_and_dbias``); then, when ``need_dinp``, dinp (B, C) =
    dout @ weight^T (the first layer's input needs no gradient), and dweight (C, OC) = inp^T @
    dout, each one gemm. sgd (1,) = (lr,): plain SGD's step is taken here as well, weight -= lr *
    inp^T @ dout (in the gemm: dweight is then not written) and bias (OC,) -= lr * dbias; (0,):
    no step, bias untouched.
    """
    delta_and_dbias(dbias, dout, out, act)
    # dinp first: it takes the weight from before the step
    if need_dinp:
        gemm(dinp, dout, weight.T, 1.0, 0.0)
    if sgd.shape[0] > 0:  # the step in the gemm (dweight not written): at 4096 x 4096, batch
        # 128, 9.8 ms against 14.6 for the gradient's gemm and then the update (measured)
        gemm(weight, inp.T, dout, -np.float64(sgd[0]), 1.0)
        _sgd_step(bias, dbias, sgd[0])
    else:
        gemm(dweight, inp.T, dout, 1.0, 0.0)


# --------------------------------------------------------------------------- sparse first layer
# X in CSR form (data, indices, indptr): the rows index[start:start + B] of the batch are read
# where they are stored, never densified. The sums run over each row's stored values in order,
# the same terms in the same order as the dense loops less the zero ones.


@inner()
def _sparse_forward_row(out, data, indices, indptr, index, start, weight, bias, act, b):
    """Row b of out (B, OC) = act(X[index[start + b]] @ weight (C, OC) + bias)."""
    OC = weight.shape[1]
    r = index[start + b]
    for o in range(OC):
        out[b, o] = bias[o]
    for k in range(indptr[r], indptr[r + 1]):
        x = data[k]
        c = indices[k]
        for o in range(OC):
            out[b, o] += x * weight[c, o]
    _act_row(out[b], act)


@inner(parallel=True)
def sparse_forward(out, data, indices, indptr, index, start, weight, bias, act):
    """out (B, OC) = act(X[index[start:start + B]] @ weight (C, OC) + bias (OC,)), X (N, C) in CSR
    (data (nnz,), indices (nnz,), indptr (N + 1,)); parallel over batch rows."""
    B, OC = out.shape
    if _parallel(B * OC):
        for b in prange(B):
            _sparse_forward_row(out, data, indices, indptr, index, start, weight, bias, act,
                                np.int64(b))
    else:
        for b in range(B):
            _sparse_forward_row(out, data, indices, indptr, index, start, weight, bias, act, b)


@inner()
def _sparse_dweight_block(dweight, data, indices, indptr, index, start, dout, k):
    """Columns [k * BIAS_BLOCK, ...) of dweight (C, OC) = X_batch^T @ dout (B, OC): zeroed, then
    each batch row's stored values scattered, rows in order."""
    B, OC = dout.shape
    o0 = k * BIAS_BLOCK
    o1 = min2(OC, o0 + BIAS_BLOCK)
    for c in range(dweight.shape[0]):
        for o in range(o0, o1):
            dweight[c, o] = 0
    for b in range(B):
        r = index[start + b]
        for kk in range(indptr[r], indptr[r + 1]):
            x = data[kk]
            c = indices[kk]
            for o in range(o0, o1):
                dweight[c, o] += x * dout[b, o]


@inner(parallel=True)
def sparse_backward(dweight, dbias, dout, out, act, data, indices, indptr, index, start):
    """Backward of ``sparse_forward`` (the first layer: no input gradient), dout (B, OC) =
    dL/d(out) made dL/dz in place as in dense_backward: dbias (OC,) = its sum over rows, dweight
    (C, OC) = X_batch^T @ dout. Parallel over blocks of output features, so each element has one
    writer and its sum runs over rows in order."""
    OC = dout.shape[1]
    nblk = (OC + BIAS_BLOCK - 1) // BIAS_BLOCK
    delta_and_dbias(dbias, dout, out, act)
    if _parallel(dweight.shape[0] * OC):
        for k in prange(nblk):
            _sparse_dweight_block(dweight, data, indices, indptr, index, start, dout,
                                  np.int64(k))
    else:
        for k in range(nblk):
            _sparse_dweight_block(dweight, data, indices, indptr, index, start, dout, k)


# --------------------------------------------------------------------------- losses (fused with output)


@inner(error_model="numpy")
def _loss_row(logits, targets, loss, b):
    """Row b's loss, summed over its outputs, in float64."""
    OC = logits.shape[1]
    s = np.float64(0)  # float64 sums for float32 data, JIT or not
    if loss == LOSS_BCE:
        for o in range(OC):
            z = logits[b, o]
            # max(z, 0) - z y + log(1 + exp(-|z|)): finite for any finite z.
            s += max2(z, 0) - z * targets[b, o] + vm.log1p(vm.exp(-abs(z)))
    elif loss == LOSS_CE:
        m, e = _logsumexp_parts(logits, b)
        s = m + vm.log(e) - logits[b, np.int64(targets[b, 0])]
    elif loss == LOSS_POISSON:
        for o in range(OC):
            s += _poisson_row_term(logits[b, o], targets[b, o])
    else:
        for o in range(OC):
            d = logits[b, o] - targets[b, o]
            s += d * d
    return s


# _loss_row inlined, for loss_forward (itself inlined into each loss's evaluate, which so compiles
# its own loss only); the training loop calls _loss_row itself: inlined there it was typed into
# every loss's closure before the other losses' branches were pruned (a cold cross-entropy fit
# 0.5 s slower)
_loss_row_inlined = njit(cache=True, error_model="numpy", inline="always")(
    renamed(getattr(_loss_row, "py_func", _loss_row), "__inlined"))  # (plain with the JIT off)


@njit(cache=True, inline="always")
def loss_forward(row_loss, logits, targets, loss):
    """Mean loss (PyTorch 'mean' reduction) of logits (B, OC) against targets (B, T).

    row_loss (B,) is a workspace: each row's loss is written there, then the rows are added in
    order. Returns a float64: the mean over B * OC elements for bce and mse, over B rows for
    cross-entropy.
    """
    B, OC = logits.shape
    for b in range(B):
        row_loss[b] = _loss_row_inlined(logits, targets, loss, b)
    total = np.float64(0)
    for b in range(B):
        total += row_loss[b]
    return total / (B if loss == LOSS_CE else B * OC)


@inner(error_model="numpy")
def _loss_backward_row(dlogits, logits, targets, loss, b):
    B, OC = logits.shape
    if loss == LOSS_BCE:
        scale = 1.0 / (B * OC)
        for o in range(OC):
            dlogits[b, o] = (vm.sigmoid(logits[b, o]) - targets[b, o]) * scale
    elif loss == LOSS_CE:
        _shift_by_max(dlogits[b], logits[b])
        _exp_block(dlogits[b])
        _ce_delta(dlogits[b], np.int64(targets[b, 0]), B)
    elif loss == LOSS_POISSON:
        scale = 1.0 / (B * OC)
        for o in range(OC):
            dlogits[b, o] = (vm.exp(logits[b, o]) - targets[b, o]) * scale
    else:
        scale = 2.0 / (B * OC)
        for o in range(OC):
            dlogits[b, o] = (logits[b, o] - targets[b, o]) * scale


@inner(error_model="numpy")
def _ce_block(row_loss, logits, targets, b0, b1):
    """Rows b0..b1-1 of ``loss_forward_backward`` for cross-entropy. Each row's maximum m is taken
    off (z - m, the argument of exp, as in _shift_by_max) and z[label] - m kept in row_loss;
    then the exps of the whole block in one vectorised loop (a row of 10 classes is too short for
    a vector of its own); then per row s = the sum of its exps in float64, in order, the loss
    log(s) - (z[label] - m) and the delta (softmax - onehot) / B."""
    B = logits.shape[0]
    for b in range(b0, b1):
        _shift_by_max(logits[b], logits[b])
        row_loss[b] = logits[b, np.int64(targets[b, 0])]
    _exp_block(flat(logits[b0:b1]))
    for b in range(b0, b1):
        s = _ce_delta(logits[b], np.int64(targets[b, 0]), B)
        row_loss[b] = vm.log(s) - row_loss[b]


@njit(cache=True, inline="always")
def _loss_delta_rows(row_loss, logits, targets, loss, b0, b1):
    if loss == LOSS_CE:
        _ce_block(row_loss, logits, targets, b0, b1)
        return
    for b in range(b0, b1):
        row_loss[b] = _loss_row(logits, targets, loss, b)
        _loss_backward_row(logits, logits, targets, loss, b)


LOSS_BLOCK = 64  # rows per task of loss_forward_backward


@njit(cache=True, inline="always")
def loss_forward_backward(row_loss, logits, targets, loss):
    """``loss_forward``'s mean loss, returned, and ``loss_backward``'s dL/dlogits written over
    logits (B, OC) in the same pass: the softmax's exps computed once, not twice, and in blocks
    of LOSS_BLOCK rows, vectorised. The same maths as the two kernels; the cross-entropy loss is
    taken as log(s) - (z[label] - m) rather than m + log(s) - z[label], equal to rounding."""
    B, OC = logits.shape
    for k in range((B + LOSS_BLOCK - 1) // LOSS_BLOCK):
        _loss_delta_rows(row_loss, logits, targets, loss, k * LOSS_BLOCK,
                         min2(B, (k + 1) * LOSS_BLOCK))
    total = np.float64(0)
    for b in range(B):
        total += row_loss[b]
    return total / (B if loss == LOSS_CE else B * OC)


@inner()
def loss_backward(dlogits, logits, targets, loss):
    """dlogits (B, OC) = dL/dlogits of ``loss_forward``'s mean loss; may alias logits.

    The output activation and the loss are fused: bce and cross-entropy give
    (probabilities - targets) / n, mse gives 2 (logits - targets) / n.
    """
    for b in range(logits.shape[0]):
        _loss_backward_row(dlogits, logits, targets, loss, b)


@njit(cache=True, error_model="numpy", inline="always")
def _output_row(out, logits, loss, b):
    OC = logits.shape[1]
    if loss == LOSS_BCE:
        for o in range(OC):
            out[b, o] = vm.sigmoid(logits[b, o])
    elif loss == LOSS_CE:
        _shift_by_max(out[b], logits[b])
        _exp_block(out[b])
        s = _sum64(out[b])
        for o in range(OC):
            out[b, o] = out[b, o] / s
    elif loss == LOSS_POISSON:
        for o in range(OC):
            out[b, o] = vm.exp(logits[b, o])
    else:
        for o in range(OC):
            out[b, o] = logits[b, o]


@njit(cache=True, inline="always")
def output_forward(out, logits, loss):
    """out (B, OC) = the loss's output activation of logits (B, OC): sigmoid, softmax, exp
    (poisson) or identity.

    May alias logits.
    """
    for b in range(logits.shape[0]):
        _output_row(out, logits, loss, b)


@njit(cache=True, error_model="numpy", inline="always")
def count_correct(logits, targets, loss):
    """Rows of logits (B, OC) classified right against targets (B, T), as predict decides:
    cross-entropy, the first largest logit is the label; bce, every output's probability is on
    the target's side of 0.5. 0 for the regression losses."""
    B, OC = logits.shape
    hits = 0.0
    if loss == LOSS_CE:
        for b in range(B):
            best = 0
            for o in range(1, OC):
                if logits[b, o] > logits[b, best]:
                    best = o
            if best == np.int64(targets[b, 0]):
                hits += 1
    elif loss == LOSS_BCE:
        for b in range(B):
            hit = 1.0
            for o in range(OC):
                if (vm.sigmoid(logits[b, o]) > 0.5) != (targets[b, o] > 0.5):
                    hit = 0.0
            hits += hit
    return hits


# --------------------------------------------------------------------------- optimiser


@njit(cache=True, inline="always")
def _sgd_step(p, g, lr):
    """Plain SGD, p (n,) -= lr * g (n,): the update with neither momentum nor weight decay."""
    for i in range(p.shape[0]):
        p[i] -= lr * g[i]


@inner()
def _sgd_chunk(params, velocity, grads, lr, momentum, nesterov, weight_decay, update_velocity, k):
    """Elements [k * UPDATE_CHUNK, (k + 1) * UPDATE_CHUNK) of the update. One loop per case, so
    each body is branch-free, and loops over views from index 0, which Numba compiles without
    negative-index checks: both needed for the loop to vectorise (5x faster, measured)."""
    i0 = k * UPDATE_CHUNK
    i1 = min2(params.shape[0], i0 + UPDATE_CHUNK)
    p = params[i0:i1]
    g = grads[i0:i1]
    n = i1 - i0
    if momentum == 0:
        if weight_decay == 0:
            _sgd_step(p, g, lr)
        else:
            for i in range(n):
                p[i] -= lr * (g[i] + weight_decay * p[i])
        return
    v = velocity[i0:i1]
    if update_velocity:
        for i in range(n):
            gi = g[i] + weight_decay * p[i] if weight_decay != 0 else g[i]
            ui = momentum * v[i] - lr * gi
            v[i] = ui
            p[i] += momentum * ui - lr * gi if nesterov else ui
        return
    for i in range(n):
        gi = g[i] + weight_decay * p[i] if weight_decay != 0 else g[i]
        vi = momentum * v[i] + gi
        v[i] = vi
        p[i] -= lr * (gi + momentum * vi if nesterov else vi)


@inner()
def sgd_update(params, velocity, grads, lr, momentum, nesterov, weight_decay,
               update_velocity=False):
    """One ``torch.optim.SGD`` step over the flat buffers params, velocity, grads (P,), in place.

    g = grad + weight_decay * p; v = momentum * v + g; g = g + momentum * v (Nesterov) or v;
    p -= lr * g. The velocity starts at zero, which makes the first step's v = g, as in PyTorch.
    update_velocity=True is scikit-learn's form, a velocity of updates: u = momentum * u - lr * g;
    p += momentum * u - lr * g (Nesterov) or u. The two agree while lr is constant; when lr
    changes, torch's applies the new rate to the whole velocity, scikit-learn's to the new
    gradient only. Elementwise, in chunks of the buffer.
    """
    P = params.shape[0]
    for k in range((P + UPDATE_CHUNK - 1) // UPDATE_CHUNK):
        _sgd_chunk(params, velocity, grads, lr, momentum, nesterov, weight_decay,
                   update_velocity, k)


@inner()
def _adam_chunk(params, m, v, grads, c, beta1, beta2, weight_decay, decoupled, k):
    """Elements [k * UPDATE_CHUNK, (k + 1) * UPDATE_CHUNK) of the Adam/AdamW update; c holds
    (lr, lr / (1 - beta1^t), sqrt(1 - beta2^t), eps inside, eps outside) in the parameters'
    dtype. Views from index 0, as in _sgd_chunk, so the loop vectorises."""
    i0 = k * UPDATE_CHUNK
    i1 = min2(params.shape[0], i0 + UPDATE_CHUNK)
    p = params[i0:i1]
    g = grads[i0:i1]
    mk = m[i0:i1]
    vk = v[i0:i1]
    lr = c[0]
    step_size = c[1]
    bc2_sqrt = c[2]
    eps_in = c[3]
    eps_out = c[4]
    for i in range(i1 - i0):
        gi = g[i]
        if decoupled:
            p[i] *= 1 - lr * weight_decay
        elif weight_decay != 0:
            gi = gi + weight_decay * p[i]
        mi = mk[i] + (gi - mk[i]) * (1 - beta1)  # torch's lerp_(grad, 1 - beta1)
        vi = vk[i] * beta2 + (1 - beta2) * gi * gi
        mk[i] = mi
        vk[i] = vi
        p[i] -= step_size * (mi / ((np.sqrt(vi) + eps_in) / bc2_sqrt + eps_out))


@inner()
def adam_update(params, m, v, grads, c, beta1, beta2, weight_decay, decoupled):
    """One ``torch.optim.Adam`` (decoupled=False) or ``torch.optim.AdamW`` (decoupled=True) step
    over the flat buffers params, m, v, grads (P,), in place; c as for _adam_chunk.

    Adam: g = grad + weight_decay * p. AdamW: p *= 1 - lr * weight_decay. Then
    m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps) (torch: eps outside), or
    p -= lr / (1 - beta1^t) * m / ((sqrt(v) + eps) / sqrt(1 - beta2^t)) (scikit-learn: inside).
    """
    P = params.shape[0]
    for k in range((P + UPDATE_CHUNK - 1) // UPDATE_CHUNK):
        _adam_chunk(params, m, v, grads, c, beta1, beta2, weight_decay, decoupled, k)


@inner()
def optimizer_update(params, state, grads, opt, lr, hyper, t):
    """Step t (1, 2, ...) of optimiser ``opt`` over params (P,) from grads (P,), in place.

    state: SGD's velocity (P,), or (0,) without momentum; Adam's and AdamW's m then v (2P,).
    hyper (in the parameters' dtype): H_MOMENTUM or H_BETA1, H_BETA2, H_EPS, H_WEIGHT_DECAY,
    H_NESTEROV, H_EPS_INSIDE, H_UPDATE_VELOCITY (1 or 0 each). lr: a scalar of the parameters'
    dtype.
    """
    P = params.shape[0]
    if opt == OPT_SGD:
        sgd_update(params, state, grads, lr, hyper[H_MOMENTUM], hyper[H_NESTEROV] != 0,
                   hyper[H_WEIGHT_DECAY], hyper[H_UPDATE_VELOCITY] != 0)
        return
    c = np.zeros(5, params.dtype)  # torch computes these in double, then uses them per element
    beta1 = np.float64(hyper[H_BETA1])
    beta2 = np.float64(hyper[H_BETA2])
    c[0] = lr
    c[1] = np.float64(lr) / (1 - beta1 ** t)
    c[2] = np.sqrt(1 - beta2 ** t)
    c[4 if hyper[H_EPS_INSIDE] == 0 else 3] = hyper[H_EPS]
    adam_update(params, state[:P], state[P:], grads, c, hyper[H_BETA1], hyper[H_BETA2],
                hyper[H_WEIGHT_DECAY], opt == OPT_ADAMW)


@inner()
def l2_penalty(grads, params, layout, coef):
    """sklearn's ``alpha``: adds coef * W to the weight gradients (biases are not penalised) and
    returns 0.5 * coef * sum(W^2), the penalty's share of the loss."""
    total = np.float64(0)
    for l in range(layout.shape[0]):
        w0 = layout[l, LAY_W]
        n = layout[l, LAY_C] * layout[l, LAY_OC]
        w = params[w0:w0 + n]
        g = grads[w0:w0 + n]
        for i in range(n):
            g[i] += coef * w[i]
            total += np.float64(w[i]) * w[i]
    return 0.5 * coef * total


# --------------------------------------------------------------------------- whole network


@inner()
def layer_views(params, layout, l):
    """Views W (C, OC) and b (OC,) of layer l inside the flat buffer params (P,)."""
    C = layout[l, LAY_C]
    OC = layout[l, LAY_OC]
    w0 = layout[l, LAY_W]
    b0 = layout[l, LAY_B]
    return matrix(params[w0:w0 + C * OC], C, OC), params[b0:b0 + OC]


@inner()
def activation_view(act_buf, layout, B, l):
    """View A_l (B, OC_l) of act_buf, which holds A_0..A_{L-1} back to back for a batch of B rows."""
    return rows_view(act_buf, layout, B, l, 0, B)


@inner()
def rows_view(act_buf, layout, B, l, r0, r1):
    """Rows r0..r1-1 of ``activation_view(act_buf, layout, B, l)``, a contiguous view."""
    off = 0
    for k in range(l):
        off += B * layout[k, LAY_OC]
    OC = layout[l, LAY_OC]
    return matrix(act_buf[off + r0 * OC:off + r1 * OC], r1 - r0, OC)


@inner()
def out_act(acts, L, l):
    """Layer l's activation code: acts[l] for the hidden layers, identity for the logits."""
    return acts[l] if l < L - 1 else ACT_IDENTITY


@inner()
def network_forward(act_buf, params, inp, layout, acts, first, r0, r1):
    """Forward pass of rows r0..r1-1 of inp (B, C_0) through layers first..L-1 into act_buf.

    act_buf holds each layer's output A_l (B, OC_l) back to back: the hidden ones activated, the
    last the logits (the loss applies the output activation); only rows r0..r1-1 are written.
    first=1: A_0 is already there (the sparse first layer's, see ``sparse_network_forward``), and
    inp (B, 0) only gives B.
    """
    B = inp.shape[0]
    L = layout.shape[0]
    for l in range(first, L):
        W, bias = layer_views(params, layout, l)
        x = inp[r0:r1] if l == 0 else rows_view(act_buf, layout, B, l - 1, r0, r1)
        dense_forward(rows_view(act_buf, layout, B, l, r0, r1), x, W, bias, out_act(acts, L, l))


@inner()
def sparse_network_forward(act_buf, params, Xs, index, start, B, layout, acts):
    """``network_forward`` for the B rows index[start:start + B] of a CSR X (Xs, as for
    ``batch_gradients``): the first layer through ``sparse_forward``, the rest as for dense input."""
    W0, b0 = layer_views(params, layout, 0)
    sparse_forward(activation_view(act_buf, layout, B, 0), Xs[0], Xs[1], Xs[2], index, start, W0,
                   b0, out_act(acts, layout.shape[0], 0))
    network_forward(act_buf, params, matrix(act_buf[:0], B, 0), layout, acts, 1, 0, B)


@inner()
def network_backward(grads, delta_buf, half, params, inp, act_buf, layout, acts, sgd, last, r0,
                     r1):
    """Backward pass of layers L-1..last for rows r0..r1-1 of the batch inp (B, C_0), filling
    grads (P,), laid out like params, with those rows' gradient; with sgd (1,) = (lr,), plain SGD's
    step taken layer by layer instead (see dense_backward: grads then holds the bias gradients and
    scratch), with (0,) none. Returns the gradient at layer last's input: with last=1, dL/dA_0
    for the sparse first layer's own backward (inp then only gives B); with last=0 an empty
    (r1 - r0, 0) (the network's input needs no gradient: need_dinp a runtime False, so one compiled
    dense_backward serves every call).

    On entry the last slot of act_buf holds dL/dlogits (``loss_backward`` writes it in place).
    delta_buf holds the hidden deltas in two slots of ``half`` elements (at least B x the widest
    hidden layer), used in turn, each a batch of B rows of which only rows r0..r1-1 are used.
    """
    B = inp.shape[0]
    L = layout.shape[0]
    dout = rows_view(act_buf, layout, B, L - 1, r0, r1)
    for l in range(L - 1, last - 1, -1):
        W, bias = layer_views(params, layout, l)
        dW, db = layer_views(grads, layout, l)
        C = layout[l, LAY_C] if l > 0 else 0
        s0 = (l % 2) * half
        dinp = matrix(delta_buf[s0 + r0 * C:s0 + r1 * C], r1 - r0, C)
        x = inp[r0:r1] if l == 0 else rows_view(act_buf, layout, B, l - 1, r0, r1)
        dense_backward(dinp, dW, db, dout, x, W, bias, rows_view(act_buf, layout, B, l, r0, r1),
                       out_act(acts, L, l), l > 0, sgd)
        dout = dinp
    return dout


# --------------------------------------------------------------------------- a batch in row chunks
# A network of small layers spends its step in gemms too small for BLAS to start its threads
# (OpenBLAS runs a gemm of up to 65536 x 4 multiply-adds on the calling thread) and in
# elementwise passes: on one core. So such a batch runs in chunks of rows, one task per Numba
# thread with BLAS at one thread: each chunk's forward pass, loss and backward pass over its own
# rows, its gradient into a buffer of its own; then the chunks' gradients are added in order.
# The chunks are fixed by the shapes alone (``row_chunks``), never by the thread count, so the
# bits are the same for any thread count.

CHUNKS = 2  # row chunks of a chunked batch
CHUNK_MAX_WIDTH = 512  # small layers: every layer's inputs and outputs
CHUNK_MIN_BATCH = 128  # chunks of at least 64 rows
CHUNK_MAX_WEIGHTS = 1 << 16  # below CHUNK_LARGE_BATCH rows, every layer's C x OC: 256 x 256
CHUNK_LARGE_BATCH = 1024


@inner()
def small_layers(layout):
    """Whether every layer is at most CHUNK_MAX_WIDTH wide, in and out: such a network's batches
    may run in row chunks (``row_chunks``), and its workspace holds the chunks' gradients."""
    for l in range(layout.shape[0]):
        if layout[l, LAY_C] > CHUNK_MAX_WIDTH or layout[l, LAY_OC] > CHUNK_MAX_WIDTH:
            return False
    return True


@inner()
def row_chunks(B, layout):
    """The chunks of rows a batch of B rows runs in: CHUNKS for a network of ``small_layers``
    at batches of CHUNK_MIN_BATCH rows or more whose every layer has at most CHUNK_MAX_WEIGHTS
    weights, or of CHUNK_LARGE_BATCH rows or more; else 1 (the whole batch, each gemm with BLAS's
    threads). Measured on the grid's networks, in turn with the whole batch (2 cores, float32 and
    float64): chunked 1.04-1.5x faster at G05, G06, G08, G10, G11, G12, G14, G15, G16, G20 and
    G30; slower at batches of 64 rows and fewer (G07, G09, G13: 0.85-0.97) and with 512-1024-wide
    layers at 128-256 rows (G18, G22: 0.85-0.89), and W2 (784 x 256 at 128 rows) 0.76."""
    if B < CHUNK_MIN_BATCH:
        return 1
    weights = 0
    for l in range(layout.shape[0]):
        C, OC = layout[l, LAY_C], layout[l, LAY_OC]
        if C > CHUNK_MAX_WIDTH or OC > CHUNK_MAX_WIDTH:  # small_layers, written out
            return 1
        if C * OC > weights:  # (not max2: Python calls this as well)
            weights = C * OC
    if B >= CHUNK_LARGE_BATCH or weights <= CHUNK_MAX_WEIGHTS:
        return CHUNKS
    return 1


@inner()
def _gather_row(inp, tgt, X, Y, index, start, b):
    r = index[start + b]
    # explicit loops, not slice assignment: the same machine code, a fraction of the compile time
    for c in range(inp.shape[1]):
        inp[b, c] = X[r, c]
    for t in range(tgt.shape[1]):
        tgt[b, t] = Y[r, t]


@inner()
def gather_rows(inp, tgt, X, Y, index, start):
    """inp (B, C_0) = X[index[start:start+B]], tgt (B, T) = Y[same rows]: the batch is gathered
    into a workspace, the data set itself is never copied or reordered."""
    for b in range(inp.shape[0]):
        _gather_row(inp, tgt, X, Y, index, start, b)


@inner()
def copy(dst, src):
    """dst[:] = src for flat arrays, as a loop (slice assignment compiles far slower)."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


@inner()
def save_state(backup, params, state):
    """backup (P + S,) = params (P,) then the optimiser state (S,): an epoch's start."""
    P = params.shape[0]
    copy(backup[:P], params)
    copy(backup[P:], state)


@inner()
def restore_state(params, state, backup):
    """params and state back from backup (see save_state)."""
    P = params.shape[0]
    copy(params, backup[:P])
    copy(state, backup[P:])


@inner()
def _count_nonfinite(x):
    """How many elements of x (n,) are inf or NaN: a count, not a search, so the loop vectorises."""
    k = 0
    for i in range(x.shape[0]):
        k += 0 if np.isfinite(x[i]) else 1
    return k


@inner()
def all_finite(x):
    """True if every element of x (P,) is finite; chunks of UPDATE_CHUNK counted in turn, stopping
    at the first with a non-finite element (2.5x faster than testing element by element)."""
    for c0 in range(0, x.shape[0], UPDATE_CHUNK):
        if _count_nonfinite(x[c0:c0 + UPDATE_CHUNK]) > 0:
            return False
    return True


@intrinsic
def _magnitude_bits(typingctx, x):
    """|x|'s bits, the sign bit cleared, as a signed integer of x's width (a float32 or float64):
    IEEE magnitudes order as their bits do, with inf and NaN above every finite one."""
    ity = types.int32 if x.bitwidth == 32 else types.int64

    def codegen(context, builder, signature, args):
        ir_ity = context.get_value_type(ity)
        bits = builder.bitcast(args[0], ir_ity)
        return builder.and_(bits, ir_ity((1 << (x.bitwidth - 1)) - 1))

    return ity(x), codegen


@intrinsic
def _magnitude_of_bits(typingctx, bits, like):
    """The float64 value of magnitude bits (see _magnitude_bits) of like's float type; inf for
    the bits of inf and NaN."""
    def codegen(context, builder, signature, args):
        f64 = context.get_value_type(types.float64)
        value = builder.bitcast(args[0], context.get_value_type(like))
        if like.bitwidth == 32:
            value = builder.fpext(value, f64)
        exponent = args[0].type(0x7F800000 if like.bitwidth == 32 else 0x7FF0000000000000)
        inf = context.get_constant(types.float64, np.inf)
        return builder.select(builder.icmp_signed(">=", args[0], exponent), inf, value)

    return types.float64(bits, like), codegen


def max_magnitude(x):
    """max |x[i]| over x (n,) in float64, 0 for n = 0, inf if an element is inf or NaN. In
    compiled code a maximum of integer bits (see _magnitude_bits), which vectorises where a float
    maximum that must see NaN does not; here, for NUMBA_DISABLE_JIT=1, NumPy."""
    if x.shape[0] == 0:
        return 0.0
    m = float(np.abs(x).max())
    return m if m <= np.finfo(x.dtype).max else np.inf  # NaN too


@overload(max_magnitude, jit_options=LINKED)
def _max_magnitude_compiled(x):
    def impl(x):
        if x.shape[0] == 0:
            return 0.0
        m = _magnitude_bits(x[0])
        for i in range(x.shape[0]):
            b = _magnitude_bits(x[i])
            m = b if b > m else m
        return _magnitude_of_bits(m, x[0])
    return impl


@inner()
def _slope_bound(act):
    """The largest |act'|: what a layer's derivative can multiply a delta by."""
    if act == ACT_SIGMOID:
        return 0.25
    return 1.0  # tanh, relu, leaky_relu (slope < 1), identity


@inner()
def data_bounds(X, Y, SW):
    """(max |X|, max |Y|, the sample weights' largest factor on a row's delta: max w M / sum w,
    1 without weights) over all M rows, for ``bounded_step`` (inf for any inf or NaN, or a zero
    weight sum)."""
    xmax = 0.0
    ymax = 0.0
    for r in range(X.shape[0]):
        xm = max_magnitude(X[r])
        ym = max_magnitude(Y[r])
        xmax = xm if xm > xmax else xmax
        ymax = ym if ym > ymax else ymax
    scale = 1.0
    if SW.shape[0] > 0:
        wsum = _sum64(SW)
        scale = max_magnitude(SW) * SW.shape[0] / wsum if wsum > 0 else np.inf
    return xmax, ymax, scale


@inner()
def bounded_step(params, layout, acts, xmax, ymax, scale, B, loss, lr, bound, carried):
    """Whether plain SGD's step on a batch of B rows whose inputs, targets and sample weights are
    bounded by xmax, ymax and scale (``data_bounds``), taken as the ``BATCH_LAYERS`` kernels take
    it, provably computes nothing but finite numbers and leaves every parameter finite: then an
    epoch of that one batch needs no backup copy of the parameters, nor a check of them
    afterwards (at 4096 x 4096, batch 128, the copy and the check cost 7 and 2 ms of a 35 ms
    epoch, measured).

    Bounds in float64 on the magnitudes: the input's xmax; a layer's z, C max|A_in| max|W| +
    max|b|, its output 1 after sigmoid and tanh, else |z|; dL/dlogits, 1/B (cross-entropy),
    (1 + ymax)/(B OC) (bce), 2 (max|z| + ymax)/(B OC) (mse), (exp(max|z|) + ymax)/(B OC)
    (poisson), times scale; a hidden layer's dL/dz, OC_next max|dL/dz_next| max|W_next| times its
    derivative's largest value; the step on W, lr B max|A_in| max|dL/dz|, on b, lr B max|dL/dz|.
    Each sum of n terms is allowed its rounding, a relative 2 n u (u the dtype's unit roundoff).
    Every bound, and each parameter after the step, must stay below a quarter of the dtype's
    largest value; an overflow or a NaN anywhere (data, parameters, a bound) answers False.
    bound (3, L) float64 holds per layer max|W|, max|b| and the input's bound: the parameters
    are read into it (an integer maximum over their bits, which sees every inf and NaN), or, if
    carried, it holds from the last step that returned True bounds on the parameters that step
    left, and nothing is read (4096 x 4096 float32 weights took 1.9 ms to read, of a 28 ms
    epoch; measured). On True it holds bounds on the parameters after this step: |W| + lr |dW|,
    each sum's rounding, and the subtraction's."""
    L = layout.shape[0]
    f32 = params.itemsize == 4
    limit = 8.5e37 if f32 else 4.4e307  # a quarter of the largest float32, float64
    u2 = 2.0 * (2.0 ** -24 if f32 else 2.0 ** -53)
    lr = abs(np.float64(lr))
    amax = xmax
    for l in range(L):
        C = layout[l, LAY_C]
        OC = layout[l, LAY_OC]
        w0 = layout[l, LAY_W]
        b0 = layout[l, LAY_B]
        if not carried:
            bound[0, l] = max_magnitude(params[w0:w0 + C * OC])
            bound[1, l] = max_magnitude(params[b0:b0 + OC])
        bound[2, l] = amax
        z = (C * amax * bound[0, l] + bound[1, l]) * (1.0 + u2 * (C + 1))
        if not z <= limit:
            return False  # a NaN fails too
        act = out_act(acts, L, l)
        amax = 1.0 if act == ACT_SIGMOID or act == ACT_TANH else z
    OCL = layout[L - 1, LAY_OC]
    if loss == LOSS_CE:
        d = 1.0 / B
    elif loss == LOSS_BCE:
        d = (1.0 + ymax) / (B * OCL)
    elif loss == LOSS_MSE:
        d = 2.0 * (amax + ymax) / (B * OCL)
    else:
        d = (np.exp(amax) + ymax) / (B * OCL)
    d *= scale * (1.0 + u2 * 4)
    for l in range(L - 1, -1, -1):
        grow = 1.0 + u2 * (B + 1)
        w_after = (bound[0, l] + lr * B * bound[2, l] * d * grow) * (1.0 + u2)
        b_after = (bound[1, l] + lr * B * d * grow) * (1.0 + u2)
        if not (d <= limit and w_after <= limit and b_after <= limit):
            return False
        if l > 0:  # through layer l's weights before its step
            OC = layout[l, LAY_OC]
            d = OC * d * bound[0, l] * _slope_bound(acts[l - 1]) * (1.0 + u2 * (OC + 1))
        bound[0, l] = w_after
        bound[1, l] = b_after
    return True


@inner()
def weight_sum(SW, index, start, stop):
    """Sum of the sample weights SW (N,) of rows index[start:stop], in float64."""
    s = np.float64(0)
    for b in range(start, stop):
        s += SW[index[b]]
    return s


@inner()
def _first_of_run(index, start, stop):
    """index[start] if index[start:stop] are consecutive rows (index[start] + 0, 1, ...), else
    -1."""
    first = index[start]
    for b in range(start + 1, stop):
        if index[b] != first + (b - start):
            return -1
    return first


@inner()
def batch_views(X, Y, inp_buf, tgt_buf, first, B):
    """(gathered (B, C_0), inp, tgt (B, T)): where a dense batch of B rows is gathered (in inp_buf
    and tgt_buf), and its input: gathered, or, when first >= 0 (its rows are consecutive in X,
    from row first; gathered then (B, 0): only the targets are gathered), X's rows read in place
    (the copy cost a W2 step 7%, 33 of 440 us)."""
    C0 = 0 if first >= 0 else X.shape[1]
    gathered = matrix(inp_buf[:B * C0], B, C0)
    inp = gathered
    if first >= 0:
        inp = X[first:first + B]
    return gathered, inp, matrix(tgt_buf[:B * Y.shape[1]], B, Y.shape[1])


# A batch's arguments for its row chunks, in order: a chunk (``CHUNK``) takes its number k and
# these; the runner that takes the chunks across Numba's threads (``CHUNK_RUNNER``) the chunk
# function's address and these. Both are called through their address (``call_at``).
CHUNK_ARGS = ("correct", "grads", "params", "X", "Y", "SW", "index", "start", "first", "layout",
              "acts", "inp_buf", "tgt_buf", "act_buf", "delta_buf", "parts", "row_loss", "wsum",
              "sgd", "B", "nch")


@inner()
def batch_loss(row_loss, SW, index, start, wsum, B, outputs, loss):
    """The mean loss of a batch of B rows from each row's loss row_loss[:B], its rows
    index[start:start + B]: weighted by SW (N,) as scikit-learn, sum_b w_b loss_b / sum_b w_b
    (wsum), or SW (0,) none; cross-entropy's per row, the others' per output too."""
    total = np.float64(0)
    if SW.shape[0] > 0:
        for b in range(B):
            total += SW[index[start + b]] * row_loss[b]
        return total / wsum / (1 if loss == LOSS_CE else outputs)
    for b in range(B):
        total += row_loss[b]
    return total / (B if loss == LOSS_CE else B * outputs)


@inner()
def weighted_deltas(delta, SW, index, start, wsum, B, r0, r1):
    """Rows r0..r1-1 of delta (B, O), a batch's dL/dlogits of the unweighted mean (1/B in each
    row), made those of scikit-learn's weighted mean: row b scaled by w_b B / sum w, its weight
    SW[index[start + b]] and wsum the sum over the batch."""
    for b in range(r0, r1):
        f = SW[index[start + b]] * B / wsum
        for o in range(delta.shape[1]):
            delta[b, o] *= f


# For the runner, only ever called through its address: no Numba wrappers for Python and C (see
# _jit), which would cost compile time and never run.
NO_WRAPPERS = dict(no_cpython_wrapper=True, no_cfunc_wrapper=True)


def _chunk_kernel(loss):
    """``chunk`` for the loss code ``loss`` (see CHUNK)."""
    @inner()
    @distinct(loss)
    def chunk(fp, *args):
        """Row chunk k of nch of a batch of B rows (``row_chunks``), args (k, *CHUNK_ARGS): its
        rows gathered (``gather_rows`` into inp_buf and tgt_buf; only the targets when first >=
        0, the first of the batch's rows, consecutive in X, read in place), their forward pass,
        the rows classified right into correct[2 + k], each row's loss into row_loss and its
        dL/dlogits over its logits, scaled by its sample weight's share (SW (N,) or (0,), wsum
        their sum over the batch), then the backward pass of these rows, its gradient into grads
        (chunk 0) or into delta_buf's gradient buffer k - 1, after the delta slots, which take
        delta_buf[:parts]. Writes only its own rows and buffer: the chunks may run at once.

        One chunk (nch 1), the whole batch: returns the batch's loss (``batch_loss``) and takes
        the backward pass only when it is finite, with sgd (1,) = (lr,), plain SGD's step in it
        (see network_backward); else returns 0, the batch's loss for the caller to add up.

        fp: the fingerprint of args' types (``call_at`` passes it), unread: the drivers call a
        chunk compiled with them, for their own arguments, and hand its address to the runner
        only when it is compiled for the same (the runner checks its own fingerprint).
        """
        (k, correct, grads, params, X, Y, SW, index, start, first, layout, acts, inp_buf, tgt_buf,
         act_buf, delta_buf, parts, row_loss, wsum, sgd, B, nch) = args
        P = params.shape[0]
        gathered, inp, tgt = batch_views(X, Y, inp_buf, tgt_buf, first, B)
        r0 = k * B // nch
        r1 = (k + 1) * B // nch
        gather_rows(gathered[r0:r1], tgt[r0:r1], X, Y, index, start + r0)
        network_forward(act_buf, params, inp, layout, acts, 0, r0, r1)
        logits = activation_view(act_buf, layout, B, layout.shape[0] - 1)
        correct[2 + k] = count_correct(logits[r0:r1], tgt[r0:r1], loss)
        for b0 in range(r0, r1, LOSS_BLOCK):
            _loss_delta_rows(row_loss, logits, tgt, loss, b0, min2(r1, b0 + LOSS_BLOCK))
        value = np.float64(0)
        if nch == 1:
            value = batch_loss(row_loss, SW, index, start, wsum, B, logits.shape[1], loss)
            if not np.isfinite(value):
                return value
        if SW.shape[0] > 0:
            weighted_deltas(logits, SW, index, start, wsum, B, r0, r1)
        g = grads if k == 0 else delta_buf[parts + (k - 1) * P:parts + k * P]
        network_backward(g, delta_buf, parts // 2, params, inp, act_buf, layout, acts,
                         sgd if nch == 1 else sgd[:0], 0, r0, r1)
        return value
    return chunk


# One per loss, the loss a constant of each, linked into the drivers (as their other kernels),
# which call it through its address (``address_of``): the one copy of its code, the whole
# network's forward and backward pass, that the runner calls as well.
CHUNK = tuple(_chunk_kernel(c) for c in LOSS_CODES)
_CHUNK_BCE, _CHUNK_CE, _CHUNK_MSE, _CHUNK_POISSON = CHUNK


def _fingerprint_of(ty):
    """A number that names the Numba type ``ty``, the same in every process (not ``hash``: a
    string's is salted per process, and cached code keeps what it was compiled with)."""
    return zlib.crc32(str(ty).encode())


def _star(args):
    """The arguments of an intrinsic's ``*args``: one StarArgTuple, as Numba types the call
    (or, when it types the call again, the arguments one by one)."""
    if len(args) == 1 and isinstance(args[0], types.StarArgTuple):
        return args[0]
    return types.StarArgTuple(args)


@intrinsic
def fingerprint(typingctx, *args):
    """``_fingerprint_of`` the types of the arguments, a constant of the compiled code."""
    packed = _star(args)

    def codegen(context, builder, signature, llargs):
        return context.get_constant(types.int64, _fingerprint_of(types.Tuple(packed.types)))
    return types.int64(packed), codegen


@intrinsic
def call_at(typingctx, address, like, *args):
    """Call the compiled function at ``address`` (int64), a ``CHUNK`` or the ``CHUNK_RUNNER``,
    with (fingerprint(*args), *args) in Numba's own calling convention; returns its result, of
    the type of ``like``.

    Numba compiles a function into machine code of its own with this convention for its
    arguments' types; a caller that passes other types than the function was compiled for would
    hand it a different layout of arguments. The fingerprint goes first, where the runner reads
    an int64 whatever its other arguments, and one compiled for other types reads no other: it
    returns False, and the caller runs the chunks itself. A chunk's address comes from its
    caller's own code (``address_of``), compiled for the caller's arguments."""
    packed = _star(args)
    restype = types.unliteral(like)

    def codegen(context, builder, signature, llargs):
        argtys = [types.int64, packed]
        values = [context.get_constant(types.int64, _fingerprint_of(types.Tuple(packed.types))),
                  llargs[2]]
        fnty = context.call_conv.get_function_type(restype, argtys)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        status, result = context.call_conv.call_function(builder, fn, restype, argtys, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return result
    return restype(address, like, packed), codegen


@intrinsic
def address_of(typingctx, kernel, *args):
    """The address of the machine code of ``kernel`` (an ``inner`` dispatcher) compiled for
    (int64, *args), the layout ``call_at`` calls with: its code linked into the caller's, once,
    however often called there or through the address elsewhere."""
    packed = _star(args)
    argtypes = (types.int64, packed)
    typingctx.resolve_function_type(kernel, (types.int64,) + tuple(packed.types), {})

    def codegen(context, builder, signature, llargs):
        compiled = kernel.dispatcher.overloads[argtypes]
        context.add_linking_libs([compiled.library])
        fn = context.declare_function(builder.module, compiled.fndesc)
        return builder.ptrtoint(fn, context.get_value_type(types.int64))
    return types.int64(kernel, packed), codegen


@njit(cache=True, inline="always")
def _chunk_address(loss, k, correct, grads, params, X, Y, SW, index, start, first, layout, acts,
                   inp_buf, tgt_buf, act_buf, delta_buf, parts, row_loss, wsum, sgd, B, nch):
    """address_of(CHUNK[loss], k, ...) for a caller whose loss is a constant (see
    _batch_layers)."""
    if loss == LOSS_BCE:
        chunk = _CHUNK_BCE
    elif loss == LOSS_CE:
        chunk = _CHUNK_CE
    elif loss == LOSS_MSE:
        chunk = _CHUNK_MSE
    else:
        chunk = _CHUNK_POISSON
    return address_of(chunk, k, correct, grads, params, X, Y, SW, index, start, first, layout,
                      acts, inp_buf, tgt_buf, act_buf, delta_buf, parts, row_loss, wsum, sgd, B,
                      nch)


@njit(cache=True, parallel=True, nogil=True, **NO_WRAPPERS)
def run_chunks(fp, *args):
    """The row chunks of a batch, one ``prange`` task each, args (the address of the CHUNK for
    the loss, compiled for these arguments, *CHUNK_ARGS), if fp is the fingerprint of args' types
    (see call_at): True; else nothing, False."""
    if fp != fingerprint(*args):
        return False
    (chunk_at, correct, grads, params, X, Y, SW, index, start, first, layout, acts, inp_buf,
     tgt_buf, act_buf, delta_buf, parts, row_loss, wsum, sgd, B, nch) = args
    for k in prange(nch):
        call_at(chunk_at, np.float64(0), np.int64(k), correct, grads, params, X, Y, SW, index,
                start, first, layout, acts, inp_buf, tgt_buf, act_buf, delta_buf, parts, row_loss,
                wsum, sgd, B, nch)
    return True


# The row chunks across Numba's threads: compiled apart from the drivers, which call it through
# its address (``_chunks`` compiles it in the background, on the first fit that runs chunks: a
# prange loop costs a compile of about a second however small, which a first fit should not wait
# for). The drivers run the same chunks one after another until then, which gives the same bits:
# each chunk writes its own rows and gradient buffer, and the buffers are added in order
# afterwards. The chunk's code is its own (CHUNK), so one runner serves every loss.
CHUNK_RUNNER = run_chunks


@njit(cache=True, inline="always")
def _in_chunks(loss, grads, params, X, Y, SW, index, start, stop, first, layout, acts, inp_buf,
               tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, run_at):
    """``batch_gradients_layers`` for dense input in row chunks (``row_chunks``; one chunk, the
    whole batch, below its sizes): through the runner at address ``run_at`` (CHUNK_RUNNER
    compiled for this batch's chunk arguments, see _chunks) when it is not 0, else one after the
    other here (the same bits). Either way CHUNK[loss] runs through its address, one copy of its
    code."""
    B = stop - start
    P = params.shape[0]
    nch = row_chunks(B, layout)
    parts = delta_buf.shape[0] - (nch - 1) * P  # the chunks' gradients after the slots
    wsum = weight_sum(SW, index, start, stop) if SW.shape[0] > 0 else np.float64(B)
    chunk_at = _chunk_address(loss, np.int64(0), correct, grads, params, X, Y, SW, index, start,
                              first, layout, acts, inp_buf, tgt_buf, act_buf, delta_buf, parts,
                              row_loss, wsum, sgd, B, nch)
    ran = nch > 1 and run_at != 0 and call_at(
        run_at, False, chunk_at, correct, grads, params, X, Y, SW, index, start, first, layout,
        acts, inp_buf, tgt_buf, act_buf, delta_buf, parts, row_loss, wsum, sgd, B, nch)
    value = np.float64(0)
    if ran:
        correct[1] += 1
    else:
        for k in range(nch):
            value = call_at(chunk_at, value, np.int64(k), correct, grads, params, X, Y, SW, index,
                            start, first, layout, acts, inp_buf, tgt_buf, act_buf, delta_buf,
                            parts, row_loss, wsum, sgd, B, nch)
    for k in range(nch):
        correct[0] += correct[2 + k]
    if nch > 1:
        value = batch_loss(row_loss, SW, index, start, wsum, B,
                           layout[layout.shape[0] - 1, LAY_OC], loss)
        if np.isfinite(value):
            for k in range(1, nch):
                g = delta_buf[parts + (k - 1) * P:parts + k * P]
                for i in range(P):
                    grads[i] += g[i]
            if sgd.shape[0] > 0:
                _sgd_step(params, grads, sgd[0])
    return value


def _batch_gradients_layers(loss):
    """``batch_gradients`` through the per-layer kernels for the loss code ``loss`` (see
    BATCH_LAYERS)."""
    @inner()
    @distinct(loss)
    def batch_gradients_layers(grads, params, X, Xs, Y, SW, index, start, stop, layout, acts,
                               inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, sgd):
        """``batch_gradients`` through the per-layer kernels (gather, forward, fused loss,
        backward); a sparse X (Xs) goes through the sparse first layer instead of being
        gathered. sgd (1,) = (lr,), dense input only: plain SGD's step is taken in the backward
        pass instead of leaving the gradients (see network_backward); not taken when the loss is
        not finite. The whole batch at once (a network run in row chunks: ``_in_chunks``)."""
        B = stop - start
        T = Y.shape[1]
        tgt = matrix(tgt_buf[:B * T], B, T)
        L = layout.shape[0]
        logits = activation_view(act_buf, layout, B, L - 1)
        # Xs None (dense input): the sparse branches below are pruned before typing, so a dense
        # fit never compiles the sparse kernels (`Xs is None` must be the test itself)
        if Xs is None:
            first = _first_of_run(index, start, stop)
            gathered, inp, _ = batch_views(X, Y, inp_buf, tgt_buf, first, B)
            gather_rows(gathered, tgt, X, Y, index, start)
            network_forward(act_buf, params, inp, layout, acts, 0, 0, B)
        else:
            inp = matrix(inp_buf[:0], B, 0)  # only gives B: the targets alone are gathered
            gather_rows(inp, tgt, X, Y, index, start)
            sparse_network_forward(act_buf, params, Xs, index, start, B, layout, acts)
        correct[0] += count_correct(logits, tgt, loss)
        value = loss_forward_backward(row_loss[:B], logits, tgt, loss)  # logits now hold the delta
        if SW.shape[0] > 0:
            # Weighted mean, as scikit-learn: sum_b w_b loss_b / sum_b w_b; each row's delta
            # (which holds 1/B) is scaled by w_b B / sum w.
            wsum = weight_sum(SW, index, start, stop)
            value = batch_loss(row_loss, SW, index, start, wsum, B, logits.shape[1], loss)
        if np.isfinite(value):  # plain SGD's step taken only for a finite loss
            if SW.shape[0] > 0:
                weighted_deltas(logits, SW, index, start, wsum, B, 0, B)
            half = delta_buf.shape[0] // 2
            if Xs is None:
                network_backward(grads, delta_buf, half, params, inp, act_buf, layout, acts, sgd,
                                 0, 0, B)
            else:
                dout = network_backward(grads, delta_buf, half, params, inp, act_buf, layout,
                                        acts, sgd[:0], 1, 0, B)
                dW0, db0 = layer_views(grads, layout, 0)
                sparse_backward(dW0, db0, dout, activation_view(act_buf, layout, B, 0),
                                out_act(acts, layout.shape[0], 0), Xs[0], Xs[1], Xs[2], index,
                                start)
        return value
    return batch_gradients_layers


# One kernel per loss, the loss a constant of each (the other losses' code pruned before typing),
# linked into both drivers. Numba once inlined it into them instead (inline="always"), which
# copies its IR block by block: 0.23 s of a cold digits fit (measured: the commit that made this).
BATCH_LAYERS = tuple(_batch_gradients_layers(c) for c in LOSS_CODES)


def _batch_layers(loss, grads, params, X, Xs, Y, SW, index, start, stop, layout, acts, inp_buf,
                  tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, runner):
    """A batch's gradients for the drivers, whose loss is a constant: BATCH_LAYERS[loss](...),
    or, with runner not None (a network run in row chunks: the runner's address or 0),
    ``_in_chunks``. Compiled, the choice is made from the types (``_batch_layers_compiled``), so
    a driver holds the code of one of the two (Numba prunes a branch on ``runner is None`` before
    typing only when runner is None, not when it is a number). This plain function runs with
    Numba's JIT off (no chunks then, see engine._chunked)."""
    return BATCH_LAYERS[loss](grads, params, X, Xs, Y, SW, index, start, stop, layout, acts,
                              inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, sgd)


@overload(_batch_layers, jit_options=LINKED, prefer_literal=True)
def _batch_layers_compiled(loss, grads, params, X, Xs, Y, SW, index, start, stop, layout, acts,
                           inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, runner):
    if not isinstance(loss, types.IntegerLiteral):
        return None  # the drivers' loss is a constant
    code = loss.literal_value
    if isinstance(runner, types.NoneType):
        # the kernel held by this implementation's closure, not by a driver's: a driver's
        # closure variables key Numba's disk cache, and a dispatcher pickles differently in each
        # process, so a driver holding one would never be found there; an overload's closure is
        # not part of its callers' key
        kernel = BATCH_LAYERS[code]

        def whole(loss, grads, params, X, Xs, Y, SW, index, start, stop, layout, acts, inp_buf,
                  tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, runner):
            return kernel(grads, params, X, Xs, Y, SW, index, start, stop, layout, acts, inp_buf,
                          tgt_buf, act_buf, delta_buf, row_loss, correct, sgd)
        return whole

    def chunks(loss, grads, params, X, Xs, Y, SW, index, start, stop, layout, acts, inp_buf,
               tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, runner):
        return _in_chunks(code, grads, params, X, Y, SW, index, start, stop,
                          _first_of_run(index, start, stop), layout, acts, inp_buf, tgt_buf,
                          act_buf, delta_buf, row_loss, correct, sgd, runner)
    return chunks


def _batch_step(loss):
    """``batch_step`` for the loss code ``loss`` (see BATCH_STEP)."""
    @njit(cache=True, nogil=True, **NO_WRAPPERS)
    @distinct(loss)
    def batch_step(fp, *args):
        """``_batch_layers(loss, *args)``, args (grads, params, X, Xs, Y, SW, index, start, stop,
        layout, acts, inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, runner), for
        a driver that calls it through its address (``call_at``), if fp is the fingerprint of
        args' types; else it raises (the caller compiled it for other types: a bug)."""
        if fp != fingerprint(*args):
            raise TypeError("fastbp: the batch kernel was called with arguments of other types "
                            "than it was compiled for")
        (grads, params, X, Xs, Y, SW, index, start, stop, layout, acts, inp_buf, tgt_buf,
         act_buf, delta_buf, row_loss, correct, sgd, runner) = args
        return np.float64(_batch_layers(loss, grads, params, X, Xs, Y, SW, index, start, stop,
                                        layout, acts, inp_buf, tgt_buf, act_buf, delta_buf,
                                        row_loss, correct, sgd, runner))
    return batch_step


# A batch through the per-layer kernels for TRAIN_EPOCHS, one per loss, compiled apart from it
# (``_batch``) and called through its address: the network's forward and backward pass compiled
# once for a loss and argument types, not again inside each of the driver's plans (plain SGD, an
# optimiser, L2, bounded steps), which LLVM optimised afresh each time with the whole pass
# inlined (3-4 s of every further plan's compile, measured).
BATCH_STEP = tuple(_batch_step(c) for c in LOSS_CODES)


def _batch_through(at, loss, grads, params, X, Xs, Y, SW, index, start, stop, layout, acts,
                   inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, runner):
    """``_batch_layers`` for TRAIN_EPOCHS: compiled, BATCH_STEP[loss] through its address at
    (``_batch.address``); this plain function, with Numba's JIT off, calls it directly."""
    return _batch_layers(loss, grads, params, X, Xs, Y, SW, index, start, stop, layout, acts,
                         inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, runner)


@overload(_batch_through, jit_options=LINKED)
def _batch_through_compiled(at, loss, grads, params, X, Xs, Y, SW, index, start, stop, layout,
                            acts, inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, sgd,
                            runner):
    def through(at, loss, grads, params, X, Xs, Y, SW, index, start, stop, layout, acts, inp_buf,
                tgt_buf, act_buf, delta_buf, row_loss, correct, sgd, runner):
        return call_at(at, np.float64(0), grads, params, X, Xs, Y, SW, index, start, stop,
                       layout, acts, inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct,
                       sgd, runner)
    return through


# The fused loop's activation passes run over a few units (XOR: blocks of 16 values): there at
# LLVM's own vector width, not ``wide``, whose 64-value steps left such blocks to the scalar
# remainder (W1 13-15% slower, measured). The same code, compiled a second way.
_act_row_small, _act_grad_row_small = (
    inner(error_model="numpy")(renamed(getattr(f, "py_func", f), "_small"))  # f itself: JIT off
    for f in (_act_row, _act_grad_row))


@njit(cache=True, inline="always")
def _batch_gradients_fused(grads, params, X, Y, SW, index, start, stop, layout, acts, loss,
                           act_buf, delta_buf, correct, sgd):
    """``batch_gradients`` for networks too small for BLAS (XOR-sized): the same maths in one
    function over the flat buffers, with no per-layer kernel calls or array views. At 2-4-1 those
    calls cost more than the arithmetic: 1.9 us per epoch through the per-layer kernels against
    0.6 us this way (measured). sgd (1,) = (lr,): plain SGD's step is taken here too, params -=
    lr * grads, when the loss is finite (as in BATCH_LAYERS).

    Serial: such networks are far below PARALLEL_MIN_WORK. Each pass runs over all the batch's
    rows, layer by layer, as the per-layer kernels do, so a hidden layer's derivative is
    _act_grad_row over its block (each derivative's formula is written once; W1 as fast as the
    row-by-row loop this replaced). Gradients are summed over the rows in order. act_buf holds
    each layer's outputs for the batch back to back (as activation_view lays them out); delta_buf
    two slots of the batch's deltas at the widest layer, used in turn.
    """
    B = stop - start
    P = params.shape[0]
    L = layout.shape[0]
    OCL = layout[L - 1, LAY_OC]
    half = delta_buf.shape[0] // 2
    for i in range(P):
        grads[i] = 0
    weighted = SW.shape[0] > 0
    wsum = weight_sum(SW, index, start, stop) if weighted else np.float64(B)
    # forward: layer l's outputs for the B rows are one block of act_buf, activated in one
    # (vectorised) loop
    off = 0
    for l in range(L):
        C = layout[l, LAY_C]
        OC = layout[l, LAY_OC]
        w0 = layout[l, LAY_W]
        b0 = layout[l, LAY_B]
        for bb in range(B):
            r = index[start + bb]
            for o in range(OC):
                z = params[_ix(b0 + o)]
                for c in range(C):
                    x = X[_ix(r), c] if l == 0 else act_buf[_ix(off - B * C + bb * C + c)]
                    z += x * params[_ix(w0 + c * OC + o)]
                act_buf[_ix(off + bb * OC + o)] = z
        if l < L - 1:
            _act_row_small(act_buf[off:off + B * OC], acts[l])
        off += B * OC
    top = off - B * OCL  # the logits' block
    # each row's loss and dL/dlogits (as _loss_row and _loss_backward_row)
    d0 = ((L - 1) % 2) * half
    batch_loss = 0.0
    for bb in range(B):
        r = index[start + bb]
        z0 = top + bb * OCL
        dd = d0 + bb * OCL
        row_value = 0.0
        if loss == LOSS_BCE:
            hit = 1.0
            for o in range(OCL):
                z = act_buf[_ix(z0 + o)]
                t = Y[_ix(r), o]
                row_value += max2(z, 0) - z * t + vm.log1p_inline(vm.exp_inline(-abs(z)))
                p = vm.sigmoid_inline(z)
                delta_buf[_ix(dd + o)] = (p - t) / (B * OCL)
                if (p > 0.5) != (t > 0.5):
                    hit = 0.0
            correct[0] += hit
        elif loss == LOSS_CE:
            m = act_buf[_ix(z0)]
            best = 0
            for o in range(1, OCL):
                if act_buf[_ix(z0 + o)] > m:
                    m = act_buf[_ix(z0 + o)]
                    best = o
            se = np.float64(0)
            for o in range(OCL):
                se += vm.exp_inline(act_buf[_ix(z0 + o)] - m)
            label = np.int64(Y[_ix(r), 0])
            if best == label:
                correct[0] += 1.0
            row_value = m + vm.log_inline(se) - act_buf[_ix(z0 + label)]
            for o in range(OCL):
                p = vm.exp_inline(act_buf[_ix(z0 + o)] - m) / se
                if o == label:
                    p -= 1
                delta_buf[_ix(dd + o)] = p / B
        elif loss == LOSS_POISSON:
            for o in range(OCL):
                z = act_buf[_ix(z0 + o)]
                row_value += _poisson_row_term(z, Y[_ix(r), o])
                delta_buf[_ix(dd + o)] = (vm.exp_inline(z) - Y[_ix(r), o]) / (B * OCL)
        else:
            for o in range(OCL):
                d = act_buf[_ix(z0 + o)] - Y[_ix(r), o]
                row_value += d * d
                delta_buf[_ix(dd + o)] = d * (2.0 / (B * OCL))
        if weighted:  # in its own branch: a multiply by 1 here slowed float32 XOR by 30%
            rf = SW[r] * B / wsum
            row_value *= rf
            for o in range(OCL):
                delta_buf[_ix(dd + o)] *= rf
        batch_loss += row_value
    # backward, layer by layer: dW, db summed over the rows in order; the deltas of the layer
    # below, then its activation's derivative over the block
    blk = top  # layer l's block of outputs; its input is the block before
    for l in range(L - 1, -1, -1):
        C = layout[l, LAY_C]
        OC = layout[l, LAY_OC]
        w0 = layout[l, LAY_W]
        b0 = layout[l, LAY_B]
        blk -= B * C
        cur = (l % 2) * half
        nxt = ((l + 1) % 2) * half
        for bb in range(B):
            r = index[start + bb]
            for c in range(C):
                x = X[_ix(r), c] if l == 0 else act_buf[_ix(blk + bb * C + c)]
                s = x * 0  # in the data's dtype: no float32/float64 round trips
                for o in range(OC):
                    d = delta_buf[_ix(cur + bb * OC + o)]
                    grads[_ix(w0 + c * OC + o)] += x * d
                    s += d * params[_ix(w0 + c * OC + o)]
                if l > 0:
                    delta_buf[_ix(nxt + bb * C + c)] = s
            for o in range(OC):
                grads[_ix(b0 + o)] += delta_buf[_ix(cur + bb * OC + o)]
        if l > 0:
            _act_grad_row_small(delta_buf[nxt:nxt + B * C], act_buf[blk:blk + B * C], acts[l - 1])
    value = batch_loss / (B if loss == LOSS_CE else B * OCL)
    if sgd.shape[0] > 0 and np.isfinite(value):
        _sgd_step(params, grads, sgd[0])
    return value


def _batch_gradients(fused, loss):
    """batch_gradients for networks run by the fused loop (fused True) or by the per-layer
    kernels, for the loss code ``loss`` (see BATCH_GRADIENTS)."""
    @njit(cache=True, nogil=True)
    @distinct(int(fused), loss)
    def batch_gradients(grads, params, X, Xs, Y, SW, index, start, stop, layout, acts, l2,
                        inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, at, runner):
        """grads (P,) = the gradient of the mean loss over the rows index[start:stop] of X
        (N, C_0), Y (N, T); returns that mean loss. After a non-finite loss grads are not to be
        used.

        Xs: X in CSR form (data (nnz,), indices (nnz,), indptr (N + 1,)) for sparse input, X
        then an empty (0, C_0) array; None for dense input, so that the sparse branches are
        pruned when the kernels compile and a dense fit never compiles the sparse kernels.

        SW (N,): sample weights (the weighted mean, as scikit-learn), or (0,) for none. l2 (2,):
        scikit-learn's alpha penalty, biases excluded: l2[0] * W / (sum of the batch's weights)
        is added to the weight gradients and 0.5 * l2[1] * sum(W^2) / (that sum) to the loss
        (the two differ only where the loss is reported in other units than its gradient);
        zeros, or None (pruned alike), for none. Per-layer kernels (``fused`` False): the batch
        gathered into inp_buf / tgt_buf (or read in place when its rows are consecutive),
        act_buf, delta_buf and row_loss workspaces for at least stop - start rows. The fused
        loop (``fused`` True): networks too small for BLAS, dense input. correct (1,): the
        batch's correctly classified rows are added to it (bce and cross-entropy; see
        count_correct). at: the address of BATCH_STEP[loss] compiled for the batch this call
        hands it (its sgd params[:0]; ``_batch.address``), as TRAIN_EPOCHS calls it, so that
        training and these gradients share one compile of the pass (0 for the fused loop).
        runner: see _batch_layers (None for the fused loop).
        """
        if fused:
            value = _batch_gradients_fused(grads, params, X, Y, SW, index, start, stop, layout,
                                           acts, loss, act_buf, delta_buf, correct, params[:0])
        else:
            value = _batch_through(at, loss, grads, params, X, Xs, Y, SW, index, start, stop,
                                   layout, acts, inp_buf, tgt_buf, act_buf, delta_buf, row_loss,
                                   correct, params[:0], runner)
        if l2 is None:
            return value
        return _with_l2(value, grads, params, layout, SW, index, start, stop, l2)
    return batch_gradients


def fused_loop(blas_sized, Xs):
    """Whether a network is run by the fused loop: no layer large enough for BLAS (blas_sized
    False, see Network._blas_sized), dense input."""
    return Xs is None and not blas_sized


def plan(blas_sized, Xs, opt, hyper, l2):
    """(fused, hyper, l2) for ``TRAIN_EPOCHS``: fused as ``fused_loop``; hyper None for plain SGD
    (no momentum, weight decay or L2, dense input), stepped in the backward pass; l2 None for no
    penalty."""
    plain = (Xs is None and opt == OPT_SGD and hyper[H_MOMENTUM] == 0
             and hyper[H_WEIGHT_DECAY] == 0 and l2[0] == 0)
    return fused_loop(blas_sized, Xs), None if plain else hyper, None if l2[0] == 0 else l2


@inner()
def _with_l2(value, grads, params, layout, SW, index, start, stop, l2):
    """value plus scikit-learn's L2 penalty, its gradient added to grads (see batch_gradients)."""
    if l2[0] == 0 or not np.isfinite(value):
        return value
    wsum = weight_sum(SW, index, start, stop) if SW.shape[0] > 0 else np.float64(stop - start)
    return value + l2_penalty(grads, params, layout, l2[0] / wsum) * (l2[1] / l2[0])


def _train_epochs(fused, loss):
    """train_epochs for networks run by the fused loop (fused True) or by the per-layer kernels,
    for the loss code ``loss`` (see TRAIN_EPOCHS)."""
    @njit(cache=True, nogil=True)
    @distinct(int(fused), loss)
    def train_epochs(params, state, step, grads, epoch_loss, X, Xs, Y, SW, order, rng, lrs,
                     layout, acts, batch_size, opt, hyper, l2,
                     inp_buf, tgt_buf, act_buf, delta_buf, row_loss, correct, backup, bound,
                     batch_at, runner):
        """Minibatch training for E = epoch_loss.shape[0] epochs, all inside compiled code.

        X (M, C_0), Xs, Y (M, T), SW (M,) or (0,) and l2 as for ``batch_gradients``;
        hyper None for plain SGD (no momentum, weight decay or L2, dense input), whose step is
        taken in the backward pass, each layer's weight by one gemm with no gradient written
        out (a separate update pass over a wide layer's weights cost as much as its gradient's
        gemm), XOR-sized networks at the end of the fused loop (the optimiser's calls cost them
        15%); ``plan`` makes these choices. order (E or 1, N) holds each epoch's sample order
        (one row reused when there is no shuffling; N < M when the caller splits an epoch over
        calls), or, when rng ((1 + K) * _pcg.N_WORDS,) holds a generator's state words
        (``_pcg.words``) then room for K copies, K rows into which the orders of K epochs at a
        time are drawn here (epoch e's in row e % K), each ``rng.permutation(N)`` as NumPy draws
        it (rng is (0,) otherwise); lrs (E,) each epoch's
        learning rate. params, state (see ``optimizer_update``), grads (P,) and step (1,), the
        count of updates so far, change in place; epoch_loss (E, 2) gets each epoch's sum of
        batch losses times batch lengths, and its count of correctly classified rows (before each
        batch's update), added to the values it holds on entry (0, or the sums so far of an epoch
        split over calls). Workspaces: as for ``batch_gradients`` with batch_size rows, and
        backup (P + state size,), or (0,) when the caller keeps its own backup (an epoch split
        over calls): then a diverging epoch is not restored here. bound (3, L) float64 for a run
        of one batch an epoch with plain SGD through the per-layer kernels, else None (the
        engine decides): such an epoch over all the rows makes no backup when ``bounded_step``
        proves that its step leaves every parameter finite (bound its workspace); a non-finite
        loss then means that no step was taken, and nothing needs restoring. batch_at: the
        address of BATCH_STEP[loss] compiled for the batches' arguments (``_batch.address``; 0
        for the fused loop or with the JIT off). runner: see _batch_layers (None for the fused
        loop). Compiled without the GIL: a runner compiles on another thread meanwhile
        (``_chunks``).

        Returns the number of epochs completed. Fewer than E means the loss or a parameter went
        non-finite in the next epoch; params, state, step and rng are then restored to their
        values at that epoch's start.
        """
        N = order.shape[1]
        E = epoch_loss.shape[0]
        # epochs of one batch over all the rows: bounded_step may spare their backups (the
        # engine passes bound None, which prunes this, unless a run has such epochs with plain
        # SGD through the per-layer kernels)
        guarded = carried = False
        xmax = ymax = scale = 0.0
        if bound is not None:
            if N <= batch_size and N == X.shape[0] and backup.shape[0] > 0:
                guarded = True
                xmax, ymax, scale = data_bounds(X, Y, SW)
        weighted = SW.shape[0] > 0
        shuffled = rng.shape[0] > 0
        W = _pcg.N_WORDS
        t = step[0]
        for e in range(E):
            t0 = t
            k = e % order.shape[0]
            if shuffled and k == 0:
                # the orders of the next epochs drawn back to back, each epoch's generator state
                # kept to undo it (a shuffled XOR epoch: +3-6% on one in order, +11-12% drawn one
                # an epoch, measured)
                for j in range(min2(order.shape[0], E - e)):
                    copy(rng[W * (j + 1):W * (j + 2)], rng[:W])
                    _pcg.permutation(rng[:W], order[j])
            index = order[k]
            sgd = lrs[e:e + 1] if hyper is None else lrs[:0]
            bounded = False
            if bound is not None:
                if guarded:
                    # the bounds the last epoch's step left, else (none, or too loose) the
                    # parameters' own
                    bounded = carried and bounded_step(params, layout, acts, xmax, ymax, scale,
                                                       N, loss, lrs[e], bound, True)
                    if not bounded:
                        bounded = bounded_step(params, layout, acts, xmax, ymax, scale, N, loss,
                                               lrs[e], bound, False)
                    carried = bounded
            saved = backup.shape[0] > 0 and not bounded
            if saved:
                save_state(backup, params, state)
            # a running sum carried in: an epoch split over calls adds alike
            total = epoch_loss[e, 0]
            correct[0] = epoch_loss[e, 1]
            ok = True
            for start in range(0, N, batch_size):
                stop = min2(N, start + batch_size)
                # A batch whose sample weights sum to 0 has no weighted mean: it is skipped (no
                # update, no step), as its rows would add nothing to a larger batch's mean either.
                if weighted and weight_sum(SW, index, start, stop) == 0:
                    continue
                # batch_gradients' choice (at XOR size even its dispatch shows)
                if fused:
                    value = _batch_gradients_fused(grads, params, X, Y, SW, index, start, stop,
                                                   layout, acts, loss, act_buf, delta_buf, correct,
                                                   sgd)
                else:
                    value = _batch_through(batch_at, loss, grads, params, X, Xs, Y, SW, index,
                                           start, stop, layout, acts, inp_buf, tgt_buf, act_buf,
                                           delta_buf, row_loss, correct, sgd, runner)
                if l2 is not None:
                    value = _with_l2(value, grads, params, layout, SW, index, start, stop, l2)
                if not np.isfinite(value):
                    ok = False
                    break
                total += value * (stop - start)
                t += 1
                if hyper is not None:
                    optimizer_update(params, state, grads, opt, lrs[e], hyper, t)
            if ok and not bounded:
                ok = all_finite(params)
            if not ok:
                if saved:
                    restore_state(params, state, backup)
                if shuffled:
                    copy(rng[:W], rng[W * (k + 1):W * (k + 2)])
                step[0] = t0
                return e
            epoch_loss[e, 0] = total
            epoch_loss[e, 1] = correct[0]
        step[0] = t
        return E
    return train_epochs


# One definition of each driver, compiled as one function per path and loss: ``fused`` and
# ``loss`` are constants of each closure, so the paths not taken are pruned before typing (down
# through BATCH_LAYERS[loss] and the inlined loss_forward_backward, _loss_delta_rows and
# count_correct) and a first fit compiles only its own: an XOR-sized fit no per-layer kernels,
# a larger one no fused loop, a cross-entropy fit no other loss (seconds of a cold start).
# Indexed [fused_loop(...)][loss code].
BATCH_GRADIENTS = tuple(tuple(_batch_gradients(f, c) for c in LOSS_CODES) for f in (False, True))
TRAIN_EPOCHS = tuple(tuple(_train_epochs(f, c) for c in LOSS_CODES) for f in (False, True))


def _evaluate(loss):
    """evaluate for the loss code ``loss`` (see EVALUATE)."""
    @njit(cache=True)
    @distinct(loss)
    def evaluate(out, row_loss, params, X, Xs, index, Y, layout, acts, act_buf, with_loss):
        """Forward X (N, C_0) in chunks of row_loss.shape[0] rows.

        Writes the output activation (probabilities, or the identity output for mse) into out
        (N, OC) and, when with_loss, returns the mean loss against Y (N, T), else 0. Sparse X: Xs
        as for ``batch_gradients``, index (N,) = 0..N-1 (the rows in order); dense: Xs and index
        empty.
        """
        N = out.shape[0]
        L = layout.shape[0]
        chunk = row_loss.shape[0]
        total = 0.0
        for start in range(0, N, chunk):
            B = min2(chunk, N - start)
            if Xs is not None:
                sparse_network_forward(act_buf, params, Xs, index, start, B, layout, acts)
            else:
                network_forward(act_buf, params, X[start:start + B], layout, acts, 0, 0, B)
            logits = activation_view(act_buf, layout, B, L - 1)
            if with_loss:
                total += loss_forward(row_loss[:B], logits, Y[start:start + B], loss) * B
            output_forward(out[start:start + B], logits, loss)
        return total / N
    return evaluate


# The loss and output passes are inlined and the loss a constant of each: a predict compiles
# its own loss's only. Indexed by loss code.
EVALUATE = tuple(_evaluate(c) for c in LOSS_CODES)

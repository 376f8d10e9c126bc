"""Each compiled kernel against the NumPy reference and against central finite differences.

Small shapes, so the file also runs in reasonable time under NUMBA_DISABLE_JIT=1 (CI does that, to
cover the kernels' Python bodies).
"""
import numba
import numpy as np
import pytest

from fastbp import _kernels as K
from fastbp import reference as ref
from fastbp.activations import ACTIVATIONS as ACT_TABLE
from fastbp.losses import LOSSES as LOSS_TABLE

from conftest import ACTIVATIONS, DTYPES, LOSSES, make_data, out_width, rel_err

TOL = {np.float64: 1e-12, np.float32: 2e-6}
B, C, OC = 9, 6, 5

# Shapes (B, C, OC) on both sides of _kernels.PARALLEL_MIN_WORK, so the serial and the prange
# branch of each parallel kernel (activations, sparse layer) are both checked, and the others run
# over several blocks of rows and columns; the large one only when compiled (too slow as Python).
# The dense layer's tests add a wide one, with rows of _kernels.ROWWISE_MIN_WIDTH or more (its
# passes row by row), not a multiple of any vector width.
SHAPES = {"small": (B, C, OC), "large": (256, 24, 160), "wide": (12, 7, 530)}
SIZES = ["small"] if numba.config.DISABLE_JIT else ["small", "large"]
DENSE_SIZES = SIZES + ["wide"]
assert 256 * 160 >= K.PARALLEL_MIN_WORK > B * C * OC
assert SHAPES["wide"][2] >= K.ROWWISE_MIN_WIDTH > SHAPES["large"][2]


def rand(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def central_difference(f, x, eps=1e-6):
    """d f / d x by central differences; f() reads x, which is perturbed in place and restored."""
    grad = np.empty_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return grad


# ----------------------------------------------------------------- dense layer


@pytest.mark.parametrize("size", DENSE_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_matches_reference(dtype, size):
    B, C, OC = SHAPES[size]
    inp, W, b = rand((B, C), dtype, 1), rand((C, OC), dtype, 2), rand(OC, dtype, 3)
    out = np.empty((B, OC), dtype)
    K.dense_forward(out, inp, W, b, K.ACT_IDENTITY)
    expected = inp.astype(np.float64) @ W.astype(np.float64) + b
    assert out.dtype == dtype
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize("size", DENSE_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_matches_reference(dtype, size):
    B, C, OC = SHAPES[size]
    inp, W, dout = rand((B, C), dtype, 1), rand((C, OC), dtype, 2), rand((B, OC), dtype, 4)
    dinp, dW, db = np.empty((B, C), dtype), np.empty((C, OC), dtype), np.empty(OC, dtype)
    K.dense_backward(dinp, dW, db, dout, inp, W, np.empty(OC, dtype), dout, K.ACT_IDENTITY, True,
                     W[:0, 0])
    i64, W64, d64 = (a.astype(np.float64) for a in (inp, W, dout))
    assert rel_err(dW, i64.T @ d64) < TOL[dtype]
    assert rel_err(db, d64.sum(axis=0)) < TOL[dtype]
    assert rel_err(dinp, d64 @ W64.T) < TOL[dtype]


def test_dense_backward_skips_input_gradient_when_not_needed():
    inp, W, dout = rand((B, C), np.float64, 1), rand((C, OC), np.float64, 2), rand((B, OC), np.float64, 4)
    dinp = np.full((B, C), 7.0)
    K.dense_backward(dinp, np.empty((C, OC)), np.empty(OC), dout, inp, W, np.empty(OC), dout,
                     K.ACT_IDENTITY, False, np.empty(0))
    assert (dinp == 7.0).all()


@pytest.mark.parametrize("act", ["identity"] + list(ACTIVATIONS))
def test_dense_backward_matches_finite_differences(act):
    code = K.ACT_IDENTITY if act == "identity" else ACT_TABLE[act].code
    inp, W, b = rand((B, C), np.float64, 1), rand((C, OC), np.float64, 2), rand(OC, np.float64, 3)
    R = rand((B, OC), np.float64, 5)  # f = sum(R * out), so dL/dout = R
    out = np.empty((B, OC))

    def f():
        K.dense_forward(out, inp, W, b, code)
        return float((R * out).sum())

    f()
    dinp, dW, db = np.empty((B, C)), np.empty((C, OC)), np.empty(OC)
    dout = R.copy()
    K.dense_backward(dinp, dW, db, dout, inp, W, b, out, code, True, np.empty(0))
    for analytic, x in ((dW, W), (db, b), (dinp, inp)):
        assert rel_err(analytic, central_difference(f, x)) < 1e-6


@pytest.mark.parametrize("size", DENSE_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_with_sgd_step_matches_gradient_then_update(dtype, size):
    """sgd (1,) = (lr,): the layer takes plain SGD's step in its backward (the weight's in one
    gemm with alpha -lr, beta 1): W - lr dW and b - lr db as the reference
    computes them, dinp and dbias from the weights before the step."""
    B, C, OC = SHAPES[size]
    inp, W, b, dout = (rand((B, C), dtype, 1), rand((C, OC), dtype, 2), rand(OC, dtype, 3),
                       rand((B, OC), dtype, 4))
    out = rand((B, OC), dtype, 5)
    lr = 0.05
    dinp, dW, db = np.empty((B, C), dtype), np.empty((C, OC), dtype), np.empty(OC, dtype)
    W_new, b_new, d = W.copy(), b.copy(), dout.copy()
    K.dense_backward(dinp, dW, db, d, inp, W_new, b_new, out, K.ACT_TANH, True,
                     np.array([lr], dtype))
    i64, W64, o64 = (a.astype(np.float64) for a in (inp, W, out))
    dz = dout.astype(np.float64) * (1 - o64 ** 2)
    assert rel_err(db, dz.sum(axis=0)) < TOL[dtype]
    assert rel_err(dinp, dz @ W64.T) < TOL[dtype]
    assert rel_err(W_new, W64 - lr * (i64.T @ dz)) < TOL[dtype]
    assert rel_err(b_new, b.astype(np.float64) - lr * dz.sum(axis=0)) < TOL[dtype]


@pytest.mark.filterwarnings("ignore::numba.NumbaPerformanceWarning")  # strided on purpose
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_step_on_strided_arrays_matches_the_contiguous_one(dtype):
    """The step's one-gemm form reads contiguous rows; views with other strides (a caller's
    slices) take the same step by the general route."""
    inp, dout = rand((B, 2 * C), dtype, 1)[:, ::2], rand((B, OC), dtype, 4)
    W = rand((C, 2 * OC), dtype, 2)[:, ::2]
    W_c, inp_c = np.ascontiguousarray(W), np.ascontiguousarray(inp)
    for weight, x in ((W, inp), (W_c, inp_c)):
        K.dense_backward(np.empty((B, C), dtype), np.empty((C, OC), dtype), np.empty(OC, dtype),
                         dout.copy(), x, weight, np.zeros(OC, dtype), dout, K.ACT_IDENTITY,
                         False, np.array([0.1], dtype))
    assert rel_err(W, W_c) < TOL[dtype]


@pytest.mark.parametrize("size", DENSE_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_with_activation_matches_reference(act, dtype, size):
    """The fused passes: bias + activation after the gemm, and the activation's derivative taken
    in the pass that sums dbias, against the unfused NumPy maths."""
    B, C, OC = SHAPES[size]
    code = ACT_TABLE[act].code
    inp, W, b = rand((B, C), dtype, 1), rand((C, OC), dtype, 2) * 3, rand(OC, dtype, 3)
    out, z = np.empty((B, OC), dtype), np.empty((B, OC), dtype)
    K.dense_forward(out, inp, W, b, code)
    K.dense_forward(z, inp, W, b, K.ACT_IDENTITY)  # the same gemm, not activated
    z = z.astype(np.float64)
    assert rel_err(out, ref.activate(act, z)) < TOL[dtype]
    da = rand((B, OC), dtype, 4)
    dz = da.astype(np.float64) * ref.activation_grad(act, z)
    dinp, dW, db = np.empty((B, C), dtype), np.empty((C, OC), dtype), np.empty(OC, dtype)
    dout = da.copy()
    K.dense_backward(dinp, dW, db, dout, inp, W, b, out, code, True, b[:0])
    # float32: the derivative comes from the rounded output, as in test_activation_backward
    tol = TOL[dtype] if dtype == np.float64 else 2e-5
    assert rel_err(dout, dz) < tol
    assert rel_err(db, dz.sum(axis=0)) < tol
    assert rel_err(dW, inp.astype(np.float64).T @ dz) < tol
    assert rel_err(dinp, dz @ W.astype(np.float64).T) < tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_wide_rows_pass_gives_the_narrow_passes_bits(act, dtype):
    """Rows of ROWWISE_MIN_WIDTH or more take the bias and the activation row by row; the same
    values laid out as rows half as wide (each with the same half of the bias) take the narrow
    layers' flat passes: the same bits. Backward, the derivative is the same bits either way,
    and dbias is the sum over rows in order, as NumPy's axis-0 sum of a C array."""
    code = ACT_TABLE[act].code
    half = K.ROWWISE_MIN_WIDTH - 41
    z, da = rand((12, 2 * half), dtype, 1) * 3, rand((12, 2 * half), dtype, 2)
    bias = np.tile(rand(half, dtype, 3), 2)
    wide, narrow = z.copy(), z.copy().reshape(-1, half)
    K._bias_act(wide, bias, code)
    K._bias_act(narrow, bias[:half], code)
    assert wide.tobytes() == narrow.tobytes()
    d_wide, d_narrow = da.copy(), da.copy().reshape(-1, half)
    db_wide, db_narrow = np.empty(2 * half, dtype), np.empty(half, dtype)
    K.delta_and_dbias(db_wide, d_wide, wide, code)
    K.delta_and_dbias(db_narrow, d_narrow, narrow, code)
    assert d_wide.tobytes() == d_narrow.tobytes()
    for db, d in ((db_wide, d_wide), (db_narrow, d_narrow)):
        assert db.tobytes() == d.sum(axis=0).tobytes()


# ----------------------------------------------------------------- activations


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_forward_matches_reference(act, dtype, size):
    B, _, OC = SHAPES[size]
    z = rand((B, OC), dtype, 6) * 3
    a = z.copy()
    K.activation_forward(a, ACT_TABLE[act].code)
    assert rel_err(a, ref.activate(act, z.astype(np.float64))) < TOL[dtype]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_backward_matches_reference(act, dtype, size):
    B, _, OC = SHAPES[size]
    z = rand((B, OC), dtype, 6) * 3
    da = rand((B, OC), dtype, 7)
    a = z.copy()
    K.activation_forward(a, ACT_TABLE[act].code)
    dz = da.copy()
    K.activation_backward(dz, a, ACT_TABLE[act].code)
    expected = da.astype(np.float64) * ref.activation_grad(act, z.astype(np.float64))
    # float32: sigmoid'/tanh' are computed from the rounded output a, so a few ulps of a
    tol = TOL[dtype] if dtype == np.float64 else 2e-5
    assert rel_err(dz, expected) < tol


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_backward_matches_finite_differences(act):
    z = rand((B, OC), np.float64, 6) * 3
    R = rand((B, OC), np.float64, 7)
    code = ACT_TABLE[act].code

    def f():
        a = z.copy()
        K.activation_forward(a, code)
        return float((R * a).sum())

    a = z.copy()
    K.activation_forward(a, code)
    dz = R.copy()
    K.activation_backward(dz, a, code)
    assert rel_err(dz, central_difference(f, z)) < 1e-6


def test_relu_backward_is_zero_at_zero():
    """PyTorch's convention: relu'(0) = 0."""
    a = np.zeros((1, 3))
    dz = np.ones((1, 3))
    K.activation_backward(dz, a, K.ACT_RELU)
    assert (dz == 0).all()


# ----------------------------------------------------------------- losses


LOSS_ROWS = {"small": B, "large": 12000}  # 12000 rows: many blocks of LOSS_BLOCK rows


def kernel_targets(loss, y, dtype):
    y = np.asarray(y)
    return np.ascontiguousarray(y.reshape(len(y), -1), dtype=dtype)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_forward_matches_reference(loss, dtype, size):
    B = LOSS_ROWS[size]
    n_out = out_width(loss)
    _, y = make_data(loss, B, 1, n_out, seed=8, dtype=dtype)
    logits = rand((B, n_out), dtype, 9) * 2
    value = K.loss_forward(np.empty(B), logits, kernel_targets(loss, y, dtype), LOSS_TABLE[loss].code)
    assert rel_err(value, ref.loss_value(loss, logits.astype(np.float64), y)) < TOL[dtype]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_backward_matches_reference(loss, dtype, size):
    B = LOSS_ROWS[size]
    n_out = out_width(loss)
    _, y = make_data(loss, B, 1, n_out, seed=8, dtype=dtype)
    logits = rand((B, n_out), dtype, 9) * 2
    dlogits = np.empty_like(logits)
    K.loss_backward(dlogits, logits, kernel_targets(loss, y, dtype), LOSS_TABLE[loss].code)
    assert rel_err(dlogits, ref.loss_grad(loss, logits.astype(np.float64), y)) < TOL[dtype]


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_backward_matches_finite_differences(loss):
    n_out = out_width(loss)
    _, y = make_data(loss, B, 1, n_out, seed=8)
    logits = rand((B, n_out), np.float64, 9) * 2
    Y, code = kernel_targets(loss, y, np.float64), LOSS_TABLE[loss].code
    dlogits = np.empty_like(logits)
    K.loss_backward(dlogits, logits, Y, code)
    fd = central_difference(lambda: K.loss_forward(np.empty(B), logits, Y, code), logits)
    assert rel_err(dlogits, fd) < 1e-6


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_forward_backward_is_the_two_kernels_in_one_pass(loss, dtype, size):
    """The training loop's fused loss: the same mean loss as loss_forward (to rounding: the
    cross-entropy is summed as log(s) - (z[label] - m)) and the same delta as loss_backward, bit
    for bit, written over the logits."""
    B = LOSS_ROWS[size]
    n_out = out_width(loss)
    _, y = make_data(loss, B, 1, n_out, seed=8, dtype=dtype)
    logits = rand((B, n_out), dtype, 9) * 20  # wide: rows with tiny probabilities too
    Y, code = kernel_targets(loss, y, dtype), LOSS_TABLE[loss].code
    expected = K.loss_forward(np.empty(B), logits, Y, code)
    delta = np.empty_like(logits)
    K.loss_backward(delta, logits, Y, code)
    fused = logits.copy()
    value = K.loss_forward_backward(np.empty(B), fused, Y, code)
    np.testing.assert_array_equal(fused, delta)
    assert abs(value - expected) <= 4 * np.finfo(dtype).eps * max(1.0, abs(expected))
    assert abs(value - ref.loss_value(loss, logits.astype(np.float64), y)) < TOL[dtype] * max(
        1.0, abs(expected))


def test_loss_backward_may_overwrite_logits():
    _, y = make_data("cross_entropy", B, 1, 3, seed=8)
    logits = rand((B, 3), np.float64, 9)
    Y = kernel_targets("cross_entropy", y, np.float64)
    separate = np.empty_like(logits)
    K.loss_backward(separate, logits, Y, K.LOSS_CE)
    K.loss_backward(logits, logits, Y, K.LOSS_CE)
    assert np.array_equal(separate, logits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["bce", "cross_entropy"])
def test_loss_and_probabilities_stay_finite_for_huge_logits(loss, dtype):
    big = 1e4 if dtype == np.float32 else 1e300
    logits = np.array([[big, -big, 0.0], [-big, big, big]], dtype=dtype)[:, :out_width(loss)]
    y = np.array([1, 0]) if loss == "bce" else np.array([1, 2])
    Y = kernel_targets(loss, y, dtype)
    code = LOSS_TABLE[loss].code
    value = K.loss_forward(np.empty(2), logits, Y, code)
    dlogits, proba = np.empty_like(logits), np.empty_like(logits)
    K.loss_backward(dlogits, logits, Y, code)
    K.output_forward(proba, logits, code)
    assert np.isfinite(value) and np.isfinite(dlogits).all() and np.isfinite(proba).all()
    assert rel_err(value, ref.loss_value(loss, logits.astype(np.float64), y)) < 1e-12
    assert rel_err(proba, ref.output(loss, logits.astype(np.float64))) < 1e-12


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_output_forward_matches_reference(loss, dtype, size):
    B = LOSS_ROWS[size]
    logits = rand((B, out_width(loss)), dtype, 9) * 2
    out = np.empty_like(logits)
    K.output_forward(out, logits, LOSS_TABLE[loss].code)
    assert rel_err(out, ref.output(loss, logits.astype(np.float64))) < TOL[dtype]


# ----------------------------------------------------------------- optimiser


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, True, 0.1),
                          (0.0, False, 0.01)])
@pytest.mark.parametrize("size", SIZES)
def test_sgd_update_matches_reference(momentum, nesterov, weight_decay, dtype, size):
    P = 40 if size == "small" else 50000
    p = rand(P, dtype, 10)
    v = np.zeros(P if momentum else 0, dtype)
    p_ref, v_ref = p.astype(np.float64), np.zeros(P)
    t = np.dtype(dtype).type
    for step in range(3):
        g = rand(P, dtype, 11 + step)
        K.sgd_update(p, v, g, t(0.1), t(momentum), nesterov, t(weight_decay))
        ref.sgd_step([p_ref], [g.astype(np.float64)], [v_ref], 0.1, momentum, nesterov, weight_decay)
    assert rel_err(p, p_ref) < TOL[dtype] * 10


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt,weight_decay,eps_inside",
                         [(K.OPT_ADAM, 0.0, False), (K.OPT_ADAM, 0.1, False),
                          (K.OPT_ADAMW, 0.1, False), (K.OPT_ADAM, 0.0, True)])
@pytest.mark.parametrize("size", SIZES)
def test_adam_update_matches_reference(opt, weight_decay, eps_inside, dtype, size):
    P = 40 if size == "small" else 50000
    p = rand(P, dtype, 10)
    state = np.zeros(2 * P, dtype)
    p_ref, m_ref, v_ref = p.astype(np.float64), np.zeros(P), np.zeros(P)
    hyper = np.zeros(K.N_HYPER, dtype)
    hyper[K.H_BETA1], hyper[K.H_BETA2], hyper[K.H_EPS] = 0.8, 0.99, 1e-3
    hyper[K.H_WEIGHT_DECAY], hyper[K.H_EPS_INSIDE] = weight_decay, eps_inside
    for t in range(1, 4):
        g = rand(P, dtype, 11 + t)
        K.optimizer_update(p, state, g, opt, np.dtype(dtype).type(0.01), hyper, t)
        ref.adam_step([p_ref], [g.astype(np.float64)], [m_ref], [v_ref], t, 0.01, (0.8, 0.99),
                      1e-3, weight_decay, decoupled=opt == K.OPT_ADAMW, eps_inside=eps_inside)
    assert rel_err(p, p_ref) < TOL[dtype] * 10
    assert rel_err(state[:P], m_ref) < TOL[dtype] * 10
    assert rel_err(state[P:], v_ref) < TOL[dtype] * 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_penalty_matches_reference(dtype):
    net_layout = np.array([[3, 4, 0, 12], [4, 2, 16, 24]], dtype=np.int64)  # [W0, b0, W1, b1]
    params, grads = rand(26, dtype, 1), rand(26, dtype, 2)
    Ws = [params[0:12].reshape(3, 4).astype(np.float64), params[16:24].reshape(4, 2).astype(np.float64)]
    gW = [grads[0:12].reshape(3, 4).astype(np.float64), grads[16:24].reshape(4, 2).astype(np.float64)]
    g_before = grads.copy()
    value = K.l2_penalty(grads, params, net_layout, 0.3)
    want = ref.l2_penalty(gW, Ws, 0.3)
    assert rel_err(value, want) < TOL[dtype]
    assert rel_err(grads[0:12], gW[0].ravel()) < TOL[dtype]
    assert rel_err(grads[16:24], gW[1].ravel()) < TOL[dtype]
    assert np.array_equal(grads[12:16], g_before[12:16])  # biases are not penalised
    assert np.array_equal(grads[24:], g_before[24:])


INNER_FROM_PYTHON = """
import numpy as np
from numba import njit
from fastbp import _kernels as K

a = np.linspace(-30, 30, 37)
b = a.copy()
K._act_row(a, K.ACT_TANH)  # from Python: through the twin, which has Numba's wrappers


@njit
def caller(x):  # compiled code links the wrapper-less kernel itself
    K._act_row(x, K.ACT_TANH)


caller(b)
print(np.array_equal(a, b), float(np.abs(a - np.tanh(np.linspace(-30, 30, 37))).max()),
      K._act_row.targetoptions.get("no_cpython_wrapper"), K._act_row._twin.py_func.__qualname__)
"""


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="wrappers exist only with the JIT on")
def test_an_inner_kernel_called_from_python_runs_its_twin():
    # In a subprocess: were the twin missing, the call would jump to a wrapper that is not there.
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", INNER_FROM_PYTHON], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    same, error, no_wrapper, twin = out.stdout.split()
    assert same == "True"  # the same bits from Python and from compiled code
    assert float(error) < 1e-15
    assert no_wrapper == "True" and twin == "_act_row__python"


@numba.njit
def gemm_in_layout(c, a, b, alpha, beta, ta, tb):
    """K.gemm with a (or b) transposed (a.T) where ta (or tb): each layout pair is its own
    specialisation of the gemm overload."""
    if ta and tb:
        K.gemm(c, a.T, b.T, alpha, beta)
    elif ta:
        K.gemm(c, a.T, b, alpha, beta)
    elif tb:
        K.gemm(c, a, b.T, alpha, beta)
    else:
        K.gemm(c, a, b, alpha, beta)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3, 4), (1, 7, 1), (4, 0, 3), (0, 2, 3)])
def test_gemm_matches_numpy_for_plain_and_transposed_operands(dtype, shape):
    M, K_, N = shape
    for ta in (False, True):
        for tb in (False, True):
            a = rand((K_, M) if ta else (M, K_), dtype, 1)
            b = rand((N, K_) if tb else (K_, N), dtype, 2)
            c0 = rand((M, N), dtype, 3)
            for alpha, beta in ((1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)):
                c = c0.copy()
                gemm_in_layout(c, a, b, alpha, beta, ta, tb)
                want = alpha * ((a.T if ta else a).astype(np.float64)
                                @ (b.T if tb else b).astype(np.float64)) + beta * c0
                np.testing.assert_allclose(c, want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                           atol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_refuses_operands_whose_shapes_do_not_match(dtype):
    """Every layout, each of the three mismatches: a ValueError, and c untouched."""
    M, K_, N = 4, 3, 5
    for ta in (False, True):
        for tb in (False, True):
            for c_shape, a_shape, b_shape in (((M, N), (M, K_ + 1), (K_, N)),
                                              ((M + 1, N), (M, K_), (K_, N)),
                                              ((M, N + 1), (M, K_), (K_, N))):
                c = np.full(c_shape, 7, dtype)
                a = np.ones(a_shape[::-1] if ta else a_shape, dtype)
                b = np.ones(b_shape[::-1] if tb else b_shape, dtype)
                with pytest.raises(ValueError):
                    gemm_in_layout(c, a, b, 1.0, 0.0, ta, tb)
                assert (c == 7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_magnitude_matches_numpy_and_sees_every_inf_and_nan(dtype):
    """The compiled form (a maximum over magnitude bits) against NumPy's |x|.max(): exact for
    finite data, subnormals and signs included; inf wherever an element is inf or NaN."""
    run = numba.njit(lambda x: K.max_magnitude(x))
    fi = np.finfo(dtype)
    rng = np.random.default_rng(4)
    cases = [np.empty(0, dtype), np.array([-0.0], dtype), rand((1000,), dtype, 5) * 1e3,
             np.array([fi.smallest_subnormal, -fi.smallest_subnormal * 3], dtype),
             np.array([fi.max, -fi.max, 1], dtype), -np.abs(rand((37,), dtype, 6))]
    for x in cases:
        want = float(np.abs(x).max()) if x.size else 0.0
        assert run(x) == want == K.max_magnitude(x)
    for bad in (np.inf, -np.inf, np.nan):
        for at in (0, 17, 999):
            x = rng.standard_normal(1000).astype(dtype)
            x[at] = bad
            assert run(x) == np.inf == K.max_magnitude(x)

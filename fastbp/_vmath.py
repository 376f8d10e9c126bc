"""Vectorisable exp, expm1, log, log1p, tanh and sigmoid for the compiled kernels.

llvmlite here has no SVML, so ``np.exp``/``np.tanh`` inside ``@njit`` are calls to the scalar libm
functions, one element at a time (8 ns per float32 sigmoid, measured; NumPy's SIMD ``np.tanh`` does
one in 0.4 ns). These are written so that LLVM vectorises a loop that calls them: range reduction
and a polynomial, no branches (edge cases are selects), no calls, the bits of a float read and
written by bitcasts. Each has a float32 and a float64 variant, picked from the argument's type, so
float32 work stays in float32 lanes (twice as many per vector).

Accuracy: within a few ulp of NumPy over the whole range, subnormals, overflow, infinities and NaN
included; tests/test_vmath.py sweeps it densely and prints the table. Without the JIT
(``NUMBA_DISABLE_JIT=1``) the same names call NumPy.

The methods are the textbook ones (Cody and Waite's reduction with a two-part ln 2, rounding to
an integer by adding a large shifter; log through s = f / (2 + f) and the series of 2 atanh(s);
tanh as expm1(2x) / (expm1(2x) + 2)), with Taylor coefficients (float32's exp: a minimax fit,
one term shorter), which at these reduced ranges reach the precision of the type.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba import njit
from numba.extending import intrinsic, overload

from ._jit import LINKED, renamed

# --------------------------------------------------------------------------- bit casts


@intrinsic
def _bitcast(typingctx, x, to):
    """The bits of x reinterpreted as the type ``to`` of the same width (int <-> float)."""
    target = to.dtype if isinstance(to, types.NumberClass) else to
    sig = target(x, to)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def _sel(typingctx, cond, a, b):
    """a if cond else b, as one select instruction: no branch, so nothing for Numba to join and
    nothing to stop LLVM vectorising (a and b are both computed; both must be of one type)."""
    sig = a(cond, a, b)

    def codegen(context, builder, signature, args):
        c = context.cast(builder, args[0], signature.args[0], types.boolean)
        return builder.select(c, args[1], args[2])

    return sig, codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma): one instruction where the CPU has FMA, vectorised like
    any arithmetic, and the same bits in a vector lane as in scalar code."""
    sig = a(a, a, a)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty] * 3))
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _pow2_held(typingctx, kf):
    """2^n for kf a float whose low mantissa bits hold the integer n (``split`` rounds by adding a
    shifter of 1.5 2^mant): those bits plus the bias, moved into the exponent field, with the
    shifter's own bits moved out past the top. No conversion to an integer, so NaN is harmless."""
    width = kf.bitwidth
    mant, bias = (23, 127) if width == 32 else (52, 1023)
    sig = kf(kf)

    def codegen(context, builder, signature, args):
        ity = ir.IntType(width)
        i = builder.add(builder.bitcast(args[0], ity), ity(bias))
        return builder.bitcast(builder.shl(i, ity(mant)), context.get_value_type(kf))

    return sig, codegen


# --------------------------------------------------------------------------- constants
# float64: exp's arguments beyond these are 0 / inf; ln 2 split so that n * LN2_HI is exact.
F64 = dict(
    lo=np.float64(-746.0), hi=np.float64(710.0), log2e=np.float64(1.4426950408889634),
    ln2_hi=np.float64(6.93147180369123816490e-01), ln2_lo=np.float64(1.90821492927058770002e-10),
    exp_terms=tuple(np.float64(1 / math.factorial(k)) for k in range(13, 1, -1)),  # 1/13! .. 1/2!
    log_terms=tuple(np.float64(2 / (2 * k + 1)) for k in range(11, 0, -1)),  # 2/23 .. 2/3
    tanh_big=np.float64(20.0), mant_bits=52, bias=1023, sqrt_half=np.float64(0.7071067811865476),
    one=np.float64(1), two=np.float64(2), half=np.float64(0.5), zero=np.float64(0),
)
# float32: ln 2 split as in Cephes' expf.
F32 = dict(
    lo=np.float32(-104.0), hi=np.float32(89.0), log2e=np.float32(1.44269504088896341),
    ln2_hi=np.float32(0.693359375), ln2_lo=np.float32(-2.12194440e-4),
    # e^r = 1 + r + r^2 P(r), P of degree 4: a minimax fit for |r| <= ln 2 / 2 (Lawson's
    # iteration on relative error; 3.8e-9 at most, a sixteenth of float32's half ulp)
    exp_terms=tuple(np.float32(c) for c in (1.3791731e-3, 8.3688293e-3, 4.1668803e-2,
                                            1.6666520e-1, 4.9999991e-1)),
    log_terms=tuple(np.float32(2 / (2 * k + 1)) for k in range(6, 0, -1)),  # 2/13 .. 2/3
    tanh_big=np.float32(9.0), mant_bits=23, bias=127, sqrt_half=np.float32(0.70710677),
    one=np.float32(1), two=np.float32(2), half=np.float32(0.5), zero=np.float32(0),
)


def _polynomial(coefs):
    """A compiled polynomial c[0] r^(n-1) + ... + c[n-1] with these constant coefficients, in
    Estrin's scheme: pairs (c[i] r + c[i+1]) combined with r^2, those with r^4, and so on. Its
    dependency chain is log2(n) steps long instead of Horner's n, which is what a scalar call (the
    fused XOR-sized loop) waits for; the vectorised loops do not mind either way. Written out as
    straight-line code (a loop here would stop Numba inlining it cleanly)."""
    terms = [f"c[{i}]" for i in range(len(coefs))][::-1]  # lowest degree first
    lines, power, level = [], "r", 0
    while len(terms) > 1:
        pairs = []
        for k in range(0, len(terms), 2):
            if k + 1 < len(terms):
                pairs.append(f"_fma({terms[k + 1]}, {power}, {terms[k]})")
            else:
                pairs.append(terms[k])
        level += 1
        lines.append(f"    p{level} = {power} * {power}")
        terms, power = pairs, f"p{level}"
    scope = {"c": coefs, "_fma": _fma}
    exec("def poly(r):\n" + "\n".join(lines) + f"\n    return {terms[0]}\n", scope)
    return njit(inline="always")(scope["poly"])


# --------------------------------------------------------------------------- the implementations
# One factory per function: called with F32 or F64, it returns a function whose constants are of
# that type (a module-level NumPy scalar or tuple is frozen into the compiled code with its type).


def _make(K, itype, ftype):
    lo, hi, log2e = K["lo"], K["hi"], K["log2e"]
    c_hi, c_lo = K["ln2_hi"], K["ln2_lo"]  # ln 2 = c_hi + c_lo; n c_hi is exact
    e = K["exp_terms"]
    lg = K["log_terms"]
    one, two, half, zero = K["one"], K["two"], K["half"], K["zero"]
    mant, bias = K["mant_bits"], K["bias"]
    mant_mask = (1 << mant) - 1
    sqrt_half, tanh_big = K["sqrt_half"], K["tanh_big"]
    inf, neg_inf, nan = ftype(np.inf), ftype(-np.inf), ftype(np.nan)
    tiny = ftype(np.finfo(ftype).tiny)
    scale_bits = mant + 2
    scale_up = ftype(2.0 ** scale_bits)
    sqrt2 = one / sqrt_half
    shifter = ftype(1.5 * 2.0 ** mant)
    scale_log2, scale = ftype(64), ftype(2.0 ** 64)

    poly_e, poly_lg = _polynomial(e), _polynomial(lg)

    @njit(inline="always")
    def split(x, extra, doubled=False):
        """(n, r, kf): x = n ln 2 + r, |r| <= ln 2 / 2, for x inside [lo, hi]; kf holds n + extra
        (a constant) in its low bits (see _pow2_held): x / ln 2 rounded to an integer by adding
        the shifter, extra added with it. doubled=True: the same for 2x, with the same bits,
        but 2x is formed beside kf, not before it (tanh: one step off the longest chain of
        dependent instructions: 2-6% faster over 4M float32 values, six runs, measured)."""
        kf = _fma(x, two * log2e if doubled else log2e, shifter + extra)
        n = kf - (shifter + extra)
        x = x + x if doubled else x
        return n, _fma(n, -c_lo, _fma(n, -c_hi, x)), kf  # n c_hi exact: c_hi has few bits

    @njit(inline="always")
    def pow2(n):
        """2^n for a float n holding an integer with 2^n normal: n held by the shifter, as split
        holds it (one float add, no conversion to an integer)."""
        return _pow2_held(n + shifter)

    @njit(inline="always")
    def reduce(x):
        """split(x) for any x: clamped to [lo, hi] (NaN to lo)."""
        x = _sel(x > lo, x, lo)
        n, r, _ = split(_sel(x < hi, x, hi), zero)
        return n, r

    @njit(inline="always")
    def expm1_r(r):
        """e^r - 1 for |r| <= ln 2 / 2, accurate for small r (no 1 added and taken back)."""
        return _fma(r * r, poly_e(r), r)

    @njit(inline="always")
    def exp(x):
        n, r = reduce(x)
        n1 = np.floor(n * half)  # 2^n in two normal factors: subnormal and inf results come right
        y = (expm1_r(r) + one) * pow2(n1) * pow2(n - n1)
        return _sel(x == x, y, x)

    @njit(inline="always")
    def expm1(x):
        n, r = reduce(x)
        pr = expm1_r(r)
        n1 = np.floor(n * half)
        # e^x - 1 = 2^n (e^r - 1) + (2^n - 1) = s2 (s1 (e^r - 1) + s1 - 1 / s2) with 2^n = s1 s2:
        # no intermediate overflows, and s1 - 1/s2 is exact for the n where it matters
        y = (pr * pow2(n1) + (pow2(n1) - pow2(n1 - n))) * pow2(n - n1)
        return _sel(x == x, y, x)

    @njit(inline="always")
    def log(x):
        sub = x < tiny  # subnormals scaled into the normal range first
        xs = _sel(sub, x * scale_up, x)
        bits = np.int64(_bitcast(xs, itype))
        k = (bits >> mant) - _sel(sub, np.int64(bias + scale_bits), np.int64(bias))
        m = _bitcast(itype((bits & mant_mask) | (bias << mant)), ftype)  # in [1, 2)
        big = m > sqrt2  # m in [sqrt(1/2), sqrt(2)): f = m - 1 small either side of 0
        m = _sel(big, m * half, m)
        k = _sel(big, k + 1, k)
        f = m - one
        s = f / (two + f)
        z = s * s
        # log(1 + f) = 2 atanh(s) = f - s (f - R), R = z P(z), written as fdlibm does
        hf = half * f * f
        logm = f - (hf - s * (hf + z * poly_lg(z)))
        fk = ftype(k)
        y = fk * c_hi + (logm + fk * c_lo)  # k c_hi is exact: c_hi has few bits
        y = _sel(x > zero, y, _sel(x == zero, neg_inf, nan))
        return _sel(x < inf, y, x)  # inf -> inf, NaN -> NaN

    @njit(inline="always")
    def log1p(x):
        # log(u) + (x - (u - 1)) / u, u = 1 + x rounded: the correction restores what rounding
        # 1 + x lost (Goldberg's method); u == 1 means log1p(x) = x to rounding
        u = one + x
        d = u - one
        c = (x - d) / u
        y = log(u) + _sel(u > zero, c, zero)
        y = _sel(d != zero, y, x)
        return _sel(x < inf, y, x)

    @njit(inline="always")
    def tanh(x):
        # e^2|x| - 1 over e^2|x| + 1, with 2|x| clamped to [0, 2 tanh_big] (beyond it tanh is 1 in
        # the type): expm1 there needs no clamps and one power of 2, and is accurate near 0. A NaN
        # passes the clamp (its comparison is false) and the arithmetic, so no select at the end
        # puts it back: a compare and a blend fewer per value in the vectorised loops
        a = np.abs(x)
        _, r, kf = split(_sel(a > tanh_big, tanh_big, a), zero, True)
        s = _pow2_held(kf)
        em = _fma(expm1_r(r), s, s - one)  # 2^n (e^r - 1) + (2^n - 1), as in expm1
        return np.copysign(em / (em + two), x)

    @njit(inline="always")
    def sigmoid(x):
        # e^-|x| <= 1 as exp computes it, but scaled by 2^64 (n + 64 in the exponent: normal down
        # to exp's lower clamp) and divided through scaled alike: one power of 2, and results
        # below the normal range come from one rounding, of the quotient. A NaN passes the clamp
        # and the arithmetic, as in tanh.
        m = -np.abs(x)
        _, r, kf = split(_sel(m < lo, lo, m), scale_log2)
        p = _pow2_held(kf)
        e = _fma(expm1_r(r), p, p)  # 2^n (e^r - 1) + 2^n, rounded once
        return _sel(x >= zero, scale, e) / (scale + e)  # 1 / (1 + e^-x); e^x / (1 + e^x) below 0

    return dict(exp=exp, expm1=expm1, log=log, log1p=log1p, tanh=tanh, sigmoid=sigmoid)


_IMPL = {types.float64: _make(F64, np.int64, np.float64),
         types.float32: _make(F32, np.int32, np.float32)}


# --------------------------------------------------------------------------- the public names
# Plain Python functions (NumPy, for NUMBA_DISABLE_JIT=1 and interpreted callers), each overloaded
# in compiled code by the implementation for its argument's type. Compiled once per type and
# called: in a loop LLVM inlines and vectorises them; written into every caller they cost 5 s of a
# cold start per dtype (measured). The ``*_inline`` twins are for the scalar code of the fused
# XOR-sized loop, where a call on the critical path costs 15-35% of an epoch (measured): compiled
# once per type too, and inlined into each caller by LLVM (Numba's ``forceinline``, LLVM's
# alwaysinline). Numba's own inlining (``inline="always"``) gave the same epochs, but copied and
# retyped each implementation at every call site: a cold XOR fit took 10.0-10.4 s instead of
# 8.2-8.3 (five pairs, alternating; W1's epochs within 2% either way, measured).
_FORCED = {ty: {name: renamed(getattr(f, "py_func", f), "_inline") for name, f in impl.items()}
           for ty, impl in _IMPL.items()}


def exp(x):
    return np.exp(x)


def expm1(x):
    return np.expm1(x)


def log(x):
    return np.log(x)


def log1p(x):
    return np.log1p(x)


def tanh(x):
    return np.tanh(x)


def sigmoid(x):
    """1 / (1 + exp(-x)), never overflowing."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))[()]


def _register(fn, stub, forced):
    """stub overloaded by fn's implementations; forced: each inlined by LLVM into its callers
    (a copy of its own, ``_FORCED``, as Numba keeps one compile of a function per types)."""
    @overload(stub, jit_options=dict(LINKED, forceinline=True) if forced else LINKED)
    def _ol(x):
        impl = (_FORCED if forced else _IMPL).get(x)
        if impl is not None:
            return impl[fn.__name__] if forced else impl[fn.__name__].py_func
        if isinstance(x, types.Integer):  # as NumPy: integers are computed in float64
            f64 = _IMPL[types.float64][fn.__name__]
            return lambda x: f64(np.float64(x))
        return None


def exp_inline(x):
    return exp(x)


def log_inline(x):
    return log(x)


def log1p_inline(x):
    return log1p(x)


def sigmoid_inline(x):
    return sigmoid(x)


for _fn in (exp, expm1, log, log1p, tanh, sigmoid):
    _register(_fn, _fn, False)
for _fn, _twin in ((exp, exp_inline), (log, log_inline), (log1p, log1p_inline),
                   (sigmoid, sigmoid_inline)):
    _register(_fn, _twin, True)

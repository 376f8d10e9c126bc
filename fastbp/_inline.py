"""Small operations the kernels use, written straight into the caller's code.

Numba implements some of them with a function it compiles on first use, once per argument types
and per set of compile options of the caller, each with its own O3 and machine code:
``a.reshape(shape)`` (its helper ``normalize_reshape_value``, 0.09 and 0.16 s of a first fit with
an empty cache), ``min``, ``max`` (20-30 ms each time). These are the same operations as
intrinsics: a few instructions emitted into the caller, nothing compiled.

- ``flat(a)``, ``matrix(v, rows, cols)``: views of C-contiguous arrays (whose every reshape is a
  view; anything else is a typing error);
- ``min2(a, b)``, ``max2(a, b)``: Python's ``min(a, b)`` and ``max(a, b)`` of two numbers, the
  same select (b if b < a else a) in the type the two unify to.

With Numba's JIT off (``NUMBA_DISABLE_JIT=1``) they are NumPy's reshape and Python's min and max.
"""
import operator

from numba.core import config, types
from numba.core.imputils import impl_ret_borrowed
from numba.cpython.builtins import do_minmax
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array


def _contiguous(a, ndim=None):
    return isinstance(a, types.Array) and a.layout == "C" and (ndim is None or a.ndim == ndim)


def _view(context, builder, sig, ary_value, shape, size_check):
    """The array of type sig.return_type over ary_value's memory with this shape (LLVM values),
    C-order strides; raises ValueError where the sizes differ (size_check: the element count the
    shape gives, or None where it is the array's own)."""
    ary = make_array(sig.args[0])(context, builder, ary_value)
    if size_check is not None:
        with builder.if_then(builder.icmp_unsigned("!=", size_check, ary.nitems), likely=False):
            context.call_conv.return_user_exc(
                builder, ValueError, ("a view's shape must hold the array's elements",))
    strides, stride = [], ary.itemsize
    for extent in reversed(shape):
        strides.insert(0, stride)
        stride = builder.mul(stride, extent)
    out = make_array(sig.return_type)(context, builder)
    populate_array(out, data=ary.data, shape=shape, strides=strides, itemsize=ary.itemsize,
                   meminfo=ary.meminfo, parent=ary.parent)
    return impl_ret_borrowed(context, builder, sig.return_type, out._getvalue())


@intrinsic
def _flat(typingctx, a):
    if not _contiguous(a):
        return None
    ret = a.copy(ndim=1, layout="C")

    def codegen(context, builder, sig, args):
        nitems = make_array(sig.args[0])(context, builder, args[0]).nitems
        return _view(context, builder, sig, args[0], [nitems], None)
    return ret(a), codegen


@intrinsic
def _matrix(typingctx, v, rows, cols):
    if not (_contiguous(v, 1) and isinstance(rows, types.Integer)
            and isinstance(cols, types.Integer)):
        return None
    ret = v.copy(ndim=2, layout="C")

    def codegen(context, builder, sig, args):
        shape = [context.cast(builder, x, t, types.intp) for x, t in zip(args[1:], sig.args[1:])]
        return _view(context, builder, sig, args[0], shape, builder.mul(*shape))
    return ret(v, rows, cols), codegen


def _minmax(name, cmp):
    def typer(typingctx, a, b):
        ty = typingctx.unify_types(a, b)
        if not isinstance(ty, types.Number):
            return None

        def codegen(context, builder, sig, args):
            return do_minmax(context, builder, list(sig.args), list(args), cmp)
        return ty(a, b), codegen
    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


if config.DISABLE_JIT:
    def flat(a):
        """a (C-contiguous) as a 1-D view."""
        return a.reshape(-1)

    def matrix(v, rows, cols):
        """v (1-D, C-contiguous, rows * cols elements) as a (rows, cols) view."""
        return v.reshape((rows, cols))

    min2, max2 = min, max
else:
    flat, matrix = _flat, _matrix
    min2, max2 = _minmax("min2", operator.lt), _minmax("max2", operator.gt)

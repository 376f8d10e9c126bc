"""NumPy's PCG64 and ``Generator.permutation`` in compiled code, so that shuffled epochs draw their
orders inside the compiled training loop.

The orders are NumPy's own, bit for bit: the same generator (PCG64, XSL-RR output, NumPy's
buffered 32-bit draws) and the same Fisher-Yates shuffle with masked rejection sampling
(``Generator.shuffle``), so a run gives the same weights whether its orders were drawn here or by
``rng.permutation`` in Python (the engine's epoch in pieces, ``fastbp.reference``), and the
``Generator`` the network keeps ends in the same state. Passing the ``Generator`` itself into a
compiled function would cost about 7.5 us a call (Numba unboxes its ctypes interface); its state
goes in and out as six words instead.

The state words: 0-1 the 128-bit state (low, high), 2-3 the increment (low, high), 4 whether a
32-bit half is buffered, 5 that half: the order of NumPy's own C struct, so that ``load`` and
``store`` copy them straight from and to the generator's memory (0.3 us each way; through the
``state`` dictionary 1.4 us and 2.2 us), after checking once per generator that the memory reads
as the dictionary does (else they go through the dictionary).
"""
import ctypes

import numpy as np
from ._jit import inner

U = np.uint64
MULT_HI = U(2549297995355413924)
MULT_LO = U(4865540595714422341)
LO32 = U(0xFFFFFFFF)
S32, S58, S63 = U(32), U(58), U(63)
ONE, ZERO = U(1), U(0)
N_WORDS = 6
M64 = (1 << 64) - 1


def words(rng):
    """The state words of ``rng``, a ``numpy.random.Generator`` over PCG64, from its ``state``."""
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise TypeError(f"compiled shuffling needs a PCG64 generator, not {st['bit_generator']}")
    s, inc = st["state"]["state"], st["state"]["inc"]
    return np.array([s & M64, s >> 64, inc & M64, inc >> 64, st["has_uint32"], st["uinteger"]],
                    dtype=np.uint64)


def set_words(rng, w):
    """Put the state words w back into ``rng`` through its ``state``."""
    w = [int(x) for x in w]
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": (w[1] << 64) | w[0], "inc": (w[3] << 64) | w[2]},
                               "has_uint32": w[4], "uinteger": w[5]}


_memory = (None, None)  # the last generator seen: (its BitGenerator, its views)


def _views(bg):
    """(state and increment (4,) uint64, has_uint32 and uinteger (2,) uint32) over the memory of
    ``bg``, or None where that memory does not read as its state.
    NumPy's pcg64_state is {pcg64_random_t *pcg_state; int has_uint32; uint32_t uinteger}, the
    128-bit numbers little-endian __uint128_t where the compiler has them."""
    global _memory
    kept = _memory  # one read: another thread may replace it
    if kept[0] is bg:
        return kept[1]
    views = None
    if type(bg).__name__ == "PCG64":
        addr = bg.ctypes.state_address
        outer = np.ctypeslib.as_array((ctypes.c_uint32 * 4).from_address(addr))
        inner = np.ctypeslib.as_array(
            (ctypes.c_uint64 * 4).from_address(ctypes.c_void_p.from_address(addr).value))
        w = np.concatenate([inner, outer[2:].astype(np.uint64)])
        if np.array_equal(w, words(np.random.Generator(bg))):
            views = (inner, outer[2:])
    _memory = (bg, views)
    return views


_halves = (None, None)  # the last word array seen: (it, its views w[:4], w[4:N_WORDS])


def _split(w):
    """(w[:4], w[4:N_WORDS]), kept for the last w: a fit call copies through them twice, and
    assigning through kept views costs a third of slicing afresh."""
    global _halves
    kept = _halves
    if kept[0] is not w:
        kept = _halves = (w, (w[:4], w[4:N_WORDS]))
    return kept[1]


def load(rng, w):
    """w[:N_WORDS] = the state words of ``rng`` (a Generator over PCG64)."""
    views = _views(rng.bit_generator)
    if views is None:
        w[:N_WORDS] = words(rng)
    else:
        head, tail = _split(w)
        head[...] = views[0]
        tail[...] = views[1]


def store(rng, w):
    """Put the state words w[:N_WORDS] back into ``rng``."""
    views = _views(rng.bit_generator)
    if views is None:
        set_words(rng, w[:N_WORDS])
    else:
        head, tail = _split(w)
        views[0][...] = head
        views[1][...] = tail


@inner()
def _mulhi(a, b):
    """The high 64 bits of the 128-bit product a * b (uint64s), through 32-bit halves."""
    a0, a1 = a & LO32, a >> S32
    b0, b1 = b & LO32, b >> S32
    w0 = a0 * b0
    t = a1 * b0 + (w0 >> S32)
    w1 = (t & LO32) + a0 * b1
    return a1 * b1 + (t >> S32) + (w1 >> S32)


@inner()
def _advance(w):
    """(new state low, high, output) of PCG64's next step from the state words w, w unchanged:
    state * MULT + inc (mod 2^128), then XSL-RR of the new state."""
    lo, hi = w[0], w[1]
    nlo = lo * MULT_LO
    nhi = _mulhi(lo, MULT_LO) + lo * MULT_HI + hi * MULT_LO
    nlo2 = nlo + w[2]
    nhi = nhi + w[3] + (ONE if nlo2 < nlo else ZERO)
    x = nhi ^ nlo2
    rot = nhi >> S58
    return nlo2, nhi, (x >> rot) | (x << ((U(64) - rot) & S63))


@inner()
def draw(w, wide):
    """NumPy's next draw, w advanced: 64 bits (wide), or 32 (the low half of a 64-bit output,
    its high half buffered for the next 32-bit draw; a 64-bit draw leaves the buffer alone).
    Written without branches: under rejection sampling whether a half is buffered changes at
    random, and its mispredictions made a 4-element permutation cost 60 ns (11 ns this way,
    measured); the next output is formed either way and kept only when it is used."""
    nlo, nhi, x = _advance(w)
    buffered = w[4] != 0 and not wide
    out = w[5] if buffered else (x if wide else x & LO32)
    w[0] = w[0] if buffered else nlo
    w[1] = w[1] if buffered else nhi
    w[5] = w[5] if buffered or wide else x >> S32
    w[4] = w[4] if wide else (ZERO if buffered else ONE)
    return out


@inner()
def random_interval(w, max_val):
    """A uniform integer in [0, max_val] by masked rejection, as NumPy's random_interval: 32-bit
    draws up to 2^32 - 1, 64-bit ones above."""
    if max_val == 0:
        return ZERO
    m = U(max_val)
    wide = m > LO32
    mask = m
    for s in (1, 2, 4, 8, 16, 32):
        mask |= mask >> U(s)
    v = draw(w, wide) & mask
    while v > m:
        v = draw(w, wide) & mask
    return v


@inner(optimised_alone=True)
def permutation(w, out):
    """out (n,) = rng.permutation(n) for the generator whose state words are w (advanced)."""
    n = out.shape[0]
    for i in range(n):
        out[i] = i
    for i in range(n - 1, 0, -1):
        j = np.int64(random_interval(w, i))
        t = out[i]  # swapped even when j == i: a random branch costs more than two stores
        out[i] = out[j]
        out[j] = t

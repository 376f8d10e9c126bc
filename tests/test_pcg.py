"""Shuffled orders drawn in compiled code (_pcg) are NumPy's own: the same permutations from the
same generator state, and the generator left in the same state, so a run's bits do not depend on
where its orders were drawn (test_engine cuts a shuffled run into pieces that draw in Python)."""
import numpy as np
import pytest

from fastbp import _pcg


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 1000, 65537])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_permutations_and_state_equal_numpy(n, seed):
    ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
    for g in (ours, theirs):  # an odd number of 32-bit draws: a buffered half is pending
        g.integers(0, 7, 3, dtype=np.uint32)
    words = _pcg.words(ours)
    drawn = []
    for _ in range(4):
        out = np.empty(n, np.int64)
        _pcg.permutation(words, out)
        drawn.append(out)
    _pcg.set_words(ours, words)
    for out in drawn:
        np.testing.assert_array_equal(out, theirs.permutation(n))
    assert ours.bit_generator.state == theirs.bit_generator.state
    assert ours.random() == theirs.random()


def test_intervals_beyond_32_bits_use_64_bit_draws():
    g = np.random.default_rng(7)
    words = _pcg.words(g)
    big = (1 << 40) + 12345
    got = [int(_pcg.random_interval(words, big)) for _ in range(5)]
    assert all(0 <= v <= big for v in got)
    h = np.random.default_rng(7)
    raw = [int(h.bit_generator.random_raw()) & ((1 << 41) - 1) for _ in range(50)]
    assert got == [v for v in raw if v <= big][:5]  # masked rejection over 64-bit outputs


def test_a_64_bit_draw_leaves_a_buffered_half_for_the_next_32_bit_draw():
    """draw's branch-free form keeps NumPy's rules: a 64-bit draw advances the state and leaves a
    pending 32-bit half alone, which the next 32-bit draw returns without advancing."""
    g = np.random.default_rng(11)
    while g.bit_generator.state["has_uint32"] == 0:
        g.integers(0, 7, 1, dtype=np.uint32)
    pending = g.bit_generator.state["uinteger"]
    h = np.random.default_rng(0)
    h.bit_generator.state = g.bit_generator.state
    words = _pcg.words(g)
    big = (1 << 40) + 12345
    got = int(_pcg.random_interval(words, big))
    raw = int(h.bit_generator.random_raw()) & ((1 << 41) - 1)
    while raw > big:
        raw = int(h.bit_generator.random_raw()) & ((1 << 41) - 1)
    assert got == raw
    _pcg.set_words(g, words)
    assert g.bit_generator.state == h.bit_generator.state  # the half still pending
    assert int(_pcg.draw(words, False)) == pending  # a 32-bit draw
    assert words[4] == 0


def _numpy_shuffler_after(seed, n, epochs):
    """The state NumPy's own generator for a network of this seed (its shuffling stream) is in
    after drawing ``epochs`` permutations of n rows."""
    g = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    for _ in range(epochs):
        g.permutation(n)
    return g.bit_generator.state


def test_a_shuffled_fit_leaves_the_generator_where_numpy_would():
    import fastbp
    X = np.random.default_rng(0).standard_normal((50, 3))
    y = np.arange(50) % 2
    net = fastbp.Network([3, 4, 2], seed=3)
    net.fit(X, y, epochs=7, batch_size=8)
    assert net._shuffle_rng.bit_generator.state == _numpy_shuffler_after(3, 50, 7)


def test_load_and_store_through_the_generators_memory_agree_with_its_state():
    """The engine's fast path (load/store: the words copied from and to the generator's own
    memory) gives the words that ``state`` gives, and leaves the generator where NumPy would."""
    import sys
    g, h = np.random.default_rng(5), np.random.default_rng(5)
    for r in (g, h):
        r.integers(0, 7, 3, dtype=np.uint32)  # a buffered 32-bit half pending
    if sys.byteorder == "little":  # the memory layout the fast path reads on these machines
        assert _pcg._views(g.bit_generator) is not None
    w = np.zeros(2 * _pcg.N_WORDS, np.uint64)
    _pcg.load(g, w)
    np.testing.assert_array_equal(w[:_pcg.N_WORDS], _pcg.words(g))
    out = np.empty(100, np.int64)
    _pcg.permutation(w[:_pcg.N_WORDS], out)
    _pcg.store(g, w)
    np.testing.assert_array_equal(out, h.permutation(100))
    assert g.bit_generator.state == h.bit_generator.state
    assert g.random() == h.random()


def test_an_epoch_undone_mid_block_leaves_the_generator_at_its_start():
    """The compiled loop draws the orders of up to 64 epochs back to back; an epoch that diverges
    is undone with the generator put back to where its own order was drawn, so the network and
    its generator are those of a run that stopped before it."""
    import fastbp
    from fastbp.schedules import ExponentialLR
    X = np.random.default_rng(0).standard_normal((50, 3))
    y = np.arange(50) % 2
    kw = dict(batch_size=8, lr=1e-3, schedule=ExponentialLR(gamma=1e3))
    net = fastbp.Network([3, 4, 2], seed=3, dtype="float64")
    with pytest.raises(fastbp.DivergenceError) as err:
        net.fit(X, y, epochs=30, **kw)
    done = len(err.value.history.loss)
    assert 2 <= done < 20  # inside the first block of 1024 // 50 epochs
    assert net._shuffle_rng.bit_generator.state == _numpy_shuffler_after(3, 50, done)
    fresh = fastbp.Network([3, 4, 2], seed=3, dtype="float64")
    fresh.fit(X, y, epochs=done, **kw)
    np.testing.assert_array_equal(net._params, fresh._params)

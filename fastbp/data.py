"""Training data that does not fit in memory: a ``numpy.memmap`` (or any array-like that supports
row slicing, ``stream=True``) is read in chunks of rows, each copied into memory, trained on, and
its file pages handed back to the kernel, so resident memory stays near one chunk whatever the
file's size.

Shuffling is two-level, the usual out-of-core compromise: each epoch visits the chunks in a fresh
random order and shuffles the rows within each chunk. Chunks hold a whole number of batches, so
every batch is as long as in memory.
"""
import mmap

import numpy as np

from . import _validate as check

CHUNK_BYTES = 64 << 20  # rows read per chunk: this many bytes of X, at least one batch


def wants_stream(X, stream):
    """Whether fit should stream X: stream=None streams a numpy.memmap; True/False force it."""
    if stream is None:
        return isinstance(X, np.memmap)
    return check.boolean(stream, "stream")


def _release(X):
    """Hand the file pages X has touched back to the kernel (they stay in the page cache), so
    they stop counting in this process's resident memory. A no-op for arrays not backed by mmap."""
    m = getattr(X, "_mmap", None)
    if isinstance(m, mmap.mmap) and not m.closed:
        m.madvise(mmap.MADV_DONTNEED)


class Stream:
    """X (N, C) read ``rows`` at a time: validated once (shape, numbers, finiteness) chunk by chunk
    at construction, before training touches anything."""

    def __init__(self, X, n_features, dtype, batch_size, name="X"):
        shape = getattr(X, "shape", None)
        if shape is None or len(shape) != 2 or not hasattr(X, "__getitem__"):
            raise TypeError(f"{name} must be a 2-D array-like that supports row slicing "
                            f"(X[a:b]) to be streamed; got {type(X).__name__}")
        n, c = (int(s) for s in shape)
        if n == 0:
            raise ValueError(f"{name} is empty: it needs at least one sample")
        if c != n_features:
            raise ValueError(f"{name} has {c} features per sample; this network expects "
                             f"{n_features} (sizes[0])")
        self.X, self.n, self.dtype = X, n, np.dtype(dtype)
        batch = n if batch_size is None else min(batch_size, n)
        per_row = c * self.dtype.itemsize
        self.rows = max(batch, (CHUNK_BYTES // per_row) // batch * batch)
        for a, b in self.chunks():
            check.features(self.read(a, b), n_features, dtype, name=f"{name}[{a}:{b}]")

    def chunks(self, order=None):
        """(start, stop) of each chunk, in ``order`` (a permutation of the chunk numbers)."""
        k = (self.n + self.rows - 1) // self.rows
        for i in range(k) if order is None else order:
            yield i * self.rows, min(self.n, (i + 1) * self.rows)

    @property
    def n_chunks(self):
        return (self.n + self.rows - 1) // self.rows

    def read(self, a, b):
        """Rows a:b of X as a C-contiguous array of the network's dtype (a copy)."""
        try:
            part = np.array(self.X[a:b], dtype=self.dtype, order="C", copy=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"X[{a}:{b}] could not be read as {self.dtype.name} numbers: {exc}") from None
        _release(self.X)
        return part

"""The training data of a run: in memory, or streamed from disk; the validation split; the epoch
orders and the blocks of rows an epoch is made of (and, with MPI, which rows each rank takes).

Data that does not fit in memory: a ``numpy.memmap`` (or any array-like that supports row slicing,
``stream=True``) is read in chunks of rows, each copied into memory, trained on, and its file pages
handed back to the kernel, so resident memory stays near one chunk whatever the file's size.
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

    def __init__(self, X, n_features, dtype, batch_size, name="X", part=(0, 1)):
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
        self.X, self.n, self.dtype, self.name, self.n_features = X, n, np.dtype(dtype), name, c
        batch = batch_rows(batch_size, n)
        per_row = c * self.dtype.itemsize
        self.rows = max(batch, (CHUNK_BYTES // per_row) // batch * batch)
        # part (rank, ranks): each MPI rank checks its share of the chunks; the verdicts are shared
        for i, (a, b) in enumerate(self.chunks()):
            if i % part[1] == part[0]:
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
        return self._checked(self.X[a:b], b - a, f"{a}:{b}")

    def read_rows(self, a, rows):
        """Rows a + rows (rows sorted, relative to a) of X: only those are read where X supports
        integer-array indexing (a memmap does), else the rows a..a+rows[-1] are read and picked."""
        if isinstance(self.X, np.ndarray):
            return self._checked(self.X[a + rows], len(rows), f"rows of {a}:")
        part = self.read(a, a + int(rows[-1]) + 1)
        return np.ascontiguousarray(part[rows])

    def _checked(self, got, expect, what):
        try:
            part = np.array(got, dtype=self.dtype, order="C", copy=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{self.name}[{what}] could not be read as {self.dtype.name} numbers: "
                            f"{exc}") from None
        _release(self.X)
        # An array-like whose slices are shorter than its shape says would send the compiled loop
        # past the end of the chunk: refused, never trained on.
        if part.ndim != 2 or part.shape[0] != expect or part.shape[1] != self.n_features:
            raise ValueError(f"{self.name}[{what}] returned an array of shape {part.shape}; "
                             f"{self.name}.shape promises ({expect}, {self.n_features}) rows there. "
                             f"Its shape must describe the rows it holds")
        return part


DEFAULT_BATCH = 200


def batch_rows(batch_size, n):
    """Rows per minibatch: batch_size (at most n), or for None min(200, n), scikit-learn's
    'auto': minibatches by default, since one full-batch step per epoch learns slowly, and 200
    keeps the gemm calls large enough to run near the matmul rate."""
    return min(DEFAULT_BATCH if batch_size is None else batch_size, n)


def share(n, rank, size):
    """Rows [lo, hi) of n that rank takes: consecutive blocks, sizes differing by at most one."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def sample_weight(value, n, dtype, signed=False):
    """sample_weight as a C-contiguous (n,) array of dtype, or (0,) for None. signed: negative
    weights allowed (scikit-learn's estimators accept them), with a nonzero sum."""
    if value is None:
        return np.empty(0, dtype)
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, shape (n_samples,) = ({n},); got shape "
                         f"{arr.shape}")
    sw = check.features(arr.reshape(-1, 1), 1, dtype, name="sample_weight")[:, 0]
    if sw.shape[0] != n:
        raise ValueError(f"sample_weight has {sw.shape[0]} entries but X has {n} samples")
    if signed:
        if sw.sum() == 0:
            raise ValueError("sample_weight must not sum to 0")
    elif (sw < 0).any() or not sw.sum() > 0:
        raise ValueError("sample_weight must be >= 0 with a positive sum")
    return np.ascontiguousarray(sw)


class TrainData:
    """What one fit trains on: X (N, C_0) or its Stream, Y (N, T), sample weights, the validation
    set, the batch size, the epoch orders and the blocks of rows of each epoch.

    part: (rank, ranks, sharded) for MPI, else None. Replicated (sharded False), every rank holds
    the same rows and takes its share of every global batch; sharded, each rank holds its own rows
    and takes its share of the global batch from them.
    """

    def __init__(self, net, X, y, cfg, part=None):
        self.net = net
        self.part = part
        self.orders = cfg.orders
        rank, ranks, sharded = part or (0, 1, False)
        self.streamed = wants_stream(X, cfg.stream)
        if self.streamed and check.is_sparse(X):
            raise TypeError("X: a sparse matrix is trained in memory (it is never densified); "
                            "pass stream=None or False")
        self.Xs = None  # dense input (see _kernels.batch_gradients)
        if self.streamed:
            self.stream = Stream(X, net.sizes[0], net.dtype, cfg.batch_size,
                                 part=(rank, ranks) if part and not sharded else (0, 1))
            n = self.stream.n
            Y, self.one_d = check.targets(y, n, net._loss.targets, net.sizes[-1], net.dtype)
            self.X = None
        else:
            self.X, Y, self.one_d = net._XY(X, y)
            n = self.X.shape[0]
        SW = sample_weight(cfg.sample_weight, n, net.dtype, cfg.signed_weights)
        self.val = None
        if cfg.validation_data is not None:
            self.val = self._validation_data(net, cfg.validation_data)
        elif cfg.validation_split:
            if self.streamed:
                raise ValueError("validation_split needs X in memory; pass validation_data "
                                 "with streamed X")
            n_val = int(round(n * cfg.validation_split))
            if n_val < 1 or n_val >= n:
                raise ValueError(f"validation_split={cfg.validation_split} leaves {n_val} of {n} "
                                 "samples for validation; it needs at least 1 and fewer than all")
            # Its own stream of the seed: holding data out does not change the shuffles.
            rng = np.random.default_rng(np.random.SeedSequence(net.seed, spawn_key=(2,)))
            perm = rng.permutation(n)
            keep, held = np.sort(perm[n_val:]), np.sort(perm[:n_val])
            if isinstance(self.X, check.Sparse):
                self.val = (check.sparse_rows(self.X, held), Y[held])
                self.X = check.sparse_rows(self.X, keep)
            else:
                self.val = (self.X[held], Y[held])
                self.X = np.ascontiguousarray(self.X[keep])
            Y = np.ascontiguousarray(Y[keep])
            SW = SW[keep] if SW.size else SW
            n -= n_val
        self.X, self.Xs = check.kernel_input(self.X, net.dtype)
        if cfg.early_stopping and self.val is None:
            raise ValueError("early_stopping=True needs validation_data or validation_split")
        self.Y, self.SW, self.n = check.read_only(Y), check.read_only(SW), n
        # the global batch and this rank's rows of it
        self.n_total = n * ranks if part and sharded else n  # sharded: set_global refines it
        self.batch = batch_rows(cfg.batch_size, n)
        self.rows_per_step = self.batch if part is None else -(-self.batch // ranks)
        self.steps = -(-n // self.batch)

    @staticmethod
    def _validation_data(net, pair):
        try:
            Xv, yv = pair
        except (TypeError, ValueError):
            raise TypeError("validation_data must be a pair (X_val, y_val)") from None
        name = "validation_data[0] (X_val)"
        Xv = (check.sparse_features(Xv, net.sizes[0], net.dtype, name) if check.is_sparse(Xv)
              else check.features(Xv, net.sizes[0], net.dtype, name=name))
        Yv, _ = check.targets(yv, Xv.shape[0], net._loss.targets, net.sizes[-1], net.dtype,
                              name="validation_data[1] (y_val)")
        return Xv, Yv

    def set_global(self, counts, batch_size):
        """Sharded MPI: the global row count and batch from every rank's row count ``counts``;
        this rank's share of the batch, and the steps per epoch (which every rank must agree on,
        so ValueError if the shards give different numbers)."""
        rank, ranks, _ = self.part
        self.n_total = sum(counts)
        batch = batch_rows(batch_size, self.n_total)
        shares = [hi - lo for lo, hi in (share(batch, r, ranks) for r in range(ranks))]
        steps = {-(-c // s) if s else 0 for c, s in zip(counts, shares)}
        if len(steps) != 1 or 0 in shares:
            raise ValueError(f"sharded=True: the shards ({counts} rows) and the ranks' shares "
                             f"{shares} of the global batch {batch} give different numbers of "
                             "steps per epoch; make each shard proportional to its share")
        self.batch = shares[rank]
        self.rows_per_step = self.batch
        self.steps = steps.pop()

    def describe(self):
        """The data's shape, for the ranks' agreement."""
        return dict(rows=self.n if not (self.part and self.part[2]) else None,
                    features=self.net.sizes[0], target_columns=self.Y.shape[1],
                    sample_weight=bool(self.SW.size), streamed=self.streamed,
                    validation_rows=None if self.val is None else self.val[0].shape[0])

    def order(self, rng, shuffle, n):
        """One epoch's sample order over n rows."""
        if self.orders is not None:
            return np.ascontiguousarray(self.orders(n), dtype=np.int64)  # one type every epoch
        return rng.permutation(n) if shuffle else np.arange(n)

    def blocks(self, rng, shuffle, reducer):
        """The epoch as blocks (X, Xs, Y, SW, index, bounds): the rows index of X (or of its sparse
        form Xs, see _kernels.batch_gradients), Y, SW in training order; bounds, with a reducer,
        the (start, stop) of this rank's rows of each step."""
        if not self.streamed:
            index = self.order(rng, shuffle, self.n)
            yield (self.X, self.Xs, self.Y, self.SW, index,
                   None if reducer is None else self._bounds(len(index)))
            return
        s, ro = self.stream, check.read_only
        steps = 0
        for a, b in s.chunks(rng.permutation(s.n_chunks) if shuffle else None):
            index = self.order(rng, shuffle, b - a)
            SW = self.SW[a:b] if self.SW.size else self.SW
            if reducer is None:
                yield ro(s.read(a, b)), self.Xs, self.Y[a:b], SW, index, None
                continue
            bounds = self._bounds(b - a)
            steps += len(bounds)
            mine = np.concatenate([index[lo:hi] for lo, hi in bounds])
            if mine.size == 0:
                yield self._x_empty(), self.Xs, self.Y[a:a], SW[:0], mine, bounds
                continue
            rows = np.sort(mine)
            # this rank reads only its own rows; index maps the training order onto them
            yield (ro(s.read_rows(a, rows)), self.Xs, ro(self.Y[a + rows]),
                   ro(SW[rows]) if SW.size else SW, np.searchsorted(rows, mine),
                   self._consecutive(bounds))
        if reducer is not None and steps < self.steps:  # a shard with fewer chunks: empty steps
            yield self._x_empty(), self.Xs, self.Y[:0], self.SW[:0], np.empty(0, np.int64), \
                [(0, 0)] * (self.steps - steps)

    def _x_empty(self):
        return check.no_rows(self.net.sizes[0], self.net.dtype)

    def _bounds(self, m):
        """(start, stop) into an order of m rows of this rank's rows of each step."""
        rank, ranks, sharded = self.part
        if sharded:
            lb = self.batch
            return [(min(m, k * lb), min(m, (k + 1) * lb)) for k in range(-(-m // lb))]
        out = []
        for g0 in range(0, m, self.batch):
            lo, hi = share(min(self.batch, m - g0), rank, ranks)
            out.append((g0 + lo, g0 + hi))
        return out

    @staticmethod
    def _consecutive(bounds):
        """The same steps' row counts as consecutive ranges from 0."""
        out, pos = [], 0
        for lo, hi in bounds:
            out.append((pos, pos + hi - lo))
            pos += hi - lo
        return out

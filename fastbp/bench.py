"""``python -m fastbp.bench``: one run, one table, every peer side by side.

Trains the workloads W1, W2, W3 (``fastbp.workloads``) with fastbp, the lean NumPy loop
(``fastbp.baseline``: preallocated buffers, ufuncs with ``out=``), and, when they are importable,
PyTorch (``torch.nn.Linear`` + ``torch.optim.SGD``), JAX (the whole epoch in one ``jax.jit`` as a
``lax.scan`` over the minibatches; a full-batch run such as W1 as one ``lax.fori_loop``) and
scikit-learn (``MLPClassifier``/``MLPRegressor``, ``solver="sgd"``) in this process, each after a
warm-up, their timed calls in turn (``interleaved_times``), and reports the median of the repeats
(W1, whose calls take milliseconds: of at least a second of calls). ``--grid`` does the same over
the ~30 points of ``workloads.GRID`` and prints fastbp's ratio to the fastest peer at each point
and the geometric mean. The
machine's float32 (and float64) matmul rate, NumPy ``a @ b`` at 4096 x 4096, is measured in the same
run, as is the environment (CPU, threads, BLAS kernel, versions).

Compare only figures from one run: the machines are shared and noisy. For the BLAS kernel a user
would get, unset OpenBLAS's overrides in the benchmark command only:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastbp.bench``.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

from . import Network
from . import _chunks
from . import workloads as wl
from .baseline import LeanMLP

IMPLS = ("fastbp", "numpy", "torch", "jax", "sklearn")


# ----------------------------------------------------------------- the trainers


class FastbpTrainer:
    warm = False  # after the first call

    def __init__(self, w, dtype, X, y):
        self.w, self.X, self.y = w, X, y
        self.net = Network(w.sizes, activation=w.activation, loss=w.loss, seed=0, dtype=dtype)

    def run(self, epochs):
        self.net.fit(self.X, self.y, epochs=epochs, lr=self.w.lr, batch_size=self.w.batch,
                     shuffle=False)
        if not self.warm:
            # a network run in row chunks asks for their runner once they have run in turn for
            # a while, and compiles it in the background (see _chunks): the warm-up call asks
            # for it and waits for it, as for its own compile
            _chunks.ready()
            self.warm = True


class NumpyTrainer(FastbpTrainer):
    def __init__(self, w, dtype, X, y):
        self.w, self.X, self.y = w, X, y
        self.net = LeanMLP(w.sizes, activation=w.activation, loss=w.loss, seed=0, dtype=dtype)


class JaxTrainer:
    """The epoch as one jitted ``lax.scan`` over the full minibatches (a shorter last batch is one
    more jitted step); a one-batch data set runs all its epochs in one ``lax.fori_loop``."""

    def __init__(self, w, dtype, X, y):
        import jax
        jax.config.update("jax_enable_x64", True)  # float64 points stay float64
        import jax.numpy as jnp
        from jax import lax
        self.jax, self.w = jax, w
        net = Network(w.sizes, activation=w.activation, loss=w.loss, seed=0, dtype=dtype)
        self.params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(net.weights, net.biases)]
        act = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}[w.activation]
        lr = np.dtype(dtype).type(w.lr)

        def loss_fn(params, xb, yb):
            h = xb
            for i, (W, b) in enumerate(params):
                h = h @ W + b
                if i < len(params) - 1:
                    h = act(h)
            if w.loss == "cross_entropy":
                logp = jax.nn.log_softmax(h)
                return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))
            if w.loss == "bce":
                return jnp.mean(jnp.maximum(h, 0) - h * yb + jnp.log1p(jnp.exp(-jnp.abs(h))))
            return jnp.mean((h - yb) ** 2)

        def step(params, xb, yb):
            g = jax.grad(loss_fn)(params, xb, yb)
            return jax.tree_util.tree_map(lambda p, d: p - lr * d, params, g)

        n, B = len(X), w.batch
        full = n // B * B
        Xj = jnp.asarray(X, dtype=dtype)
        if w.loss == "cross_entropy":
            Yj = jnp.asarray(np.asarray(y, dtype=np.int32))
        else:
            Yj = jnp.asarray(np.asarray(y, dtype=dtype).reshape(n, -1))
        self.Xs = Xj[:full].reshape((full // B, B) + Xj.shape[1:])
        self.Ys = Yj[:full].reshape((full // B, B) + Yj.shape[1:])
        self.Xr, self.Yr = (Xj[full:], Yj[full:]) if full < n else (None, None)

        @jax.jit
        def epoch(params, Xs, Ys):
            return lax.scan(lambda p, xy: (step(p, *xy), None), params, (Xs, Ys))[0]

        @jax.jit
        def run_full_batch(params, epochs, xb, yb):
            return lax.fori_loop(0, epochs, lambda _, p: step(p, xb, yb), params)

        self.epoch, self.step, self.run_full_batch = epoch, jax.jit(step), run_full_batch

    def run(self, epochs):
        p = self.params
        if self.Xs.shape[0] == 1 and self.Xr is None:
            p = self.run_full_batch(p, epochs, self.Xs[0], self.Ys[0])
        else:
            for _ in range(epochs):
                p = self.epoch(p, self.Xs, self.Ys)
                if self.Xr is not None:
                    p = self.step(p, self.Xr, self.Yr)
        self.params = self.jax.block_until_ready(p)


class TorchTrainer:
    def __init__(self, w, dtype, X, y):
        import torch
        self.torch, self.w = torch, w
        tdt = torch.float64 if dtype == np.float64 else torch.float32
        act = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}
        layers = []
        for i, (a, b) in enumerate(zip(w.sizes[:-1], w.sizes[1:])):
            layers.append(torch.nn.Linear(a, b, dtype=tdt))
            if i < len(w.sizes) - 2:
                layers.append(act[w.activation]())
        self.model = torch.nn.Sequential(*layers)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=w.lr)
        self.X = torch.from_numpy(np.ascontiguousarray(X, dtype=dtype))
        if w.loss == "cross_entropy":
            self.y, self.loss = torch.from_numpy(y.astype(np.int64)), torch.nn.CrossEntropyLoss()
        elif w.loss == "bce":
            self.y = torch.from_numpy(y.reshape(-1, 1).astype(dtype))
            self.loss = torch.nn.BCEWithLogitsLoss()
        else:
            self.y, self.loss = torch.from_numpy(np.asarray(y, dtype=dtype)), torch.nn.MSELoss()

    def run(self, epochs):
        n, b = len(self.X), self.w.batch
        for _ in range(epochs):
            for s in range(0, n, b):
                self.opt.zero_grad()
                self.loss(self.model(self.X[s:s + b]), self.y[s:s + b]).backward()
                self.opt.step()


class SklearnTrainer:
    def __init__(self, w, dtype, X, y):
        from sklearn.neural_network import MLPClassifier, MLPRegressor
        cls = MLPRegressor if w.loss == "mse" else MLPClassifier
        self.X, self.y = np.ascontiguousarray(X, dtype=dtype), y
        act = "logistic" if w.activation == "sigmoid" else w.activation
        self.model = cls(hidden_layer_sizes=w.sizes[1:-1], activation=act, solver="sgd",
                         batch_size=w.batch, learning_rate_init=w.lr, momentum=0.0, alpha=0.0,
                         shuffle=False, tol=0.0, n_iter_no_change=10 ** 9, random_state=0,
                         warm_start=True)

    def run(self, epochs):
        self.model.max_iter = epochs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: we stop it on purpose
            self.model.fit(self.X, self.y)


TRAINERS = {"fastbp": FastbpTrainer, "numpy": NumpyTrainer, "torch": TorchTrainer,
            "jax": JaxTrainer, "sklearn": SklearnTrainer}


def available(impl):
    module = {"torch": "torch", "sklearn": "sklearn", "jax": "jax"}.get(impl)
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except ImportError:
        return False


# ----------------------------------------------------------------- measurements


# Seconds to wait before a call that follows another implementation's: their thread pools (two
# OpenBLAS builds, PyTorch's OpenMP, XLA's) spin for a while after each call, and a call made while
# another pool spins ran up to 1.7x slower; waits of 0.1 and 0.3 s gave the same times (measured).
GAP_S = 0.1


def interleaved_times(calls, repeats, min_seconds=0.0, gap=GAP_S):
    """Per name of ``calls`` (name -> fn): the median seconds of fn() and the times. The fns are
    called in turn, a round at a time, the order reversed every round, each until it has been
    called at least ``repeats`` times and its calls add up to ``min_seconds`` (later rounds leave
    it out), ``gap`` seconds passing before a call that follows another fn's. After that pause,
    a fn whose calls take less than the gap is called once untimed first: fastbp's first call of
    200 XOR epochs after a 0.1 s pause took 3.4x as long as the next (365 against 110 us, medians
    of 15, measured: the core's clock and caches waking).

    The machine's speed moves in spells of a tenth of a second (fastbp's W1 epoch 0.36-0.37 us or
    0.56-0.63 us) to tens of seconds (a cache line's round trip between its two cores 50-120 ns
    or 325-335 ns, likely cores that share a cache or not, and a 4096 x 64 x 64 weight-gradient
    gemm on both 254-287 us or 486-520 us, measured seconds apart). Implementations timed one
    after another can each land in a different spell; timed in turn, each gets the median of the
    same spread. Calls over a second in all (W1's, of milliseconds) spread each over several
    spells."""
    times = {name: [] for name in calls}
    order, last = list(calls), None
    while True:
        due = [n for n in order if len(times[n]) < repeats or sum(times[n]) < min_seconds]
        if not due:
            return {name: (statistics.median(t), t) for name, t in times.items()}
        for name in due:
            if last not in (None, name):
                time.sleep(gap)
                if times[name] and times[name][-1] < gap:
                    calls[name]()  # untimed: see above
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
            last = name
        order.reverse()


def median_time(fn, repeats, min_seconds=0.0):
    """The median seconds of fn() over at least ``repeats`` calls, and more until the calls add up
    to ``min_seconds``; and the times (``interleaved_times`` of one fn)."""
    return interleaved_times({None: fn}, repeats, min_seconds)[None]


def matmul_call(dtype, n=4096):
    """(fn, FLOPs): the machine's matmul, NumPy a @ b, n x n, all cores, into a preallocated
    output; called once here, so that BLAS has started. Made once per dtype in a run (drawing the
    operands takes 1.6 s float32, 2.1 s float64) and timed where it is needed."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)

    def fn():
        np.matmul(a, b, out=c)
    fn()
    return fn, 2 * n ** 3


def matmul_gflops(call, repeats=5):
    """The rate of a ``matmul_call``, median of repeats."""
    fn, flops = call
    return flops / median_time(fn, repeats)[0] / 1e9


def _start_rates(report, dtypes, quick):
    """A ``matmul_call`` per dtype, each one's rate at the start of the run in
    ``report["matmul_gflops"]``; the calls, for timing in turn later."""
    matmul = {dt: matmul_call(np.dtype(dt)) for dt in dtypes}
    for dt, call in matmul.items():
        report["matmul_gflops"][dt] = matmul_gflops(call, repeats=3 if quick else 5)
    return matmul


def plan(name, quick):
    """(samples, epochs per timed call, least repeats, least seconds of calls) for a workload."""
    w = wl.WORKLOADS[name]
    if name == "W1":
        return w.samples, (200 if quick else 1000), (3 if quick else 7), (0.2 if quick else 1.0)
    if quick:
        return (w.batch * 16 if name == "W2" else w.batch), 1, 3, 0.0
    return w.samples, 1, 5, 0.0


def measure(name, impls, dtype, quick, matmul, repeats=None):
    """Workload ``name`` trained by each of ``impls`` in ``dtype``, their calls in turn with
    ``matmul`` (a ``matmul_call``: the rate these runs get): one result per implementation.
    repeats: the timed calls of each (None: ``plan``'s)."""
    w = wl.WORKLOADS[name]
    samples, epochs, least, seconds = plan(name, quick)
    repeats = repeats or least
    X, y = wl.data(name, dtype, samples)
    trainers, first = {}, {}
    for impl in impls:
        t0 = time.perf_counter()
        trainers[impl] = TRAINERS[impl](w, dtype, X, y)
        trainers[impl].run(1)  # warm-up: Numba compiles or loads its cache; BLAS, torch warm up
        first[impl] = time.perf_counter() - t0
    calls = {impl: (lambda t=t: t.run(epochs)) for impl, t in trainers.items()}
    calls["matmul"], flops = matmul
    timed = interleaved_times(calls, repeats, seconds)
    rate = flops / timed.pop("matmul")[0] / 1e9
    out = []
    for impl, (t, times) in timed.items():
        per_epoch = t / epochs
        out.append(dict(workload=name, impl=impl, dtype=np.dtype(dtype).name, samples=samples,
                        epochs_per_call=epochs, repeats=len(times), seconds_per_epoch=per_epoch,
                        samples_per_s=samples / per_epoch,
                        gflops=wl.training_flops(name, samples) / per_epoch / 1e9,
                        matmul_gflops=rate, first_call_s=first[impl], times=times))
    return out


def peak_rss(name, impl, dtype, quick):
    """Peak RSS of one warm-up + one epoch in a fresh process, and the RSS before the model was
    built (after imports and data), in MiB; None if the child failed."""
    cmd = [sys.executable, "-m", "fastbp.bench", "--rss-probe", name, impl, np.dtype(dtype).name]
    if quick:
        cmd.append("--quick")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def _rss_probe(name, impl, dtype, quick):
    # /proc/self/status, not getrusage: ru_maxrss survives fork and exec on Linux, so a child
    # would report its parent's peak. VmHWM starts afresh with exec, and clear_refs resets it.
    if impl in ("fastbp", "torch", "sklearn"):
        __import__({"fastbp": "numba", "torch": "torch", "sklearn": "sklearn.neural_network"}[impl])
    samples = plan(name, quick)[0]
    X, y = wl.data(name, dtype, samples)
    base = _status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current RSS
    except OSError:
        pass
    trainer = TRAINERS[impl](wl.WORKLOADS[name], dtype, X, y)
    trainer.run(1)
    trainer.run(1)
    print(json.dumps(dict(baseline_mib=base, peak_mib=_status_mib("VmHWM"))))


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass


def _memmap_probe(path, rows, cols):
    """In a fresh process: one epoch of a 784-256-10 network streamed from the float32 memmap at
    path; prints the peak RSS above the baseline taken after imports and the warm-up."""
    from . import Network
    X = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, cols))
    y = np.arange(rows) % 10
    net = Network([cols, 256, 10], seed=0)
    net.fit(X[:512], y[:512], epochs=1, batch_size=128)  # compile / cache load, outside the peak
    base = _status_mib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    hist = net.fit(X, y, epochs=1, batch_size=128, lr=0.01)
    seconds = time.perf_counter() - t0
    print(json.dumps(dict(baseline_mib=base, peak_mib=_status_mib("VmHWM"), seconds=seconds,
                          loss=hist.loss[-1])))


def memmap_rss(gib, folder=None):
    """Train one epoch from a float32 memmap of ``gib`` GiB (784 columns) written to a temporary
    file; returns the probe's figures plus the file size."""
    import tempfile
    cols = 784
    rows = int(gib * (1 << 30)) // (cols * 4)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = os.path.join(tmp, "X.f32")
        mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, cols))
        rng = np.random.default_rng(0)
        for a in range(0, rows, 65536):
            mm[a:a + 65536] = rng.random((min(65536, rows - a), cols), dtype=np.float32)
        mm.flush()
        del mm
        cmd = [sys.executable, "-m", "fastbp.bench", "--memmap-probe", path, str(rows), str(cols)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(file_mib=rows * cols * 4 / 2**20, rows=rows)
    return res


def digits_vs_sklearn(repeats=5, max_iter=40):
    """fastbp.sklearn.MLPClassifier against scikit-learn's on load_digits, same hyper-parameters
    and random_state: test accuracy and seconds per epoch (median of ``repeats`` fits each,
    alternating)."""
    import warnings
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as Theirs
    from .sklearn import MLPClassifier as Ours
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16, y, train_size=1344, stratify=y, random_state=0)
    out = {}
    Ours((64,), max_iter=1).fit(Xtr, ytr)  # compile / cache load outside the timing
    for solver in ("adam", "sgd"):
        kw = dict(hidden_layer_sizes=(64,), solver=solver, random_state=0, max_iter=max_iter)
        times = {"fastbp": [], "sklearn": []}
        acc = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(repeats):
                for name, cls in (("fastbp", Ours), ("sklearn", Theirs)):
                    t0 = time.perf_counter()
                    clf = cls(**kw).fit(Xtr, ytr)
                    times[name].append((time.perf_counter() - t0) / clf.n_iter_)
                    acc[name] = clf.score(Xte, yte)
        out[solver] = {name: dict(accuracy=acc[name], seconds_per_epoch=float(np.median(t)))
                       for name, t in times.items()}
    return out


def environment():
    import numba
    import scipy
    from threadpoolctl import threadpool_info

    from . import _blas, _kernels
    _kernels.sgd_update(np.zeros(4), np.zeros(4), np.ones(4), 0.1, 0.0, False, 0.0)  # starts the pool
    cpu = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in cpu:
                    cpu[key] = value.strip()
                if key == "flags" and "avx512" not in cpu:
                    cpu["avx512"] = "avx512f" in value.split()
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "numba": numba.__version__, "scipy": scipy.__version__}
    for mod in ("torch", "jax", "sklearn", "threadpoolctl"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    blas = [dict(library=os.path.basename(i["filepath"]), api=i["internal_api"],
                 kernel=i.get("architecture"), version=i.get("version"),
                 threads=i["num_threads"],
                 kernels_gemm=os.path.realpath(i["filepath"]) == _blas.library)
            for i in threadpool_info() if i["user_api"] == "blas"]
    info = dict(cpu=cpu.get("model name", platform.processor()),
                cpu_family=cpu.get("cpu family"), cpu_model=cpu.get("model"),
                avx512=cpu.get("avx512"), cores=os.cpu_count(),
                numba_threads=numba.get_num_threads(), threading_layer=numba.threading_layer(),
                blas=blas, versions=versions,
                openblas_overrides={k: os.environ[k] for k in ("OPENBLAS_CORETYPE",
                                                               "OPENBLAS_L2_SIZE")
                                    if k in os.environ})
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


# ----------------------------------------------------------------- the grid


def epoch_times(trainers, repeats, min_call=0.05, also=None):
    """Seconds per epoch of each trainer (name -> trainer): after a warm-up epoch, one timed epoch
    sizes each one's timed calls to at least ``min_call`` seconds; the median of ``repeats`` calls,
    taken in turn (``interleaved_times``) with the calls of ``also`` (name -> fn), whose seconds
    per call come back too."""
    epochs = {}
    for name, trainer in trainers.items():
        trainer.run(1)
        t0 = time.perf_counter()
        trainer.run(1)
        one = time.perf_counter() - t0
        epochs[name] = int(min(1000, max(1, np.ceil(min_call / max(one, 1e-9)))))
    calls = {n: (lambda t=t, e=epochs[n]: t.run(e)) for n, t in trainers.items()}
    timed = interleaved_times({**calls, **(also or {})}, repeats)
    return {name: t / epochs.get(name, 1) for name, (t, _) in timed.items()}


def is_tie(pct_matmul, ratio):
    """Whether a grid point below 1.0x is a tie: a BLAS-bound point, where every implementation
    runs at 95% of the matmul rate or more (pct_matmul: implementation -> %), and fastbp within 3%
    of the fastest peer (ratio >= 0.97), the rule fastbp is held to."""
    return bool(min(pct_matmul.values()) >= 95 and 0.97 <= ratio < 1)


def run_grid(impls, quick, progress, names=None, repeats=None):
    """Every implementation at every grid point; per point the seconds per epoch of each (the
    median of ``repeats`` timed calls, None: 5, or 3 --quick), the fastest peer, and fastbp's
    ratio to it (peer time / fastbp time)."""
    names = names or list(wl.GRID)
    report = dict(environment=environment(), matmul_gflops={}, grid=[])
    matmul = _start_rates(report, dict.fromkeys(wl.GRID[n][1] for n in names), quick)
    for k, name in enumerate(names, 1):
        w, dt = wl.GRID[name]
        X, y = wl.data(name, np.dtype(dt))
        row = dict(point=name, what=w.what, sizes=w.sizes, batch=w.batch, dtype=dt,
                   samples=len(X), seconds_per_epoch={})
        if progress:
            print(f"\r[{k}/{len(names)}] {name}          ", end="", file=sys.stderr, flush=True)
        trainers = {impl: TRAINERS[impl](w, np.dtype(dt), X, y) for impl in impls}
        # the matmul rate timed in turn with the point's runs (quick: the run's)
        t = epoch_times(trainers, repeats or (3 if quick else 5), also=None if quick else
                        {"matmul": matmul[dt][0]})
        del trainers
        rate = report["matmul_gflops"][dt] if quick else matmul[dt][1] / t.pop("matmul") / 1e9
        row["seconds_per_epoch"], row["matmul_gflops"] = t, rate
        peers = {i: s for i, s in t.items() if i != "fastbp"}
        row["fastest_peer"] = min(peers, key=peers.get)
        row["ratio"] = peers[row["fastest_peer"]] / t["fastbp"]
        flops = wl.training_flops(name, len(X))
        row["pct_matmul"] = {i: 100 * flops / s / 1e9 / rate for i, s in t.items()}
        row["tie"] = is_tie(row["pct_matmul"], row["ratio"])
        report["grid"].append(row)
    if progress:
        print("\r" + " " * 50 + "\r", end="", file=sys.stderr, flush=True)
    ratios = [r["ratio"] for r in report["grid"]]
    report["geomean"] = float(np.exp(np.mean(np.log(ratios))))
    return report


def print_grid(report, out=sys.stdout):
    _print_header(report, out)
    rows = report["grid"]
    impls = list(rows[0]["seconds_per_epoch"])
    print("\nGrid: ms per epoch (median); ratio = the fastest peer's time / fastbp's (> 1: fastbp "
          "faster); % = fastbp's share of the matmul rate (timed in turn with each point's runs; "
          "--quick: the rate at the start)", file=out)
    print(f"  {'point':5s} {'network':34s} " + " ".join(f"{i:>8s}" for i in impls)
          + f" {'fastest':>8s} {'ratio':>6s} {'%':>5s}", file=out)
    for r in rows:
        net = f"{r['what'].split(': ', 1)[1]}"
        print(f"  {r['point']:5s} {net:34s} "
              + " ".join(f"{r['seconds_per_epoch'][i] * 1e3:8.3f}" for i in impls)
              + f" {r['fastest_peer']:>8s} {r['ratio']:6.2f}{'=' if r.get('tie') else ' '}"
              + f"{r['pct_matmul']['fastbp']:5.1f}", file=out)
    below = [f"{r['point']} {r['ratio']:.2f}" for r in rows if r["ratio"] < 1 and not r.get("tie")]
    print(f"\n  geometric mean of the ratios: {report['geomean']:.3f} over {len(rows)} points; "
          f"lowest {min(r['ratio'] for r in rows):.2f} ({min(rows, key=lambda r: r['ratio'])['point']})",
          file=out)
    print(f"  below 1.0: {', '.join(below) or 'none'} (=: a tie, every implementation at 95% of "
          "the matmul rate or more and fastbp within 3%)", file=out)


# ----------------------------------------------------------------- MPI scaling


def _mpiexec():
    import shutil
    from pathlib import Path
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def _mpi_worker(name, quick):
    """Runs under mpiexec: a data-parallel fit of one workload; rank 0 prints a JSON line."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    w = wl.WORKLOADS[name]
    samples = w.batch * (1 if quick else 4)
    X, y = wl.data(name, np.float32, samples)
    net = Network(w.sizes, activation=w.activation, loss=w.loss, seed=0)
    kw = dict(lr=w.lr, batch_size=w.batch, shuffle=False, comm=comm)
    net.fit(X[:w.batch * 2], y[:w.batch * 2], epochs=1, **kw)  # compile / load the cache
    comm.Barrier()
    t0 = time.perf_counter()
    hist = net.fit(X, y, epochs=1, **kw)
    elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    allreduce = comm.allreduce(hist.comm["allreduce_seconds"], op=MPI.MAX)
    if comm.rank == 0:
        steps = hist.comm["steps"]
        print(json.dumps(dict(workload=name, ranks=comm.size, samples=samples,
                              threads_per_rank=hist.comm["threads_per_rank"], seconds=elapsed,
                              samples_per_s=samples / elapsed, steps=steps,
                              step_s=elapsed / steps, allreduce_s_per_step=allreduce / steps,
                              bytes_per_step=hist.comm["bytes_per_step"])))


def mpi_scaling(name, quick, ranks=(1, 2)):
    """Samples/s of a data-parallel fit for each rank count, each in its own mpiexec job."""
    exe = _mpiexec()
    if exe is None:
        raise SystemExit("--mpi needs mpiexec: pip install 'fastbp[mpi]'")
    rows = []
    for n in ranks:
        cmd = [exe, "-n", str(n), sys.executable, "-m", "fastbp.bench", "--mpi-worker", name]
        out = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True,
                             text=True, timeout=1800, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def print_mpi(rows, out=sys.stdout):
    """The measured scaling, then the arithmetic for N machines on 10 and 100 Gbit/s links."""
    w = wl.WORKLOADS[rows[0]["workload"]]
    print(f"\nMPI data-parallel fit, {w.name} {'-'.join(map(str, w.sizes))}, global batch "
          f"{w.batch}, {rows[0]['samples']} samples, float32, one machine", file=out)
    print(f"  {'ranks':>5s} {'threads/rank':>12s} {'samples/s':>10s} {'step':>9s} "
          f"{'allreduce/step':>14s} {'bytes/step':>12s}", file=out)
    for r in rows:
        print(f"  {r['ranks']:5d} {r['threads_per_rank']:12d} {r['samples_per_s']:10,.0f} "
              f"{r['step_s'] * 1e3:7.1f}ms {r['allreduce_s_per_step'] * 1e3:12.2f}ms "
              f"{r['bytes_per_step']:12,d}", file=out)
    one = rows[0]
    per_sample = one["step_s"] / w.batch  # one machine's compute time per sample
    nbytes = one["bytes_per_step"]
    print(f"\n  N machines, ring all-reduce of {nbytes / 2**20:.1f} MiB per step "
          f"(2 (N-1)/N x bytes / bandwidth), compute {per_sample * 1e6:.0f} us per sample per "
          f"machine (the 1-rank run):", file=out)
    print(f"  {'link':>9s} {'N':>4s} {'comm/step':>10s} {'compute/step':>13s} {'comm share':>11s} "
          f"{'batch for <10%':>15s}", file=out)
    for gbit in (10, 100):
        for n in (2, 4, 8, 16, 64):
            comm_s = 2 * (n - 1) / n * nbytes / (gbit * 1e9 / 8)
            compute_s = per_sample * w.batch / n
            need = 9 * comm_s * n / per_sample  # compute >= 9 x comm
            print(f"  {gbit:>4d} Gb/s {n:4d} {comm_s * 1e3:8.1f}ms {compute_s * 1e3:11.1f}ms "
                  f"{100 * comm_s / (comm_s + compute_s):10.1f}% {need:15,.0f}", file=out)


# ----------------------------------------------------------------- the table


def _fmt_time(s):
    return f"{s * 1e6:.2f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def _print_header(report, out):
    env = report["environment"]
    print(f"fastbp.bench  {'(quick) ' if report.get('quick') else ''}"
          f"{time.strftime('%Y-%m-%d %H:%M')}", file=out)
    print(f"CPU {env['cpu']} (family {env['cpu_family']}, model {env['cpu_model']}, "
          f"AVX-512 {env['avx512']}), {env['cores']} cores", file=out)
    print(f"Numba {env['versions']['numba']}: {env['numba_threads']} threads, "
          f"threading layer {env['threading_layer']}", file=out)
    for b in env["blas"]:
        ours = " (the gemm fastbp calls)" if b.get("kernels_gemm") else ""
        print(f"BLAS {b['library']}: {b['api']} {b['version']}, kernel {b['kernel']}, "
              f"{b['threads']} threads{ours}", file=out)
    print(f"OpenBLAS overrides in the environment: {env['openblas_overrides'] or 'none'}", file=out)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), file=out)
    for dt, rate in report["matmul_gflops"].items():
        print(f"matmul rate ({dt}, NumPy 4096^3, all cores) at the start: {rate:.1f} GFLOP/s",
              file=out)


def print_report(report, out=sys.stdout):
    _print_header(report, out)
    rows = report["results"]
    for name in dict.fromkeys(r["workload"] for r in rows):
        w = wl.WORKLOADS[name]
        for dt in dict.fromkeys(r["dtype"] for r in rows if r["workload"] == name):
            sel = [r for r in rows if r["workload"] == name and r["dtype"] == dt]
            calls = sorted({r["repeats"] for r in sel})
            calls = f"{calls[0]}" if len(calls) == 1 else f"{calls[0]}-{calls[-1]}"
            print(f"\n{name} {w.what}: {'-'.join(map(str, w.sizes))} {w.activation}/{w.loss}, "
                  f"batch {w.batch}, {sel[0]['samples']} samples, {dt}, median of "
                  f"{calls} x {sel[0]['epochs_per_call']} epoch(s); the matmul rate in turn "
                  f"with them {sel[0]['matmul_gflops']:.1f} GFLOP/s", file=out)
            print(f"  {'impl':8s} {'per epoch':>11s} {'samples/s':>12s} {'GFLOP/s':>8s} "
                  f"{'% matmul':>8s} {'vs numpy':>9s} {'RSS MiB':>10s} {'1st call':>9s}", file=out)
            for r in sel:
                rss = (f"{r['peak_rss_mib']:.0f}/+{r['peak_rss_mib'] - r['baseline_rss_mib']:.0f}"
                       if r.get("peak_rss_mib") else "-")
                print(f"  {r['impl']:8s} {_fmt_time(r['seconds_per_epoch']):>11s} "
                      f"{r['samples_per_s']:12,.0f} {r['gflops']:8.2f} {r['pct_matmul']:7.1f}% "
                      f"{r['speedup_vs_numpy']:8.2f}x {rss:>10s} {r['first_call_s']:8.2f}s",
                      file=out)
    print("\nvs numpy: lean NumPy (fastbp.baseline) time / this time (higher is faster). GFLOP/s: 6 x weights x "
          "samples / time. RSS MiB: peak / growth over the process after imports and data (W3, in a "
          "fresh process). 1st call: model build + warm-up epoch (fastbp: Numba compile or cache "
          "load).", file=out)


def run(workloads, impls, dtypes, quick, rss, progress, repeats=None):
    report = dict(quick=quick, environment=environment(), matmul_gflops={}, results=[])
    jobs = [(name, dt) for name in workloads
            for dt in (("float64", "float32") if name == "W1" and dtypes == ["float32"]
                       else dtypes)]
    matmul = _start_rates(report, dict.fromkeys(j[1] for j in jobs), quick)
    for k, (name, dt) in enumerate(jobs, 1):
        if progress:
            print(f"\r[{k}/{len(jobs)}] {name} {dt}          ", end="", file=sys.stderr,
                  flush=True)
        for r in measure(name, impls, np.dtype(dt), quick, matmul[dt], repeats):
            if rss and name == "W3":
                probe = peak_rss(name, r["impl"], np.dtype(dt), quick)
                if probe:
                    r["peak_rss_mib"] = probe["peak_mib"]
                    r["baseline_rss_mib"] = probe["baseline_mib"]
            report["results"].append(r)
    if progress:
        print("\r" + " " * 50 + "\r", end="", file=sys.stderr, flush=True)
    for r in report["results"]:
        base = next(x for x in report["results"] if x["workload"] == r["workload"]
                    and x["dtype"] == r["dtype"] and x["impl"] == "numpy")
        r["speedup_vs_numpy"] = base["seconds_per_epoch"] / r["seconds_per_epoch"]
        r["pct_matmul"] = 100 * r["gflops"] / r["matmul_gflops"]
    return report


def _json_problem(path):
    """Why ``--json path`` could not be written, or None: asked before the run, so that a run of
    minutes is not lost to a typo at its end."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "it is a folder"
    if not os.path.isdir(folder):
        return f"the folder {folder!r} does not exist"
    existed = os.path.exists(path)
    try:  # tried, not asked of os.access: root passes that check where it cannot write (/proc)
        with open(path, "a"):  # an existing file is left as it is
            pass
    except OSError as e:
        return e.strerror
    if not existed:
        os.remove(path)
    return None


def _write_json(path, results):
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastbp.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a seconds-long run on smaller data")
    p.add_argument("--workload", action="append", choices=sorted(wl.WORKLOADS),
                   help="run only this workload (repeatable)")
    p.add_argument("--impl", action="append", choices=IMPLS, help="only this implementation")
    p.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32",
                   help="W2 and W3 dtype (W1 always runs both)")
    p.add_argument("--threads", type=int, help="threads for every implementation (default: all)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--no-rss", action="store_true", help="skip the W3 peak-RSS child processes")
    p.add_argument("--mpi", action="store_true",
                   help="W3 data-parallel over MPI with 1 and 2 ranks, plus the N-machine arithmetic")
    p.add_argument("--grid", action="store_true",
                   help="every implementation over the ~30 points of workloads.GRID: fastbp's "
                        "ratio to the fastest peer at each, and the geometric mean")
    p.add_argument("--point", action="append", help="with --grid: only this point (repeatable)")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="timed calls of each implementation, whose median is reported (default "
                        "5, W1 7; --quick 3): more on a noisy machine")
    p.add_argument("--digits", action="store_true",
                   help="fastbp.sklearn.MLPClassifier vs scikit-learn's on load_digits")
    p.add_argument("--memmap", type=float, metavar="GIB",
                   help="peak RSS of one epoch streamed from a float32 memmap of this size")
    p.add_argument("--rss-probe", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--memmap-probe", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--mpi-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be at least 1 (timed calls per implementation); "
                f"got {args.repeats}")
    problem = args.json and _json_problem(args.json)
    if problem:
        p.error(f"--json {args.json}: cannot write the results there: {problem}")
    if args.mpi_worker:
        return _mpi_worker(args.mpi_worker, args.quick)
    if args.mpi:
        rows = mpi_scaling((args.workload or ["W3"])[0], args.quick)
        print_mpi(rows)
        _write_json(args.json, dict(mpi=rows))
        return None
    if args.memmap_probe:
        path, rows, cols = args.memmap_probe
        return _memmap_probe(path, int(rows), int(cols))
    if args.memmap:
        r = memmap_rss(args.memmap)
        print(f"memmap {r['file_mib']:,.0f} MiB ({r['rows']:,} x 784 float32), one epoch of "
              f"784-256-10, batch 128: peak RSS {r['peak_mib']:,.0f} MiB, baseline "
              f"{r['baseline_mib']:,.0f} MiB, growth {r['peak_mib'] - r['baseline_mib']:,.0f} MiB; "
              f"{r['seconds']:.1f} s, {r['rows'] / r['seconds']:,.0f} samples/s")
        return None
    if args.digits:
        res = digits_vs_sklearn(3 if args.quick else 5)
        print("load_digits, 1344 train / 453 test, hidden (64,), random_state 0, max_iter 40, "
              "median of fits alternating")
        for solver, r in res.items():
            f, k = r["fastbp"], r["sklearn"]
            print(f"  solver={solver}: accuracy fastbp {f['accuracy']:.4f} vs scikit-learn "
                  f"{k['accuracy']:.4f}; per epoch {f['seconds_per_epoch'] * 1e3:.3f} ms vs "
                  f"{k['seconds_per_epoch'] * 1e3:.3f} ms = "
                  f"{k['seconds_per_epoch'] / f['seconds_per_epoch']:.2f}x faster")
        return None
    if args.rss_probe:
        name, impl, dt = args.rss_probe
        return _rss_probe(name, impl, np.dtype(dt), args.quick)
    if args.threads:
        import numba
        from threadpoolctl import threadpool_limits
        numba.set_num_threads(args.threads)
        threadpool_limits(args.threads)
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    impls = [i for i in (args.impl or IMPLS) if available(i)]
    if args.grid:
        impls = ["fastbp"] + [i for i in impls if i != "fastbp"]
        report = run_grid(impls, args.quick, progress=not args.json, names=args.point,
                          repeats=args.repeats)
        print_grid(report)
        _write_json(args.json, report)
        return None
    if "numpy" not in impls:
        impls.insert(0, "numpy")  # every ratio is against it
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    report = run(args.workload or sorted(wl.WORKLOADS), impls, dtypes, args.quick,
                 rss=not args.no_rss, progress=not args.json, repeats=args.repeats)
    print_report(report)
    _write_json(args.json, report)


if __name__ == "__main__":
    main()

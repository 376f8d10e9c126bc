import os

import numpy as np
import pytest

ACTIVATIONS = ["sigmoid", "relu", "tanh", "leaky_relu", "identity"]
LOSSES = ["bce", "cross_entropy", "mse", "poisson"]
DTYPES = [np.float64, np.float32]

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([0, 1, 1, 0])


def rel_err(actual, expected):
    """max |actual - expected| / max |expected|: one relative error for a whole array."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(), np.finfo(np.float64).tiny)
    return np.abs(actual - expected).max() / scale


def make_data(loss, n, n_in, n_out, seed=0, dtype=np.float64):
    """Standard-normal X and targets of the loss's kind (labels 0/1, labels 0..K-1, reals, or
    Poisson counts)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(dtype)
    if loss == "bce":
        y = rng.integers(0, 2, n)
    elif loss == "cross_entropy":
        y = rng.integers(0, n_out, n)
    elif loss == "poisson":
        y = rng.poisson(1.5, (n, n_out)).astype(dtype)
    else:
        y = rng.standard_normal((n, n_out)).astype(dtype)
    return X, y


def out_width(loss):
    return 1 if loss == "bce" else 3


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


# ``python -m fastbp --precompile float64 --losses bce cross_entropy`` into an empty cache takes a
# minute or two of one core (every loss: 2-5), which test_first_hour's precompile test needs (its
# common fits are of those two losses; every loss's paths are the same code). In a run on one
# process it is started when the session's tests are known, in the background at the lowest
# priority: it compiles on the core the suite leaves idle (most tests compile or run on one
# thread) and is done by the time that test runs. Under pytest-xdist (``-n``) the workers keep
# every core busy and each collects every test, so the test's own fixture starts it, in the
# worker that runs it.
PRECOMPILE_TEST = "test_after_precompile_common_fits_compile_nothing"


def pytest_collection_finish(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any(item.name == PRECOMPILE_TEST for item in session.items):
        session.config.stash[_PRECOMPILE] = _start_precompile(background=True)


def _start_precompile(background):
    """(the precompile process, its cache's folder); background: at nice 19."""
    import shutil
    import subprocess
    import sys
    import tempfile
    cache = tempfile.mkdtemp(prefix="fastbp-precompile-")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(cache, "cache"), PYTHONWARNINGS="ignore")
    # `nice`, not a preexec_fn: Numba's threads are running by now, and a preexec_fn is not safe
    # in a process with threads
    nice = ["nice", "-n", "19"] if background and shutil.which("nice") else []
    proc = subprocess.Popen(nice + [sys.executable, "-m", "fastbp", "--precompile", "float64",
                                    "--losses", "bce", "cross_entropy"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, cache


_PRECOMPILE = pytest.StashKey()


def pytest_sessionfinish(session):
    import shutil
    started = session.config.stash.get(_PRECOMPILE, None)
    if started is not None:
        started[0].kill()
        started[0].communicate()
        shutil.rmtree(started[1], ignore_errors=True)


@pytest.fixture
def precompiled(request):
    """(the finished ``--precompile float64 --losses bce cross_entropy`` process's (returncode,
    stdout, stderr), its NUMBA_CACHE_DIR), started in the background when the session began, or
    now (see above)."""
    started = request.config.stash.get(_PRECOMPILE, None)
    if started is None:
        started = request.config.stash[_PRECOMPILE] = _start_precompile(background=False)
    proc, cache = started
    out, err = proc.communicate(timeout=900)
    return (proc.returncode, out, err), os.path.join(cache, "cache")

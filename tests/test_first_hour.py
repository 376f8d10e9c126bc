"""The first hour with fastbp, as a newcomer meets it from the README: defaults, schedules,
resume, the history, logs, summary and score, plots, install hints, the demo's help, and the
notice while the kernels compile."""
import contextlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import schedules

from conftest import make_data


def test_schedule_cosine_anneals_over_the_runs_own_length():
    X, y = make_data("cross_entropy", 40, 4, 3)
    for epochs in (50, 200):
        hist = fastbp.Network([4, 5, 3], seed=0).fit(X, y, epochs=epochs, lr=0.1,
                                                     schedule="cosine")
        assert hist.lr[0] == pytest.approx(0.1)
        assert np.all(np.diff(hist.lr) <= 0)  # never back up to the full rate
        assert hist.lr[-1] < 0.1 * 1e-3  # nearly at eta_min = 0 by the last epoch


def test_a_resumed_cosine_run_stays_at_its_end_rate():
    X, y = make_data("cross_entropy", 40, 4, 3)
    net = fastbp.Network([4, 5, 3], seed=0)
    net.fit(X, y, epochs=20, lr=0.1, schedule=schedules.CosineAnnealingLR(eta_min=0.001))
    more = net.fit(X, y, epochs=5, lr=0.1, resume=True,
                   schedule=schedules.CosineAnnealingLR(eta_min=0.001))
    assert np.allclose(more.lr, 0.001)


def test_schedule_step_drops_at_a_third_and_two_thirds_of_the_run():
    X, y = make_data("cross_entropy", 40, 4, 3)
    hist = fastbp.Network([4, 5, 3], seed=0).fit(X, y, epochs=30, lr=0.1, schedule="step")
    assert np.allclose(hist.lr, [0.1] * 10 + [0.01] * 10 + [0.001] * 10)


def test_batch_size_defaults_to_minibatches_of_200():
    X, y = make_data("cross_entropy", 500, 4, 3)
    net = fastbp.Network([4, 5, 3], seed=0)
    net.fit(X, y, epochs=2)
    assert net._train.optimizer.step == 2 * 3  # batches of 200, 200 and 100


@pytest.mark.parametrize("change", [dict(batch_size=16), dict(shuffle=False)])
def test_resume_refuses_another_batch_size_or_shuffle(change):
    X, y = make_data("cross_entropy", 64, 4, 3)
    net = fastbp.Network([4, 5, 3], seed=0)
    net.fit(X, y, epochs=2, batch_size=8)
    before = net._params.copy()
    name = next(iter(change))
    with pytest.raises(ValueError, match=f"whose {name} is"):
        net.fit(X, y, epochs=2, resume=True, **dict(dict(batch_size=8), **change))
    assert np.array_equal(before, net._params)


def test_history_records_are_indexable_with_training_accuracy():
    X, y = make_data("cross_entropy", 60, 4, 3, seed=1)
    Xv, yv = make_data("cross_entropy", 20, 4, 3, seed=2)
    net = fastbp.Network([4, 8, 3], seed=0, dtype=np.float64)
    start = net.score(X, y)
    # a rate too small to move the weights: the epoch's accuracy is the network's at its start
    first = net.fit(X, y, epochs=1, lr=1e-300, batch_size=10, shuffle=False)
    assert first.accuracy[0] == pytest.approx(start, abs=1e-15)
    hist = net.fit(X, y, epochs=4, lr=0.3, batch_size=10, validation_data=(Xv, yv))
    assert len(hist) == 4 and hist[-1]["epoch"] == net.epoch == 4  # a new run
    assert set(hist[0]) == {"epoch", "loss", "lr", "accuracy", "val_loss", "val_accuracy"}
    assert [r["loss"] for r in hist] == list(hist.loss)
    with pytest.raises(IndexError):
        hist[4]
    reg = fastbp.Network([4, 3], loss="mse").fit(X, np.zeros((60, 3)), epochs=2)
    assert "accuracy" not in reg[0] and len(reg.accuracy) == 0
    # without validation data its series are there, empty, and a History survives pickling
    assert first.val_loss == [] and first.val_accuracy == [] and "val_loss" not in first[0]
    back = pickle.loads(pickle.dumps(hist))
    assert [back[i] for i in range(4)] == [hist[i] for i in range(4)]
    with pytest.raises(AttributeError, match="no attribute 'val_los'"):
        first.val_los


def test_log_every_prints_validation_loss_and_accuracy(capsys):
    X, y = make_data("cross_entropy", 60, 4, 3, seed=1)
    hist = fastbp.Network([4, 8, 3], seed=0).fit(X, y, epochs=4, log_every=2,
                                                  validation_split=0.25)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert f"val_loss {hist.val_loss[-1]:.4f}  val_accuracy {hist.val_accuracy[-1]:.4f}" \
        in lines[-1]


def test_summary_lists_layers_parameters_dtype_and_memory():
    net = fastbp.Network([4, 8, 3], activation="tanh", seed=0, dtype=np.float32)
    text = net.summary()
    assert "4 -> 8" in text and "8 -> 3" in text and "tanh" in text and "softmax" in text
    assert f"parameters: {net.n_params:,} (float32, {net.n_params * 4:,} B)" in text
    assert "kept for the next fit" not in text
    X, y = make_data("cross_entropy", 50, 4, 3, seed=3)
    net.fit(X.astype(np.float32), y, epochs=1, batch_size=10)
    # workspaces for 10 rows (inputs, targets, activations, two slots of deltas and, for a
    # network of small layers, the second row chunk's gradient, row losses, the counts of rows
    # classified right and of batches run by the row chunks' runner), the gradient, the backup
    from fastbp._kernels import CHUNKS
    kept = ((10 * 4 + 10 * 1 + 10 * 11 + 2 * 10 * 8 + net.n_params) * 4 + 10 * 8
            + (2 + CHUNKS) * 8 + 2 * net.n_params * 4)
    assert f"training buffers kept for the next fit: {kept / 1024:.1f} KiB" in net.summary()


def test_score_is_accuracy_for_classifiers_and_r2_for_regression():
    sk_metrics = pytest.importorskip("sklearn.metrics")
    X, y = make_data("cross_entropy", 50, 4, 3, seed=3)
    net = fastbp.Network([4, 8, 3], seed=0)
    net.fit(X, y, epochs=5)
    assert net.score(X, y) == pytest.approx(np.mean(net.predict(X) == y))
    Xr, yr = make_data("mse", 50, 4, 2, seed=3)
    reg = fastbp.Network([4, 8, 2], loss="mse", seed=0, dtype=np.float64)
    reg.fit(Xr, yr, epochs=5)
    assert reg.score(Xr, yr) == pytest.approx(sk_metrics.r2_score(yr, reg.predict(Xr)))


def test_one_hot_targets_train_as_their_labels():
    X, y = make_data("cross_entropy", 30, 4, 3, seed=4)
    a, b = (fastbp.Network([4, 5, 3], seed=0) for _ in range(2))
    a.fit(X, y, epochs=3)
    b.fit(X, np.eye(3)[y], epochs=3)
    assert np.array_equal(a._params, b._params)
    with pytest.raises(ValueError, match="one-hot rows"):
        b.fit(X, np.full((30, 3), 0.5), epochs=1)


def test_plot_leaves_the_matplotlib_backend_as_it_found_it(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    X, y = make_data("cross_entropy", 60, 4, 3, seed=1)
    hist = fastbp.Network([4, 8, 3], seed=0).fit(X, y, epochs=30, lr=0.5,
                                                  validation_split=0.3, early_stopping=True,
                                                  patience=3)
    backend = matplotlib.get_backend()
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    fig = hist.plot(tmp_path / "curves.png")
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "training accuracy" in labels and "validation accuracy" in labels
    assert any(label.startswith(f"best epoch ({hist.best_epoch})") for label in labels)


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **env))


def test_missing_optional_dependencies_give_quoted_install_hints():
    run = _run("import sys; sys.modules['sklearn'] = None\n"
               "try:\n    import fastbp.sklearn\nexcept ImportError as e:\n    print(e)")
    assert "pip install 'fastbp[sklearn]'" in run.stdout, run.stderr
    run = _run("import sys; sys.modules['tqdm'] = None; sys.modules['tqdm.auto'] = None\n"
               "import numpy as np, fastbp\n"
               "try:\n    fastbp.Network([2, 2]).fit(np.ones((4, 2)), [0, 1, 0, 1], progress=True)\n"
               "except ImportError as e:\n    print(e)")
    assert "pip install 'fastbp[progress]'" in run.stdout, run.stderr


def test_the_demos_help_is_plain_text_and_says_how_long_it_takes():
    run = subprocess.run([sys.executable, "-m", "fastbp", "--help"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and "``" not in run.stdout
    assert "first run compiles" in run.stdout and "later runs take a few seconds" in run.stdout
    seed = next(line for line in run.stdout.splitlines() if line.strip().startswith("--seed"))
    assert "seed of the networks" in seed


_FITS = {
    "dense": "X = np.ones((8, 3)); y = np.zeros(8, int)\n"
             "net = fastbp.Network([3, 4, 2], dtype=np.float64)\n",
    # the sparse first layer's kernels are inner kernels with prange loops, linked only into the
    # drivers (_jit._parfor_libraries), which are cached with the loops' code inside
    "sparse": "import scipy.sparse as sp\n"
              "X = sp.random(40, 30, density=0.2, random_state=1, format='csr')\n"
              "y = np.random.default_rng(0).integers(0, 3, 40)\n"
              "net = fastbp.Network([30, 64, 3], seed=0)\n",
}


@pytest.mark.parametrize("fit", list(_FITS))
def test_a_first_compile_shows_a_notice_and_a_cached_start_does_not(tmp_path, fit):
    """A second process with the first's cache compiles nothing and ends on the same bits."""
    code = ("import hashlib, numpy as np, fastbp\n" + _FITS[fit]
            + "net.fit(X, y, epochs=2, batch_size=16)\n"
            "print(hashlib.sha256(net._params.tobytes()).hexdigest())")
    env = dict(NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    cold, warm = _run(code, **env), _run(code, **env)
    assert cold.returncode == 0 and warm.returncode == 0, (cold.stderr + warm.stderr)[-2000:]
    assert cold.stderr.count("fastbp: compiling the kernels") == 1
    assert "compiling" not in warm.stderr
    assert cold.stdout == warm.stdout



COLLECTOR = """
import gc, numpy as np
from numba.core import event
import fastbp
from fastbp import _kernels
seen = []  # the collector's state as each compilation starts (registered after fastbp's listener)
def report(what, *more):
    print(what + ":", len(seen) > 0 and not any(seen), gc.isenabled(), *more)
class Seen(event.Listener):
    def on_start(self, ev):
        seen.append(gc.isenabled())
    def on_end(self, ev):
        pass
event.register("numba:compile", Seen())
_kernels.copy(np.zeros(3), np.ones(3))  # a first call from Python compiles its twin
report("on")
seen.clear(); gc.disable()
_kernels.all_finite(np.ones(3))
report("off")
seen.clear(); gc.enable()
try:
    _kernels.all_finite("not an array")  # fails to compile
except Exception as e:
    report("error", type(e).__name__)
"""


def test_a_compile_pauses_the_collector_and_restores_it(tmp_path):
    """The garbage collector is off while fastbp's kernels compile (their compilation pays the
    collector's full passes otherwise; see _compiling), and afterwards as it was before: on, off,
    and on again after a compilation that raised."""
    run = _run(COLLECTOR, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert lines["on"] == "True True"  # off while compiling, on after
    assert lines["off"] == "True False"
    assert lines["error"] == "True True TypingError"


def test_the_compile_listener_leaves_a_users_own_functions_alone():
    """fastbp hears every Numba compilation in the process (_compiling); a user's own function
    compiles and runs as it would without fastbp, one that exec() made from globals without a
    __name__ (its __module__ None, as code generators make them) included."""
    import numba
    from fastbp import _compiling
    _compiling.install()
    made = {}
    exec("def twice(x):\n    return 2 * x\n", made)
    assert made["twice"].__module__ is None
    assert numba.njit(made["twice"])(21) == 42


COMMON_FITS = """
import numpy as np, fastbp
from fastbp.sklearn import MLPClassifier
rng = np.random.default_rng(0)
for dtype in (np.float64,):  # one dtype: the paths are the same for both
    # the fused loop, the per-layer kernels, and row chunks (the estimators' batches of 200)
    for sizes, n in (([2, 4, 1], 96), ([30, 64, 3], 96), ([30, 64, 3], 400)):
        X = rng.standard_normal((n, sizes[0])).astype(dtype)
        y = rng.integers(0, 2 if sizes[-1] == 1 else 3, n)
        loss = "bce" if sizes[-1] == 1 else "cross_entropy"
        net = fastbp.Network(sizes, loss=loss, dtype=dtype)
        net.fit(X, y, epochs=2)
        net.fit(X, y, epochs=2, optimizer="adam")
        net.fit(X, y, epochs=2, optimizer="adam", batch_size=min(n, 200))
        net.predict(X)
        for solver in ("adam", "sgd"):
            MLPClassifier((sizes[1],), solver=solver, max_iter=2).fit(X, y)
"""


def test_after_precompile_common_fits_compile_nothing(precompiled):
    """``python -m fastbp --precompile float64 --losses bce cross_entropy`` compiles every path a
    common fit of those losses takes (train_epochs compiles one per loss and plan: the fused
    loop, the per-layer kernels on whole batches or in row chunks, plain SGD, an optimiser, the
    estimators' L2), so that the next process shows no compile notice; ``fastbp.precompile``
    (given names) then finds it all cached. One dtype (its paths are those of the other), the
    classifiers' two losses (each loss's paths are the same code; that every loss is precompiled
    is checked below), and one empty cache for the three processes: such a precompile costs a
    minute or two, run in the background from the session's start, or under pytest-xdist by this
    test's worker (conftest.py)."""
    (returncode, stdout, stderr), cache = precompiled
    env = dict(NUMBA_CACHE_DIR=cache, PYTHONWARNINGS="ignore")
    assert returncode == 0, stderr[-2000:]
    assert stdout.startswith("float64: ready in") and "float32" not in stdout
    api = _run("import fastbp; print(sorted(fastbp.precompile('float64', ['cross_entropy', "
               "'bce'])))", **env)
    assert api.returncode == 0 and api.stdout.split() == ["['float64']"], api.stderr[-2000:]
    assert "compiling" not in api.stderr
    run = _run(COMMON_FITS, **env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "compiling" not in run.stderr


def test_precompile_without_dtypes_readies_both_and_refuses_others(monkeypatch, capsys):
    from fastbp.__main__ import main
    asked = []

    def precompile(dtypes, losses):
        asked.append((dtypes, losses))
        return {dtypes[0]: 1.0}

    monkeypatch.setattr(fastbp, "precompile", precompile)
    main(["--precompile"])
    assert asked == [(("float32",), None), (("float64",), None)]
    assert capsys.readouterr().out.splitlines() == ["float32: ready in 1.0 s",
                                                    "float64: ready in 1.0 s"]
    main(["--precompile", "float64", "--losses", "mse", "bce"])
    assert asked[2:] == [(("float64",), ["mse", "bce"])]
    for wrong, words in ((["--precompile", "float16"], "invalid choice: 'float16'"),
                         (["--precompile", "--losses", "hinge"], "invalid choice: 'hinge'"),
                         (["--losses", "bce"], "--losses goes with --precompile")):
        with pytest.raises(SystemExit):
            main(wrong)
        assert words in capsys.readouterr().err
    assert len(asked) == 3


@pytest.mark.parametrize("losses", [None, "mse", ["poisson", "bce"], ("bce", "bce")])
def test_precompile_fits_every_path_of_each_loss_asked_for(monkeypatch, losses):
    """What ``fastbp.precompile`` runs, recorded instead of compiled: for each loss asked for
    (every loss by default; a name repeated once) the same fits, predictions and gradients, on
    the fused loop's sizes, the per-layer kernels' and the row chunks' batches."""
    from fastbp import engine
    from fastbp.losses import LOSSES
    ran = []

    def record(what):
        return lambda net, *args, **kwargs: ran.append(
            (net.loss_name, what, net.sizes, args[0].shape[0], kwargs.get("batch_size"),
             kwargs.get("optimizer"), kwargs.get("l2"), net.dtype))

    for what in ("fit", "predict", "gradients"):
        monkeypatch.setattr(fastbp.Network, what, record(what))

    class FullBatch:  # the L-BFGS call, recorded
        def __init__(self, net, X, Y, SW):
            record("full batch")(net, X)

        def threads(self):
            return contextlib.nullcontext()

        def __call__(self):
            pass

    monkeypatch.setattr(engine, "FullBatch", FullBatch)
    seconds = fastbp.precompile(["float32", np.float64], losses)
    assert list(seconds) == ["float32", "float64"]
    names = list(LOSSES) if losses is None else list(dict.fromkeys(np.atleast_1d(losses)))
    assert list(dict.fromkeys(r[0] for r in ran)) == names
    per_loss = {name: [r[1:] for r in ran if r[0] == name] for name in names}
    first = per_loss[names[0]]
    assert all(calls == first for calls in per_loss.values())
    assert len(first) == 2 * 3 * 7  # two dtypes, three network and batch sizes, seven calls
    assert {c[4] for c in first} == {None, "adam"} and {c[5] for c in first} == {None, (1e-4, 1e-4)}
    assert {c[0] for c in first} == {"fit", "predict", "gradients", "full batch"}


@pytest.mark.parametrize("losses,exc,words", [
    ("hinge", ValueError, r"each of losses must be one of \['bce', 'cross_entropy', 'mse', "
                          r"'poisson'\]; got 'hinge'"),
    ([], ValueError, "losses is empty: name at least one loss, or None for every loss"),
    (3, TypeError, "losses must be None, a loss name or a sequence of them; got 3"),
])
def test_precompile_refuses_other_losses_before_compiling(monkeypatch, losses, exc, words):
    def fit(*args, **kwargs):
        raise AssertionError("a fit ran before the losses were checked")

    monkeypatch.setattr(fastbp.Network, "fit", fit)
    with pytest.raises(exc, match=words):
        fastbp.precompile("float32", losses)

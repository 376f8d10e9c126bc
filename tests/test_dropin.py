"""fastbp.sklearn as a true drop-in: scikit-learn's own MLP test file with only the import
swapped, L-BFGS, loss='poisson' and sparse input against scikit-learn, and the behaviours its
test file checks (n_iter_ per call, warm starts, assignable coefficients, ...)."""
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
import scipy.sparse as sp  # noqa: E402
from sklearn import neural_network as sk  # noqa: E402
from sklearn.datasets import load_diabetes, load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# The tests of scikit-learn's file that read scikit-learn's private attributes: what they read.
PRIVATE = {"test_learning_rate_warmstart": "_optimizer.learning_rate",
           "test_adaptive_learning_rate": "_optimizer.learning_rate"}


def test_scikit_learns_own_mlp_tests_pass_with_only_the_import_swapped(tmp_path):
    import sklearn.neural_network.tests.test_mlp as theirs
    source = open(theirs.__file__).read()
    original = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
    assert source.count(original) == 1
    (tmp_path / "test_mlp_fastbp.py").write_text(
        source.replace(original, "from fastbp.sklearn import MLPClassifier, MLPRegressor"))
    deselect = [f"--deselect=test_mlp_fastbp.py::{name}" for name in PRIVATE]
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "sklearn.conftest", "-q",
                          "-p", "no:cacheprovider", "test_mlp_fastbp.py", *deselect],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    assert " failed" not in tail and f"{len(PRIVATE)} deselected" in tail, tail


def digits(n=300):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16, y[:n]


def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return X, (y - y.mean()) / y.std()


def params_of(est):
    return est.coefs_ + est.intercepts_


def max_diff(a, b):
    return max(np.abs(x - y).max() for x, y in zip(params_of(a), params_of(b)))


def both(make, X, y, **kw):
    """The same estimator from scikit-learn and fastbp, fitted on the same data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return make(sk, **kw).fit(X, y), make(None, **kw).fit(X, y)


def classifier(mod, **kw):
    return (mod.MLPClassifier if mod else MLPClassifier)(hidden_layer_sizes=(20,),
                                                          random_state=0, **kw)


def regressor(mod, **kw):
    return (mod.MLPRegressor if mod else MLPRegressor)(hidden_layer_sizes=(16,),
                                                        random_state=0, **kw)


# ----------------------------------------------------------------- L-BFGS


LBFGS_CASES = [("classifier", dict(max_iter=40)), ("classifier", dict(max_iter=200, max_fun=10)),
               ("classifier", dict(max_iter=15, alpha=0.1, activation="tanh")),
               ("regressor", dict(max_iter=25)), ("regressor", dict(max_iter=200, max_fun=10)),
               ("regressor", dict(max_iter=12, activation="logistic", alpha=1.0))]


@pytest.mark.parametrize("kind,kw", LBFGS_CASES)
def test_lbfgs_follows_scikit_learn(kind, kw):
    make, (X, y) = (classifier, digits()) if kind == "classifier" else (regressor, diabetes())
    theirs, ours = both(make, X, y, solver="lbfgs", **kw)
    assert ours.n_iter_ == theirs.n_iter_
    assert max_diff(ours, theirs) < 1e-9
    assert abs(ours.loss_ - theirs.loss_) < 1e-10
    assert not hasattr(ours, "loss_curve_") and not hasattr(theirs, "loss_curve_")


def test_max_fun_stops_lbfgs_with_a_convergence_warning():
    X, y = digits()
    with pytest.warns(ConvergenceWarning):
        ours = MLPClassifier((20,), solver="lbfgs", max_fun=5, max_iter=100,
                             random_state=0).fit(X, y)
    assert ours.n_iter_ <= 5


def test_lbfgs_has_no_partial_fit():
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    clf = MLPClassifier(solver="adam")
    assert hasattr(clf, "partial_fit")
    clf.set_params(solver="lbfgs")
    assert not hasattr(clf, "partial_fit")  # never silently trains with Adam


# ----------------------------------------------------------------- poisson


@pytest.mark.parametrize("solver", ["lbfgs", "adam", "sgd"])
def test_poisson_regressor_follows_scikit_learn(solver):
    X, _ = diabetes()
    y = np.random.default_rng(0).poisson(np.exp(3 * X[:, :1] + 1)).ravel()
    kw = dict(solver=solver, max_iter=20, loss="poisson")
    if solver == "sgd":
        kw["learning_rate_init"] = 0.01
    theirs, ours = both(regressor, X, y, **kw)
    assert ours.out_activation_ == theirs.out_activation_ == "exp"
    assert max_diff(ours, theirs) < 1e-9
    assert np.allclose(ours.predict(X), theirs.predict(X), rtol=1e-9)
    assert abs(ours.loss_ - theirs.loss_) < 1e-10


def test_poisson_refuses_negative_targets():
    X, _ = diabetes()
    with pytest.raises(ValueError, match="counts or means >= 0"):
        MLPRegressor(loss="poisson", max_iter=2).fit(X, -np.ones(len(X)))


# ----------------------------------------------------------------- sparse input


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("solver", ["lbfgs", "adam", "sgd"])
def test_sparse_input_equals_dense_input_and_scikit_learn(fmt, solver):
    X, y = digits()
    X = X * (np.random.default_rng(1).random(X.shape) < 0.3)
    Xs = sp.csr_matrix(X) if fmt == "csr" else sp.csc_array(X)
    kw = dict(solver=solver, max_iter=15 if solver == "lbfgs" else 4)
    theirs, sparse = both(classifier, Xs, y, **kw)
    dense = classifier(None, **kw).fit(X, y)
    assert max_diff(sparse, dense) < 1e-12
    assert max_diff(sparse, theirs) < 1e-9
    assert np.abs(sparse.predict_proba(Xs) - dense.predict_proba(X)).max() < 1e-12
    assert np.array_equal(sparse.predict(Xs), theirs.predict(Xs))


def test_sparse_regression_with_partial_fit_and_weights_equals_dense():
    X, y = diabetes()
    X = X * (np.random.default_rng(2).random(X.shape) < 0.5)
    w = np.random.default_rng(3).uniform(0.5, 2, len(y))
    a, b = (MLPRegressor(hidden_layer_sizes=(8,), random_state=0) for _ in range(2))
    for _ in range(3):
        a.partial_fit(sp.csr_matrix(X), y, sample_weight=w)
        b.partial_fit(X, y, sample_weight=w)
    assert max_diff(a, b) < 1e-12


_SPARSE_RSS = """
import numpy as np, scipy.sparse as sp
from fastbp.sklearn import MLPClassifier
def rss():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
rng = np.random.default_rng(0)
n, d, nnz = 50_000, 100_000, 1_000_000  # dense: 40 GB in float64
X = sp.csr_matrix((rng.random(nnz), (rng.integers(0, n, nnz), rng.integers(0, d, nnz))),
                  shape=(n, d))
y = rng.integers(0, 2, n)
sparse_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, batch_size=256, random_state=0)
# the kernels compiled first (LLVM's memory is not the data's), then the peak reset to now
clf.fit(X[:300], y[:300])
open("/proc/self/clear_refs", "w").write("5")
before = rss()
clf.fit(X, y)
clf.predict(X)
print(sparse_bytes, rss() - before)
"""


def test_a_large_sparse_matrix_is_never_densified():
    run = subprocess.run([sys.executable, "-c", _SPARSE_RSS], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    sparse_bytes, growth = map(int, run.stdout.split())
    # the network's weights (100000 x 8, with Adam's two moments) and a few copies of the CSR
    # arrays; the dense matrix would be 40 GB
    weights = 100_000 * 8 * 8 * 6
    assert growth < 4 * sparse_bytes + weights + (64 << 20), (growth, sparse_bytes)


# ----------------------------------------------------------------- scikit-learn's behaviours


def test_n_iter_counts_the_iterations_of_each_warm_start_fit():
    X, y = digits()
    clf = MLPClassifier((10,), max_iter=3, warm_start=True, n_iter_no_change=np.inf,
                        random_state=0)
    for _ in range(2):
        with pytest.warns(ConvergenceWarning):
            clf.fit(X, y)
        assert clf.n_iter_ == 3


def test_invscaling_follows_the_cumulative_sample_count_across_warm_starts():
    X, y = digits()
    kw = dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, power_t=0.3,
              max_iter=3, warm_start=True)
    theirs, ours = classifier(sk, **kw), classifier(None, **kw)
    for _ in range(3):
        theirs.fit(X, y)
        ours.fit(X, y)
        assert ours.t_ == theirs.t_
        assert max_diff(ours, theirs) < 1e-12


def test_a_single_class_is_fitted_as_scikit_learn_does():
    X, _ = digits(40)
    theirs, ours = both(classifier, X, np.full(40, "only"), max_iter=3)
    assert max_diff(ours, theirs) < 1e-12
    assert list(ours.predict(X[:3])) == list(theirs.predict(X[:3])) == ["only"] * 3


def test_coefs_and_intercepts_can_be_assigned():
    X, y = digits(60)
    clf = MLPClassifier((5,), max_iter=2, random_state=0).fit(X, y)
    clf.coefs_ = [np.zeros_like(c) for c in clf.coefs_]
    clf.intercepts_[1] = np.arange(10.0)  # one element replaced
    assert np.array_equal(clf.predict(X[:4]), np.full(4, 9))
    with pytest.raises(ValueError, match=r"coefs_\[0\] has shape"):
        clf.coefs_ = [np.zeros((3, 3)), clf.coefs_[1]]
        clf.predict(X[:1])


def test_negative_sample_weights_are_accepted_as_scikit_learn_does():
    X, y = digits()
    w = np.random.default_rng(0).uniform(-0.2, 1.0, len(y))
    theirs, ours = (make(max_iter=3, solver="sgd", momentum=0.0) for make in
                    (lambda **k: classifier(sk, **k), lambda **k: classifier(None, **k)))
    theirs.fit(X, y, sample_weight=w)
    ours.fit(X, y, sample_weight=w)
    assert max_diff(ours, theirs) < 1e-12


def test_the_stratification_error_names_the_classes_as_scikit_learn_does():
    with pytest.raises(ValueError, match=r"Classes with too few members are: \['True'\]"):
        MLPClassifier(early_stopping=True).fit([[1, 2], [2, 3], [3, 4], [4, 5]], [0, 0, 0, 1])


def test_a_diverging_fit_under_early_stopping_keeps_the_best_weights():
    X, y = load_diabetes(return_X_y=True)
    reg = MLPRegressor(hidden_layer_sizes=(50,), activation="identity", solver="sgd",
                       learning_rate_init=1.0, max_iter=20, early_stopping=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.fit(X, y)
    assert np.isnan(reg.validation_scores_[-1])
    assert all(np.isfinite(c).all() for c in params_of(reg))

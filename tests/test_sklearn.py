"""fastbp.sklearn: scikit-learn's estimator checks, equality with scikit-learn's MLP for the same
random_state, labels and targets of every kind, and the meta-estimators."""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn import neural_network as sk  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16, y


def max_diff(a, b):
    return max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a, b))


SOLVERS = [dict(solver="sgd", momentum=0.0), dict(solver="sgd", momentum=0.9),
           dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.1, momentum=0.9),
           dict(solver="sgd", learning_rate="adaptive", momentum=0.9, tol=0.5, n_iter_no_change=1,
                nesterovs_momentum=False),
           dict(solver="adam"), dict(solver="adam", early_stopping=True, alpha=0.01),
           dict(solver="adam", batch_size=64, shuffle=False, activation="logistic")]


@pytest.mark.parametrize("kw", SOLVERS, ids=[str(sorted(k.items())) for k in SOLVERS])
def test_classifier_follows_scikit_learn_step_for_step(kw):
    """Same random_state: same initial weights, split and epoch orders; same updates."""
    X, y = digits()
    ours = MLPClassifier((32,), random_state=0, max_iter=6, **kw).fit(X, y)
    theirs = sk.MLPClassifier((32,), random_state=0, max_iter=6, **kw).fit(X, y)
    assert max_diff([ours.loss_curve_], [theirs.loss_curve_]) < 1e-10
    assert max_diff(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_) < 1e-10
    if kw.get("learning_rate") == "adaptive":  # the case exercises at least one reduction
        assert theirs._optimizer.learning_rate < theirs.learning_rate_init
    if kw.get("early_stopping"):
        assert max_diff([ours.validation_scores_], [theirs.validation_scores_]) < 1e-12


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_multilabel_and_multi_target_follow_scikit_learn(solver):
    X, Y = make_multilabel_classification(200, 10, n_classes=3, random_state=0)
    ours = MLPClassifier((16,), solver=solver, alpha=0.01, random_state=0, max_iter=5).fit(X, Y)
    theirs = sk.MLPClassifier((16,), solver=solver, alpha=0.01, random_state=0, max_iter=5).fit(X, Y)
    assert max_diff(ours.coefs_, theirs.coefs_) < 1e-10
    assert max_diff([ours.loss_curve_], [theirs.loss_curve_]) < 1e-10
    assert np.array_equal(ours.predict(X), theirs.predict(X))
    Xr, Yr = make_regression(200, 10, n_targets=3, random_state=0)
    for y in (Yr[:, 0] / 100, Yr / 100):
        kw = dict(hidden_layer_sizes=(16,), solver=solver, learning_rate_init=0.01, alpha=0.1,
                  random_state=0, max_iter=5)
        ours, theirs = MLPRegressor(**kw).fit(Xr, y), sk.MLPRegressor(**kw).fit(Xr, y)
        assert max_diff(ours.coefs_, theirs.coefs_) < 1e-10
        assert max_diff([ours.loss_curve_], [theirs.loss_curve_]) < 1e-10
        assert np.allclose(ours.predict(Xr), theirs.predict(Xr), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "emu"]), np.array([3, 10, 42]),
                                    np.array([-1, 1])])
def test_arbitrary_labels(labels):
    X, y = digits()
    y = labels[y % len(labels)]
    clf = MLPClassifier((16,), random_state=0, max_iter=30).fit(X, y)
    assert set(clf.classes_) == set(labels) and clf.predict(X).dtype == y.dtype
    assert clf.score(X, y) > 0.4
    proba = clf.predict_proba(X[:5])
    assert proba.shape == (5, len(labels)) and np.allclose(proba.sum(axis=1), 1)
    assert np.allclose(clf.predict_log_proba(X[:5]), np.log(proba))


def test_float32_data_trains_in_float32():
    X, y = digits()
    clf = MLPClassifier((16,), random_state=0, max_iter=3).fit(X.astype(np.float32), y)
    assert clf.coefs_[0].dtype == np.float32 and clf.predict_proba(X[:2]).dtype == np.float32


def test_partial_fit_continues_the_optimiser():
    X, y = digits()
    a = MLPClassifier((16,), random_state=0, shuffle=False)
    for _ in range(4):
        a.partial_fit(X, y, classes=np.arange(10))
    b = MLPClassifier((16,), random_state=0, shuffle=False, max_iter=4).fit(X, y)
    # n_iter_ as scikit-learn's: the iterations of the last call
    assert max_diff(a.coefs_, b.coefs_) < 1e-12 and a.n_iter_ == 1
    with pytest.raises(ValueError, match="classes not in"):
        a.partial_fit(X[:5], np.array([11] * 5))


def test_sample_weight_in_fit_matches_scikit_learn():
    X, y = digits()
    w = np.random.default_rng(0).uniform(0.2, 2.0, len(y))
    kw = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=4)
    ours = MLPClassifier(**kw).fit(X, y, sample_weight=w)
    theirs = sk.MLPClassifier(**kw).fit(X, y, sample_weight=w)
    assert max_diff(ours.coefs_, theirs.coefs_) < 1e-10


def test_pipeline_grid_search_cross_val_clone_and_pickle():
    X, y = digits()
    kw = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=20, learning_rate_init=0.01)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(**kw))
    scores = cross_val_score(pipe, X, y, cv=3)
    theirs = cross_val_score(make_pipeline(StandardScaler(), sk.MLPClassifier(**kw)), X, y, cv=3)
    assert scores.min() > 0.85 and np.allclose(scores, theirs, rtol=0, atol=1e-12)
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2).fit(X, y)
    assert grid.best_params_["mlpclassifier__alpha"] in (1e-4, 1e-2)
    fitted = grid.best_estimator_
    again = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(again.predict_proba(X), fitted.predict_proba(X))
    fresh = clone(fitted[-1])
    assert not hasattr(fresh, "coefs_") and fresh.get_params() == fitted[-1].get_params()


def test_feature_names_are_kept_and_checked():
    pd = pytest.importorskip("pandas")
    X, y = digits()
    df = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    clf = MLPClassifier((8,), random_state=0, max_iter=2).fit(df, y)
    assert list(clf.feature_names_in_) == list(df.columns)
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)


def test_digits_accuracy_within_one_point_of_scikit_learn():
    X, y = digits()
    Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=1344, stratify=y, random_state=0)
    kw = dict(hidden_layer_sizes=(64,), random_state=0, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**kw).fit(Xtr, ytr).score(Xte, yte)
        theirs = sk.MLPClassifier(**kw).fit(Xtr, ytr).score(Xte, yte)
    assert ours > 0.95 and abs(ours - theirs) <= 0.01

"""Property-based tests (hypothesis): generated shapes, dtypes and values for every public entry
point. The contract: no crash; either it works, or a ValueError or TypeError that names the
argument; and a failed call leaves the network as it was. Plus a load fuzz of truncations and
byte flips. Example counts: see ``max_examples`` per test (CI runs them all)."""
import os
import tempfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fastbp  # noqa: E402
from conftest import make_data  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WEIRD = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.just(10**400),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                  st.lists(st.integers(-2, 5), max_size=3), st.just(np.float32(0.5)),
                  st.just(np.int64(2)), st.just(print))

VALUES = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, 1.0, -1.0, 3e38, -3e38, 1e300, 5e-324])


def arrays(max_rows=12, max_cols=6):
    """Arrays of any of the dtypes a user might pass, with hostile values, 0-3 dimensions."""
    dtype = st.sampled_from([np.float64, np.float32, np.int64, np.uint8, np.bool_, np.complex64,
                             np.float16])
    shape = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_rows)
    return st.one_of(
        hnp.arrays(np.float64, shape, elements=VALUES),
        hnp.arrays(dtype, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1,
                                           max_side=max_cols)),
        st.lists(st.lists(st.integers(-3, 3), max_size=4), max_size=5),
        WEIRD)


def names_argument(exc, names):
    text = str(exc)
    return any(n in text for n in names)


NET_ARGS = ("sizes", "activation", "loss", "dtype", "seed")


def _net(sizes=(4, 5, 3), loss="cross_entropy", dtype=np.float64):
    return fastbp.Network(list(sizes), loss=loss, seed=0, dtype=dtype)


def _state(net):
    return net._params.tobytes(), None if net._train is None else (
        net._train.optimizer.state.tobytes(), net._train.optimizer.step, net._train.epoch)


@settings(max_examples=300, **SETTINGS)
@given(sizes=st.one_of(st.lists(st.integers(-2, 9), max_size=5), WEIRD),
       activation=st.one_of(st.sampled_from(["relu", "tanh", "sigmoid", "identity", "leaky_relu",
                                             "softmax", ""]), WEIRD),
       loss=st.one_of(st.sampled_from(["mse", "bce", "cross_entropy", "hinge"]), WEIRD),
       dtype=st.one_of(st.sampled_from([np.float32, np.float64, np.int32, "float32", "f8"]),
                       WEIRD),
       seed=st.one_of(st.integers(-5, 2**70), WEIRD))
def test_network_construction_works_or_names_the_argument(sizes, activation, loss, dtype, seed):
    try:
        fastbp.Network(sizes, activation=activation, loss=loss, dtype=dtype, seed=seed)
    except (ValueError, TypeError) as exc:
        assert names_argument(exc, NET_ARGS), exc


FIT_OPTIONS = ["epochs", "lr", "batch_size", "optimizer", "momentum", "nesterov", "weight_decay",
               "betas", "eps", "schedule", "shuffle", "sample_weight", "validation_split",
               "early_stopping", "patience", "min_delta", "callbacks", "log_every",
               "checkpoint_every", "resume", "stream", "sharded", "comm", "checkpoint"]


@settings(max_examples=400, **SETTINGS)
@given(X=arrays(), y=arrays(), loss=st.sampled_from(["mse", "bce", "cross_entropy"]),
       dtype=st.sampled_from([np.float32, np.float64]),
       options=st.dictionaries(st.sampled_from(FIT_OPTIONS), WEIRD, max_size=3))
def test_fit_works_or_names_the_argument_and_changes_nothing(X, y, loss, dtype, options):
    options.pop("checkpoint", None)  # paths: in test_hardening; here nothing may be written
    options.setdefault("epochs", 2)
    n_out = 1 if loss == "bce" else 3
    net = _net((4, 5, n_out), loss, dtype)
    before = _state(net)
    try:
        net.fit(X, y, **options)
    except fastbp.DivergenceError:
        assert np.isfinite(net._params).all()
    except (ValueError, TypeError) as exc:
        assert names_argument(exc, ["X", "y", "sample_weight", *options]), exc
        assert _state(net) == before


@settings(max_examples=300, **SETTINGS)
@given(X=arrays(), y=arrays(), method=st.sampled_from(["predict", "predict_proba", "loss",
                                                       "gradients"]),
       loss=st.sampled_from(["mse", "bce", "cross_entropy"]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_inference_works_or_names_the_argument(X, y, method, loss, dtype):
    net = _net((4, 5, 1 if loss == "bce" else 3), loss, dtype)
    before = _state(net)
    args = (X, y) if method in ("loss", "gradients") else (X,)
    try:
        out = getattr(net, method)(*args)
    except (ValueError, TypeError) as exc:
        assert names_argument(exc, ["X", "y", "predict_proba", "input's scale"]), exc
    else:
        values = np.concatenate([np.ravel(a) for a in out[0] + out[1]]) if method == "gradients" \
            else np.ravel(out)
        assert np.isfinite(values).all()
    assert _state(net) == before


@settings(max_examples=60, **SETTINGS)
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]), train=st.booleans(),
       optimizer=st.sampled_from(["sgd", "adam", "adamw"]))
def test_save_load_round_trips_any_network(sizes, dtype, train, optimizer):
    loss = "mse"
    net = fastbp.Network(sizes, loss=loss, seed=1, dtype=dtype)
    if train:
        X = np.random.default_rng(0).standard_normal((6, sizes[0]))
        net.fit(X, np.zeros((6, sizes[-1])), epochs=2, optimizer=optimizer,
                momentum=0.9 if optimizer == "sgd" else 0.0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        net.save(path)
        back = fastbp.Network.load(path)
    assert _state(back) == _state(net)


def _model_bytes():
    net = fastbp.Network([3, 4, 2], loss="mse", seed=0)
    net.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, optimizer="adam")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        net.save(path)
        return open(path, "rb").read()


MODEL = _model_bytes()


@settings(max_examples=400, **SETTINGS)
@given(cut=st.integers(0, len(MODEL)), flips=st.lists(
    st.tuples(st.integers(0, len(MODEL) - 1), st.integers(1, 255)), max_size=4))
def test_load_of_a_truncated_or_damaged_file_loads_or_says_it_is_corrupt(cut, flips):
    data = bytearray(MODEL[:cut] if cut < len(MODEL) else MODEL)
    for pos, xor in flips:
        if pos < len(data):
            data[pos] ^= xor
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        with open(path, "wb") as f:
            f.write(bytes(data))
        try:
            net = fastbp.Network.load(path)
        except ValueError as exc:
            assert "m.npz" in str(exc), exc
        else:
            assert np.isfinite(net._params).all()


@settings(max_examples=150, **SETTINGS)
@given(X=arrays(), y=arrays(), kind=st.sampled_from(["classifier", "regressor"]),
       hidden=st.one_of(st.tuples(st.integers(1, 6)), WEIRD),
       max_iter=st.one_of(st.integers(1, 3), WEIRD))
def test_the_estimators_fail_where_and_as_scikit_learns_do(X, y, kind, hidden, max_iter):
    """The estimators' contract is scikit-learn's: where its MLP fits, ours fits; where it
    raises, ours raises the same type (its own validation raises OverflowError for 10**400)."""
    sk = pytest.importorskip("sklearn.neural_network")
    import warnings
    from fastbp.sklearn import MLPClassifier, MLPRegressor
    ours, theirs = ((MLPClassifier, sk.MLPClassifier) if kind == "classifier"
                    else (MLPRegressor, sk.MLPRegressor))
    outcome = []
    for cls in (ours, theirs):
        est = cls(hidden_layer_sizes=hidden, max_iter=max_iter, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                est.fit(X, y)
            except Exception as exc:
                outcome.append(type(exc))
                continue
        assert len(est.predict(np.ones((2, est.n_features_in_)))) == 2
        outcome.append(None)
    if outcome[1] is None or outcome[0] is None:
        assert outcome[0] is outcome[1], outcome
    else:
        assert issubclass(outcome[0], outcome[1]) or (
            issubclass(outcome[0], (ValueError, TypeError))
            and issubclass(outcome[1], (ValueError, TypeError))), outcome


@settings(max_examples=150, **SETTINGS)
@given(scales=st.lists(st.integers(-3, 38), min_size=3, max_size=3),
       constant=st.lists(st.sampled_from([None, 1.0, -1.0]), min_size=3, max_size=3),
       acts=st.lists(st.sampled_from(["relu", "sigmoid", "tanh"]), min_size=2, max_size=2),
       loss=st.sampled_from(["cross_entropy", "bce", "mse", "poisson"]),
       lr=st.integers(-6, 30), xscale=st.integers(-2, 20), dtype=st.sampled_from(["float32",
                                                                                 "float64"]))
def test_a_one_batch_epoch_without_a_backup_never_leaves_a_parameter_non_finite(
        scales, constant, acts, loss, lr, xscale, dtype):
    """Whatever the weights (random or constant, of either sign, up to 1e38), the data's scale,
    the activations, the loss and the learning rate, one-batch epochs of plain SGD (the path on
    which _kernels.bounded_step may skip the backup, from the parameters or, after the first
    epoch, from the bounds carried from the last) end with finite parameters: each step taken,
    or the epoch undone with the parameters as they were."""
    from fastbp import _kernels as K
    out = 1 if loss == "bce" else 10
    X, y = make_data(loss, 64, 64, out, seed=0, dtype=dtype)
    X *= X.dtype.type(10.0 ** xscale)
    net = fastbp.Network([64, 96, 80, out], activation=acts, loss=loss, seed=0, dtype=dtype)
    for l in range(3):
        W, b = K.layer_views(net._params, net._layout, l)
        if constant[l] is None:
            W *= W.dtype.type(10.0 ** scales[l])
        else:
            W[...] = constant[l] * 10.0 ** min(scales[l], 37)
    before = net._params.copy()
    try:
        net.fit(X, y, epochs=3, batch_size=64, lr=10.0 ** lr)
    except fastbp.DivergenceError as e:
        if len(e.history.loss) == 0:
            assert np.array_equal(net._params, before)
    assert np.isfinite(net._params).all()

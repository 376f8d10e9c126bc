"""Bad input: a clear error naming the argument, and the network left exactly as it was.
Divergence: finite weights and a clear error. Files: atomic saves, refused bad files."""
import os
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import state as state_module

from conftest import XOR_X, XOR_Y, make_data

GOOD_X, GOOD_Y = make_data("cross_entropy", 12, 4, 3, seed=0)


def snapshot(net):
    return [a.tobytes() for a in net.weights + net.biases]


def with_value(arr, index, value):
    arr = np.array(arr, dtype=np.float64)
    arr[index] = value
    return arr


BAD_FIT = [
    # (description, X, y, keyword arguments, exception, words the message must contain)
    ("NaN in X", with_value(GOOD_X, (0, 0), np.nan), GOOD_Y, {}, ValueError, "X contains NaN"),
    ("inf in X", with_value(GOOD_X, (3, 1), np.inf), GOOD_Y, {}, ValueError, "X contains NaN or infinity"),
    ("NaN in y", GOOD_X, with_value(GOOD_Y, 2, np.nan), {}, ValueError, "y contains NaN"),
    ("too many features", np.ones((12, 5)), GOOD_Y, {}, ValueError, "expects 4"),
    ("1-D X", np.ones(12), GOOD_Y, {}, ValueError, "X must be 2-D"),
    ("lengths differ", GOOD_X, GOOD_Y[:-1], {}, ValueError, "y has 11 samples but X has 12"),
    ("label too large", GOOD_X, with_value(GOOD_Y, 0, 3), {}, ValueError, "labels 0..2"),
    ("negative label", GOOD_X, with_value(GOOD_Y, 0, -1), {}, ValueError, "labels 0..2"),
    ("fractional label", GOOD_X, with_value(GOOD_Y, 0, 0.5), {}, ValueError, "integer class labels"),
    ("2-D labels", GOOD_X, np.ones((12, 3)), {}, ValueError, "one label per sample"),
    ("empty X", np.empty((0, 4)), np.empty(0), {}, ValueError, "X is empty"),
    ("strings in X", np.array([["a"] * 4] * 12), GOOD_Y, {}, TypeError, "X must hold numbers"),
    ("objects in y", GOOD_X, np.array([object()] * 12), {}, TypeError, "y must hold numbers"),
    ("ragged X", [[1, 2, 3, 4], [1, 2]], [0, 1], {}, TypeError, "X must be a rectangular"),
    ("zero lr", GOOD_X, GOOD_Y, {"lr": 0.0}, ValueError, "lr must be finite and > 0"),
    ("negative lr", GOOD_X, GOOD_Y, {"lr": -0.1}, ValueError, "lr must be"),
    ("NaN lr", GOOD_X, GOOD_Y, {"lr": float("nan")}, ValueError, "lr must be"),
    ("string lr", GOOD_X, GOOD_Y, {"lr": "0.1"}, TypeError, "lr must be a real number"),
    ("zero epochs", GOOD_X, GOOD_Y, {"epochs": 0}, ValueError, "epochs must be >= 1"),
    ("float epochs", GOOD_X, GOOD_Y, {"epochs": 2.5}, TypeError, "epochs must be an integer"),
    ("zero batch", GOOD_X, GOOD_Y, {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ("negative momentum", GOOD_X, GOOD_Y, {"momentum": -0.5}, ValueError, "momentum must be"),
    ("nesterov without momentum", GOOD_X, GOOD_Y, {"nesterov": True}, ValueError, "nesterov"),
    ("negative weight decay", GOOD_X, GOOD_Y, {"weight_decay": -1.0}, ValueError, "weight_decay"),
    ("shuffle not bool", GOOD_X, GOOD_Y, {"shuffle": "yes"}, TypeError, "shuffle must be True or False"),
    ("negative log_every", GOOD_X, GOOD_Y, {"log_every": -1}, ValueError, "log_every must be >= 0"),
    ("unknown optimizer", GOOD_X, GOOD_Y, {"optimizer": "rmsprop"}, ValueError, "optimizer must be one of"),
    ("momentum with adam", GOOD_X, GOOD_Y, {"optimizer": "adam", "momentum": 0.9}, ValueError, "momentum and nesterov are SGD's"),
    ("beta1 of 1", GOOD_X, GOOD_Y, {"optimizer": "adam", "betas": (1.0, 0.999)}, ValueError, "betas\\[0\\] must be in"),
    ("betas not a pair", GOOD_X, GOOD_Y, {"optimizer": "adam", "betas": 0.9}, TypeError, "betas must be a pair"),
    ("zero eps", GOOD_X, GOOD_Y, {"optimizer": "adamw", "eps": 0.0}, ValueError, "eps must be"),
    ("optimizer object and lr", GOOD_X, GOOD_Y, {"optimizer": fastbp.optim.Adam(), "lr": 0.1}, ValueError, "do not also pass lr"),
    ("unknown schedule", GOOD_X, GOOD_Y, {"schedule": "linear"}, ValueError, "schedule must be one of"),
    ("sample_weight length", GOOD_X, GOOD_Y, {"sample_weight": np.ones(11)}, ValueError, "sample_weight has 11 entries"),
    ("negative sample_weight", GOOD_X, GOOD_Y, {"sample_weight": -np.ones(12)}, ValueError, "sample_weight must be >= 0"),
    ("NaN sample_weight", GOOD_X, GOOD_Y, {"sample_weight": with_value(np.ones(12), 0, np.nan)}, ValueError, "sample_weight contains NaN"),
    ("early stopping without validation", GOOD_X, GOOD_Y, {"early_stopping": True}, ValueError, "early_stopping=True needs validation"),
    ("validation_split 1", GOOD_X, GOOD_Y, {"validation_split": 1.0}, ValueError, "validation_split must be in"),
    ("validation_data bad shape", GOOD_X, GOOD_Y, {"validation_data": (np.ones((3, 5)), [0, 1, 2])}, ValueError, "expects 4"),
    ("validation_data not a pair", GOOD_X, GOOD_Y, {"validation_data": GOOD_X}, TypeError, "validation_data must be a pair"),
    ("callback not callable", GOOD_X, GOOD_Y, {"callbacks": [3]}, TypeError, "callbacks must be callables"),
    ("zero patience", GOOD_X, GOOD_Y, {"patience": 0}, ValueError, "patience must be >= 1"),
    ("zero checkpoint_every", GOOD_X, GOOD_Y, {"checkpoint_every": 0}, ValueError, "checkpoint_every must be >= 1"),
    ("resume without a run", GOOD_X, GOOD_Y, {"resume": True}, ValueError, "resume=True needs a network that has been trained"),
    ("stream a list", [[0.0] * 4] * 12, GOOD_Y, {"stream": True}, TypeError, "supports row slicing"),
]


@pytest.mark.parametrize("what,X,y,kwargs,exc,words", BAD_FIT, ids=[c[0] for c in BAD_FIT])
def test_bad_fit_input_raises_and_leaves_the_network_unchanged(what, X, y, kwargs, exc, words):
    net = fastbp.Network([4, 5, 3], seed=0)
    before = snapshot(net)
    with pytest.raises(exc, match=words):
        net.fit(X, y, **kwargs)
    assert snapshot(net) == before


@pytest.mark.parametrize("y,words", [(np.array([0, 1, 2, 0]), r"0/1 labels or probabilities"),
                                     (np.array([0, 1, 1, -0.1]), r"in \[0, 1\]")])
def test_bce_targets_outside_0_1_are_refused(y, words):
    net = fastbp.Network([2, 4, 1], activation="sigmoid", loss="bce")
    before = snapshot(net)
    with pytest.raises(ValueError, match=words):
        net.fit(XOR_X, y)
    assert snapshot(net) == before


def test_bce_accepts_soft_targets():
    net = fastbp.Network([2, 4, 1], activation="sigmoid", loss="bce", dtype=np.float64)
    assert len(net.fit(XOR_X, [0.1, 0.9, 0.8, 0.2], epochs=2).loss) == 2


def test_mse_targets_must_match_the_outputs():
    net = fastbp.Network([4, 5, 2], loss="mse")
    with pytest.raises(ValueError, match=r"y must have shape \(12, 2\)"):
        net.fit(GOOD_X, np.ones(12))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("where", [0, 4097, -1])  # first, between, last
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_anywhere_in_X_is_found(dtype, where, bad):
    from fastbp import _validate
    X = np.ones((300, 32), dtype=dtype)
    X.reshape(-1)[where] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        _validate.features(X, 32, dtype)
    X.reshape(-1)[where] = 1
    assert _validate.features(X, 32, dtype) is X  # finite, right dtype and layout: no copy


def test_a_sparse_X_with_no_stored_values_is_finite():
    import scipy.sparse
    from fastbp import _validate
    X = _validate.sparse_features(scipy.sparse.csr_matrix((5, 3)), 3, np.float32)
    assert X.data.shape == (0,)
    bad = scipy.sparse.csr_matrix(np.array([[0, np.inf, 0]]))
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        _validate.sparse_features(bad, 3, np.float32)


def test_a_class_that_names_no_module_is_checked_as_any_other():
    """Whether X is sparse is asked of its class's module name, which a class may set to None:
    an ndarray subclass so made is dense input, an object so made gets the message for X."""
    class Dense(np.ndarray):
        __module__ = None

    class Other:
        __module__ = None

    net = fastbp.Network([2, 3, 1], loss="bce", seed=0)
    expected = fastbp.Network([2, 3, 1], loss="bce", seed=0)
    net.fit(XOR_X.view(Dense), XOR_Y, epochs=3)
    expected.fit(XOR_X, XOR_Y, epochs=3)
    assert net._params.tobytes() == expected._params.tobytes()
    with pytest.raises(TypeError, match="X must hold numbers"):
        net.fit(Other(), XOR_Y, epochs=1)


def test_checking_X_allocates_nothing_the_size_of_X():
    import tracemalloc
    from fastbp import _validate
    X = np.ones((4096, 256), dtype=np.float32)
    _validate.features(X, 256, np.float32)  # once outside the measurement
    tracemalloc.start()
    try:
        _validate.features(X, 256, np.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.size // 16  # np.isfinite(X).all() held one byte per value


def test_float32_overflow_in_X_is_refused():
    net = fastbp.Network([4, 5, 3], dtype=np.float32)
    with pytest.raises(ValueError, match="too large for float32"):
        net.predict(with_value(GOOD_X, (0, 0), 1e39))


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_bad_predict_input_raises(method):
    net = fastbp.Network([4, 5, 3])
    with pytest.raises(ValueError, match="expects 4"):
        getattr(net, method)(np.ones((2, 3)))


def test_predict_proba_refuses_regression():
    with pytest.raises(ValueError, match="predict_proba needs a classification loss"):
        fastbp.Network([4, 5, 3], loss="mse").predict_proba(GOOD_X)


BAD_NETWORK = [
    ({"sizes": [4]}, ValueError, "at least the input and output"),
    ({"sizes": [4, 0, 3]}, ValueError, r"sizes\[1\] must be >= 1"),
    ({"sizes": [4, 2.5, 3]}, TypeError, r"sizes\[1\] must be an integer"),
    # past any address space (128 TiB), so refused at once whatever the overcommit policy
    ({"sizes": [10**7, 10**7, 2]}, MemoryError,
     r"sizes=\[10000000, 10000000, 2\] has 100,000,030,000,002 parameters \(372,529.1 GiB"),
    ({"sizes": 4}, TypeError, "sizes must be a list"),
    ({"activation": "swish"}, ValueError, "activation must be one of"),
    ({"activation": ["relu", "tanh"]}, ValueError, "one per hidden layer"),
    ({"loss": "hinge"}, ValueError, "loss must be one of"),
    ({"sizes": [4, 5, 1], "loss": "cross_entropy"}, ValueError, "at least 2 output units"),
    ({"dtype": np.int32}, TypeError, "dtype must be np.float32 or np.float64"),
    ({"dtype": "float16"}, TypeError, "dtype must be"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": "abc"}, TypeError, "seed must be an integer"),
]


@pytest.mark.parametrize("kwargs,exc,words", BAD_NETWORK)
def test_bad_network_arguments_raise(kwargs, exc, words):
    args = dict(sizes=[4, 5, 3], activation="relu", loss="cross_entropy")
    args.update(kwargs)
    with pytest.raises(exc, match=words):
        fastbp.Network(**args)


@pytest.mark.parametrize("dtypes,words", [
    ("float16", "each of dtypes must be np.float32 or np.float64; got float16"),
    (np.int64, "got int64"),
    (["float32", "int8"], "got int8"),  # checked before float32 compiles
    (3, "dtypes must be a dtype .* or a sequence of them; got 3"),
    (None, "or a sequence of them; got None"),
])
def test_precompile_refuses_other_dtypes_before_compiling(monkeypatch, dtypes, words):
    def fit(*args, **kwargs):
        raise AssertionError("a fit ran before the dtypes were checked")

    monkeypatch.setattr(fastbp.Network, "fit", fit)
    with pytest.raises(TypeError, match=words):
        fastbp.precompile(dtypes)


def test_activation_list_sets_each_hidden_layer():
    net = fastbp.Network([3, 4, 5, 2], activation=["tanh", "relu"], dtype=np.float64)
    assert net.activations == ("tanh", "relu")


# ----------------------------------------------------------------- divergence


def test_divergence_stops_with_a_clear_error_and_finite_weights():
    X, y = make_data("mse", 32, 4, 2, seed=0)
    net = fastbp.Network([4, 8, 2], activation="identity", loss="mse", seed=0, dtype=np.float64)
    net.fit(X, y, epochs=2, lr=0.01)
    with pytest.raises(fastbp.DivergenceError, match=r"diverged in epoch \d+ .* smaller lr") as info:
        net.fit(X, y * 1e3, epochs=500, lr=50.0, batch_size=8)
    assert all(np.isfinite(p).all() for p in net.weights + net.biases)
    hist = info.value.history
    assert all(np.isfinite(hist.loss))
    epoch = int(str(info.value).split("epoch ")[1].split()[0])
    assert epoch == len(hist.loss) + 1


def test_divergence_restores_the_weights_of_the_failing_epochs_start():
    X, y = make_data("mse", 32, 4, 2, seed=0)
    make = lambda: fastbp.Network([4, 8, 2], activation="identity", loss="mse", seed=0,
                                  dtype=np.float64)
    kwargs = dict(lr=50.0, batch_size=8, shuffle=False)
    net = make()
    with pytest.raises(fastbp.DivergenceError) as info:
        net.fit(X, y * 1e3, epochs=500, **kwargs)
    completed = len(info.value.history.loss)
    replay = make()
    if completed:
        replay.fit(X, y * 1e3, epochs=completed, **kwargs)
    assert snapshot(net) == snapshot(replay)


# ----------------------------------------------------------------- files


def test_save_and_load_round_trip(tmp_path):
    X, y = make_data("cross_entropy", 30, 4, 3, seed=1)
    net = fastbp.Network([4, 6, 3], activation="tanh", seed=3, dtype=np.float64)
    net.fit(X, y, epochs=3, batch_size=8)
    path = tmp_path / "model.npz"
    net.save(path)
    back = fastbp.Network.load(path)
    assert (back.sizes, back.activations, back.loss_name, back.dtype) == \
        (net.sizes, net.activations, net.loss_name, net.dtype)
    assert snapshot(back) == snapshot(net)
    assert np.array_equal(back.predict_proba(X), net.predict_proba(X))
    # the shuffling stream continues where it stopped
    net.fit(X, y, epochs=2, batch_size=8)
    back.fit(X, y, epochs=2, batch_size=8)
    assert snapshot(back) == snapshot(net)


def test_save_writes_atomically_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = fastbp.Network([4, 6, 3], seed=1)
    old.save(path)
    original = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(state_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        fastbp.Network([4, 6, 3], seed=2).save(path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    fastbp.Network([4, 6, 3]).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable fastbp model file"):
        fastbp.Network.load(path)


def test_a_checkpoint_with_a_mismatched_training_state_is_refused(tmp_path):
    import json
    path = tmp_path / "model.npz"
    net = fastbp.Network([4, 6, 3], seed=0)
    net.fit(GOOD_X, GOOD_Y, epochs=1, optimizer="adam")
    net.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["opt_state"] = arrays["opt_state"][:-1]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="unreadable training state.*corrupt"):
        fastbp.Network.load(path)
    meta = json.loads(str(arrays["meta"][()]))
    meta["train"]["optimizer"]["name"] = "lbfgs"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="unreadable training state"):
        fastbp.Network.load(path)


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    with pytest.raises(ValueError, match="fastbp model file"):
        fastbp.Network.load(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable fastbp model file"):
        fastbp.Network.load(text)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastbp.Network.load(tmp_path / "absent.npz")


@pytest.mark.parametrize("method", ["loss", "gradients"])
def test_bad_targets_for_loss_and_gradients_raise(method):
    net = fastbp.Network([4, 5, 3], seed=0)
    before = snapshot(net)
    with pytest.raises(ValueError, match="labels 0..2"):
        getattr(net, method)(GOOD_X, with_value(GOOD_Y, 0, 7))
    assert snapshot(net) == before


@pytest.mark.parametrize("dtype,gamma,expected", [
    ("float64", 1e3, r"epoch 7 of 30: .* its learning rate was 1e\+15 \(lr 0\.001 under the "
                     r"ExponentialLR schedule\); try a smaller lr or a gentler schedule"),
    ("float32", 1e50, r"epoch 2 of 30: .* its learning rate, from lr 0\.001 under the "
                      r"ExponentialLR schedule, is inf in float32: use a schedule whose rates "
                      r"stay finite")])
def test_a_divergence_under_a_schedule_names_the_rate_it_diverged_at(dtype, gamma, expected):
    """The message gives the failing epoch's rate, not only the base lr the schedule started
    from; a rate beyond the dtype's range is named as such, with no NumPy warning on the way."""
    from fastbp.schedules import ExponentialLR
    X = np.random.default_rng(0).standard_normal((50, 3))
    y = np.arange(50) % 2
    net = fastbp.Network([3, 4, 2], seed=3, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(fastbp.DivergenceError, match=expected):
            net.fit(X, y, epochs=30, batch_size=8, lr=1e-3, schedule=ExponentialLR(gamma=gamma))
    assert np.isfinite(net._params).all()
